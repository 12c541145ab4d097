/**
 * The plan of one stage: what the planner (src/plan.ts, src/plan-merge.ts) decided after every
 * check, and what a pass (passes/prune-stage.ts, passes/merge-stage.ts) emits. The planner owns
 * this type; passes only read it.
 */
import type { LayerInfo } from "./analysis/transformer.js";
import type { EncoderOutput } from "./analysis/merge.js";
import type { Dim } from "./analysis/dims.js";
import type { CriterionModule, TokenGroups } from "../passes/criterion.js";
import type { AdaptiveAmount } from "../passes/adaptive.js";
import type { ArgValue } from "../grammar/ir.js";
import type { KvCriterionModule } from "../passes/kv/criterion.js";

export interface StagePlan {
  stage: number;
  layer: LayerInfo;
  /** The stage's percentage as written (used when the token count is symbolic). */
  percent: number;
  /** `drop P%` (keep N − round(P%·N)) rather than `keep P%`. */
  drop: boolean;
  /** Static number of prunable tokens kept (groups, for grouped criteria), when the token count is known. */
  keep?: number;
  /** Whole groups the criterion selects (scores are per group). */
  groups?: TokenGroups;
  /** First layer seeing this stage's input tokens (see StageFacts). */
  firstLayer: number;
  /** Inside an encoder whose output folds g consecutive tokens: keep whole g-token groups. */
  fold?: number;
  /** `after encoder`: act on this output's rows (tokens or merged tokens) instead of a residual. */
  encoder?: EncoderOutput;
  /** Tokens the criterion scores when they differ from the rows selected (after the encoder: the last layer's). */
  scoredTokens?: Dim;
  /** `with mask`: keep every token and mask the dropped ones' keys in the later layers. */
  mask?: boolean;
  /** `with recycle`: append the score-weighted mean of the dropped tokens as one extra token. */
  recycle?: boolean;
  /**
   * `with renumber`: below the stage the kept tokens take positions 0..K'−1 (TransPrune's and
   * SparseVLM's references): side tensors with one token axis (position ids, rotary tables) are
   * read at rows 0..K'−1 instead of the kept rows; masks (two token axes) follow the kept tokens.
   */
  renumber?: boolean;
  /**
   * `with restore` (DToP, tomesd): at layer `at`'s output (by default the last layer's) the stage's
   * dropped tokens are put back at their positions with the hidden state they had when dropped
   * (passes/restore.ts); the layers after `at` compute every token.
   */
  restore?: { at: number };
  /**
   * A `merge` stage (ToMe, passes/merge-stage.ts, planned by src/plan-merge.ts): r tokens merged
   * away; `sizesFrom`: the earlier merge stage whose token sizes it weighs by; `proportional`:
   * add log(size) to the attention logits of the later layers.
   */
  /** sizesFrom: the previous merge stage (its sizes and ToMe order); feedsMerge: a later merge reads this one's. */
  /**
   * A merge stage (ToMe): r tokens merged, the earlier merge whose sizes it weighs by, proportional
   * attention, whether a later merge reads its ToMe order, and AIM's unweighted mean (`weighted: 0`).
   */
  merge?: { r: number; sizesFrom?: number; proportional: boolean; feedsMerge?: boolean; unweighted?: boolean };
  /** `keep mass P%` / `keep above X`: a count per example (see adaptive.ts). */
  adaptive?: AdaptiveAmount;
  /** Adaptive amounts: the last layer whose attention masks this stage's padding (the next stage's layer). */
  padUntil?: number;
  /**
   * `across frames` (passes/frames.ts, planned by src/plan-frames.ts): the criterion reads the state
   * the previous call left (a past/present pair) and writes the next; the first call keeps every token.
   */
  frames?: boolean;
  /**
   * `of SET`: the amount applies to the set's tokens (a boolean [batch, sequence] model input); the
   * others are kept. `each`: to each contiguous span of the set on its own (`of each SET`).
   */
  ofSet?: { name: string; input: string; each?: boolean };
  /** The model inputs of the sets the criterion requires (`requiresSets`), by set name. */
  readSets?: Record<string, string>;
  criterion: CriterionModule;
  args: Record<string, ArgValue>;
  /** Tokens entering the stage (prefix included) and kept by it. */
  tokensIn: Dim;
  tokensOut: Dim;
  prefix: number;
}

