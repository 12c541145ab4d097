/**
 * Per-example counts on hybrid decoders (issue 16): padding in FRONT, as zero rows.
 *
 * A stage whose count differs per example pads each example to the batch's largest count. The
 * default lowering (passes/adaptive.ts) keeps extra real tokens as padding and masks them as keys
 * in every later attention. A linear-attention layer (Qwen3.5's gated delta-net, an `If` carrying
 * a conv and a recurrent state) has no keys to mask: any padding row changes its recurrence.
 *
 * What is exact instead, measured on the real Qwen3.5 export (test/hybrid-padding.test.ts): ZERO
 * rows placed before the whole prompt and masked in attention leave the last logits and every
 * conv/recurrent state bit-identical to the unpadded run. A zero row's projections are zero (no
 * biases), its RMS norm is zero, the causal conv and the zero-initialised recurrence stay zero
 * while only zero rows have been seen, and in a causal attention layer a front zero row sees only
 * masked zero rows (zero values). int8 DynamicQuantizeLinear's per-tensor range always includes 0,
 * so zero rows change neither the scale nor the zero point, and quantise exactly to the zero point.
 *
 * So such a stage's gathered stream holds, per example, its padding rows first (zeroed: the
 * gathered residual-stream rows, and the fused Skip norm's normalized output, are set to 0), then
 * its kept tokens in ascending position order. The padding bias, the exposed indices (−1 on
 * padding) and every side tensor gathered with the tokens follow the same row order (they are all
 * read at `indices`, which carries it).
 *
 * What prunec checks (`frontPaddingWhy`): every later layer is either linear attention as the
 * analysis recognises it (a named layer with a recurrent mixer and a residual block) or causal
 * com.microsoft.GroupQueryAttention, where the padding is masked as keys; each of their recorded
 * norms (the pre-norm, the norm leaving the layer) is an RMS norm without a bias, so a zero row
 * stays zero through it; the stage keeps no special prefix tokens (padding must precede every real
 * token). What rests on the measured fact, not on a proof: that the linear mixer, the MLPs and the
 * attention projections map zero rows to zero rows (no biases inside), that GroupQueryAttention
 * gives a query row whose every key is masked a zero output (zero values), and that the recurrent
 * states start at zero, which holds at the first call (prefill) only.
 *
 * Later calls (decode steps): the later layers' KV caches keep the padding rows (zero keys and
 * values), and the host's attention mask cannot say where they are. So where such a cache follows,
 * the plan requires `--kv-state` and the stage carries the slots' validity from call to call
 * (`carryPadState`), which masks them at every call. And only the first call prunes
 * (`firstCall`): zero rows after real ones would decay the recurrence (and shift the conv window),
 * so a later call keeps every token; a 1-token decode step keeps its token anyway. Without a later
 * KV cache (a model exported without one) the stage would have no state to tell the first call by,
 * so the plan refuses it rather than assume a single call.
 */
import type { TransformerInfo, LayerInfo } from "../src/analysis/transformer.js";
import type { Norm } from "../src/analysis/norms.js";
import type { NodeBuilder } from "./builder.js";

/** Whether a linear-attention layer follows layer `from − 1` (the stage then pads in front). */
export function linearFollows(model: TransformerInfo, from: number): boolean {
  return model.layers.slice(from).some((l) => l.kind === "linear-attention");
}

/** Why zero rows in front would not be exact through the layers from `from` on, or undefined. */
export function frontPaddingWhy(model: TransformerInfo, from: number, prefix: number): string | undefined {
  if (prefix > 0)
    return `the stage keeps ${prefix} special token(s) first, and padding rows must come before every real token`;
  for (const l of model.layers.slice(from)) {
    const why = layerWhy(l);
    if (why) return why;
  }
  return undefined;
}

function layerWhy(l: LayerInfo): string | undefined {
  const r = l.residual;
  if (l.kind !== "linear-attention" && l.core?.kind !== "GroupQueryAttention")
    return `layer ${l.index} (${l.kind}) is not causal com.microsoft.GroupQueryAttention, the only attention through which prunec keeps a zero row in front zero`;
  if (!r) return `layer ${l.index} (${l.kind}) has no residual block prunec found`;
  for (const norm of [r.norm, ...(r.outputNorm ? [{ node: r.outputNorm }] : [])]) {
    const why = biasedNorm(norm);
    if (why)
      return `layer ${l.index}'s norm ${norm.node.name || norm.node.opType} ${why}, so a zero padding row would not stay zero`;
  }
  return undefined;
}

/** Why a norm may map a zero row to a non-zero one (a mean-subtracting norm, or a bias), or undefined. */
function biasedNorm(norm: Pick<Norm, "node"> & Partial<Pick<Norm, "form">>): string | undefined {
  const n = norm.node;
  if (n.opType === "SkipSimplifiedLayerNormalization") return n.input[3] ? "adds a bias (input 3)" : undefined;
  if (n.opType === "SimplifiedLayerNormalization" || n.opType === "RMSNormalization") return undefined;
  if (norm.form === "rmsnorm-decomposed") return undefined;
  return `is ${n.opType}, not an RMS norm without bias`;
}

