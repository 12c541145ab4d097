/**
 * `across frames` (issue 17): a stream stage whose criterion reads what the previous call of the
 * model left, for models run once per video frame or control step (EVS, methods.md §31).
 *
 * The state travels as a pair the host feeds back like a KV cache:
 * `past_key_values.stageN.prunec_frame` (input) → `present.stageN.prunec_frame` (output), float
 * [batch, rows, …] (the criterion's `frames.dims`; EVS: [batch, tokens, hidden], the stage's input
 * rows, unpruned). A host that feeds every `present.*` back as `past_key_values.*` (src/generate.ts,
 * transformers.js) carries it. The first call is told by an empty past: [batch, 0, …], as for the
 * other pairs (docs/kv-cache.md), and keeps every token (EVS's first frame, kept whole).
 *
 * Invariant: at every call after the first, the past is the previous call's present (same batch,
 * same token count): each example of a batch is its own sequence of frames.
 */
import type { GraphProto } from "../src/ir/graph.js";
import type { Dim } from "../src/analysis/dims.js";
import { shallowCopy } from "../src/ir/copy.js";
import { batchDim, valueInfo } from "../src/ir/value-info.js";
import type { NodeBuilder } from "./builder.js";

/** float: the state's element type (onnx TensorProto.FLOAT). */
const FLOAT = 1;

/** The state pair of stage `stage`, and the name of its past's row dimension. */
export function frameStateNames(stage: number): { past: string; present: string; pastDim: string } {
  return {
    past: `past_key_values.stage${stage}.prunec_frame`,
    present: `present.stage${stage}.prunec_frame`,
    pastDim: `prunec_stage${stage}_frame_past`,
  };
}

/** The stage's view of its state: the past input, and bool [1] true at the first call (the past has 0 rows). */
export function frameInputs(b: NodeBuilder, stage: number): { past: string; first: string } {
  const past = frameStateNames(stage).past;
  const rows = b.slice(b.op("Shape", [past]), 0, 1, 2);
  return { past, first: b.op("Equal", [rows, b.int64([0], [1], "no_rows")], {}, "first_frame") };
}

/**
 * float [B, N, D]: the previous call's rows at the positions of `current` [B, N, D], or `current`
 * itself at the first call (an empty past): the first N rows of past ++ current. No `If`: the
 * comparison runs at every call, and the first call's result is replaced by the first-frame rule.
 */
export function previousRows(b: NodeBuilder, past: string, current: string): string {
  const n = b.slice(b.op("Shape", [current]), 0, 1, 2);
  const both = b.op("Concat", [past, current], { axis: 1 }, "past_then_current");
  return b.op("Slice", [both, b.int64([0], [1], "zero"), n, b.int64([1], [1], "rows_axis")], {}, "previous_rows");
}

/** int64 [1]: every scored unit (the scores' width) at the first call, else `k`. */
export function everyTokenAtFirst(b: NodeBuilder, first: string, scores: string, k: string): string {
  const all = b.slice(b.op("Shape", [scores]), 0, 1, 2);
  return b.op("Where", [first, all, k], {}, "keep_all_at_first_frame");
}

/** Writes the criterion's next state `next` (float, any type cast to float) as the stage's present output name. */
export function writePresent(b: NodeBuilder, stage: number, next: string): string {
  return b.rename(b.op("Cast", [next], { to: FLOAT }, "frame_state"), frameStateNames(stage).present);
}

/** The graph with the stage's past input declared: float [batch, prunec_stageN_frame_past, …dims]. */
export function withFramePast(graph: GraphProto, stage: number, dims: readonly (Dim | undefined)[]): GraphProto {
  const names = frameStateNames(stage);
  const shape = [batchDim(graph) ?? "batch", names.pastDim, ...dims.slice(1)];
  return shallowCopy(graph, { input: [...graph.input, valueInfo(names.past, FLOAT, shape)] });
}

/** The graph with the stage's present output declared: float [batch, …dims]. */
export function withFramePresent(graph: GraphProto, stage: number, dims: readonly (Dim | undefined)[]): GraphProto {
  const shape = [batchDim(graph) ?? "batch", ...dims];
  return shallowCopy(graph, { output: [...graph.output, valueInfo(frameStateNames(stage).present, FLOAT, shape)] });
}
