/**
 * The stage kinds, registered the way criteria are (passes/registry.ts): the selection kinds that
 * choose the kept set, and the table of which options combine with which (./combinations.ts).
 * `chooseSelection` is where a keep/drop stage's lowering is decided, with the reason.
 */
import type { Scorer } from "../criterion.js";
import type { SelectionKind } from "./combinations.js";
import type { KindCheck, SelectionModule, StageSetup } from "./kind.js";
import { topK } from "./top-k.js";
import { fold, groups } from "./groups.js";
import { greedy } from "./greedy.js";
import { adaptive } from "./adaptive.js";
import { floatKeys, floatKeysFor } from "./float-keys.js";
import { afterEncoder } from "./after-encoder.js";
import { recycleGrid } from "./recycle-grid.js";
import { oracle } from "./oracle.js";

export const SELECTIONS: readonly SelectionModule[] = [
  topK,
  groups,
  fold,
  greedy,
  adaptive,
  afterEncoder,
  floatKeys,
  recycleGrid,
];

/**
 * The selection kinds' plan-time checks, in the order the planner runs them (before the options):
 * each refuses only where its kind applies. The adaptive kind's check runs after the options.
 */
export const SELECTION_CHECKS: readonly KindCheck[] = [afterEncoder, groups, fold, greedy].flatMap((k) =>
  k.check ? [k.check] : [],
);
export const COUNT_CHECK: KindCheck = (f) => adaptive.check?.(f);

/** What decides a stage's selection kind (the planner knows it before the plan is complete). */
export interface SelectionFacts {
  merge?: boolean;
  scorer: Scorer["kind"];
  fold?: number | undefined;
  groups?: unknown;
  encoder?: boolean | undefined;
  /** The count differs per example (`mass`, `above`, `of SET`, after such a stage). */
  perExample: boolean;
}

/** The selection kind of a stage: the first that applies, in this order. */
export function selectionKind(f: SelectionFacts): SelectionKind {
  if (f.merge) return "merge";
  if (f.scorer === "select") return "greedy";
  if (f.fold) return "fold";
  if (f.groups) return "groups";
  if (f.encoder) return "after-encoder";
  if (f.perExample) return "adaptive";
  return "top-k";
}

/**
 * The lowering of a keep/drop stage's selection, and, under `--target webgpu`, why it is not the
 * GPU-resident float-keys one when it is not (reported per stage, never silently replaced).
 */
export function chooseSelection(s: StageSetup): { module: SelectionModule; note?: string } {
  const { plan } = s;
  if (s.options.oracle) return { module: oracle };
  const kind = selectionKind({
    merge: plan.merge !== undefined,
    scorer: s.scorer.kind,
    fold: plan.fold,
    groups: plan.groups,
    encoder: plan.encoder !== undefined,
    perExample: plan.adaptive !== undefined,
  });
  const own: Partial<Record<SelectionKind, SelectionModule>> = { greedy, fold, groups };
  const module = own[kind];
  // Greedy selections unroll their loop for WebGPU themselves; groups and folds have the index lowering only.
  if (module)
    return {
      module,
      ...(s.options.target === "webgpu" && kind !== "greedy"
        ? {
            note:
              kind === "fold"
                ? "it keeps whole merge groups (index lowering)"
                : `it keeps whole ${plan.groups?.unit ?? "group"}s (index lowering)`,
          }
        : {}),
    };
  const keys = s.options.target === "webgpu" ? floatKeysFor(s) : undefined;
  // `with recycle(grid: a)`: its own per-example count (passes/kinds/recycle-grid.ts).
  if (plan.adaptive?.kind === "grid")
    return { module: recycleGrid, ...(keys && "why" in keys ? { note: keys.why } : {}) };
  if (keys && "ok" in keys) return { module: floatKeys };
  const fallback = plan.adaptive ? adaptive : topK;
  return { module: fallback, ...(keys && "why" in keys ? { note: keys.why } : {}) };
}
