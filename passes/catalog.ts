/**
 * The criteria of the language (design card and methods.md) that have no compiler module yet.
 * Declaring them here lets every spec the language allows parse and be checked (names, argument
 * names and types, required token sets); `compile` and `check` reject them with a clear message
 * until their module lands. An implemented criterion moves out of this list into its own module.
 */
import type { CriterionInfo } from "../grammar/registry.js";

export interface CatalogEntry extends CriterionInfo {
  /** Token sets the criterion reads (e.g. the instruction tokens that IGA's queries come from). */
  requiresSets?: string[];
  /** Which reference method it follows (methods.md section). */
  reference: string;
}

export const PLANNED: readonly CatalogEntry[] = [];
