/**
 * `with renumber`: below the stage the kept tokens take positions 0..K'−1 (TransPrune's and
 * SparseVLM's references): positional side tensors (one token axis: position ids, rotary tables)
 * are read at rows 0..K'−1, masks (two token axes) at the kept rows. Flattened per-token tables
 * (M-RoPE's three position axes) have no contiguous numbering: refused.
 */
import { PrunecError } from "../../src/errors.js";
import { gatherSideInputs } from "../carry-tokens.js";
import type { StageSetup } from "./kind.js";

export function renumberedSides(s: StageSetup, indices: string, tokens: () => string): Map<string, string> {
  const { b, plan, sides, batched } = s;
  const where = `'with renumber' after layer ${plan.layer.index}`;
  const flat = sides.find((x) => x.flat);
  if (flat)
    throw new PrunecError(
      "apply",
      `${where}: the layers below read '${flat.tensor}', a rotary table with one row per example and token (multi-axis positions, as M-RoPE's), which has no contiguous renumbering`,
    );
  const positional = sides.filter((x) => x.axes.length === 1);
  if (!positional.length)
    throw new PrunecError(
      "apply",
      `${where}: the layers below read no per-token positions (position ids or rotary tables) to renumber`,
    );
  const k = b.slice(b.op("Shape", [indices]), 0, 1, 2);
  const counting = b.op(
    "Expand",
    [b.unsqueeze(b.range(k, "renumbered"), [0]), b.op("Shape", [indices])],
    {},
    "renumbered_rows",
  ); // [B,K']
  return new Map([
    ...gatherSideInputs(b, positional, counting, batched, tokens),
    ...gatherSideInputs(
      b,
      sides.filter((x) => x.axes.length !== 1),
      indices,
      batched,
      tokens,
    ),
  ]);
}
