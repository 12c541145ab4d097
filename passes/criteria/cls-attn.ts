/**
 * cls-attn (FasterVLM, methods.md §1): s_j = mean over heads of layer L's attention probability
 * from the CLS query (row 0) to token j, over the prunable tokens only. Probabilities are the
 * softmax over all keys, not renormalised after removing CLS.
 */
import type { CriterionModule } from "../criterion.js";
import { keyScores, probabilitiesUnavailable } from "./attention-map.js";

export const clsAttn: CriterionModule = {
  name: "cls-attn",
  summary: "mean over heads of the CLS query's attention probabilities to each token (FasterVLM)",
  args: {},
  needs: "a CLS token; attention probabilities in the graph (MatMul + Softmax attention)",
  unsupported(model, layer) {
    if (!model.cls.present) return "the model has no CLS token (no learned token is concatenated in front of the patch tokens); use a criterion that does not need one";
    return probabilitiesUnavailable(layer);
  },
  score: ({ b, layer, prefix }) =>
    keyScores(b, layer, prefix, (probs, axis) => b.op("Gather", [probs, b.int64([0], [1], "cls_row")], { axis }, "cls_query")),
};
