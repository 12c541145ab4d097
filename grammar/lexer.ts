/** Tokens of the `.prune` language. Keywords are case-insensitive and reserved only where the grammar expects them. */
import { createToken, Lexer, type IToken, type TokenType } from "chevrotain";
import { clip, MAX_QUOTED } from "./diagnostics.js";
import { SKIP_GRAMMAR_CHECKS } from "./checks.js";

/** Any name: identifiers and keywords alike (so `layer` can still name an argument, `mass` a criterion). */
export const Word = createToken({ name: "Word", pattern: Lexer.NA });
export const Identifier = createToken({ name: "Identifier", pattern: /[A-Za-z_][A-Za-z0-9_-]*/, categories: [Word] });

function keyword(word: string): TokenType {
  return createToken({
    name: word[0]!.toUpperCase() + word.slice(1),
    label: `'${word}'`,
    pattern: new RegExp(word, "i"),
    longer_alt: Identifier,
    categories: [Word],
  });
}

export const Model = keyword("model");
export const Tokens = keyword("tokens");
export const Input = keyword("input");
export const After = keyword("after");
export const Before = keyword("before");
export const In = keyword("in");
/** Before `layer` in the lexer: `layers` must not lex as `layer` + a longer identifier. */
export const Layers = keyword("layers");
export const Layer = keyword("layer");
export const Encoder = keyword("encoder");
export const Keep = keyword("keep");
export const Drop = keyword("drop");
export const Merge = keyword("merge");
/** `keep kv` / `drop kv`: the stage acts on each layer's KV cache, not on the residual stream. */
export const Kv = keyword("kv");
/** `keep heads`: the stage prunes attention heads (SpAtten's head pruning), not tokens. */
export const Heads = keyword("heads");
/** `during decode`: a KV-cache stage that keeps its budget at every call, carrying scores between calls. */
export const During = keyword("during");
export const Decode = keyword("decode");
export const Mass = keyword("mass");
export const Above = keyword("above");
export const Of = keyword("of");
/** `of each SET`: the amount applies to each contiguous span of the set on its own (one budget per image). */
export const Each = keyword("each");
export const By = keyword("by");
export const With = keyword("with");
/** `across frames`: a stream stage that carries what its criterion needs from one call to the next. */
export const Across = keyword("across");

export const KEYWORDS: readonly TokenType[] = [
  Model,
  Tokens,
  Input,
  After,
  Before,
  In,
  Layers,
  Layer,
  Encoder,
  Keep,
  Drop,
  Merge,
  Kv,
  Heads,
  During,
  Decode,
  Mass,
  Above,
  Of,
  Each,
  By,
  With,
  Across,
];

/** A decimal number, optionally negative, with optional fraction and exponent (`8..10` lexes as 8, `..`, 10). */
export const NumberLit = createToken({
  name: "Number",
  label: "a number",
  pattern: /-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/,
});
export const Percent = createToken({ name: "Percent", label: "'%'", pattern: "%" });
export const DotDot = createToken({ name: "DotDot", label: "'..'", pattern: ".." });
export const LParen = createToken({ name: "LParen", label: "'('", pattern: "(" });
export const RParen = createToken({ name: "RParen", label: "')'", pattern: ")" });
export const Comma = createToken({ name: "Comma", label: "','", pattern: "," });
export const Colon = createToken({ name: "Colon", label: "':'", pattern: ":" });
export const Equals = createToken({ name: "Equals", label: "'='", pattern: "=" });
export const Semicolon = createToken({ name: "Semicolon", label: "';'", pattern: ";" });
export const Newline = createToken({ name: "Newline", label: "end of line", pattern: /\r\n|\r|\n/, line_breaks: true });
const WhiteSpace = createToken({ name: "WhiteSpace", pattern: /[ \t\f\v\u00a0\ufeff]+/, group: Lexer.SKIPPED });
const Comment = createToken({ name: "Comment", pattern: /#[^\r\n]*/, group: Lexer.SKIPPED });

/** Token types the parser sees (separators are removed before parsing). */
export const PARSER_TOKENS: readonly TokenType[] = [
  Word,
  ...KEYWORDS,
  Identifier,
  NumberLit,
  Percent,
  DotDot,
  LParen,
  RParen,
  Comma,
  Colon,
  Equals,
];

const lexer = new Lexer(
  [
    WhiteSpace,
    Comment,
    Newline,
    Semicolon,
    ...KEYWORDS,
    Identifier,
    NumberLit,
    Percent,
    DotDot,
    LParen,
    RParen,
    Comma,
    Colon,
    Equals,
  ],
  { positionTracking: "onlyOffset", ensureOptimizations: true, skipValidations: SKIP_GRAMMAR_CHECKS },
);

export interface LexError {
  offset: number;
  length: number;
  message: string;
}

export function lex(text: string): { tokens: IToken[]; errors: LexError[] } {
  const result = lexer.tokenize(text);
  const errors = result.errors.map((e) => {
    const bad = text.slice(e.offset, e.offset + Math.min(e.length, MAX_QUOTED + 1));
    const shown = JSON.stringify(clip(bad)).slice(1, -1);
    return {
      offset: e.offset,
      length: e.length,
      message: e.length === 1 ? `unexpected character '${shown}'` : `unexpected characters '${shown}'`,
    };
  });
  return { tokens: result.tokens, errors };
}

export function isSeparator(t: IToken): boolean {
  return t.tokenType === Newline || t.tokenType === Semicolon;
}
