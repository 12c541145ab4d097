/** Reference adaptive counts on plain arrays (language.md): mass P% and above X, float32 like the graph. */
const f = Math.fround;

/** Fewest tokens whose scores (clipped at 0), largest first, sum to at least P% of the total; at least 1. */
export function massCount(scores: number[], percent: number): number {
  const s = scores.map((v) => f(Math.max(0, v))).sort((a, b) => b - a);
  let total = 0;
  for (const v of s) total = f(total + v);
  const target = f(total * f(percent / 100));
  let before = 0;
  let count = 0;
  for (const v of s) {
    if (!(before < target)) break;
    count++;
    before = f(before + v);
  }
  return Math.max(1, count);
}

/** Tokens scoring above X; at least 1. */
export function aboveCount(scores: number[], threshold: number): number {
  return Math.max(1, scores.filter((v) => v > f(threshold)).length);
}

/** Python's round(): halves to even (torch .round() and ONNX Round do the same). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * FlowCut's adaptive_prune_ratio for one example (flowcut/utils_flowcut.py), with its own count
 * instead of the batch maximum: clsAttention over the n prunable tokens, target T, layers left rpl.
 */
export function flowcutCount(clsAttention: number[], target: number, rpl: number): number {
  const n = clsAttention.length;
  if (rpl === 0) return target;
  const total = clsAttention.reduce((a, b) => a + b, 0);
  const entropy = -clsAttention.reduce((acc, a) => (a > 0 ? acc + (a / total) * Math.log(a / total) : acc), 0);
  const ratio = entropy / Math.log(n);
  const prune = roundHalfEven(((n - target) / Math.sqrt(rpl)) * (1 - ratio * ratio));
  return Math.max(n - prune, target);
}
