/**
 * The residual stream as the stages leave it: what every stage reads and returns, so the compile
 * loop threads one value instead of a handful of loose variables. The dense graph's analysis facts
 * (TransformerInfo) say where the stream is; this says what the stages have done to it.
 *
 * Invariant: every tensor named here exists in the graph the state was returned with, and is
 * indexed by the stream's current tokens (after the last stage), except `stages[i].indices`,
 * numbered as stage i's input tokens.
 */
import type { NodeProto } from "../src/ir/graph.js";
import type { Dim } from "../src/analysis/dims.js";
import type { TokenAxes } from "./carry-tokens.js";
import type { RestoreRecord } from "./restore.js";

/**
 * `index`: int64 index arithmetic (TopK, re-sort, offsets), the default;
 * `float-keys`: WebGPU-resident selection (passes/select-gather-float.ts).
 */
export type Lowering = "index" | "float-keys";

/** What one stage left behind. */
export interface StageRecord {
  /** int64 [batch, K'] kept positions, numbered as the stage's input tokens (when emitted). */
  indices?: string;
  /** Per-example amounts: int64 [B] tokens each example keeps (prefix included). */
  counts?: string;
  lowering: Lowering;
  /** `--target webgpu` asked for the float-keys lowering and this stage could not have it: why. */
  loweringNote?: string;
  /** `with restore`: what the restore step scatters back (passes/restore.ts). */
  restore?: RestoreRecord;
}

export interface StreamState {
  /** Token axis and batch axis of the stream (batch undefined: a batch-less [N, D] stream). */
  tokenAxis: number;
  batchAxis: number | undefined;
  /** Tokens in the stream now (prefix included; a symbolic dimension when per input). */
  tokens: Dim | undefined;
  /** Per-token side tensors carried so far (name → token axes); each later stage gathers them again. */
  carried: ReadonlyMap<string, TokenAxes>;
  /** float [B, N]: −1e9 on tokens dropped by `with mask` stages (they stay in the stream). */
  maskBias?: string;
  /** float [B, N]: −1e9 on padding left by the previous stage when its count was per example. */
  validBias?: string;
  /** Token sets' membership bool [B, N] by set name; a set absent here still has its model input's layout. */
  sets: ReadonlyMap<string, string>;
  /** float [B, N]: a cascade criterion's running score of the stream's tokens (SpAtten), as the last stage left it. */
  cumulative?: string;
  /** One record per stage applied, in order. */
  stages: readonly StageRecord[];
  /** Every node the stages added, in order. */
  added: readonly NodeProto[];
}

export function initialState(
  tokenAxis: number,
  batchAxis: number | undefined,
  tokens: Dim | undefined,
  sets: ReadonlyMap<string, string>,
): StreamState {
  return { tokenAxis, batchAxis, tokens, carried: new Map(), sets, stages: [], added: [] };
}

/** What a stage kind's lowering reports; `advance` folds it into the state. */
export interface StageEffect {
  tokens: Dim | undefined;
  added: readonly NodeProto[];
  record: StageRecord;
  /** Side tensors this stage gathered (their new names), added to the carried ones. */
  carried: ReadonlyMap<string, TokenAxes>;
  /** The key bias of every `with mask` stage so far; undefined keeps the previous one. */
  maskBias?: string;
  /** This stage's padding bias; undefined clears it (padding never outlives the next stage). */
  validBias?: string;
  sets: ReadonlyMap<string, string>;
  /** The running score gathered with the kept tokens; undefined clears it. */
  cumulative?: string;
}

export function advance(state: StreamState, e: StageEffect): StreamState {
  const carried = new Map(state.carried);
  for (const [t, axes] of e.carried) carried.set(t, axes);
  const next: StreamState = {
    tokenAxis: state.tokenAxis,
    batchAxis: state.batchAxis,
    tokens: e.tokens,
    carried,
    sets: e.sets,
    stages: [...state.stages, e.record],
    added: [...state.added, ...e.added],
  };
  const maskBias = e.maskBias ?? state.maskBias;
  if (maskBias) next.maskBias = maskBias;
  if (e.validBias) next.validBias = e.validBias;
  if (e.cumulative) next.cumulative = e.cumulative;
  return next;
}
