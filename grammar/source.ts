/** Offsets to 1-based line/column spans, and the text of a line. Lines end at \r\n, \r or \n. */
import type { Span } from "./ir.js";

export class SourceLines {
  /** Offset of the first character of each line. */
  private readonly starts: number[] = [0];
  /** Offset one past the last character (line terminator excluded) of each line. */
  private readonly ends: number[] = [];

  constructor(readonly text: string) {
    const re = /\r\n|\r|\n/g;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      this.ends.push(m.index);
      this.starts.push(m.index + m[0].length);
    }
    this.ends.push(text.length);
  }

  get lineCount(): number {
    return this.starts.length;
  }

  /** The text of a 1-based line, without its terminator ("" when out of range). */
  line(n: number): string {
    const s = this.starts[n - 1];
    const e = this.ends[n - 1];
    return s === undefined || e === undefined ? "" : this.text.slice(s, e);
  }

  /** 1-based line and column of an offset (clamped into the text; an offset inside a \r\n maps to its line end). */
  position(offset: number): { line: number; column: number } {
    const o = Math.max(0, Math.min(Number.isFinite(offset) ? offset : this.text.length, this.text.length));
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= o) lo = mid;
      else hi = mid - 1;
    }
    const column = Math.min(o, this.ends[lo]!) - this.starts[lo]! + 1;
    return { line: lo + 1, column };
  }

  /** The span of [start, endExclusive). */
  span(start: number, endExclusive: number): Span {
    const a = this.position(start);
    const b = this.position(Math.max(start, endExclusive));
    return { line: a.line, column: a.column, endLine: b.line, endColumn: b.column };
  }
}
