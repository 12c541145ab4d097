/** Turns a chevrotain recognition error into a Diagnostic that names what was expected and what was found. */
import { EOF, type IRecognitionException, type IToken, type TokenType } from "chevrotain";
import { clip, diagnosticAt, type Diagnostic } from "./diagnostics.js";
import type { Span } from "./ir.js";
import {
  After,
  Before,
  By,
  Colon,
  Comma,
  DotDot,
  Identifier,
  In,
  Input,
  KEYWORDS,
  Kv,
  Layer,
  Layers,
  LParen,
  Model,
  NumberLit,
  Of,
  RParen,
  Semicolon,
  Tokens,
  With,
  Word,
} from "./lexer.js";
import type { SpecParser } from "./parser.js";
import type { SourceLines } from "./source.js";
import { closest } from "./suggest.js";

/** One statement as the parser saw it. */
export interface StatementTokens {
  tokens: IToken[];
  /** The `;` or newline that ended it; absent at end of file. */
  terminator?: IToken;
}

const END = "end";
type Expected = TokenType | typeof END;

function keywordText(t: TokenType): string | undefined {
  return KEYWORDS.includes(t) ? t.name.toLowerCase() : undefined;
}

/** What kind of name follows a keyword. */
const NAME_AFTER = new Map<TokenType, string>([
  [By, "a criterion name"],
  [With, "an option name"],
  [Of, "a token set name"],
  [Tokens, "a token set name"],
  [After, "a token set name"],
  [Input, "an input name"],
  [Model, "a model name"],
]);

/** Inside `( ... )` or a `with` list, what a name or number there is. */
function listContext(before: readonly IToken[]): "argument" | "option" | undefined {
  for (let i = before.length - 1; i >= 0; i--) {
    const t = before[i]!.tokenType;
    if (t === RParen) return undefined;
    if (t === LParen) return "argument";
    if (t === With) return "option";
  }
  return undefined;
}

function describeExpected(expected: readonly Expected[], before: readonly IToken[]): string[] {
  const previous = before[before.length - 1];
  const list = listContext(before);
  const out: string[] = [];
  for (const e of expected) {
    let text: string;
    if (e === END) text = "end of statement";
    else if (list === "argument" && (e === Word || e === NumberLit))
      text = previous?.tokenType === Colon ? "a value" : "an argument";
    else if (e === Word || e === Identifier)
      text = (list === "option" ? "an option name" : previous && NAME_AFTER.get(previous.tokenType)) ?? "a name";
    else text = e.LABEL ?? e.name;
    if (!out.includes(text)) out.push(text);
  }
  return out;
}

function listOr(items: string[]): string {
  if (items.length <= 1) return items.join("");
  return `${items.slice(0, -1).join(", ")} or ${items[items.length - 1]!}`;
}

/**
 * The prefix with the middle items of an open `( ... )` or `with ...` list left out: `( a , b , c , d`
 * becomes `( a , d`. The list loop is memoryless, so the parser expects the same tokens after
 * both; without this, content assist on a fuzzed 300,000-argument statement takes seconds. The
 * rest of a statement is a few tokens, so the result is short whatever the input.
 */
function listPrefix(prefix: IToken[]): IToken[] {
  let opener = -1;
  for (let i = 0; i < prefix.length; i++) {
    const t = prefix[i]!.tokenType;
    if (t === LParen || t === With) opener = i;
    else if (t === RParen && opener >= 0 && prefix[opener]!.tokenType === LParen) opener = -1;
  }
  if (opener < 0) return prefix;
  let firstComma = -1;
  let lastComma = -1;
  for (let i = opener + 1; i < prefix.length; i++) {
    if (prefix[i]!.tokenType !== Comma) continue;
    if (firstComma < 0) firstComma = i;
    lastComma = i;
  }
  if (firstComma === lastComma) return prefix;
  return [...prefix.slice(0, firstComma + 1), ...prefix.slice(lastComma + 1)];
}

