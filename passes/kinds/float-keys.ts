/**
 * `--target webgpu`'s selection: TopK and the gather on float keys, GPU-resident
 * (passes/select-gather-float.ts). It orders one static count of batch-first tokens and gathers the
 * stream alone; anything else keeps the index lowering, whose int64 arithmetic onnxruntime-web runs
 * on the CPU, and the stage says why.
 */
import { selectAndGatherFloat } from "../select-gather-float.js";
import { withPrefix } from "../select-topk.js";
import type { SelectionModule, StageSetup } from "./kind.js";

/** Whether float keys can serve the stage (its static counts), or why not. */
export function floatKeysFor(
  s: Pick<StageSetup, "model" | "plan" | "tokens" | "sides" | "state" | "normalized">,
): { why: string } | { ok: { tokens: number; keep: number } } {
  const why = (text: string) => ({ why: text });
  const { model, plan, tokens, sides } = s;
  if (model.batchAxis !== 0)
    return why(model.batchAxis === undefined ? "the stream has no batch axis" : "the stream is sequence-first");
  if (plan.keep === undefined) return why("the count differs per example");
  if (plan.frames)
    return why("'across frames' keeps every token at the first call, so its count changes from call to call");
  if (tokens === undefined) return why("the token count is symbolic");
  if (sides.length)
    return why(
      `the layers below read per-token tensors (${sides
        .map((x) => `'${x.tensor}'`)
        .sort()
        .join(", ")}) that are gathered by index`,
    );
  if (plan.mask) return why("'with mask' builds its key bias from the kept indices");
  if (plan.recycle) return why("'with recycle' needs the kept indices");
  if (s.state.sets.size) return why("token sets follow the kept indices");
  if (s.normalized) return why("the fused skip norm's normalized output is gathered by index too");
  if (plan.restore) return why("'with restore' scatters the kept rows back by their int64 positions");
  return { ok: { tokens, keep: plan.keep } };
}

export const floatKeys: SelectionModule = {
  name: "float-keys",
  summary: "TopK on float keys and a one-hot MatMul gather, no int64 arithmetic (WebGPU-resident)",
  select: (s) => {
    const counts = floatKeysFor(s);
    if ("why" in counts) throw new Error(`float keys chosen where they cannot serve: ${counts.why}`);
    const { b, plan } = s;
    const sel = selectAndGatherFloat(
      b,
      s.scores,
      s.stream,
      counts.ok.tokens - plan.prefix,
      counts.ok.keep,
      plan.prefix,
    );
    return {
      output: sel.output,
      ...(s.options.expose ? { indices: withPrefix(b, b.squeeze(sel.positions, [2]), plan.prefix) } : {}),
      lowering: "float-keys",
    };
  },
};
