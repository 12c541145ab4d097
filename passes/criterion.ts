/** The contract between a stage and the criterion module that scores its tokens. */
import type { Graph } from "../src/ir/graph.js";
import type { LayerInfo, TransformerInfo } from "../src/analysis/transformer.js";
import type { Dim } from "../src/analysis/dims.js";
import type { NodeBuilder } from "./builder.js";
import type { CriterionInfo } from "../grammar/registry.js";
import type { ArgValue } from "../grammar/ir.js";
import type { AdaptiveAmount } from "./adaptive.js";

/** What a criterion may know of its stage before anything is emitted. */
export interface StageFacts {
  model: TransformerInfo;
  layer: LayerInfo;
  /** Criterion arguments as the spec resolved them (defaults filled in). */
  args: Readonly<Record<string, ArgValue>>;
  /** Tokens entering the stage (prefix included): a number, or a symbolic dimension. */
  tokensIn: Dim | undefined;
  /**
   * The first layer that sees the same tokens as this stage: 0, or the layer after the previous
   * stage. Criteria reading several layers (ensembles, object layers) must stay within
   * firstLayer..layer, where every attention map indexes the tokens this stage selects from.
   */
  firstLayer: number;
  /** Special tokens (CLS, registers) in front of the prunable ones; they are never scored. */
  prefix: number;
}

export interface ScoreContext extends StageFacts {
  graph: Graph;
  b: NodeBuilder;
  /** The residual stream leaving the layer, before the stage's gather (criteria may read it). */
  stream: string;
  /** Tokens entering the stage (prefix included), when known statically. */
  tokens: number | undefined;
  /** Prunable tokens the stage keeps (groups for grouped criteria), when known statically. */
  keep: number | undefined;
  /** The execution provider the model is compiled for (`--target`): webgpu has no Loop kernel. */
  target: "cpu" | "webgpu";
  /**
   * float [B, N]: −1e9 on stream tokens that are padding (after a per-example stage) or masked
   * (after `with mask`), 0 elsewhere. A criterion that computes its own softmax over keys adds it.
   */
  keyBias: string | undefined;
  /**
   * `of SET` stages: the set's name and its boolean [batch, sequence] model input, which marks the
   * dense model's positions (before any stage); criteria that read the set's own layout use it.
   */
  ofSet?: { name: string; input: string };
  /**
   * Token sets' membership (bool [B, N] over the stream's tokens) as earlier stages left it, by set
   * name; a set absent here still has its dense layout (its model input).
   */
  sets?: ReadonlyMap<string, string>;
  /** float [B, N]: the previous stage's running score (its scorer's `cumulative`), gathered with its kept tokens. */
  cumulative?: string;
  /**
   * `across frames` stages (passes/frames.ts): `past`, the state the previous call left (the
   * criterion's `next`, fed back by the host; float [B, 0, …] at the first call), and `first`,
   * bool [1], true at the first call (the past is empty). The stage keeps every token at the first call.
   */
  frame?: { past: string; first: string };
  /** A count that differs per example (`of SET`, `mass`, …): the amount as planned (passes/adaptive.ts). */
  amount?: AdaptiveAmount;
  /** The model inputs (bool [batch, sequence], dense positions) of the sets the criterion requires (`requiresSets`). */
  setInputs?: ReadonlyMap<string, string>;
}

/** `across frames`: the rows the stage kept, for a criterion whose next state reads layers below the stage. */
export interface KeptRows {
  /** int64 [B, K']: each row's position in the stage's input, −1 on padding rows (per-example counts). */
  positions: string;
}

/**
 * Groups of prunable positions that a criterion keeps or drops whole (grid rows, merge groups).
 * Every group has the same size; the stage's amount counts groups.
 */
export interface TokenGroups {
  /** What a group is, for messages ("grid row"). */
  unit: string;
  /** members[g] = the prunable positions (0-based after the prefix) of group g. */
  members: number[][];
}

/** A fact proven for a stage (`ok`), or why it does not hold (a sentence naming the model fact). */
export type Prepared<T> = { why: string } | { ok: T };

/**
 * What a criterion does in one stage once its facts are proven: closures over the narrowed,
 * non-optional facts they read.
 * - `score`: emit the scoring subgraph. Returns a float tensor [batch, prunable] (batch = 1 for
 *   models whose residual stream has no batch axis), or [batch, groups] when `groups` is set (the
 *   stage then keeps the best groups, their members in ascending order); higher = more important.
 * - `select`: for criteria that pick the kept set themselves (greedy selections such as DivPrune's
 *   max-min): emit the selection and return int64 [batch, keep] prunable positions in ascending
 *   order. The stage adds the prefix tokens and gathers. Needs a static keep count (ctx.keep).
 */
