/**
 * Selections that keep whole groups: a grouped criterion's units (spatial-rows' grid rows) and,
 * inside an encoder that folds g consecutive tokens into one, whole g-token merge groups.
 */
import { selectFolded, selectGroups } from "../select-groups.js";
import { mergeNode, mergedRows, type KindFacts, type Refusal, type SelectionModule } from "./kind.js";
import { keepTensor } from "./top-k.js";

/** Merged encoders' rows have no single token to stand for the special prefix. */
function mergedPrefix(f: KindFacts): Refusal | undefined {
  if (!(f.fold || mergedRows(f)) || f.prefix === 0) return undefined;
  return {
    why: `the encoder output merges tokens (node '${mergeNode(f)}') and the model has ${f.prefix} special tokens in front; prunec cannot tell which merged token they join`,
    at: "position",
  };
}

export const groups: SelectionModule = {
  name: "groups",
  summary: "TopK over the groups' scores; every member of a kept group, ascending",
  check: (f) => {
    if (!f.groups) return undefined;
    const name = f.criterion.name;
    if (f.fold)
      return {
        why: `${name} keeps whole ${f.groups.unit}s, but the encoder output folds ${f.fold} consecutive tokens into one (node '${mergeNode(f)}'); stages inside this encoder keep whole ${f.fold}-token merge groups`,
        at: "criterion",
      };
    if (mergedRows(f))
      return {
        why: `${name} keeps whole ${f.groups.unit}s of tokens, but after this encoder the rows are merged tokens (node '${mergeNode(f)}'); use a per-token criterion, whose scores are averaged per merged token`,
        at: "criterion",
      };
    return undefined;
  },
  select: ({ b, scores, plan }) => {
    if (plan.keep === undefined || !plan.groups)
      throw new Error("grouped criteria need a static token count (checked by the plan)");
    return { indices: selectGroups(b, scores, plan.keep, plan.groups.members, plan.prefix), lowering: "index" };
  },
};

export const fold: SelectionModule = {
  name: "fold",
  summary: "TopK over the merge groups' mean scores; every token of a kept group, ascending",
  check: mergedPrefix,
  select: ({ b, scores, plan }) => {
    if (!plan.fold) throw new Error("fold selection without a fold (checked by the plan)");
    return { indices: selectFolded(b, scores, keepTensor(b, scores, plan), plan.fold), lowering: "index" };
  },
};