/**
 * Content assist by token types: what may follow `prefix`. Memoised on the prefix's token types (all
 * the parser looks at), since a broken file tends to repeat its mistake on every line.
 */
const assistCache = new Map<string, readonly TokenType[]>();
function nextTokenTypes(parser: SpecParser, prefix: readonly IToken[]): readonly TokenType[] {
  const key = prefix.map((t) => t.tokenType.name).join(" ");
  const hit = assistCache.get(key);
  if (hit !== undefined) return hit;
  const out: TokenType[] = [];
  for (const path of parser.computeContentAssist("statement", [...prefix])) {
    if (!out.includes(path.nextTokenType)) out.push(path.nextTokenType);
  }
  if (assistCache.size >= 4096) assistCache.clear(); // bounded memory across many files
  assistCache.set(key, out);
  return out;
}

function isEnd(t: IToken): boolean {
  return t.tokenType === EOF || !Number.isFinite(t.startOffset);
}

/**
 * Friendlier words for the mistakes the layer-range and KV-cache forms invite: `in layers 3` (no
 * range), `in layer 2..5` / `after layer 2..5` (a range where one layer goes), `after layers 2..5`,
 * `kv` away from the action word. `index` is the first token the parser could not take (the
 * statement's length at its end); `span` points there.
 */
function commonMistake(
  tokens: readonly IToken[],
  index: number,
  expected: readonly Expected[],
  lines: SourceLines,
  file: string,
  span: Span,
): Diagnostic | undefined {
  const at = (i: number): TokenType | undefined => tokens[i]?.tokenType;
  const spanOf = (first: IToken, last: IToken = first): Span =>
    lines.span(first.startOffset, last.startOffset + last.image.length);
  const found = tokens[index];
  // `in layers 3 keep ...`: one number where a range goes.
  if (expected.includes(DotDot) && at(index - 1) === NumberLit && at(index - 2) === Layers) {
    const layers = tokens[index - 2]!;
    const n = clip(tokens[index - 1]!.image);
    return diagnosticAt(
      file,
      spanOf(layers),
      `'in layers' takes a range A..B (both ends included); for one layer write 'in layer ${n}'`,
      "layer",
    );
  }
  // `in layer 2..5`, `after layer 2..5`: a range where a single layer goes.
  if (found?.tokenType === DotDot && at(index - 1) === NumberLit && at(index - 2) === Layer) {
    const first = tokens[index - 3];
    if (first !== undefined && (first.tokenType === In || first.tokenType === After || first.tokenType === Before)) {
      return diagnosticAt(
        file,
        spanOf(first, tokens[index - 2]!),
        `'${first.image.toLowerCase()} layer' takes a single layer; a range of layers is written 'in layers A..B'`,
        "in layers",
      );
    }
  }
  // `after layers 2..5`: only `in` takes a range.
  if (
    found?.tokenType === Layers &&
    (at(index - 1) === After || at(index - 1) === Before) &&
    at(index + 1) === NumberLit &&
    at(index + 2) === DotDot
  ) {
    const first = tokens[index - 1]!;
    return diagnosticAt(
      file,
      spanOf(first, found),
      `'${first.image.toLowerCase()}' takes a single layer ('${first.image.toLowerCase()} layer L'); a range of layers is written 'in layers A..B'`,
      "in layers",
    );
  }
  // `keep 25% kv`, `kv keep`, `in layer 3 kv drop`.
  const nameExpected = expected.includes(Word) || expected.includes(Identifier);
  if (found?.tokenType === Kv && !expected.includes(Kv) && !nameExpected && at(index - 1) !== Kv) {
    return diagnosticAt(file, span, "'kv' goes right after the action word: 'keep kv ...' or 'drop kv ...'");
  }
  return undefined;
}

