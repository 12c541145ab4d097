/**
 * The arguments each `with` option takes (`with restore(layer: 8)`), declared as criteria declare
 * theirs (grammar/registry.ts `ArgInfo`), so to-ir.ts checks both with the same rules and messages.
 * The grammar owns this table because it owns the option names (ir.ts `STAGE_OPTIONS`).
 */
import type { StageOption } from "./ir.js";
import type { ArgInfo } from "./registry.js";

export const OPTION_ARGS: Readonly<Record<StageOption, Readonly<Record<string, ArgInfo>>>> = {
  recycle: {
    grid: {
      type: "number",
      optional: true,
      doc: "VFlowOpt's grid-group recycling: the cell size a in patches; the stage drops ⌊Np/a²⌋ more of its lowest-scored tokens, and each grid cell (⌊row/a⌋, ⌊col/a⌋) holding dropped tokens gives their score-weighted mean to its best-scored one, which is kept. Without it: one appended mean of every dropped token",
    },
  },
  mask: {},
  renumber: {},
  restore: {
    layer: {
      type: "integer",
      optional: true,
      doc: "the layer at whose output the dropped tokens come back (negative counts from the end); the layers after it compute every token. Default: the last layer",
    },
  },
};
