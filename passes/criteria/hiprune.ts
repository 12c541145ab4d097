/**
 * hiprune(object_layer, alpha) (HiPrune, methods.md §4; `Danielement321/HiPrune`,
 * LLaVA/llava/model/llava_arch.py: encode_images). With g^(l) = global attention of layer l over
 * the prunable keys (global-attn's score) and N' = the stage's static keep count:
 *
 *   n_a     = round(N'·alpha/5)               Python `round` (half to even), on (N'·alpha)/5 in doubles
 *   anchors = TopK(g^(object_layer), n_a)
 *   buffers = anchors ±1 and ±w (w = √Np, the grid width), clamped to [0, Np−1]; the union is
 *             `unique`d (no check for wrapping across rows, as in the reference)
 *   regs    = TopK(g^(L) − 1[anchor∪buffer], N' − |anchor∪buffer|)
 *   kept    = sort(anchor∪buffer ∪ regs)
 *
 * Emitted with static ops (methods.md "ONNX expressibility"): the anchor/buffer positions are
 * scattered into a zero mask (ScatterElements, duplicates write the same value so `unique` is not
 * needed), and the stage's TopK(N') runs on
 *
 *   score = g^(L) + 2·1[anchor∪buffer] + 2·1[anchor]
 *
 * Registers score in [0, 1] (g ≤ 1), buffers in [2, 3], anchors in [4, 5]. While
 * |anchor∪buffer| ≤ N' every anchor and buffer is kept and the remaining N' − |anchor∪buffer|
 * slots go to the best other tokens by g^(L): exactly the reference (ties to the lower index).
 *
 * Tiny budgets: |anchor∪buffer| can exceed N' (at most 5·n_a ≤ N'·alpha + 2.5, so with alpha ≤ 1
 * by at most 2 tokens), where the reference would call TopK with a negative count. prunec defines
 * that case instead of rejecting it (the plan does not know N' when it calls `prepare`): the
 * stage keeps every anchor (n_a ≤ N' since alpha ≤ 1), then the buffers with the highest g^(L).
 *
 * The grid width is √Np of the stage's input tokens. In a later stage those tokens are no longer
 * the full patch grid, so ±w are neighbours in the stage's token order, not in the image.
 */
import type { CriterionModule, Prepared, ScoreContext, Scorer, StageFacts } from "../criterion.js";
import { attentionOf, type Attention } from "../attention/attention-map.js";
import { globalScores } from "./global-attn.js";

