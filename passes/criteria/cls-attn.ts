/**
 * cls-attn (FasterVLM, methods.md §1): s_j = mean over heads of layer L's attention probability
 * from the CLS query (row 0) to token j, over the prunable tokens only. Probabilities are the
 * softmax over all keys, not renormalised after removing CLS.
 */
import type { CriterionModule, ScoreContext } from "../criterion.js";
import type { LayerInfo, TransformerInfo } from "../../src/analysis/transformer.js";

function unsupported(model: TransformerInfo, layer: LayerInfo): string | undefined {
  if (!model.cls.present) return "the model has no CLS token (no learned token is concatenated in front of the patch tokens); use a criterion that does not need one";
  const core = layer.core;
  if (!core) return `layer ${layer.index} has no softmax attention (${layer.kind})`;
  if (!core.probs) {
    return `layer ${layer.index} uses fused com.microsoft.${core.kind} (node '${core.anchor.name}'), which does not expose attention probabilities; cls-attn behind fused attention is not supported yet`;
  }
  if (!layer.probsLayout) return `the layout of layer ${layer.index}'s attention probabilities ('${core.probs}') could not be determined`;
  if (layer.probsLayout === "batch*heads,q,k" && !layer.heads) return `the number of heads of layer ${layer.index} could not be determined`;
  return undefined;
}

function score(ctx: ScoreContext): string {
  const { b, layer, prefix } = ctx;
  const probs = layer.core!.probs!;
  switch (layer.probsLayout) {
    case "batch,heads,q,k": {
      const row = b.op("Gather", [probs, b.int64([0], [1], "cls_row")], { axis: 2 }, "cls_query"); // [B,H,1,N]
      const cols = b.slice(row, 3, prefix); // [B,H,1,Np]
      return b.reduceMean(cols, [1, 2], 0); // [B,Np]
    }
    case "heads,q,k": {
      const row = b.op("Gather", [probs, b.int64([0], [1], "cls_row")], { axis: 1 }, "cls_query"); // [H,1,N]
      const cols = b.slice(row, 2, prefix); // [H,1,Np]
      return b.reduceMean(cols, [0], 0); // [1,Np]: the batch-less model scores as batch 1
    }
    case "batch*heads,q,k": {
      const row = b.op("Gather", [probs, b.int64([0], [1], "cls_row")], { axis: 1 }, "cls_query"); // [B*H,1,N]
      const cols = b.slice(row, 2, prefix); // [B*H,1,Np]
      // PyTorch folds heads batch-major (b*H + h); Reshape's 0 copies Np from axis 2.
      const split = b.op("Reshape", [cols, b.int64([-1, layer.heads!, 0], [3], "heads_shape")], {}, "unfold_heads"); // [B,H,Np]
      return b.reduceMean(split, [1], 0); // [B,Np]
    }
    default:
      throw new Error(`cls-attn: unsupported layout ${String(layer.probsLayout)}`);
  }
}

export const clsAttn: CriterionModule = {
  name: "cls-attn",
  summary: "mean over heads of the CLS query's attention probabilities to each token (FasterVLM)",
  args: {},
  needs: "a CLS token; attention probabilities in the graph (MatMul + Softmax attention)",
  unsupported,
  score,
};
