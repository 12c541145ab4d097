/**
 * The bench's oracle (issue 19): the stage keeps its first K' tokens (prefix included) by a static
 * Slice, with no scores and no selection, so `prunec bench` can set the measured latency against
 * what the same token counts cost when choosing them is free ("measured / oracle" is prunec's own
 * cost; "oracle / FLOPs-ideal" is what the runtime makes of fewer FLOPs). Never for shipping: the
 * kept tokens are not the criterion's. Only static counts (the Slice's end is a constant).
 */
import type { SelectionModule, StageSetup } from "./kind.js";

/** Why the oracle cannot stand in for this stage, or undefined. */
export function oracleWhy(s: Pick<StageSetup, "plan" | "tokens">): string | undefined {
  // Only what a Slice of the first K' rows reproduces in cost: one static count, nothing kept beside the rows.
  const { plan } = s;
  if (plan.keep === undefined || s.tokens === undefined || plan.adaptive || plan.merge || plan.mask || plan.recycle)
    return `stage ${plan.stage} keeps a count known only at run time, or masks, merges or recycles: the oracle is a static slice`;
  if (plan.restore || plan.frames || plan.ofSet)
    return `stage ${plan.stage} restores, carries state across frames or keeps a set's tokens: no static slice stands for it`;
  if (plan.fold || plan.groups || plan.encoder) return `stage ${plan.stage} keeps groups or acts after the encoder`;
  return undefined;
}

export const oracle: SelectionModule = {
  name: "oracle",
  summary: "bench only: the first K' tokens by a static Slice (no scores, no selection)",
  select: (s) => {
    const why = oracleWhy(s);
    if (why) throw new Error(`oracle: ${why}`);
    const { b, plan, stream, tokenAxis } = s;
    const kept = plan.prefix + plan.keep!;
    const output = b.op(
      "Slice",
      [
        stream,
        b.int64([0], [1], "oracle_start"),
        b.int64([kept], [1], "oracle_end"),
        b.int64([tokenAxis], [1], "oracle_axis"),
      ],
      {},
      "oracle_slice",
    );
    // Positions only where something reads them (side tensors below, --expose-indices): 0..K'−1.
    if (!s.sides.length && !s.options.expose && !s.state.sets.size) return { output, lowering: "index" };
    const range = b.int64(
      Array.from({ length: kept }, (_, i) => i),
      [1, kept],
      "oracle_positions",
    );
    const batch = b.slice(b.op("Shape", [stream]), 0, 0, 1);
    const indices = b.op(
      "Expand",
      [range, b.op("Concat", [batch, b.int64([kept], [1])], { axis: 0 })],
      {},
      "oracle_rows",
    );
    return { indices, output, lowering: "index" };
  },
};
