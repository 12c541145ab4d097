/** Criteria that pick the kept set themselves (greedy max-min): the stage adds the prefix. */
import { withPrefix } from "../select-topk.js";
import { mergeNode, mergedRows, type SelectionModule } from "./kind.js";

export const greedy: SelectionModule = {
  name: "greedy",
  summary: "the criterion's own selection loop (unrolled under --target webgpu), prefix in front",
  check: (f) => {
    if (f.scorer !== "select") return undefined;
    const name = f.criterion.name;
    if (f.fold || mergedRows(f))
      return {
        why: `${name} picks single tokens, but ${f.afterEncoder ? "after" : "inside"} this encoder tokens are merged in groups (node '${mergeNode(f)}'); use a scoring criterion`,
        at: "criterion",
      };
    if (typeof f.tokensIn !== "number")
      return {
        why: `${name} needs a static token count (its selection loop runs a fixed number of steps); the model has ${String(f.tokensIn)} tokens`,
        at: "criterion",
      };
    return undefined;
  },
  select: ({ b, scorer, ctx, plan }) => {
    if (scorer.kind !== "select")
      throw new Error(`${plan.criterion.name} scores tokens; it has no selection of its own`);
    return { indices: withPrefix(b, scorer.select(ctx), plan.prefix), lowering: "index" };
  },
};