/** Python's round() of a double: to the nearest integer, halves to the even one. */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const frac = x - f;
  if (frac > 0.5) return f + 1;
  if (frac < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** n_a = round(N'·alpha/5), evaluated as the reference does: (N'·alpha)/5 in doubles, Python round. */
export function anchorCount(keep: number, alpha: number): number {
  return roundHalfEven((keep * alpha) / 5);
}

/** The object layer named by the argument (negative counts from the end), or undefined when absent. */
function objectLayerIndex(facts: StageFacts): number | undefined {
  const v = facts.args["object_layer"];
  if (typeof v !== "number") return undefined;
  return v < 0 ? facts.model.layers.length + v : v;
}

function gridWidth(prunable: number): number | undefined {
  const w = Math.round(Math.sqrt(prunable));
  return w * w === prunable ? w : undefined;
}

/** What hiprune reads, proven: the grid, the stage layer's attention and the object layer's (undefined: the stage layer itself). */
interface HiPruneFacts {
  prunable: number;
  width: number;
  alpha: number;
  deep: Attention;
  object: Attention | undefined;
}

function prepare(facts: StageFacts): Prepared<Scorer> {
  const { model, layer, args, tokensIn, firstLayer, prefix } = facts;
  const alpha = Number(args["alpha"]);
  if (!(alpha > 0 && alpha <= 1)) {
    return {
      why: `alpha ${String(args["alpha"])} is not in (0, 1]: it is the fraction of the budget spent on anchors and their buffers (n_a = round(N'·alpha/5))`,
    };
  }
  if (typeof tokensIn !== "number")
    return {
      why: `the token count is symbolic (${String(tokensIn)}); hiprune needs a static one (its budget N' and grid width)`,
    };
  const prunable = tokensIn - prefix;
  const width = gridWidth(prunable);
  if (width === undefined)
    return {
      why: `its ${prunable} prunable input tokens do not form a square patch grid (the buffers are the anchors' ±1 and ±grid-width neighbours)`,
    };
  const deep = attentionOf(layer);
  if ("why" in deep) return deep;
  // `inspect` asks with the declared defaults only, where object_layer is absent: the stage layer is
  // all it can check. A spec must name the object layer.
  const written = args["object_layer"];
  const object = objectLayerIndex(facts);
  if (object === undefined)
    return {
      why: `it needs the object_layer argument (the layer whose global attention picks the anchors, in ${firstLayer}..${layer.index}), e.g. hiprune(object_layer: ${firstLayer})`,
    };
  const range = `${firstLayer}..${layer.index}`;
  const count = model.layers.length;
  const objectLayer = model.layers[object];
  if (object < 0 || !objectLayer)
    return {
      why: `object_layer ${String(written)} is out of range: the model has ${count} layers; it must be in ${range}`,
    };
  if (object < firstLayer) {
    return {
      why: `object_layer ${String(written)} is before layer ${firstLayer}, the first layer that sees this stage's input tokens (the previous stage prunes after layer ${firstLayer - 1}); it must be in ${range}`,
    };
  }
  if (object > layer.index) {
    return {
      why: `object_layer ${String(written)} comes after layer ${layer.index}, whose output this stage prunes (later layers have not run yet); it must be in ${range}`,
    };
  }
  const shallow = attentionOf(objectLayer);
  if ("why" in shallow) return { why: `object layer: ${shallow.why}` };
  const proven: HiPruneFacts = {
    prunable,
    width,
    alpha,
    deep: deep.ok,
    object: object === layer.index ? undefined : shallow.ok,
  };
  return { ok: { kind: "score", score: (ctx) => score(ctx, proven) } };
}

function score(ctx: ScoreContext, { prunable, width: w, alpha, deep: deepAttention, object }: HiPruneFacts): string {
  const { b, prefix, keep } = ctx;
  if (keep === undefined) throw new Error("hiprune needs a static token count (checked by the plan)");
  const deep = globalScores(b, deepAttention, prefix); // [B,Np]
  const nA = anchorCount(keep, alpha);
  if (nA === 0) return deep; // no anchors, no buffers: registers only
  const shallow = object ? globalScores(b, object, prefix) : deep;
  const [, anchors] = b.opN("TopK", [shallow, b.int64([nA], [1], "n_anchors")], 2, { axis: 1, largest: 1, sorted: 1 }); // [B,n_a]
  const shifted = (d: number) => b.op("Add", [anchors!, b.int64([d], [1], "offset")], {}, "neighbour");
  const candidates = b.op(
    "Concat",
    [anchors!, shifted(-1), shifted(1), shifted(-w), shifted(w)],
    { axis: 1 },
    "anchors_and_buffers",
  ); // [B,5·n_a]
  const clamped = b.op(
    "Clip",
    [candidates, b.int64([0], [], "first"), b.int64([prunable - 1], [], "last")],
    {},
    "clamp",
  );
  const zeros = b.op("ConstantOfShape", [b.op("Shape", [deep])], {}, "zero_mask"); // float 0 (the default value)
  const fill = (value: number, like: string) => b.op("Expand", [b.float([value], [1], "bonus"), b.op("Shape", [like])]);
  const buffered = b.op("ScatterElements", [zeros, clamped, fill(2, clamped)], { axis: 1 }, "mark_buffers");
  const marked = b.op("ScatterElements", [buffered, anchors!, fill(4, anchors!)], { axis: 1 }, "mark_anchors");
  return b.op("Add", [deep, marked], {}, "hiprune_score");
}

export const hiprune: CriterionModule = {
  name: "hiprune",
  usesBudget: true,
  summary:
    "anchors from an object layer, their ±1/±grid-width buffers, registers from the deep layer (HiPrune, methods.md §4)",
  args: {
    object_layer: {
      type: "integer",
      doc: "layer whose global attention picks the anchors: after the previous stage's layer, up to this stage's (negative counts from the end)",
    },
    alpha: {
      type: "number",
      default: 0.1,
      doc: "anchor fraction in (0, 1]: n_a = round(N'·alpha/5) (Python round, halves to even)",
    },
  },
  needs:
    "attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention) at the stage and object layers; a static token count forming a square patch grid",
  prepare,
};
