/**
 * Text for a terminal of a given width (the CLI picks it: src/cli/stdio.ts terminalWidth).
 * Tables fit the width: one column may wrap (a list), the others are cut in the middle with '…'
 * (a tensor name keeps its start and its end). Other long lines wrap at spaces.
 */

/** `text` in at most `width` characters, the cut in the middle: `past_key_v…0.value`. */
export function middleEllipsis(text: string, width: number): string {
  if (text.length <= width) return text;
  if (width <= 1) return "…".slice(0, Math.max(0, width));
  const keep = width - 1;
  const head = Math.ceil(keep / 2);
  return `${text.slice(0, head)}…${text.slice(text.length - (keep - head))}`;
}

/** `text` cut after each space outside brackets and not before one (`x [batch, 16]` stays one word), each piece with its spaces. */
function words(text: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "[") depth++;
    else if (c === "]" && depth > 0) depth--;
    else if (c === " " && depth === 0 && text[i + 1] !== " " && text[i + 1] !== "[") {
      out.push(text.slice(start, i + 1));
      start = i + 1;
    }
  }
  if (start < text.length) out.push(text.slice(start));
  return out;
}

/** Words of `text` (each with the spaces after it) on lines of at most `width`; a longer word is cut in the middle. */
function wrapWords(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/(?<= )/)) {
    if (line !== "" && (line + word).trimEnd().length > width) {
      lines.push(line.trimEnd());
      line = "";
    }
    line += word;
  }
  lines.push(line.trimEnd());
  return lines.map((l) => middleEllipsis(l, width));
}

export interface TableOptions {
  /** The width to fit; undefined: no limit. */
  width?: number;
  /** Before each line (counted in the width). */
  indent?: string;
  /** Between columns. */
  separator?: string;
  /** The column that wraps (at spaces) rather than being cut, e.g. a list. */
  wrap?: number;
  /** Columns aligned right (numbers). */
  right?: readonly number[];
  /** A line of dashes under the header. */
  rule?: boolean;
  /**
   * When the wrapping column would be narrower than MIN_WRAP, it leaves the table and is printed
   * under each row as `LABEL: text` (wrapped), 4 spaces in from the indent.
   */
  stack?: string;
}

/** Narrowest a wrapping column is made before the other columns are cut. */
const MIN_WRAP = 24;
/** Narrowest a cut column is made ('ab…z'). */
const MIN_CUT = 4;

/**
 * Column widths for `natural` widths within `width` (see the module comment): the wrapping column
 * takes what the others leave (at least MIN_WRAP); then the widest columns are cut to a common cap,
 * none below its header's width while that fits, else none below MIN_CUT.
 */
function fitWidths(
  natural: number[],
  headers: number[],
  width: number,
  gaps: number,
  wrap: number | undefined,
): number[] {
  const avail = width - gaps;
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  if (sum(natural) <= avail) return natural;
  const fixed = sum(natural.filter((_, i) => i !== wrap));
  const wrapWidth = wrap === undefined ? 0 : Math.max(Math.min(natural[wrap]!, MIN_WRAP), avail - fixed);
  const widths = (floor: (i: number) => number, cap: number) =>
    natural.map((n, i) => (i === wrap ? wrapWidth : Math.max(floor(i), Math.min(n, cap))));
  if (wrap !== undefined && fixed + wrapWidth <= avail) return widths(() => 0, Infinity);
  const byHeader = (i: number) => Math.min(natural[i]!, headers[i]!);
  const floor = sum(widths(byHeader, 0)) <= avail ? byHeader : (i: number) => Math.min(natural[i]!, MIN_CUT);
  let cap = Math.max(...natural);
  while (cap > 0 && sum(widths(floor, cap)) > avail) cap--;
  return widths(floor, cap);
}

