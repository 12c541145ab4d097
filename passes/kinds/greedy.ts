/** Criteria that pick the kept set themselves (greedy max-min): the stage adds the prefix. */
import { withPrefix } from "../select-topk.js";
import type { SelectionModule } from "./kind.js";

export const greedy: SelectionModule = {
  name: "greedy",
  summary: "the criterion's own selection loop (unrolled under --target webgpu), prefix in front",
  select: ({ b, scorer, ctx, plan }) => {
    if (scorer.kind !== "select") throw new Error(`${plan.criterion.name} scores tokens; it has no selection of its own`);
    return { indices: withPrefix(b, scorer.select(ctx), plan.prefix), lowering: "index" };
  },
};
