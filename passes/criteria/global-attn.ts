/**
 * global-attn (HiPrune's score, methods.md §4): g_j = mean over heads of the mean over all queries
 * (CLS included when present) of layer L's attention probabilities to token j. Works without CLS.
 */
import type { CriterionModule } from "../criterion.js";
import type { NodeBuilder } from "../builder.js";
import { attentionOf, keyScores, probabilities, type Attention } from "../attention/attention-map.js";

/** g for the layer's prunable keys, [B,Np]. */
export function globalScores(b: NodeBuilder, attention: Attention, prefix: number): string {
  return keyScores(b, probabilities(b, attention, "all"), prefix, (probs, axis) => b.reduceMean(probs, [axis], 1));
}

export const globalAttn: CriterionModule = {
  name: "global-attn",
  summary: "column mean of the attention probabilities over all queries, mean over heads (HiPrune's score)",
  args: {},
  needs: "attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention); no CLS needed",
  prepare({ layer }) {
    const attention = attentionOf(layer);
    if ("why" in attention) return attention;
    return { ok: { kind: "score", score: ({ b, prefix }) => globalScores(b, attention.ok, prefix) } };
  },
};
