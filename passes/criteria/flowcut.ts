/**
 * flowcut (FlowCut, methods.md §6; `TungChintao/FlowCut`, flowcut/modeling_clip_flowcut.py and
 * flowcut/utils_flowcut.py) as a fixed-schedule criterion. Per layer l, over the prunable keys j:
 *
 *   a_j = mean_h A[h,0,j]                    CLS row of the softmax over all keys (CLS included),
 *                                            sliced to the prunable keys after the softmax
 *   σ_j = mean_h softmax_k(v_cls·v_k)[j]     unscaled value-value softmax over all keys (CLS
 *                                            included), sliced the same way
 *   s_j = (a_j/Σa + σ_j/Σσ)·‖mean_h v_j‖₁    sums over the prunable keys only
 *
 * and the running average c ← 0.5·c + 0.5·s starts with c = s at the first layer scored. CLS is
 * not in the scores (the reference slices [:, 1:] before compute_score).
 *
 * Layers averaged: firstLayer..L, every layer that saw this stage's input tokens. The reference
 * starts at layer 0 and carries c across its pruning steps (gathered to the kept tokens); here a
 * stage after another stage restarts the average at the layer after the previous stage, since the
 * earlier layers' scores (or a stage with another criterion) are not available to it.
 *
 * The count is the stage's amount (fixed schedule); the reference's entropy-adaptive count
 * (dynamic K) is not implemented.
 */
import type { CriterionModule, Prepared, ScoreContext, Scorer, StageFacts } from "../criterion.js";
import type { NodeBuilder } from "../builder.js";
import {
  attentionOf,
  clsRowScores,
  keyScores,
  values,
  valuesOf,
  type Attention,
  type Values,
} from "../attention/attention-map.js";
import { clsUnavailable } from "./cls-attn.js";

/** x / Σ_j x_j over the prunable keys (axis 1 of [B,Np]). */
function normalised(b: NodeBuilder, x: string): string {
  return b.op("Div", [x, b.reduce("ReduceSum", x, [1], 1)], {}, "normalise");
}

/** What one layer's score reads: its attention (the CLS row) and its values. */
interface FlowLayer {
  attention: Attention;
  values: Values;
}

/** s for one layer, [B,Np]. */
function layerScore(b: NodeBuilder, layer: FlowLayer, prefix: number, keyBias: string | undefined): string {
  const relation = normalised(b, clsRowScores(b, layer.attention, prefix)); // a/Σa
  const v = values(b, layer.values); // [B,H,N,D]
  const vCls = b.slice(v, 2, 0, 1); // [B,H,1,D]
  const vT = b.op("Transpose", [v], { perm: [0, 1, 3, 2] }); // [B,H,D,N]
  let semanticWeight = b.op("MatMul", [vCls, vT], {}, "value_similarity"); // [B,H,1,N], unscaled
  // Padding and masked tokens are not keys of this softmax (they are not in the batch-1 stream).
  if (keyBias) semanticWeight = b.op("Add", [semanticWeight, b.unsqueeze(keyBias, [1, 2])], {}, "skip_padding");
  const semanticAttn = b.op("Softmax", [semanticWeight], { axis: -1 }, "value_softmax");
  const semantic = normalised(
    b,
    keyScores(b, semanticAttn, prefix, (p) => p),
  ); // σ/Σσ
  const meanValue = b.reduceMean(v, [1], 0); // [B,N,D]
  const l1 = b.reduce("ReduceSum", b.op("Abs", [meanValue]), [2], 0); // [B,N]
  const magnitude = b.slice(l1, 1, prefix); // [B,Np]
  return b.op("Mul", [b.op("Add", [relation, semantic]), magnitude], {}, "layer_score");
}

function prepare({ model, layer, firstLayer, args }: StageFacts): Prepared<Scorer> {
  const adaptive = Number(args["adaptive"] ?? 0);
  if (adaptive !== 0 && adaptive !== 1) return { why: `adaptive must be 0 or 1, not ${adaptive}` };
  const cls = clsUnavailable(model);
  if (cls) return { why: cls };
  const layers: FlowLayer[] = [];
  for (const info of model.layers.slice(firstLayer, layer.index + 1)) {
    const attention = attentionOf(info);
    if ("why" in attention) return { why: `it averages layers ${firstLayer}..${layer.index}, and ${attention.why}` };
    // Materialized probabilities come with a P·V MatMul whose right input is the values; fused
    // attention (probabilities recomputed) reads them from the op's value input.
    const v = valuesOf(attention.ok);
    if ("why" in v) return { why: `it averages layers ${firstLayer}..${layer.index}, and ${v.why}` };
    layers.push({ attention: attention.ok, values: v.ok });
  }
  return { ok: { kind: "score", score: (ctx) => score(ctx, layers) } };
}

/** The running average over `layers` (firstLayer..L, in order), [B,Np]. */
function score({ b, prefix, keyBias, firstLayer, layer: stage }: ScoreContext, layers: FlowLayer[]): string {
  const [first, ...rest] = layers;
  // No layer only when a stage repeats an earlier stage's layer, which the plan rejects after asking (layer order).
  if (!first)
    throw new Error(
      `internal: flowcut after layer ${stage.index} has no layer to average from layer ${firstLayer} (the plan rejects stages out of layer order)`,
    );
  let c = layerScore(b, first, prefix, keyBias);
  if (!rest.length) return c;
  const half = b.float([0.5], [1], "half");
  for (const layer of rest) {
    const s = layerScore(b, layer, prefix, keyBias);
    c = b.op("Add", [b.op("Mul", [c, half]), b.op("Mul", [s, half])], {}, "running_average");
  }
  return c;
}

export const flowcut: CriterionModule = {
  name: "flowcut",
  paddingSafe: true,
  summary:
    "CLS attention plus value-norm information flow, running average across the layers since the previous stage (FlowCut, methods.md §6)",
  args: {
    adaptive: {
      type: "integer",
      default: 0,
      doc: "1: FlowCut's entropy-based count per example, down to the stage's `keep K tokens` at the schedule's last adaptive stage",
    },
  },
  needs:
    "a CLS token; attention probabilities and values (MatMul + Softmax, or recomputed behind MultiHeadAttention) at every layer since the previous stage",
  prepare,
};
