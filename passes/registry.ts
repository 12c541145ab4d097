/**
 * The one criterion registry: the parser validates names and arguments against it, `check` and
 * `compile` resolve stages with it, docs are generated from it.
 */
import { createRegistry, type CriterionRegistry } from "../grammar/registry.js";
import type { CriterionModule } from "./criterion.js";
import { PLANNED, type CatalogEntry } from "./catalog.js";
import { clsAttn } from "./criteria/cls-attn.js";
import { globalAttn } from "./criteria/global-attn.js";
import { norm } from "./criteria/norm.js";
import { random, uniform } from "./criteria/fixed-order.js";
import { hiprune } from "./criteria/hiprune.js";
import { flowcut } from "./criteria/flowcut.js";
import { clsAttnEnsemble } from "./criteria/cls-attn-ensemble.js";
import { pagerank } from "./criteria/pagerank.js";
import { redundancy } from "./criteria/redundancy.js";
import { fopru, spatialRows } from "./criteria/fopru.js";
import { diversity, kCenter } from "./criteria/diversity.js";
import { similarity } from "./criteria/similarity.js";
import { lastTokenAttn } from "./criteria/last-token-attn.js";
import { iga } from "./criteria/iga.js";
import { ttv, transprune } from "./criteria/ttv.js";
import { textAttn } from "./criteria/text-attn.js";
import { spatten } from "./criteria/spatten.js";
import { crops } from "./criteria/crops.js";
import { evs } from "./criteria/evs.js";
import { vlaPruner } from "./criteria/vla-pruner.js";
import { KV_PRESSES_HERE } from "./criteria/kv-presses.js";
import { expectedAttention } from "./criteria/expected-attention.js";
import type { KvCriterionModule } from "./kv/criterion.js";

/** Criteria prunec can compile. */
export const CRITERIA: readonly CriterionModule[] = [
  clsAttn,
  globalAttn,
  clsAttnEnsemble,
  hiprune,
  fopru,
  spatialRows,
  pagerank,
  redundancy,
  flowcut,
  diversity,
  kCenter,
  similarity,
  lastTokenAttn,
  iga,
  ttv,
  transprune,
  textAttn,
  norm,
  random,
  uniform,
  spatten,
  crops,
  evs,
  vlaPruner,
];

export { PLANNED };

/** Presses prunec can compile: scorers of KV-cache entries (`keep kv` stages; docs/kv-cache.md). */
export const KV_PRESSES: readonly KvCriterionModule[] = [...KV_PRESSES_HERE, expectedAttention];

// A name both kinds of stage use (random) is registered once, by the stream criterion (targets both).
export const registry: CriterionRegistry = createRegistry([
  ...CRITERIA,
  ...KV_PRESSES.filter((p) => !CRITERIA.some((c) => c.name === p.name)),
  ...PLANNED,
]);

export function criterionModule(name: string): CriterionModule | undefined {
  return CRITERIA.find((c) => c.name === name);
}

/** Criteria that rank attention heads (`keep heads` stages). */
export function headCriterionModule(
  name: string,
): (CriterionModule & Required<Pick<CriterionModule, "heads">>) | undefined {
  const c = criterionModule(name);
  return c?.heads ? { ...c, heads: c.heads } : undefined;
}

export function kvCriterionModule(name: string): KvCriterionModule | undefined {
  return KV_PRESSES.find((c) => c.name === name);
}

export function plannedCriterion(name: string): CatalogEntry | undefined {
  return PLANNED.find((c) => c.name === name);
}

/** Token sets a criterion needs declared in the spec. */
export function requiredSets(name: string): string[] {
  return criterionModule(name)?.requiresSets ?? plannedCriterion(name)?.requiresSets ?? [];
}
