/**
 * Amounts that differ per example.
 *   keep mass P%  — the fewest tokens whose scores (clipped at 0) sum to at least P% of the total;
 *   keep above X  — the tokens scoring above X (at least one);
 *   flowcut(adaptive: 1) with `keep T tokens` — FlowCut's entropy-based count (methods.md §6):
 *     prune = round_half_even((n − T)/√rpl · (1 − (H/ln n)²)), keep max(n − prune, T), where H is
 *     the entropy of the layer's normalised CLS attention over the n prunable tokens and rpl the
 *     layers left until the schedule's last adaptive FlowCut stage (rpl = 0: keep T);
 *   and any `keep`/`drop` stage after one of these, whose input count then differs per example.
 * Each example gets its own count k_b. A batch keeps max_b k_b tokens per example: the best ones,
 * in position order; the ones past an example's own count are padding, masked out of every later
 * attention (additive −1e9 on their keys) and never selected again, so each example computes
 * exactly what it would alone. At batch 1 nothing is padded and the tokens are really removed.
 * (FlowCut itself takes the batch maximum of `prune`; prunec keeps every example exact instead.)
 */
import type { NodeBuilder } from "./builder.js";
import { withPrefix } from "./select-topk.js";
import { keepCountDynamic, shareDynamic } from "./amount.js";

export type AdaptiveAmount =
  | { kind: "mass" | "above"; value: number }
  /** A fixed amount applied to a per-example input count (after an adaptive stage). */
  | { kind: "percent" | "count"; value: number; drop: boolean }
  | { kind: "flowcut"; target: number; rpl: number }
  /**
   * The criterion decides each example's count itself (its scorer's `count`), at most `budget`
   * prunable tokens (HoloV's crops, passes/criteria/crops.ts).
   */
  | { kind: "criterion"; budget: number }
  /**
   * `with recycle(grid: a)` (VFlowOpt, passes/kinds/recycle-grid.ts): the `keep` − `extra` best
   * tokens, plus the best-scored dropped token of each grid cell holding dropped ones, which
   * carries their score-weighted mean. `cells[j]` is prunable token j's cell (0..cellCount−1).
   */
  | { kind: "grid"; keep: number; extra: number; cells: readonly number[]; cellCount: number; size: number };

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

export interface CountInputs {
  /** Scores [B,Np] as the criterion gave them. */
  scores: string;
  /** Scores with padding from earlier stages at −1e9 (what the selection ranks). */
  ranked: string;
  /** int64 [B,1]: real (non-padding) prunable tokens of each example. */
  real: string;
  /** FlowCut: the layer's CLS attention over the prunable tokens, [B,Np] (padding at 0). */
  clsAttention?: () => string;
  /**
   * Fewest tokens a count may give: 1, or 0 for `of SET` stages (dropping a whole set, ToDRE's
   * stage 2, still leaves the other tokens).
   */
  minimum?: 0 | 1;
}

/** int64 [B,1]: each example's count, between 1 and its real token count. */
export function countPerExample(b: NodeBuilder, amount: AdaptiveAmount, x: CountInputs): string {
  let count: string;
  switch (amount.kind) {
    case "above": {
      const hits = b.op("Greater", [x.ranked, b.float([amount.value], [], "threshold")], {}, "above");
      count = b.reduce("ReduceSum", b.op("Cast", [hits], { to: 7 }), [1], 1);
      break;
    }
    case "mass": {
      // Sort descending; a token is needed while the scores before it sum to less than P% of the total.
      const positive = b.op("Relu", [x.ranked], {}, "clip_at_zero");
      const n = b.slice(b.op("Shape", [positive]), 0, 1, 2);
      const [sorted] = b.opN("TopK", [positive, n], 2, { axis: -1, largest: 1, sorted: 1 });
      const before = b.op("CumSum", [sorted!, b.int64([1], [], "axis")], { exclusive: 1 }, "mass_before");
      const target = b.op(
        "Mul",
        [b.reduce("ReduceSum", positive, [1], 1), b.float([amount.value / 100], [], "mass")],
        {},
        "mass_target",
      );
      const hits = b.op("Less", [before, target], {}, "still_needed");
      count = b.reduce("ReduceSum", b.op("Cast", [hits], { to: 7 }), [1], 1);
      break;
    }
    case "percent":
      count =
        x.minimum === 0
          ? setCount(b, x.real, amount.value, amount.drop)
          : keepCountDynamic(b, x.real, amount.value, amount.drop);
      break;
    case "count":
      count = amount.drop
        ? b.op("Sub", [x.real, b.int64([amount.value], [1, 1], "dropped")], {}, "remaining")
        : b.int64([amount.value], [1, 1], "kept");
      break;
    case "flowcut":
      count = flowcutCount(b, amount, x);
      break;
    case "criterion":
      throw new Error("internal: a criterion's own count comes from its scorer, not from the amount");
    case "grid":
      throw new Error("internal: a grid-recycling stage counts its cells itself (passes/kinds/recycle-grid.ts)");
  }
  const atLeastOne = b.op("Max", [count, b.int64([x.minimum ?? 1], [1, 1], "at_least")], {}, "count");
  return b.op("Min", [atLeastOne, x.real], {}, "at_most_real");
}

