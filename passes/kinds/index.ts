/**
 * The stage kinds, registered the way criteria are (passes/registry.ts): the selection kinds that
 * choose the kept set, and the table of which options combine with which (./combinations.ts).
 * `chooseSelection` is where a keep/drop stage's lowering is decided, with the reason.
 */
import type { Scorer } from "../criterion.js";
import type { StagePlan } from "../../src/plan-types.js";
import type { SelectionKind } from "./combinations.js";
import type { SelectionModule, StageSetup } from "./kind.js";
import { topK } from "./top-k.js";
import { fold, groups } from "./groups.js";
import { greedy } from "./greedy.js";
import { adaptive } from "./adaptive.js";
import { floatKeys, floatKeysFor } from "./float-keys.js";

export const SELECTIONS: readonly SelectionModule[] = [topK, groups, fold, greedy, adaptive, floatKeys];

/** The selection kind of a planned stage (merge stages are planned as such; see src/plan-merge.ts). */
export function selectionKind(plan: StagePlan, scorer: Pick<Scorer, "kind">): SelectionKind {
  if (plan.merge) return "merge";
  if (scorer.kind === "select") return "greedy";
  if (plan.fold) return "fold";
  if (plan.groups) return "groups";
  if (plan.adaptive) return "adaptive";
  if (plan.encoder) return "after-encoder";
  return "top-k";
}

/**
 * The lowering of a keep/drop stage's selection, and, under `--target webgpu`, why it is not the
 * GPU-resident float-keys one when it is not (reported per stage, never silently replaced).
 */
export function chooseSelection(s: StageSetup): { module: SelectionModule; note?: string } {
  const kind = selectionKind(s.plan, s.scorer);
  const own: Partial<Record<SelectionKind, SelectionModule>> = { greedy, fold, groups };
  const module = own[kind];
  // Greedy selections unroll their loop for WebGPU themselves; groups and folds have the index lowering only.
  if (module) return { module, ...(s.options.target === "webgpu" && kind !== "greedy" ? { note: kind === "fold" ? "it keeps whole merge groups (index lowering)" : `it keeps whole ${s.plan.groups?.unit ?? "group"}s (index lowering)` } : {}) };
  const keys = s.options.target === "webgpu" ? floatKeysFor(s) : undefined;
  if (keys && "ok" in keys) return { module: floatKeys };
  const fallback = kind === "adaptive" ? adaptive : topK;
  return { module: fallback, ...(keys && "why" in keys ? { note: keys.why } : {}) };
}
