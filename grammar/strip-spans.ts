/** The IR without source positions or text: what two specs must share to mean the same thing. */
import type { SpecIR } from "./ir.js";

export type Spanless = null | boolean | number | string | Spanless[] | { [key: string]: Spanless };

function isSpanKey(key: string): boolean {
  return key === "span" || key.endsWith("Span") || key.endsWith("Spans");
}

function strip(v: unknown): Spanless {
  if (Array.isArray(v)) return v.map(strip);
  if (v !== null && typeof v === "object") {
    const out: { [key: string]: Spanless } = {};
    for (const [k, x] of Object.entries(v)) if (!isSpanKey(k) && x !== undefined) out[k] = strip(x);
    return out;
  }
  if (typeof v === "boolean" || typeof v === "number" || typeof v === "string") return v;
  return null;
}

/** The spec's meaning: every span field, `text` and `file` removed. */
export function stripSpans(spec: SpecIR): Spanless {
  const { text: _text, file: _file, ...rest } = spec;
  return strip(rest);
}