export type Scorer =
  | {
      kind: "score";
      score(ctx: ScoreContext): string;
      groups?: TokenGroups;
      /**
       * A running score of every stream token, float [B, N] (prefix included), that the stage
       * gathers with the kept tokens and hands to the next stage as `ctx.cumulative` (SpAtten's
       * cumulative attention). Called after `score` on the same context.
       */
      cumulative?(ctx: ScoreContext): string;
      /**
       * int64 [B,1]: how many prunable tokens each example keeps, for a criterion that decides its
       * own count within the stage's budget (`ownCount`); the stage keeps that many of the best
       * scores, per example. Called after `score` on the same context.
       */
      count?(ctx: ScoreContext): string;
      /**
       * `across frames`: the state this call leaves for the next one, float [B, rows, …] (the
       * stage writes it as `present.stageN.prunec_frame`; the next call reads it as `ctx.frame.past`).
       * Called after `score` on the same context, once the stage's selection is emitted (`kept`).
       */
      next?(ctx: ScoreContext, kept: KeptRows): string;
    }
  | { kind: "select"; select(ctx: ScoreContext): string };

/** What an `across frames` criterion carries from one call to the next. */
export interface FrameCarry {
  /** What the state holds, in words (docs). */
  holds: string;
  /** Why the criterion means nothing without `across frames` (the plan then refuses it), if so. */
  required?: string;
  /**
   * Why the criterion decides, at every call, how many of each example's `of SET` members it keeps
   * (VLA-Pruner: all of them while its history fills up), if it does: its scorer's `count` then
   * gives the members kept (int64 [B,1]), and the stage is `of SET` with `keep P%` or `keep K tokens`.
   */
  counts?: string;
  /**
   * The deepest layer the next state reads (VLA-Pruner's `action_layer`), if below the stage: a later
   * stream stage above it would change the rows it reads, and is refused.
   */
  readsLayer?(args: Readonly<Record<string, ArgValue>>): number;
  /** The present state's dims after the batch axis, given the stage's input token count and hidden size. */
  dims(tokens: Dim, hidden: number | undefined): (Dim | undefined)[];
}

/** A criterion: its registry entry (name, summary, declared arguments) plus how it scores. */
export interface CriterionModule extends CriterionInfo {
  /** Token sets the criterion reads, which the spec must declare. */
  requiresSets?: string[];
  /**
   * Required sets whose model input the criterion reads itself (`ctx.setInputs`): each must be
   * declared `tokens NAME = input INPUT`, and the input is added to the model when it lacks one.
   */
  readsSets?: string[];
  /**
   * Why `mass` / `above` amounts need `of SET` with this criterion (its scores are not a mass
   * without one: last-token-attn raises the last token above all), or undefined.
   */
  adaptiveNeedsSet?: string;
  /** What a model must have for the criterion to run, in words (for docs). */
  needs: string;
  /**
   * True when real tokens' scores do not depend on padding tokens in the stream (the criterion
   * reads only the CLS query row, per-token values, or applies keyBias): such criteria may follow a
   * stage whose count differs per example and stay exact per example.
   */
  paddingSafe?: boolean;
  /**
   * Why the criterion drops only from the less important half of the prunable tokens (redundancy,
   * Zero-TPrune's S-stage), if so: the plan refuses an amount that could drop more than ⌊Np/2⌋ of
   * the Np prunable tokens, a count that differs per example, groups, and a stage after 'with mask'.
   */
  dropsAtMostHalf?: string;
  /** Its scores depend on the stage's static budget (ctx.keep): counts that differ per example are refused. */
  usesBudget?: boolean;
  /**
   * Why the criterion itself keeps a number of tokens that differs per example, at most the stage's
   * budget (HoloV's crops lose a crop's budget beyond its size), or undefined. Its scorer gives
   * `count`; the stage is lowered as a per-example count (passes/kinds/adaptive.ts), with the
   * budget still static in ctx.keep.
   */
  ownCount?: string;
  /**
   * Why every earlier stage on the stream must use this criterion too, if it must (a cascade whose
   * running score starts at layer 0 and follows the kept tokens from stage to stage).
   */
  cascade?: string;
  /**
   * Head stages (`keep heads … by NAME`, passes/head-stage.ts): one layer's score per head, float
   * [B, H'] from that layer's per-head attention output `output` [B, H', N, d] (P·V before the
   * heads are merged). Scores are summed over layers from layer 0 and carried from stage to stage.
   */
  heads?: { layerScore(b: NodeBuilder, output: string): string };
  /**
   * `across frames` (passes/frames.ts): the criterion carries state from one call of the model to
   * the next (one call per video frame or control step), written by its scorer's `next`.
   */
  frames?: FrameCarry;
  /**
   * Why this criterion cannot run in this stage (a sentence naming the model fact), or its scorer,
   * with every fact it reads narrowed. Pure and cheap, and emits nothing: the planner calls it to
   * check (so a bad spec writes nothing), the stage again on its refreshed facts to emit.
   */
  prepare(facts: StageFacts): Prepared<Scorer>;
}
