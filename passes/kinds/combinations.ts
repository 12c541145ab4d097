/**
 * Which stage options combine with which selection, as a declared table: the planner refuses a
 * combination by looking it up here (src/plan.ts), `docs/language.md` prints it, and
 * test/combinations.test.ts compiles every cell (each allowed one compiles and runs, each refused
 * one is refused with the reason written here).
 *
 * A stage has exactly one selection kind (how the kept set is chosen) and any subset of the
 * options (`with mask`, `with recycle`, `with renumber`, `with restore`: what is done with it).
 */

/** How a stage chooses what it keeps. */
export type SelectionKind =
  /** Scores per token, a static or per-input count, TopK (the default). */
  | "top-k"
  /** The criterion keeps whole groups (grid rows: `spatial-rows`). */
  | "groups"
  /** Inside an encoder whose output folds g tokens into one: whole g-token merge groups. */
  | "fold"
  /** The criterion picks the kept set itself (greedy max-min: `diversity`, `k-center`). */
  | "greedy"
  /** A count per example (`keep mass P%`, `keep above X`, `of SET`, `flowcut(adaptive: 1)`, after such a stage). */
  | "adaptive"
  /** `after encoder`: rows of the encoder's output (tokens or merged tokens). */
  | "after-encoder"
  /** `merge … by similarity` (ToMe). */
  | "merge";

export type StageOption = "mask" | "recycle" | "renumber" | "restore";

export const SELECTION_KINDS: readonly SelectionKind[] = [
  "top-k",
  "groups",
  "fold",
  "greedy",
  "adaptive",
  "after-encoder",
  "merge",
];
export const STAGE_OPTIONS: readonly StageOption[] = ["mask", "recycle", "renumber", "restore"];

/** What a refusal may name: the stage's criterion and the unit its groups count. */
export interface CellFacts {
  criterion: string;
  /** Groups' unit ("grid row"), for grouped criteria. */
  unit?: string;
  /** Adaptive stages: what makes the count per example, as the planner words it. */
  what?: string;
}

/** An allowed cell, or the reason it is refused (a sentence after the option). */
export type Cell = "ok" | ((f: CellFacts) => string);

const singleTokens = (option: StageOption, why: string) =>
  `'with ${option}' needs a stage that ranks single tokens by score, but ${why}`;

/** Selection × option. */
export const SELECTION_OPTIONS: Readonly<Record<SelectionKind, Readonly<Record<StageOption, Cell>>>> = {
  "top-k": { mask: "ok", recycle: "ok", renumber: "ok", restore: "ok" },
  groups: {
    mask: (f) => singleTokens("mask", `${f.criterion} keeps whole ${f.unit ?? "group"}s`),
    recycle: (f) => singleTokens("recycle", `${f.criterion} keeps whole ${f.unit ?? "group"}s`),
    renumber: "ok",
    restore: "ok",
  },
  fold: {
    mask: () => singleTokens("mask", "this encoder keeps whole merge groups"),
    recycle: () => singleTokens("recycle", "this encoder keeps whole merge groups"),
    renumber: "ok",
    restore: "ok",
  },
  greedy: {
    mask: (f) => singleTokens("mask", `${f.criterion} picks tokens without scores`),
    recycle: (f) => singleTokens("recycle", `${f.criterion} picks tokens without scores`),
    renumber: "ok",
    restore: "ok",
  },
  adaptive: {
    mask: "ok",
    recycle: (f) =>
      `${f.what ?? "this stage's count differs per example"}, so it needs a stage that ranks single tokens by score (without 'with recycle')`,
    renumber: "ok",
    restore: "ok",
  },
  "after-encoder": {
    mask: () => singleTokens("mask", "it acts after the encoder"),
    recycle: () => singleTokens("recycle", "it acts after the encoder"),
    renumber: () => "'with renumber' does not apply after the encoder: no layer below it reads token positions",
    restore: () =>
      "'with restore' does not apply after the encoder: no layer runs on the kept rows before the encoder's output, so restoring them would undo the stage",
  },
  merge: {
    mask: () => "'with mask' does not apply to 'merge': a merge stage keeps no dropped tokens to mask",
    recycle: () => "'with recycle' does not apply to 'merge': a merge stage keeps no dropped tokens to recycle",
    renumber: () =>
      "'with renumber' does not apply to 'merge': a merged token stands for several positions, so there is no single position to renumber it from",
    restore: "ok",
  },
};

/** Option × option (unordered pairs); a refusal points at the first written of `at`. */
export const OPTION_PAIRS: readonly {
  options: readonly [StageOption, StageOption];
  why: string;
  at: readonly StageOption[];
}[] = [
  {
    options: ["renumber", "mask"],
    why: "'with renumber' renumbers the kept tokens, but a masked stage keeps every token where it is",
    at: ["renumber"],
  },
  {
    options: ["mask", "recycle"],
    why: "'with mask' and 'with recycle' cannot be combined: a masked stage removes nothing to recycle",
    at: ["mask", "recycle"],
  },
  {
    options: ["recycle", "renumber"],
    why: "'with recycle' and 'with renumber' cannot be combined: the recycled token has no position to renumber",
    at: ["recycle", "renumber"],
  },
  {
    options: ["restore", "mask"],
    why: "'with restore' puts dropped tokens back, but a masked stage removes nothing",
    at: ["restore"],
  },
  {
    options: ["restore", "recycle"],
    why: "'with restore' and 'with recycle' cannot be combined: the recycled token stands for no input position to restore it to",
    at: ["restore", "recycle"],
  },
];

/**
 * The first refusal for a selection and a set of options, or undefined: the selection × option
 * cells first (in the table's option order), then the pairs.
 */
export function refusal(
  selection: SelectionKind,
  options: ReadonlySet<StageOption>,
  facts: CellFacts,
): { why: string; at: readonly StageOption[] } | undefined {
  for (const option of STAGE_OPTIONS) {
    const cell = SELECTION_OPTIONS[selection][option];
    if (options.has(option) && cell !== "ok") return { why: cell(facts), at: [option] };
  }
  for (const p of OPTION_PAIRS)
    if (options.has(p.options[0]) && options.has(p.options[1])) return { why: p.why, at: p.at };
  return undefined;
}
