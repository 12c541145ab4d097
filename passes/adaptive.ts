/**
 * Adaptive amounts: how many tokens a stage keeps depends on the input.
 *   keep mass P%  — the fewest tokens whose scores (clipped at 0) sum to at least P% of the total;
 *   keep above X  — the tokens scoring above X (at least one).
 * Each example gets its own count k_b. A batch keeps max_b k_b tokens per example: the best ones,
 * in position order; the ones past an example's own count are padding, which the stage masks out
 * of every later attention (additive −1e9 on their keys), so each example computes exactly what it
 * would alone. At batch 1 nothing is padded and the tokens are really removed.
 */
import type { NodeBuilder } from "./builder.js";
import { withPrefix } from "./select-topk.js";

export interface AdaptiveAmount {
  kind: "mass" | "above";
  value: number;
}

export interface AdaptiveSelection {
  /** int64 [B, prefix + Kmax]: kept positions, ascending, padding included. */
  indices: string;
  /** int64 [B, prefix + Kmax]: the same with padding positions set to −1 (match no token; what --expose-indices shows). */
  realIndices: string;
  /** float [B, prefix + Kmax]: 0 for kept tokens, −1e9 for padding (a key bias for later layers). */
  padBias: string;
  /** int64 [B]: tokens each example keeps, prefix included. */
  counts: string;
}

/** int64 [B,1]: each example's count. `scores` [B,Np]. */
function countPerExample(b: NodeBuilder, scores: string, amount: AdaptiveAmount): string {
  const positive = b.op("Relu", [scores], {}, "clip_at_zero");
  let hits: string;
  if (amount.kind === "above") {
    hits = b.op("Greater", [scores, b.float([amount.value], [], "threshold")], {}, "above");
  } else {
    // Sort descending; a token is needed while the scores before it sum to less than P% of the total.
    const n = b.slice(b.op("Shape", [positive]), 0, 1, 2);
    const [sorted] = b.opN("TopK", [positive, n], 2, { axis: -1, largest: 1, sorted: 1 });
    const before = b.op("CumSum", [sorted!, b.int64([1], [], "axis")], { exclusive: 1 }, "mass_before");
    const target = b.op("Mul", [b.reduce("ReduceSum", positive, [1], 1), b.float([amount.value / 100], [], "mass")], {}, "mass_target");
    hits = b.op("Less", [before, target], {}, "still_needed");
  }
  const count = b.reduce("ReduceSum", b.op("Cast", [hits], { to: 7 }), [1], 1); // [B,1]
  return b.op("Max", [count, b.int64([1], [1, 1], "at_least_one")], {}, "count");
}

export function selectAdaptive(b: NodeBuilder, ranked: string, scores: string, amount: AdaptiveAmount, prefix: number): AdaptiveSelection {
  const count = countPerExample(b, scores, amount);
  const kmax = b.op("Reshape", [b.reduce("ReduceMax", count, [0], 1), b.int64([1], [1], "one_dim")], {}, "batch_max");
  const [, best] = b.opN("TopK", [ranked, kmax], 2, { axis: -1, largest: 1, sorted: 1 }); // by rank
  // rank[j] = where the j-th position (ascending) stood in the ranking: padding when ≥ its count.
  const [, rank] = b.opN("TopK", [best!, kmax], 2, { axis: -1, largest: 0, sorted: 1 });
  const ascending = b.op("GatherElements", [best!, rank!], { axis: 1 }, "ascending");
  const padding = b.op("Not", [b.op("Less", [rank!, count], {}, "within_count")], {}, "padding");
  const indices = withPrefix(b, ascending, prefix);
  let padBias = b.op("Where", [padding, b.float([-1e9], [], "masked"), b.float([0], [], "kept")], {}, "pad_bias");
  if (prefix > 0) {
    const shape = b.op("Concat", [b.slice(b.op("Shape", [padBias]), 0, 0, 1), b.int64([prefix])], { axis: 0 });
    const special = b.op("Expand", [b.float(Array(prefix).fill(0), [1, prefix], "prefix_bias"), shape], {}, "prefix_bias");
    padBias = b.op("Concat", [special, padBias], { axis: 1 }, "pad_bias_all");
  }
  const isPad = b.op("Less", [padBias, b.float([0], [], "zero_bias")], {}, "is_padding");
  const realIndices = b.op("Where", [isPad, b.int64([-1], [], "none"), indices], {}, "real_positions");
  const counts = b.op("Add", [b.squeeze(count, [1]), b.int64([prefix], [1], "prefix")], {}, "kept_counts");
  return { indices, realIndices, padBias, counts };
}
