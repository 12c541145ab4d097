/** Reference baselines on plain arrays (methods: norm, random(seed), uniform), written independently of passes/. */
import { keepCount, topKPositions } from "./cls-attn.js";

/** norm: L2 norm of each prunable token of the residual [N][D]. */
export function normKeep(residual: number[][][], percent: number, prefix: number): number[][] {
  return residual.map((tokens) => {
    const scores = tokens.slice(prefix).map((t) => Math.sqrt(t.reduce((s, v) => s + v * v, 0)));
    return topKPositions(scores, keepCount(percent, scores.length), prefix);
  });
}

/** The mulberry32 generator as published (Tommy Ettinger), returning floats in [0, 1). */
function* mulberry(seed: number): Generator<number> {
  let state = seed >>> 0;
  for (;;) {
    state = (state + 0x6d2b79f5) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    yield ((z ^ (z >>> 14)) >>> 0) / 2 ** 32;
  }
}

/** random(seed): Fisher–Yates shuffle of 0..n-1 from the top down; the first k of the shuffle are kept. */
export function randomKeep(n: number, percent: number, prefix: number, seed: number): number[] {
  const rng = mulberry(seed);
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i >= 1; i--) {
    const j = Math.floor(rng.next().value! * (i + 1));
    const t = a[i]!;
    a[i] = a[j]!;
    a[j] = t;
  }
  const k = keepCount(percent, n);
  return [
    ...Array(prefix).keys(),
    ...a
      .slice(0, k)
      .map((i) => i + prefix)
      .sort((x, y) => x - y),
  ];
}

/** uniform: farthest-point order on a g×g grid from the cell nearest the centre (ties: lowest index). */
export function uniformKeep(grid: number, percent: number, prefix: number): number[] {
  const cells = Array.from({ length: grid * grid }, (_, i) => ({ i, x: i % grid, y: Math.floor(i / grid) }));
  const c = (grid - 1) / 2;
  const d = (p: { x: number; y: number }, q: { x: number; y: number }) => (p.x - q.x) ** 2 + (p.y - q.y) ** 2;
  const chosen = [[...cells].sort((p, q) => d(p, { x: c, y: c }) - d(q, { x: c, y: c }) || p.i - q.i)[0]!];
  const k = keepCount(percent, cells.length);
  while (chosen.length < k) {
    const rest = cells.filter((p) => !chosen.includes(p));
    const far = rest
      .map((p) => ({ p, m: Math.min(...chosen.map((q) => d(p, q))) }))
      .sort((u, v) => v.m - u.m || u.p.i - v.p.i)[0]!;
    chosen.push(far.p);
  }
  return [...Array(prefix).keys(), ...chosen.map((p) => p.i + prefix).sort((x, y) => x - y)];
}
