/**
 * The typed IR a `.prune` file parses into. Pure data: no methods, no chevrotain types.
 *
 * Every located thing carries a Span so later stages (model resolution, apply) can point
 * their errors at the text that caused them. Span fields are named `span` or end in `Span`/`Spans`.
 */

/** A source range. Lines and columns are 1-based; `endColumn` is exclusive (one past the last character). */
export interface Span {
  line: number;
  column: number;
  endLine: number;
  endColumn: number;
}

/** What `across NAME` may carry state over: `frames` (one call of the model per video frame or control step). */
export const ACROSS = ["frames"] as const;
export type Across = (typeof ACROSS)[number];

/** Options allowed after `with`. */
export const STAGE_OPTIONS = ["recycle", "mask", "renumber", "restore"] as const;
export type StageOption = (typeof STAGE_OPTIONS)[number];

export type Action = "keep" | "drop" | "merge";

/**
 * Where a stage acts. Layers are 0-based; negative layers count from the end and are kept as written.
 * `in-layers` (`in layers A..B`, both ends included) and `all-layers` (no position written) are for
 * stages on the KV cache only (`keep kv` / `drop kv`).
 */
export type StagePosition =
  | { kind: "after-layer" | "in-layer"; layer: number }
  | { kind: "in-layers"; from: number; to: number }
  | { kind: "all-layers" }
  | { kind: "after-encoder" }
  | { kind: "before-layer-0" };

/**
 * What a stage acts on: the residual stream's tokens, each layer's KV cache entries (`keep kv`),
 * or the attention heads of the layers after it (`keep heads`).
 */
export type StageTarget = "stream" | "kv" | "heads";

/**
 * How many tokens an action concerns.
 * percent: 0 < value <= 100; count: positive integer; mass: 0 < value <= 100 (a percentage); above: any finite number.
 */
export interface Amount {
  kind: "percent" | "count" | "mass" | "above";
  value: number;
}

/** A criterion argument value: a number, a range `lo..hi` (lo <= hi), or an identifier (as written). */
export type ArgValue = number | string | [number, number];

export interface CriterionUse {
  /** Lower case, as registered. */
  name: string;
  /** Only the arguments written in the file, keyed by their declared names, in declared order. */
  args: Record<string, ArgValue>;
  /** The criterion name token. */
  span: Span;
  /** For each written argument, the span of its value. */
  argSpans: Record<string, Span>;
}

export interface StageIR {
  position: StagePosition;
  /** The whole position phrase, e.g. `after layer 2`; for `all-layers`, the action word. */
  positionSpan: Span;
  /** `stream`, or `kv` for `keep kv` / `drop kv` (the word `kv`'s span in `kvSpan`). */
  target: StageTarget;
  kvSpan?: Span;
  /** The word `heads` of a `keep heads` / `drop heads` stage. */
  headsSpan?: Span;
  /**
   * `during decode` (KV-cache stages only): the budget holds at every call, prefill and decode
   * steps, with each entry's score carried between calls; absent: the stage evicts at the prefill.
   */
  during?: "decode";
  duringSpan?: Span;
  /** The layer number token (for after-layer, in-layer and before-layer-0), or `A..B` for in-layers. */
  layerSpan?: Span;
  action: Action;
  actionSpan: Span;
  /** Absent when the file omits the amount; defaults are resolved elsewhere. */
  amount?: Amount;
  /** The whole amount phrase, e.g. `25%`, `64 tokens`, `mass 90%`. */
  amountSpan?: Span;
  /** The token set the action is restricted to (`of SET`), as written. */
  of?: string;
  ofSpan?: Span;
  /** `of each SET`: the amount applies to each contiguous span of the set on its own (CATP's per-image budget). */
  ofEach?: boolean;
  criterion: CriterionUse;
  /** Options after `with`, lower case, in written order, no duplicates. */
  options: StageOption[];
  optionSpans: Span[];
  /**
   * Arguments written for options (`with restore(layer: 8)`), keyed by option then by declared name
   * (grammar/options.ts); absent when no option has any.
   */
  optionArgs?: Partial<Record<StageOption, Record<string, ArgValue>>>;
  /** For each written option argument, the span of its value. */
  optionArgSpans?: Partial<Record<StageOption, Record<string, Span>>>;
  /**
   * `across frames` (stream stages only): the model runs once per frame, and the stage carries what
   * its criterion needs from one call to the next as a state input/output pair (passes/frames.ts).
   */
  across?: Across;
  /** The whole `across frames` phrase. */
  acrossSpan?: Span;
  /** The whole statement. */
  span: Span;
}

export type TokenSetSource =
  /** `input NAME`: a new boolean graph input NAME marks the set's positions. */
  | { kind: "input"; input: string }
  /** `after SET`: the positions after the span of another set. */
  | { kind: "after"; set: string };

export interface TokenSetDecl {
  name: string;
  nameSpan: Span;
  source: TokenSetSource;
  /** The name after `input` / `after`. */
  sourceSpan: Span;
  span: Span;
}

export interface ModelHint {
  /** Lower case. */
  name: string;
  span: Span;
}

export interface SpecIR {
  /** The file name given to parseSpec (used in diagnostics). */
  file: string;
  /** The source text the IR came from. */
  text: string;
  model?: ModelHint;
  /** In file order. */
  tokenSets: TokenSetDecl[];
  /** In file order. */
  stages: StageIR[];
}
