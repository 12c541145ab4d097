/**
 * References for `diversity` (DivPrune, methods.md §3) and `k-center` (ToDRE stage 1, §11) on plain
 * arrays, in float64, written from methods.md and `vbdi/divprune` (LLaVA/llava/model/llava_arch.py:
 * DivPrune), independent of passes/.
 *
 * DivPrune's loop, as the reference code runs it:
 *   D = 1 − cos (x/‖x‖ rows, D = 1 − X̂·X̂ᵀ);
 *   i = 0:  scores_j = torch.topk(D[:, j], 2, largest=False).values[1]   (second smallest of column j,
 *           the diagonal included);
 *   i ≥ 1:  scores_j = min over the selected rows s of D[s, j];
 *   s[i] = torch.argmax(scores) (the first maximum).
 * Two documented deviations (see passes/criteria/diversity.ts): a norm below 1e-12 is clamped to
 * 1e-12 (a zero token is at distance 1 from everything; the reference makes it NaN), and a selected
 * token is never selected again (the reference can re-pick one when every remaining score is ≤ its
 * rounding-level self-distance).
 *
 * k-center (our choice, no public code): Euclidean distance between the raw tokens (squared, the same
 * picks), seed = the token nearest the mean (first minimum), then the same greedy max-min.
 *
 * Each selection also reports its margins: at every pick, the gap between the winning score and the
 * best other candidate's (0 for an exact tie, which the first position wins). fp32 graphs and this
 * float64 reference can only disagree where a margin is within fp32 rounding.
 */
import { keepCount } from "./cls-attn.js";

export interface Selection {
  /** Picked positions (0-based prunable), in pick order: seed first. */
  order: number[];
  /** Per pick: winning score minus the best other candidate's score (Infinity when alone). */
  margins: number[];
}

/** argmax over candidates (first maximum) and its margin over the runner-up. */
function pick(scores: number[], taken: ReadonlySet<number>, largest = true): { at: number; margin: number } {
  let at = -1;
  for (let j = 0; j < scores.length; j++) {
    if (taken.has(j)) continue;
    if (at < 0 || (largest ? scores[j]! > scores[at]! : scores[j]! < scores[at]!)) at = j;
  }
  let margin = Infinity;
  for (let j = 0; j < scores.length; j++)
    if (j !== at && !taken.has(j)) margin = Math.min(margin, Math.abs(scores[at]! - scores[j]!));
  return { at, margin };
}

/** Greedy max-min from `seed` over the distance matrix: k picks. */
function greedy(dist: number[][], seed: { at: number; margin: number }, k: number): Selection {
  const n = dist.length;
  const order = [seed.at];
  const margins = [seed.margin];
  const taken = new Set(order);
  const d = dist[seed.at]!.slice();
  while (order.length < k) {
    const p = pick(d, taken);
    order.push(p.at);
    margins.push(p.margin);
    taken.add(p.at);
    for (let j = 0; j < n; j++) d[j] = Math.min(d[j]!, dist[p.at]![j]!);
  }
  return { order, margins };
}

/** DivPrune on one example's prunable tokens [N][D]: k picks. */
export function divpruneSelect(x: number[][], k: number): Selection {
  const unit = x.map((v) => {
    const norm = Math.max(Math.sqrt(v.reduce((s, a) => s + a * a, 0)), 1e-12);
    return v.map((a) => a / norm);
  });
  const n = x.length;
  const dist = Array.from({ length: n }, () => new Array<number>(n).fill(0));
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) {
      let dot = 0;
      for (let c = 0; c < unit[i]!.length; c++) dot += unit[i]![c]! * unit[j]![c]!;
      dist[i]![j] = dist[j]![i] = 1 - dot;
    }
  }
  // Second smallest of each column, the diagonal (self-distance) included.
  const seedScores = Array.from({ length: n }, (_, j) => dist.map((r) => r[j]!).sort((a, b) => a - b)[1]!);
  return greedy(dist, pick(seedScores, new Set()), k);
}

/** Greedy k-center on one example's prunable tokens [N][D]: Euclidean, seeded nearest the mean. */
export function kCenterSelect(x: number[][], k: number): Selection {
  const n = x.length;
  const dim = x[0]!.length;
  const mean = Array.from({ length: dim }, (_, c) => x.reduce((s, v) => s + v[c]!, 0) / n);
  const sq = (a: number[], b: number[]) => a.reduce((s, v, c) => s + (v - b[c]!) ** 2, 0);
  const dist = Array.from({ length: n }, () => new Array<number>(n).fill(0));
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) dist[i]![j] = dist[j]![i] = sq(x[i]!, x[j]!);
  return greedy(
    dist,
    pick(
      x.map((v) => sq(v, mean)),
      new Set(),
      false,
    ),
    k,
  );
}

/**
 * Kept token positions per example (prefix tokens first, ascending) for `keep P%` of the prunable
 * tokens of a residual stream [B][N][D]; with the selections for their margins.
 */
export function diversityKeep(
  stream: number[][][],
  percent: number,
  prefix: number,
  method: "diversity" | "k-center",
): { kept: number[][]; selections: Selection[] } {
  const selections = stream.map((tokens) => {
    const prunable = tokens.slice(prefix);
    const k = keepCount(percent, prunable.length);
    return method === "diversity" ? divpruneSelect(prunable, k) : kCenterSelect(prunable, k);
  });
  const kept = selections.map((s) => [
    ...Array(prefix).keys(),
    ...s.order.map((t) => t + prefix).sort((a, b) => a - b),
  ]);
  return { kept, selections };
}
