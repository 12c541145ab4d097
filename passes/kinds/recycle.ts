/**
 * `with recycle`: the score-weighted mean of the dropped tokens is appended as one extra token
 * (passes/mask-recycle.ts `recycledToken`); its exposed position is −1 and it belongs to no set.
 */
import { PrunecError } from "../../src/errors.js";
import { keptOneHot, recycledToken } from "../mask-recycle.js";
import type { StageSetup } from "./kind.js";

/** The gathered stream with the recycled token appended, and the exposed positions with its −1. */
export function appendRecycled(s: StageSetup, output: string, indices: string): { output: string; indices: string } {
  const { b, plan, tokenAxis } = s;
  if (s.normalized)
    throw new PrunecError(
      "apply",
      `'with recycle' after layer ${plan.layer.index}: the stream leaves the layer through a fused skip normalization, whose normalized output has no recycled token`,
    );
  if (s.sides.length)
    throw new PrunecError(
      "apply",
      `'with recycle' after layer ${plan.layer.index}: the layers below read per-token tensors (${s.sides
        .map((x) => `'${x.tensor}'`)
        .sort()
        .join(", ")}) that have no row for the recycled token`,
    );
  const kept = keptOneHot(b, indices, s.stream, tokenAxis);
  const extra = recycledToken(b, s.stream, s.scores, kept, plan.prefix, s.batched);
  const withExtra = b.op("Concat", [output, extra], { axis: tokenAxis }, "with_recycled");
  // The exposed positions say which output token is the recycled one: -1.
  const batch = b.slice(b.op("Shape", [indices]), 0, 0, 1);
  const minusOne = b.op("Expand", [
    b.int64([-1], [1, 1], "recycled_position"),
    b.op("Concat", [batch, b.int64([1])], { axis: 0 }),
  ]);
  return { output: withExtra, indices: b.op("Concat", [indices, minusOne], { axis: 1 }, "kept_and_recycled") };
}
