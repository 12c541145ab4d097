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

/** Longest text from the spec that a message quotes whole; longer text is cut (a fuzzed 1 MB word must not flood every message). */
export const MAX_QUOTED = 60;

/** `text` as a message quotes it: at most MAX_QUOTED characters, a cut marked with '…'. */
export function clip(text: string, max = MAX_QUOTED): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/** Longest source line shown whole under a diagnostic; longer lines show a window around the span. */
export const MAX_SNIPPET = 120;
/** Characters of context shown before the span's start in a windowed line. */
const SNIPPET_LEAD = 40;

/** How many diagnostics formatDiagnostics renders; the rest are counted in one closing line. */
export const MAX_PRINTED = 100;

/**
 * Renders one diagnostic:
 *
 *     spec.prune:1:27: error: unknown criterion 'cls-atn'
 *      1 | after layer 2 keep 25% by cls-atn
 *        |                           ^~~~~~~
 *        = help: did you mean 'cls-attn'?
 *
 * A line longer than MAX_SNIPPET shows a window of it around the span ('…' marks the cuts), so one
 * diagnostic's size never depends on the line's length. Pass the text's SourceLines when rendering
 * many diagnostics of one text, so the line table is built once.
 */
export function formatDiagnostic(d: Diagnostic, source: string | SourceLines): string {
  const out = [`${d.file}:${d.line}:${d.column}: ${d.severity}: ${d.message}`];
  const lines = typeof source === "string" ? new SourceLines(source) : source;
  const gutter = " ".repeat(String(d.line).length);
  if (d.line >= 1 && d.line <= lines.lineCount) {
    const full = lines.line(d.line);
    let start = Math.max(1, d.column);
    let end = d.endLine === d.line ? d.endColumn : full.length + 1;
    let src = full;
    if (full.length > MAX_SNIPPET) {
      // Window [from, to) of the line (0-based), starting a little before the span.
      const from = Math.max(0, Math.min(start - 1 - SNIPPET_LEAD, full.length - MAX_SNIPPET));
      const to = Math.min(full.length, from + MAX_SNIPPET);
      const lead = from > 0 ? "…" : "";
      src = lead + full.slice(from, to) + (to < full.length ? "…" : "");
      start = start - from + lead.length;
      end = Math.min(end - from + lead.length, src.length + 1);
    }
    out.push(` ${d.line} |${src === "" ? "" : ` ${src}`}`);
    const width = Math.max(1, end - start);
    let pad = "";
    for (let i = 0; i < start - 1; i++) pad += src[i] === "\t" ? "\t" : " ";
    out.push(` ${gutter} | ${pad}^${"~".repeat(width - 1)}`);
  }
  if (d.suggestion !== undefined) out.push(` ${gutter} = help: did you mean '${clip(d.suggestion)}'?`);
  return out.join("\n");
}

/**
 * The diagnostics, in order, separated by blank lines: the first MAX_PRINTED of them, then
 * `… and N more errors` (a huge broken file gives bounded output; `check --json` lists them all).
 * Linear in the text and the diagnostics: the line table is built once.
 */
export function formatDiagnostics(ds: readonly Diagnostic[], sourceText: string, max = MAX_PRINTED): string {
  const lines = new SourceLines(sourceText);
  const shown = ds.slice(0, max).map((d) => formatDiagnostic(d, lines));
  const rest = ds.length - shown.length;
  if (rest > 0) shown.push(`… and ${rest} more error${rest === 1 ? "" : "s"}`);
  return shown.join("\n\n");
}
