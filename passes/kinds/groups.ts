/**
 * Selections that keep whole groups: a grouped criterion's units (spatial-rows' grid rows) and,
 * inside an encoder that folds g consecutive tokens into one, whole g-token merge groups.
 */
import { selectFolded, selectGroups } from "../select-groups.js";
import type { SelectionModule } from "./kind.js";
import { keepTensor } from "./top-k.js";

export const groups: SelectionModule = {
  name: "groups",
  summary: "TopK over the groups' scores; every member of a kept group, ascending",
  select: ({ b, scores, plan }) => {
    if (plan.keep === undefined || !plan.groups) throw new Error("grouped criteria need a static token count (checked by the plan)");
    return { indices: selectGroups(b, scores, plan.keep, plan.groups.members, plan.prefix), lowering: "index" };
  },
};

export const fold: SelectionModule = {
  name: "fold",
  summary: "TopK over the merge groups' mean scores; every token of a kept group, ascending",
  select: ({ b, scores, plan }) => {
    if (!plan.fold) throw new Error("fold selection without a fold (checked by the plan)");
    return { indices: selectFolded(b, scores, keepTensor(b, scores, plan), plan.fold), lowering: "index" };
  },
};
