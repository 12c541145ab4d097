/** Diagnostics: what went wrong where, and their tsc/rustc-style rendering. */
import type { Span } from "./ir.js";
import { SourceLines } from "./source.js";

export interface Diagnostic {
  file: string;
  /** 1-based. */
  line: number;
  /** 1-based. */
  column: number;
  endLine: number;
  /** Exclusive; equal to `column` (on the same line) for an insertion point. */
  endColumn: number;
  message: string;
  /** A replacement for the offending text, rendered as `help: did you mean '...'?`. */
  suggestion?: string;
  severity: "error";
}

export function diagnosticAt(file: string, span: Span, message: string, suggestion?: string): Diagnostic {
  const d: Diagnostic = { file, ...span, message, severity: "error" };
  if (suggestion !== undefined) d.suggestion = suggestion;
  return d;
}

/**
 * Renders one diagnostic:
 *
 *     spec.prune:1:27: error: unknown criterion 'cls-atn'
 *      1 | after layer 2 keep 25% by cls-atn
 *        |                           ^~~~~~~
 *        = help: did you mean 'cls-attn'?
 */
export function formatDiagnostic(d: Diagnostic, sourceText: string): string {
  const out = [`${d.file}:${d.line}:${d.column}: ${d.severity}: ${d.message}`];
  const lines = new SourceLines(sourceText);
  const gutter = " ".repeat(String(d.line).length);
  if (d.line >= 1 && d.line <= lines.lineCount) {
    const src = lines.line(d.line);
    out.push(` ${d.line} |${src === "" ? "" : " " + src}`);
    const start = Math.max(1, d.column);
    const end = d.endLine === d.line ? d.endColumn : src.length + 1;
    const width = Math.max(1, end - start);
    let pad = "";
    for (let i = 0; i < start - 1; i++) pad += src[i] === "\t" ? "\t" : " ";
    out.push(` ${gutter} | ${pad}^${"~".repeat(width - 1)}`);
  }
  if (d.suggestion !== undefined) out.push(` ${gutter} = help: did you mean '${d.suggestion}'?`);
  return out.join("\n");
}

/** All diagnostics, in order, separated by blank lines. */
export function formatDiagnostics(ds: readonly Diagnostic[], sourceText: string): string {
  return ds.map((d) => formatDiagnostic(d, sourceText)).join("\n\n");
}
