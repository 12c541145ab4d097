/** The one criterion registry: the parser validates names and arguments against it, stages run it. */
import { createRegistry, type CriterionRegistry } from "../grammar/registry.js";
import type { CriterionModule } from "./criterion.js";
import { clsAttn } from "./criteria/cls-attn.js";

export const CRITERIA: readonly CriterionModule[] = [clsAttn];

export const registry: CriterionRegistry = createRegistry(CRITERIA);

export function criterionModule(name: string): CriterionModule | undefined {
  return CRITERIA.find((c) => c.name === name);
}
