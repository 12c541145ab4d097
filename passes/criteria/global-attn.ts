/**
 * global-attn (HiPrune's score, methods.md §4): g_j = mean over heads of the mean over all queries
 * (CLS included when present) of layer L's attention probabilities to token j. Works without CLS.
 */
import type { CriterionModule } from "../criterion.js";
import type { LayerInfo } from "../../src/analysis/transformer.js";
import type { NodeBuilder } from "../builder.js";
import { keyScores, probabilities, probabilitiesUnavailable } from "../attention/attention-map.js";

/** g for `layer`'s prunable keys, [B,Np]. */
export function globalScores(b: NodeBuilder, layer: LayerInfo, prefix: number): string {
  return keyScores(b, probabilities(b, layer, "all"), prefix, (probs, axis) => b.reduceMean(probs, [axis], 1));
}

export const globalAttn: CriterionModule = {
  name: "global-attn",
  summary: "column mean of the attention probabilities over all queries, mean over heads (HiPrune's score)",
  args: {},
  needs: "attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention); no CLS needed",
  unsupported: ({ layer }) => probabilitiesUnavailable(layer),
  score: ({ b, layer, prefix }) => globalScores(b, layer, prefix),
};
