/** The default selection: the K best-scoring prunable tokens, the special prefix in front, ascending (passes/select-topk.ts). */
import type { NodeBuilder } from "../builder.js";
import type { StagePlan } from "../../src/plan-types.js";
import { keepCountDynamic } from "../amount.js";
import { selectTopK } from "../select-topk.js";
import type { SelectionModule } from "./kind.js";
import { everyTokenAtFirst } from "../frames.js";

/** int64 [1]: the stage's budget in units, static when the token count is, else from the scores' width. */
export function keepTensor(b: NodeBuilder, scores: string, plan: StagePlan): string {
  if (plan.keep !== undefined) return b.int64([plan.keep], [1], "k");
  const n = b.slice(b.op("Shape", [scores]), 0, 1, 2);
  return keepCountDynamic(b, n, plan.percent, plan.drop);
}

export const topK: SelectionModule = {
  name: "top-k",
  summary: "TopK over the scores (ties to the lower position), re-sorted ascending, prefix in front",
  select: ({ b, ranked, scores, plan, ctx }) => {
    const k = keepTensor(b, scores, plan);
    // `across frames`: the first call keeps every token (passes/frames.ts).
    const count = ctx.frame ? everyTokenAtFirst(b, ctx.frame.first, scores, k) : k;
    return { indices: selectTopK(b, ranked, count, plan.prefix), lowering: "index" };
  },
};