/**
 * The plan of one KV-cache stage (`keep kv` / `drop kv`, planned by src/plan-kv.ts, lowered by
 * passes/kv-stage.ts): at a call whose past is empty (prefill), each layer's present key and value
 * keep, per KV head, the entries the press scores best; at decode steps every entry is kept.
 */
/**
 * How a `during decode` stage ranks entries: by the attention they received (H2O, A2SF: decayed by
 * `forget` per query step, the last `recent` forced), or by position (StreamingLLM: the first
 * `sinks` real entries, then the most recent).
 */
export type DecodeForm =
  | { kind: "received"; forget: number; recent: number }
  | { kind: "positional"; sinks: number }
  /**
   * SpAtten's cascade: one set of entries for every layer of the stage, scored by the attention
   * each has received summed over those layers, their heads and every call's queries
   * (passes/kv-cascade-stage.ts).
   */
  | { kind: "cascade" };

export interface KvPlan {
  stage: number;
  /** The layers whose caches are evicted (every one with a `cache` fact the press accepted). */
  layers: LayerInfo[];
  criterion: KvCriterionModule;
  args: Record<string, ArgValue>;
  /**
   * What each KV head keeps of the N entries: `fraction` c keeps max(1, ⌊N·c⌋) (kvpress's
   * int(N·(1 − r)) with c = 1 − r computed in float64, as Python does); `count` keeps min(K, N)
   * (`keep kv K`) or max(1, N − K) (`drop kv K`).
   */
  budget: { kind: "fraction"; value: number } | { kind: "count"; value: number; drop: boolean };
  /** The amount as written, for reports ("keep kv 25%"). */
  text: string;
  /**
   * `of SET`: only the set's entries compete (the budget is a fraction or count of them); every
   * other real entry is kept. `input` is the model input marking the set's positions.
   */
  ofSet?: { name: string; input: string };
  /**
   * `during decode`: at every call each KV head keeps at most `budget` entries, scored by the
   * attention they received, decayed by `forget` per query step, the last `recent` always kept
   * (passes/kv-decode-stage.ts).
   */
  decode?: DecodeForm & { budget: number };
  /**
   * A decode-time stage composed with a prefill stage on some of its layers (`keep kv 50% by
   * snapkv` + `during decode keep kv 256 tokens by h2o`): at the prefill of those layers only the
   * entries `plan`'s press keeps compete for the decode budget (passes/kv-decode-stage.ts); the
   * prefill stage itself then leaves those layers alone.
   */
  prefill?: { plan: KvPlan; layers: number[] };
}

/**
 * A head stage (`keep heads … after layer L`, passes/head-stage.ts): each example keeps `keep` of
 * the `headsIn` heads left, ranked by the criterion's score summed over layers `first`..L (added to
 * the previous head stage's carried score); layers L+1..`until` run only the kept heads.
 */
export interface HeadPlan {
  stage: number;
  /** The layer after which heads leave. */
  layer: LayerInfo;
  criterion: CriterionModule & Required<Pick<CriterionModule, "heads">>;
  /** Heads each layer has in the dense model. */
  heads: number;
  /** Heads still there after the previous head stage (the dense count for the first). */
  headsIn: number;
  /** Heads each example keeps. */
  keep: number;
  /** First layer whose outputs this stage sums (0, or the previous head stage's layer + 1). */
  first: number;
  /** Last layer that runs this stage's kept heads (the next head stage's layer, or the model's last). */
  until: number;
  /** The amount as written, for reports ("keep heads 50%"). */
  text: string;
}
