/**
 * global-attn (HiPrune's score, methods.md §4): g_j = mean over heads of the mean over all queries
 * (CLS included when present) of layer L's attention probabilities to token j. Works without CLS.
 */
import type { CriterionModule } from "../criterion.js";
import { keyScores, probabilitiesUnavailable } from "./attention-map.js";

export const globalAttn: CriterionModule = {
  name: "global-attn",
  summary: "column mean of the attention probabilities over all queries, mean over heads (HiPrune's score)",
  args: {},
  needs: "attention probabilities in the graph (MatMul + Softmax attention); no CLS needed",
  unsupported: (_model, layer) => probabilitiesUnavailable(layer),
  score: ({ b, layer, prefix }) => keyScores(b, layer, prefix, (probs, axis) => b.reduceMean(probs, [axis], 1)),
};
