/**
 * `with recycle(grid: a)`, VFlowOpt's grid-group recycling (docs/language.md, "with recycle(grid)"):
 * what the plan proves before anything is emitted, and the static facts the lowering reads (each
 * prunable token's grid cell, the extra drop m). The count then differs per example (one kept
 * token per grid cell that holds dropped ones), so the stage is planned as a per-example count.
 */
import type { TransformerInfo } from "./analysis/transformer.js";
import type { AdaptiveAmount } from "../passes/adaptive.js";
import { linearFollows, cachedAfter } from "../passes/front-padding.js";
import { paddingUnmaskable } from "../passes/mask-recycle.js";

type Grid = Extract<AdaptiveAmount, { kind: "grid" }>;

/**
 * torch's `(p.float() / a).floor()` (VFlowOpt line 592): a float32 tensor divided by a Python float
 * computes in float32, so the quotient is rounded to float32 before the floor.
 */
export function gridCell(p: number, a: number): number {
  return Math.floor(Math.fround(Math.fround(p) / Math.fround(a)));
}

/** The stage's grid recycling, or why it cannot have it (a sentence after the option's name). */
export function planRecycleGrid(
  model: TransformerInfo,
  layer: number,
  tokensIn: number,
  prefix: number,
  keep: number,
  a: number,
): { ok: Grid } | { why: string } {
  const named = `'with recycle(grid: ${a})'`;
  const why = (text: string) => ({ why: `${named} ${text}` });
  if (!(a > 0) || !Number.isFinite(a)) return why("needs a cell size above 0 (in patches)");
  if (model.batchAxis !== 0 || model.tokenAxis !== 1)
    return why(
      "keeps a number of tokens that depends on the input, which prunec pads for [batch, tokens, hidden] streams only",
    );
  if (tokensIn !== model.tokens)
    return why(
      `groups tokens by their place in the patch grid, but an earlier stage already pruned it (${tokensIn} of ${String(model.tokens)} tokens enter this stage)`,
    );
  const grid = model.patchGrid;
  if (!grid || "why" in grid)
    return why(
      `groups tokens by their place in the patch grid, which prunec could not prove: ${grid?.why ?? "the model has no residual stream entering its first layer"}`,
    );
  const { rows, cols, conv } = grid.ok;
  const prunable = tokensIn - prefix;
  if (rows * cols !== prunable)
    return why(
      `groups tokens by their place in the ${rows}×${cols} patch grid of '${conv}', but ${prunable} prunable tokens enter this stage`,
    );
  // VFlowOpt line 576: int(L / (a*a)), in float64 as Python computes it.
  const extra = Math.trunc(prunable / (a * a));
  if (extra >= keep)
    return why(
      `drops ⌊${prunable}/${a}²⌋ = ${extra} more of the lowest-scored tokens beyond the stage's own, but the stage keeps only ${keep}: keep more or use a larger cell`,
    );
  if (linearFollows(model, layer + 1) || cachedAfter(model, layer + 1).length > 0)
    return why(
      "keeps a number of tokens that depends on the input; prunec pads such a count for layers without a KV cache or linear attention only so far",
    );
  const unmaskable = paddingUnmaskable(model, layer + 1);
  if (unmaskable)
    return why(
      `keeps a number of tokens that depends on the input, so batches pad and mask the padding in every later attention, but ${unmaskable}`,
    );
  const cellCols = gridCell(cols - 1, a) + 1;
  const cellRows = gridCell(rows - 1, a) + 1;
  const cells = Array.from(
    { length: prunable },
    (_, j) => gridCell(Math.floor(j / cols), a) * cellCols + gridCell(j % cols, a),
  );
  const cellCount = cellRows * cellCols;
  return { ok: { kind: "grid", keep, extra, cells, cellCount, size: a } };
}

/** The most tokens a grid-recycling stage can keep: K − m and one per cell, at most one per dropped token. */
export function gridBound(g: Grid, prunable: number): number {
  return g.keep - g.extra + Math.min(g.cellCount, prunable - g.keep + g.extra);
}