/** round-half-up(P%·n) kept (or n minus that, for drop) with no floor of one: for set-restricted stages. */
function setCount(b: NodeBuilder, n: string, percent: number, drop: boolean): string {
  const rounded = shareDynamic(b, n, percent);
  return drop ? b.op("Sub", [n, rounded], {}, "remaining") : rounded;
}

/** FlowCut's adaptive_prune_ratio, per example (see the module comment). */
function flowcutCount(b: NodeBuilder, amount: { target: number; rpl: number }, x: CountInputs): string {
  const target = b.int64([amount.target], [1, 1], "target");
  if (amount.rpl === 0) return target;
  const a = x.clsAttention!();
  const p = b.op("Div", [a, b.reduce("ReduceSum", a, [1], 1)], {}, "attention_share");
  // p·ln p, with 0·ln 0 = 0 (padding has p = 0).
  const plogp = b.op(
    "Where",
    [b.op("Greater", [p, b.float([0], [], "zero")]), b.op("Mul", [p, b.op("Log", [p])]), b.float([0], [], "zero_term")],
    {},
    "p_log_p",
  );
  const entropy = b.op("Neg", [b.reduce("ReduceSum", plogp, [1], 1)], {}, "entropy");
  const n = b.op("Cast", [x.real], { to: 1 }, "n");
  const ratio = b.op("Div", [entropy, b.op("Log", [n])], {}, "entropy_ratio");
  const spread = b.op("Sub", [b.float([1], [], "one"), b.op("Mul", [ratio, ratio])], {}, "one_minus_ratio_sq");
  const excess = b.op("Sub", [n, b.float([amount.target], [], "target_f")], {}, "excess");
  const prune = b.op(
    "Mul",
    [b.op("Div", [excess, b.float([Math.sqrt(amount.rpl)], [], "sqrt_rpl")]), spread],
    {},
    "prune",
  );
  // torch .round() rounds half to even, as ONNX Round does.
  const pruneCount = b.op("Cast", [b.op("Round", [prune])], { to: 7 }, "prune_count");
  return b.op("Max", [b.op("Sub", [x.real, pruneCount]), target], {}, "flowcut_count");
}

export function selectAdaptive(b: NodeBuilder, ranked: string, count: string, prefix: number): AdaptiveSelection {
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
    const special = b.op(
      "Expand",
      [b.float(Array(prefix).fill(0), [1, prefix], "prefix_bias"), shape],
      {},
      "prefix_bias",
    );
    padBias = b.op("Concat", [special, padBias], { axis: 1 }, "pad_bias_all");
  }
  const isPad = b.op("Less", [padBias, b.float([0], [], "zero_bias")], {}, "is_padding");
  const realIndices = b.op("Where", [isPad, b.int64([-1], [], "none"), indices], {}, "real_positions");
  const counts = b.op("Add", [b.squeeze(count, [1]), b.int64([prefix], [1], "prefix")], {}, "kept_counts");
  return { indices, realIndices, padBias, counts };
}
