/**
 * `.prds` mutations (src/data/prds.ts: "PRUNEDS1" | uint32 LE header length | JSON header |
 * n labels | n·c·h·w pixels): truncation, byte flips, header JSON edits.
 */
import type { Rng } from "./rng.js";

export interface PrdsMutant {
  bytes: Uint8Array;
  description: string;
}

export const PRDS_MUTATIONS = [
  "truncate",
  "flip",
  "header-field",
  "header-json",
  "header-length",
  "consistent-header",
] as const;
export type PrdsMutation = (typeof PRDS_MUTATIONS)[number];

function split(bytes: Uint8Array): { header: string; body: Uint8Array } {
  const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(8, true);
  return { header: new TextDecoder().decode(bytes.subarray(12, 12 + len)), body: bytes.subarray(12 + len) };
}

function join(headerText: string, body: Uint8Array, lengthField?: number): Uint8Array {
  const json = new TextEncoder().encode(headerText);
  const out = new Uint8Array(12 + json.length + body.length);
  out.set(new TextEncoder().encode("PRUNEDS1"), 0);
  new DataView(out.buffer).setUint32(8, lengthField ?? json.length, true);
  out.set(json, 12);
  out.set(body, 12 + json.length);
  return out;
}

const FIELDS = ["n", "channels", "height", "width", "classes", "labels"] as const;

/** A weird JSON value (as text: some are not expressible as JS values, e.g. 1e999). */
function weirdValue(r: Rng): string {
  return r.pick([
    "null",
    "true",
    '"8"',
    "[]",
    "{}",
    "[8]",
    "0",
    "-1",
    "1.5",
    "1e999",
    "-1e999",
    "2147483648",
    "4294967296",
    "9007199254740993",
    "1e300",
    '""',
    "[null]",
    "[1,2,3]",
    '["a",null,5]',
    '{"length":5}',
    '"0"',
    "-0",
    "65536",
    "1e-7",
    "[[[]]]",
  ]);
}

export function mutatePrds(r: Rng, kind: PrdsMutation, bytes: Uint8Array): PrdsMutant {
  if (kind === "truncate") {
    const at = r.weighted([
      [3, r.int(0, Math.min(bytes.length - 1, 400))],
      [2, r.int(0, bytes.length - 1)],
      [1, bytes.length - r.int(1, 8)],
    ]);
    return { bytes: bytes.slice(0, at), description: `truncate to ${at} of ${bytes.length} bytes` };
  }
  if (kind === "flip") {
    const out = bytes.slice();
    const n = r.int(1, 20);
    const at: number[] = [];
    for (let i = 0; i < n; i++) {
      const k = r.chance(0.8) ? r.int(0, Math.min(out.length - 1, 300)) : r.int(0, out.length - 1);
      out[k]! ^= r.chance(0.5) ? 1 << r.int(0, 7) : r.int(1, 255);
      at.push(k);
    }
    return { bytes: out, description: `flip ${n} byte(s) at ${at.join(",")}` };
  }
  const { header, body } = split(bytes);
  if (kind === "header-length") {
    const v = r.pick([
      0,
      1,
      2,
      0xffffffff,
      0x7fffffff,
      header.length - 1,
      header.length + 1,
      bytes.length,
      bytes.length - 11,
    ]);
    return { bytes: join(header, body, v), description: `header length field → ${v}` };
  }
  if (kind === "header-json") {
    const text = r.pick([
      "null",
      "[]",
      "42",
      '"str"',
      "true",
      "{",
      "",
      "{}",
      '{"n":}',
      "[".repeat(r.int(1000, 100000)),
      '{"__proto__":{"n":1}}',
      "\u0000",
      "\ufeff{}",
      `{"n":1,"n":2}`,
      header.slice(0, r.int(0, header.length)),
      header.replace(/"/g, "'"),
    ]);
    return {
      bytes: join(text, body),
      description: `header JSON → ${JSON.stringify(text.slice(0, 40))}${text.length > 40 ? `…(${text.length} chars)` : ""}`,
    };
  }
  let obj: Record<string, unknown>;
  try {
    obj = JSON.parse(header) as Record<string, unknown>;
  } catch {
    obj = {};
  }
  if (kind === "header-field") {
    const field = r.chance(0.9) ? r.pick(FIELDS) : r.pick(["input", "seed", "extra", "__proto__"]);
    const value = r.chance(0.15) ? undefined : weirdValue(r);
    const rest = Object.entries(obj)
      .filter(([k]) => k !== field)
      .map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`);
    if (value !== undefined) rest.push(`${JSON.stringify(field)}:${value}`);
    return { bytes: join(`{${rest.join(",")}}`, body), description: `header '${field}' → ${value ?? "(removed)"}` };
  }
  // consistent-header: a header whose sizes match the body, so parsing succeeds with odd contents.
  const n = r.pick([1, 2, 3]);
  const c = r.pick([1, 3, 4]);
  const h = r.pick([1, 2, 8, 64]);
  const w = r.pick([1, 2, 8, 64]);
  const classes = r.pick([1, 2, 10, 255, 1000, 2 ** 31]);
  const labels = r.pick<unknown>([
    undefined,
    [],
    ["a"],
    Array.from({ length: 10 }, (_, i) => `${i}`),
    5,
    "abc",
    [null, 3, {}],
    Array(2000).fill("x"),
  ]);
  const extra = r.chance(0.3) ? { input: r.pick([null, 5, "uint8"]), description: "x".repeat(r.int(0, 10000)) } : {};
  const head = { n, channels: c, height: h, width: w, classes, ...(labels === undefined ? {} : { labels }), ...extra };
  const payload = new Uint8Array(n + n * c * h * w);
  for (let i = 0; i < n; i++) payload[i] = r.chance(0.8) ? r.int(0, 9) : 255;
  for (let i = n; i < payload.length; i++) payload[i] = r.int(0, 255);
  return {
    bytes: join(JSON.stringify(head), payload),
    description: `consistent header ${JSON.stringify({ ...head, labels: Array.isArray(labels) ? `[${labels.length}]` : labels, description: undefined })}`,
  };
}