/** The earliest of a statement's parse errors, as a Diagnostic. */
export function syntaxDiagnostic(
  stmt: StatementTokens,
  errors: readonly IRecognitionException[],
  parser: SpecParser,
  lines: SourceLines,
  file: string,
): Diagnostic {
  const offsetOf = (e: IRecognitionException): number => (isEnd(e.token) ? Infinity : e.token.startOffset);
  const first = errors.reduce((a, b) => (offsetOf(b) < offsetOf(a) ? b : a));
  const found = first.token;
  const atEnd = isEnd(found);
  let index = atEnd ? stmt.tokens.length : stmt.tokens.indexOf(found);
  if (index < 0) index = stmt.tokens.findIndex((t) => t.startOffset === found.startOffset);
  if (index < 0) index = stmt.tokens.length;
  const endOfStatement = index >= stmt.tokens.length;

  const before = listPrefix(stmt.tokens.slice(0, index));
  const expected: Expected[] = [...nextTokenTypes(parser, before)];
  if (first.name === "NotAllInputParsedException" || expected.length === 0) expected.push(END);

  // Where to point, and how to name what is there.
  let span: Span;
  let foundText: string;
  if (!endOfStatement) {
    const t = stmt.tokens[index]!;
    span = lines.span(t.startOffset, t.startOffset + t.image.length);
    foundText = `'${clip(t.image)}'`;
  } else if (stmt.terminator !== undefined && stmt.terminator.tokenType === Semicolon) {
    const t = stmt.terminator;
    span = lines.span(t.startOffset, t.startOffset + 1);
    foundText = "';'";
  } else {
    const last = stmt.tokens[stmt.tokens.length - 1];
    const at = last === undefined ? 0 : last.startOffset + last.image.length;
    span = lines.span(at, at);
    foundText = stmt.terminator === undefined ? "end of file" : "end of line";
  }

  if (endOfStatement && expected.includes(By)) {
    return diagnosticAt(file, span, "missing 'by CRITERION' (every stage needs a criterion)");
  }
  const common = commonMistake(stmt.tokens, index, expected, lines, file, span);
  if (common !== undefined) return common;
  let message = `expected ${listOr(describeExpected(expected, before))}, found ${foundText}`;
  const foundKeyword = endOfStatement ? undefined : stmt.tokens[index];
  if (foundKeyword !== undefined && KEYWORDS.includes(foundKeyword.tokenType) && expected.includes(Identifier)) {
    message += ` ('${foundKeyword.image}' is a keyword)`;
  }

  // A misspelled keyword: suggest the closest expected one.
  let suggestion: string | undefined;
  const foundToken = endOfStatement ? undefined : stmt.tokens[index];
  if (foundToken !== undefined && (foundToken.tokenType === Identifier || KEYWORDS.includes(foundToken.tokenType))) {
    const candidates = expected.flatMap((e) => (e === END ? [] : (keywordText(e) ?? [])));
    const word = foundToken.image.toLowerCase();
    const glued = candidates.find((k) => word.startsWith(k) && /^-?\d+$/.test(word.slice(k.length)));
    suggestion = glued !== undefined ? `${glued} ${word.slice(glued.length)}` : closest(foundToken.image, candidates);
  }
  // `keep kv 25% snapkv(...)`: a criterion without `by` (a name that is no misspelt keyword, followed
  // by what may follow a criterion).
  const next = stmt.tokens[index + 1]?.tokenType;
  if (
    suggestion === undefined &&
    foundToken?.tokenType === Identifier &&
    expected.includes(By) &&
    (next === undefined || next === LParen || next === With)
  ) {
    return diagnosticAt(
      file,
      span,
      `missing 'by' before the criterion '${clip(foundToken.image)}'`,
      `by ${clip(foundToken.image)}`,
    );
  }
  // `layers 2..5 keep kv ...`: the range without its `in`.
  if (suggestion === undefined && index === 0 && foundToken?.tokenType === Layers) suggestion = "in layers";
  return diagnosticAt(file, span, message, suggestion);
}
