/**
 * The contract of a stage kind's lowering. A keep/drop stage (passes/prune-stage.ts) prepares one
 * `StageSetup` (refreshed facts, the stream's names, what is read below, the criterion's scorer),
 * asks its selection kind for the kept positions, then hands them to the options (mask, recycle,
 * renumber) and to the one splice. Which kinds combine is declared in ./combinations.ts.
 */
import type { Graph, GraphProto, NodeProto } from "../../src/ir/graph.js";
import type { TransformerInfo } from "../../src/analysis/transformer.js";
import type { ResidualBlock } from "../../src/analysis/residual.js";
import type { StagePlan } from "../../src/plan-types.js";
import type { NodeBuilder } from "../builder.js";
import type { ScoreContext, Scorer } from "../criterion.js";
import type { SideInput } from "../carry-tokens.js";
import type { Lowering, StageEffect, StreamState } from "../stream-state.js";
import type { CriterionModule, TokenGroups } from "../criterion.js";
import type { SpatialMerge } from "../../src/analysis/merge.js";
import type { Dim } from "../../src/analysis/dims.js";
import type { StageOption } from "./combinations.js";

/** What a kind's plan-time check reads: the stage as resolved so far, before anything is emitted. */
export interface KindFacts {
  model: TransformerInfo;
  /** The stage's layer (the encoder's last layer for `after encoder`). */
  layer: number;
  criterion: CriterionModule;
  scorer: Scorer["kind"];
  groups: TokenGroups | undefined;
  /** Inside an encoder that folds g tokens into one: g. */
  fold: number | undefined;
  /** `after encoder`: the output the stage acts on (undefined when the model has none). */
  afterEncoder: boolean;
  /** The encoder's spatial merge (fold or pool), if any. */
  merge: SpatialMerge | undefined;
  prefix: number;
  tokensIn: Dim;
  options: ReadonlySet<StageOption>;
  /** `--kv-state`: a stage may carry which cache slots are padding from call to call. */
  kvState: boolean;
  /** Why the count differs per example, when it does, and how the amount was written. */
  perExample:
    | {
        what: string;
        adaptive: boolean;
        flowcut: boolean;
        afterAdaptive: boolean;
        /** The criterion's own count (`ownCount`) alone makes it differ: its budget is still one static count. */
        own: boolean;
        drop: boolean;
        amount: "percent" | "count" | "mass" | "above";
        keepText: string;
      }
    | undefined;
}

/** A plan-time refusal: the sentence, and which part of the stage's text it points at. */
export interface Refusal {
  why: string;
  at: "position" | "layer" | "criterion" | "amount";
}

/** A stage kind's plan-time check: undefined when the stage may have it (or it does not apply). */
export type KindCheck = (f: KindFacts) => Refusal | undefined;

/** The rows after the encoder are merged tokens (a fold or a pool), not tokens. */
export function mergedRows(f: Pick<KindFacts, "afterEncoder" | "model">): boolean {
  return f.afterEncoder && f.model.encoderOutput !== undefined && f.model.encoderOutput.per.kind !== "token";
}

/** The spatial merge's node, for messages ("?" when the model reports none). */
export function mergeNode(f: Pick<KindFacts, "merge">): string {
  return f.merge?.node ?? "?";
}

/**
 * A stage kind's lowering: the graph and the stream state as the earlier stages left them in, the
 * rewritten graph and what the stage did to the stream out (compile folds it into the next state).
 */
export type StageLowering = (
  graph: GraphProto,
  dense: TransformerInfo,
  plan: StagePlan,
  state: StreamState,
  options: LowerOptions,
) => { graph: GraphProto; effect: StageEffect };

export interface LowerOptions {
  opset: number;
  target: "cpu" | "webgpu";
  /** Emit the int64 kept positions (for --expose-indices) even when the lowering does not need them. */
  expose: boolean;
  /** `--kv-state`: carry which cache slots are padding from call to call (passes/front-padding.ts). */
  kvState: boolean;
  /** Bench only: every keep/drop stage keeps its first K' tokens by a static Slice (./oracle.ts). */
  oracle?: boolean;
}

/** Everything a keep/drop stage's kinds read, built once per stage on the current graph. */
export interface StageSetup {
  proto: GraphProto;
  g: Graph;
  /** The facts refreshed on this graph (src/analysis/refresh.ts), and the dense model's as analysed. */
  model: TransformerInfo;
  dense: TransformerInfo;
  plan: StagePlan;
  residual: ResidualBlock;
  tokenAxis: number;
  state: StreamState;
  options: LowerOptions;
  b: NodeBuilder;
  /** The tensor the stage replaces (the residual leaving the layer, or the encoder output) and the stream it reads. */
  r: string;
  stream: string;
  /** Output 0 of a fused Skip norm writing `r` as its output 3 (gathered at the same positions). */
  normalized: string | undefined;
  belowNodes: Set<NodeProto>;
  below: Set<string>;
  sides: SideInput[];
  batched: boolean;
  /** Tokens entering the stage, when static. */
  tokens: number | undefined;
  ctx: ScoreContext;
  scorer: Scorer;
  /** float [B, units] scores ("" for greedy selections) and the ranking key (already dropped tokens pushed down). */
  scores: string;
  ranked: string;
  gather(positions: string, source?: string): string;
}

/** The kept set a selection kind emitted. */
export interface Selection {
  /** int64 [B, K'] positions the stream is gathered at (absent when the kind gathered itself and nobody asked). */
  indices?: string;
  /** The stream gathered already (float-keys). */
  output?: string;
  /** The stream `indices` gather from, when the kind rewrote rows of the stage's input (grid recycling). */
  source?: string;
  /** What --expose-indices shows when it differs from `indices` (per-example counts: padding as −1). */
  exposed?: string;
  counts?: string;
  validBias?: string;
  /**
   * bool [B, K']: rows of the gathered stream that are padding to be zeroed (per-example counts
   * before a linear-attention layer: the padding comes first, as zero rows; passes/front-padding.ts).
   */
  zeroRows?: string;
  lowering: Lowering;
}

export interface SelectionModule {
  name: string;
  /** What the lowering emits, for docs and `--explain`. */
  summary: string;
  /** What the kind needs of the stage and the model, checked by the planner before anything is emitted. */
  check?: KindCheck;
  select(s: StageSetup): Selection;
}
