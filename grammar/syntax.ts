/** The raw syntax tree the parser builds: tokens only, no validation. to-ir.ts turns it into the IR. */
import type { IToken } from "chevrotain";

export type RawValue =
  | { kind: "number"; token: IToken }
  | { kind: "range"; lo: IToken; hi: IToken }
  | { kind: "identifier"; token: IToken };

export interface RawArg {
  /** Absent for a positional argument. */
  name?: IToken;
  value: RawValue;
  /** First and last token of the value. */
  first: IToken;
  last: IToken;
}

/** An option after `with`: its name, and its arguments when a parenthesised list is written. */
export interface RawOption {
  name: IToken;
  args?: RawArg[];
}

export type RawPosition =
  | { kind: "after-layer" | "in-layer" | "before-layer"; first: IToken; layer: IToken }
  /** `in layers FROM .. TO`. */
  | { kind: "in-layers"; first: IToken; from: IToken; to: IToken }
  | { kind: "after-encoder"; first: IToken; last: IToken };

export type RawAmount =
  | { kind: "percent"; number: IToken; last: IToken }
  | { kind: "count"; number: IToken; last: IToken }
  | { kind: "mass"; first: IToken; number: IToken; last: IToken }
  | { kind: "above"; first: IToken; number: IToken };

export interface RawStage {
  kind: "stage";
  /** Absent when none is written (a `keep kv` stage on every layer). */
  position?: RawPosition;
  /** `during decode` before the action (its two words). */
  during?: { first: IToken; last: IToken };
  action: IToken;
  /** `kv` after the action: the stage acts on the KV cache. */
  kv?: IToken;
  /** `heads` after the action: the stage prunes attention heads. */
  heads?: IToken;
  amount?: RawAmount;
  of?: IToken;
  /** `of each SET`. */
  each?: IToken;
  criterion: IToken;
  args: RawArg[];
  options: RawOption[];
  /** `across NAME` at the end (`across frames`): the word `across` and the name after it. */
  across?: { first: IToken; last: IToken };
}

export interface RawTokenSet {
  kind: "tokens";
  name: IToken;
  sourceKind: "input" | "after";
  source: IToken;
}

export interface RawModel {
  kind: "model";
  name: IToken;
}

export type RawStatement = RawStage | RawTokenSet | RawModel;