/** A per-example selection reordered so that each example's padding rows come first. */
export interface FrontPadded {
  /** int64 [B, K]: positions to gather at; padding rows first (any real position: they are zeroed). */
  indices: string;
  /** int64 [B, K]: the same with −1 on padding rows. */
  realIndices: string;
  /** float [B, K]: −1e9 on padding rows, 0 on kept tokens. */
  padBias: string;
  /** bool [B, K]: true on padding rows (the gathered stream is zeroed there). */
  padRows: string;
}

/**
 * Stable reorder of a padded selection (kept tokens ascending, padding scattered among them): the
 * padding rows first, then the kept tokens in the order they had.
 */
export function padsFirst(b: NodeBuilder, sel: { indices: string; realIndices: string; padBias: string }): FrontPadded {
  const isPad = b.op("Less", [sel.padBias, b.float([0], [], "zero_bias")], {}, "is_padding");
  const k = b.slice(b.op("Shape", [sel.indices]), 0, 1, 2);
  // Sort key: −1 for padding, the row number for a kept token; TopK breaks ties by the lower row.
  const key = b.op("Where", [isPad, b.int64([-1], [], "padding_key"), b.range(k, "rows")], {}, "pads_first_key");
  const [, order] = b.opN("TopK", [key, k], 2, { axis: -1, largest: 0, sorted: 1 });
  const reorder = (t: string, label: string) => b.op("GatherElements", [t, order!], { axis: 1 }, label);
  const padBias = reorder(sel.padBias, "pad_bias_first");
  return {
    indices: reorder(sel.indices, "positions_pads_first"),
    realIndices: reorder(sel.realIndices, "real_positions_pads_first"),
    padBias,
    padRows: b.op("Less", [padBias, b.float([0], [], "zero_bias")], {}, "padding_rows"),
  };
}

/** `gathered` [B, K, D] with the rows marked in `padRows` [B, K] set to 0 (of the stream's element type). */
export function zeroRows(b: NodeBuilder, gathered: string, padRows: string, elemType: number | undefined): string {
  let zero = b.float([0], [], "zero_row");
  if (elemType === undefined && b.opset >= 15) zero = b.op("CastLike", [zero, gathered], {}, "zero_row_typed");
  else if (elemType !== undefined && elemType !== 1) zero = b.op("Cast", [zero], { to: elemType }, "zero_row_typed");
  return b.op("Where", [b.unsqueeze(padRows, [2]), zero, gathered], {}, "zero_padding");
}

/**
 * How a per-example stage after layer `from − 1` pads: `after` (the default lowering: extra real
 * tokens after the kept ones, masked) or `front` (zero rows first, the later caches' slot validity
 * carried from call to call). The plan refuses `front` without a later KV cache or `--kv-state`.
 */
export function paddingMode(model: TransformerInfo, from: number): "after" | "front" {
  return linearFollows(model, from) ? "front" : "after";
}

/**
 * bool [1]: this call is the first (the carried validity's past is empty), where the recurrent
 * states start at zero. Later calls keep every token: zero rows after real ones would decay the
 * recurrence (a 1-token decode step keeps its token anyway).
 */
export function firstCall(b: NodeBuilder, stage: number): string {
  const past = b.slice(b.op("Shape", [padStateNames(stage).past]), 0, 1, 2);
  return b.op("Equal", [past, b.int64([0], [1], "empty")], {}, "first_call");
}

/** Later layers that keep a KV cache (the padding rows then stay in it for later calls). */
export function cachedAfter(model: TransformerInfo, from: number): number[] {
  return model.layers.slice(from).flatMap((l) => (l.cache ? [l.index] : []));
}

/** `--kv-state`: the validity pair of stage `stage`, fed back by the host like a cache. */
export function padStateNames(stage: number): { past: string; present: string; pastDim: string; presentDim: string } {
  return {
    past: `past_key_values.stage${stage}.prunec_valid`,
    present: `present.stage${stage}.prunec_valid`,
    pastDim: `prunec_stage${stage}_past`,
    presentDim: `prunec_stage${stage}_cache`,
  };
}

/**
 * The padding rows sit in the later layers' KV caches after the call that padded them, and the
 * host's attention mask cannot say where (it counts dense tokens). So the stage carries, per
 * example, the validity of every slot those caches hold: float [B, T] (1: a token later calls
 * attend to; 0: padding), the past's slots then this call's rows. Returns the key bias over all T
 * slots (−1e9 on padding), which every later cached layer adds at every call, and writes the
 * present validity under its output name.
 */
export function carryPadState(b: NodeBuilder, stage: number, padRows: string): string {
  const names = padStateNames(stage);
  const now = b.op("Cast", [b.op("Not", [padRows])], { to: 1 }, "rows_valid"); // [B,K']
  const slots = b.rename(b.op("Concat", [names.past, now], { axis: 1 }, "slots_valid"), names.present);
  return validityBias(b, slots, "padding_bias", "slots_bias");
}

/** A key bias from slot validity (1 valid, 0 not): (1 − valid)·−1e9, same shape; the labels name its constant and node. */
export function validityBias(b: NodeBuilder, valid: string, constant: string, label: string): string {
  return b.op("Mul", [b.op("Sub", [b.float([1], [], "one"), valid]), b.float([-1e9], [], constant)], {}, label);
}