/** Rows (header first) as aligned text lines that fit `options.width`. */
export function renderTable(
  header: readonly string[],
  rows: readonly string[][],
  options: TableOptions = {},
): string[] {
  const { wrap, stack, width } = options;
  if (wrap !== undefined && stack !== undefined && width !== undefined) {
    const others = header.map((h, i) => (i === wrap ? 0 : Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length))));
    const fixed = others.reduce((a, b) => a + b, 0) + (options.indent ?? "").length;
    const gaps = (options.separator ?? "  ").length * (header.length - 1);
    if (fixed + gaps + MIN_WRAP > width) {
      const drop = <T>(xs: readonly T[]) => xs.filter((_, i) => i !== wrap);
      const narrow = { ...options, wrap: undefined, stack: undefined };
      const lead = `${options.indent ?? ""}    ${stack}: `;
      const table = renderTable(drop(header), rows.map(drop), narrow);
      const top = options.rule ? 2 : 1; // each row is one line: the columns left are cut, not wrapped
      return [
        ...table.slice(0, top),
        ...rows.flatMap((r, k) => {
          const text = r[wrap] ?? "";
          return [table[top + k]!, ...(text ? wrapLine(lead + text, width) : [])];
        }),
      ];
    }
  }
  const indent = options.indent ?? "";
  const sep = options.separator ?? "  ";
  const right = new Set(options.right ?? []);
  const natural = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const widths =
    options.width === undefined
      ? natural
      : fitWidths(
          natural,
          header.map((h) => h.length),
          options.width,
          indent.length + sep.length * (header.length - 1),
          options.wrap,
        );
  const line = (cells: string[]) =>
    (indent + cells.map((c, i) => (right.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(sep)).trimEnd();
  const render = (row: readonly string[]): string[] => {
    const cells = widths.map((w, i) => {
      const c = row[i] ?? "";
      if (c.length <= w) return [c];
      return i === options.wrap ? wrapWords(c, w) : [middleEllipsis(c, w)];
    });
    const height = Math.max(...cells.map((c) => c.length));
    return Array.from({ length: height }, (_, k) => line(cells.map((c) => c[k] ?? "")));
  };
  return [
    ...render(header),
    ...(options.rule ? [line(widths.map((w) => "-".repeat(w)))] : []),
    ...rows.flatMap(render),
  ];
}

/**
 * One line of prose in lines of at most `width`, broken at spaces. Continuation lines hang under the
 * text after a short `label:` (`  inputs:  a, b` → under `a`), else 4 spaces in from the line's indent.
 * A word longer than the width stays whole (it is information, not decoration).
 */
export function wrapLine(text: string, width: number | undefined): string[] {
  if (width === undefined || text.length <= width) return [text];
  const lead = /^\s*/.exec(text)![0];
  const label = /^\s*[^\s:][^:]{0,20}:\s+/.exec(text)?.[0];
  const hang = " ".repeat(label && label.length <= width / 2 ? label.length : Math.min(lead.length + 4, width >> 1));
  const lines: string[] = [];
  let line = lead;
  let empty = true;
  // A bracketed group stays on one line when it fits one, else it breaks at its spaces too.
  const room = width - hang.length;
  const splitIfLong = (w: string, cut: RegExp) => (w.length > room ? w.split(cut) : [w]);
  const pieces = words(text.slice(lead.length))
    .flatMap((w) => splitIfLong(w, /(?<= )(?=\[)/))
    .flatMap((w) => splitIfLong(w, /(?<= )/));
  for (const word of pieces) {
    if (!empty && (line + word).trimEnd().length > width) {
      lines.push(line.trimEnd());
      line = hang;
      if (word.trim() === "") continue;
    }
    line += word;
    empty = false;
  }
  lines.push(line.trimEnd());
  return lines;
}

/** Every line of `text` wrapped to `width` (lines already within it, such as a fitted table's, are kept). */
export function wrapText(text: string, width: number | undefined): string {
  if (width === undefined) return text;
  return text
    .split("\n")
    .flatMap((l) => wrapLine(l, width))
    .join("\n");
}
