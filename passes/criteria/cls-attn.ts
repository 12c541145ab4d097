/**
 * cls-attn (FasterVLM, methods.md §1): s_j = mean over heads of layer L's attention probability
 * from the CLS query (row 0) to token j, over the prunable tokens only. Probabilities are the
 * softmax over all keys, not renormalised after removing CLS.
 */
import type { CriterionModule } from "../criterion.js";
import type { TransformerInfo } from "../../src/analysis/transformer.js";
import { attentionOf, clsRowScores } from "../attention/attention-map.js";

/** Why a model has no CLS row to read, or undefined. */
export function clsUnavailable(model: TransformerInfo): string | undefined {
  if (model.cls.present) return undefined;
  return "the model has no CLS token (no learned token is concatenated in front of the patch tokens); use a criterion that does not need one";
}

export const clsAttn: CriterionModule = {
  name: "cls-attn",
  paddingSafe: true,
  summary: "mean over heads of the CLS query's attention probabilities to each token (FasterVLM)",
  args: {},
  needs: "a CLS token; attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention)",
  prepare({ model, layer }) {
    const cls = clsUnavailable(model);
    if (cls) return { why: cls };
    const attention = attentionOf(layer);
    if ("why" in attention) return attention;
    return { ok: { kind: "score", score: ({ b, prefix }) => clsRowScores(b, attention.ok, prefix) } };
  },
};
