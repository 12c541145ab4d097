/** parseSpec: text in, IR or diagnostics out. Never throws. */
import type { IToken } from "chevrotain";
import { diagnosticAt, type Diagnostic } from "./diagnostics.js";
import type { SpecIR } from "./ir.js";
import { isSeparator, lex } from "./lexer.js";
import { SpecParser } from "./parser.js";
import type { CriterionRegistry } from "./registry.js";
import { SourceLines } from "./source.js";
import { syntaxDiagnostic, type StatementTokens } from "./syntax-errors.js";
import { toIR, type ParsedStatement } from "./to-ir.js";

export interface ParseResult {
  /** Present exactly when there are no diagnostics. */
  spec?: SpecIR;
  /** Every problem in the file, ordered by position. */
  diagnostics: Diagnostic[];
}

let sharedParser: SpecParser | undefined;
function parser(): SpecParser {
  sharedParser ??= new SpecParser();
  return sharedParser;
}

interface Chunk extends StatementTokens {
  /** Offsets [start, end) of the statement's text, separators excluded. */
  start: number;
  end: number;
}

function splitStatements(tokens: readonly IToken[], textLength: number): Chunk[] {
  const chunks: Chunk[] = [];
  let current: IToken[] = [];
  let start = 0;
  for (const t of tokens) {
    if (isSeparator(t)) {
      chunks.push({ tokens: current, terminator: t, start, end: t.startOffset });
      current = [];
      start = t.startOffset + t.image.length;
    } else {
      current.push(t);
    }
  }
  chunks.push({ tokens: current, start, end: textLength });
  return chunks;
}

function parseUnguarded(text: string, file: string, registry: CriterionRegistry): ParseResult {
  const lines = new SourceLines(text);
  const diagnostics: Diagnostic[] = [];
  const { tokens, errors: lexErrors } = lex(text);
  for (const e of lexErrors) diagnostics.push(diagnosticAt(file, lines.span(e.offset, e.offset + e.length), e.message));

  const p = parser();
  const parsed: ParsedStatement[] = [];
  // Chunks and lexing errors both come in offset order: one walk pairs them (linear, not chunks × errors).
  let nextError = 0;
  for (const chunk of splitStatements(tokens, text.length)) {
    while (nextError < lexErrors.length && lexErrors[nextError]!.offset < chunk.start) nextError++;
    const first = chunk.tokens[0];
    const last = chunk.tokens[chunk.tokens.length - 1];
    if (first === undefined || last === undefined) continue;
    // A statement with a lexing error was already reported; parsing it would only repeat the news.
    if (nextError < lexErrors.length && lexErrors[nextError]!.offset < chunk.end) continue;
    p.input = chunk.tokens;
    const raw = p.statement();
    if (p.errors.length > 0) diagnostics.push(syntaxDiagnostic(chunk, p.errors, p, lines, file));
    else parsed.push({ raw, first, last });
  }

  const { parts, diagnostics: semantic } = toIR(parsed, file, lines, registry);
  diagnostics.push(...semantic);
  diagnostics.sort((a, b) => a.line - b.line || a.column - b.column);
  if (diagnostics.length > 0) return { diagnostics };
  return { spec: { file, text, ...parts }, diagnostics };
}

/**
 * Parses a `.prune` text. Criterion names and arguments are checked against `registry`.
 * All problems of the file are reported together; the IR is returned only when there are none.
 */
export function parseSpec(text: string, file: string, registry: CriterionRegistry): ParseResult {
  // chevrotain reports each syntax error as an Error subclass; their stack traces are never read
  // and capturing them was most of the cost of a file with thousands of broken lines.
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return parseUnguarded(text, file, registry);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    const span = { line: 1, column: 1, endLine: 1, endColumn: 1 };
    return { diagnostics: [diagnosticAt(file, span, `internal error while parsing: ${why}`)] };
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
}
