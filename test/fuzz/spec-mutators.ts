/**
 * Spec generation and mutation. Generated specs use every construct of the language
 * (docs/language.md, grammar/README.md): model hints, token sets, positions, keep/drop/merge,
 * KV-cache stages (keep/drop kv over a layer, a range or every layer), every amount form, `of SET`, every registered criterion with named/positional arguments of each
 * type, `with` options, comments and both separators. Mutations then damage them.
 */
import { CRITERIA, PLANNED } from "../../passes/registry.js";
import type { ArgInfo } from "../../grammar/registry.js";
import type { Rng } from "./rng.js";

export interface SpecMutant {
  text: string;
  description: string;
}

const CRITERION_NAMES = [...CRITERIA, ...PLANNED].map((c) => ({
  name: c.name,
  args: c.args as Record<string, ArgInfo>,
}));

function cased(r: Rng, word: string): string {
  if (!r.chance(0.1)) return word;
  return r.chance(0.5) ? word.toUpperCase() : word.replace(/^./, (c) => c.toUpperCase());
}

function number(r: Rng, lo: number, hi: number): string {
  const v = r.int(lo, hi);
  return r.weighted([
    [6, `${v}`],
    [1, `${v}.5`],
    [1, `${v}e0`],
    [1, `${v}.0`],
  ]);
}

function argValue(r: Rng, info: ArgInfo | undefined, layers: number): string {
  const type = info && r.chance(0.85) ? info.type : r.pick(["number", "integer", "range", "identifier"] as const);
  if (type === "integer") return `${r.int(-2, layers + 2)}`;
  if (type === "number") return r.pick(["0.1", "0.5", "1", "0", "-1", "1e-3", "2.5"]);
  if (type === "range") {
    const a = r.int(-1, layers);
    return `${a}..${r.chance(0.8) ? r.int(a, layers) : r.int(-3, layers + 3)}`;
  }
  return r.pick(["rank", "rows", "x", "mean", "image"]);
}

function criterion(r: Rng, layers: number): string {
  const c = r.chance(0.95)
    ? r.pick(CRITERION_NAMES)
    : { name: r.pick(["cls-atn", "nope", "attn", "random-"]), args: {} as Record<string, ArgInfo> };
  const names = Object.keys(c.args);
  let args = "";
  if (r.chance(0.6) && (names.length || r.chance(0.1))) {
    const chosen = names.filter(() => r.chance(0.7));
    const positional = r.chance(0.3);
    const parts = chosen.map((n) =>
      positional
        ? argValue(r, c.args[n], layers)
        : `${r.chance(0.05) ? "bogus" : n}: ${argValue(r, c.args[n], layers)}`,
    );
    args = `(${parts.join(r.pick([", ", ",", " , "]))})`;
  }
  return cased(r, c.name) + args;
}

function amount(r: Rng, tokens: number): string {
  return r.weighted([
    [5, `${number(r, 1, 100)}%`],
    [2, `${r.int(1, tokens)}`],
    [2, `${r.int(1, tokens)} tokens`],
    [1, `mass ${number(r, 1, 100)}%`],
    [1, `above ${r.pick(["0", "0.01", "-1", "1e-3", "2"])}`],
    [2, ""],
  ]);
}

/** A KV-cache stage: `[in layer L | in layers A..B] keep|drop kv AMOUNT [of SET] by PRESS`. */
function kvStage(r: Rng, layer: number, layers: number, sets: readonly string[]): string {
  const position = r.weighted([
    [3, ""],
    [3, `in layer ${layer} `],
    [3, `in layers ${layer}..${r.chance(0.8) ? r.int(layer, layers) : r.int(-layers - 1, layers + 1)} `],
    [1, `after layer ${layer} `],
  ]);
  const verb = r.chance(0.75) ? "keep" : "drop";
  const amt = amount(r, 64);
  const of = sets.length && r.chance(0.1) ? ` of ${r.pick(sets)}` : "";
  return `${position}${cased(r, verb)} ${cased(r, "kv")}${amt ? ` ${amt}` : ""}${of} by ${criterion(r, layers)}`;
}

function stage(r: Rng, layer: number, layers: number, sets: readonly string[]): string {
  if (r.chance(0.15)) return kvStage(r, layer, layers, sets);
  const position = r.weighted([
    [8, `after layer ${layer}`],
    [2, `in layer ${layer}`],
    [1, "after encoder"],
    [1, "before layer 0"],
  ]);
  const verb = r.weighted([
    [6, "keep"],
    [3, "drop"],
    [1, "merge"],
  ]);
  const amt = amount(r, 64);
  const of = sets.length && r.chance(0.4) ? ` of ${r.pick(sets)}` : "";
  const by =
    verb === "merge" && r.chance(0.7) ? `similarity${r.chance(0.3) ? "(proportional: 1)" : ""}` : criterion(r, layers);
  const options = r.chance(0.25)
    ? ` with ${["mask", "recycle", "renumber"].filter(() => r.chance(0.5)).join(", ") || "mask"}`
    : "";
  return `${position} ${cased(r, verb)}${amt ? ` ${amt}` : ""}${of} by ${by}${options}`;
}

/** A spec from the grammar's constructs, meant for a model with `layers` layers (often valid). */
export function generateSpec(r: Rng, layers: number): string {
  const statements: string[] = [];
  if (r.chance(0.1)) statements.push(`model ${r.pick(["vit", "deit", "llava", "qwen2-vl"])}`);
  const sets: string[] = [];
  if (r.chance(0.3)) {
    statements.push(`tokens image = input ${r.pick(["image_mask", "image_mask", "pixel_values", "mask2"])}`);
    sets.push("image");
    if (r.chance(0.5)) {
      statements.push("tokens instruction = after image");
      sets.push("instruction");
    }
  }
  const count = r.weighted([
    [6, 1],
    [3, 2],
    [1, r.int(3, 5)],
  ]);
  let layer = r.int(-1, Math.min(1, layers - 1));
  for (let i = 0; i < count; i++) {
    statements.push(stage(r, r.chance(0.1) ? r.int(-layers - 1, layers + 1) : layer, layers, sets));
    layer += r.int(1, 2);
  }
  let text = "";
  for (const [i, s] of statements.entries()) {
    if (i > 0)
      text += r.weighted([
        [6, "\n"],
        [2, "; "],
        [1, "\r\n"],
        [1, "\n\n  "],
      ]);
    text += s;
    if (r.chance(0.1)) text += `  # ${r.pick(["comment", "keep 25%", "é🙂", ""])}`;
  }
  if (r.chance(0.5)) text += "\n";
  return text;
}

const INSERTIONS = [
  "\u0000",
  "\r\n",
  "\r",
  "\n",
  "\t",
  "\ufeff",
  "\u200b",
  "\u00a0",
  "é",
  "🙂",
  "\ud800",
  "\udfff",
  "\u2028",
  "\u0301",
  "%",
  ";",
  "#",
  "..",
  "(",
  ")",
  ",",
  ":",
  "-",
  "=",
  "∞",
  "１",
  "\u000b",
  "\u001b[31m",
  "'",
  '"',
  "\\",
  // biome-ignore lint/suspicious/noTemplateCurlyInString: the literal text "${x}" is a spec mutation
  "${x}",
  " ",
  "\u{10ffff}",
];

const HUGE = [
  "1e309",
  "1e308",
  "99999999999999999999999",
  "9007199254740993",
  "-0",
  "0.0000000001",
  "1e-400",
  "2147483648",
  "4294967296",
  "100.0000000001",
  "00000001",
  "1.5e2",
  `1${"0".repeat(400)}`,
  "-9223372036854775808",
  "0",
  "-1",
  "NaN",
  "Infinity",
  "1e",
  "1.",
  ".5",
  "1..2",
  "0x10",
  "-2147483649",
  "5e-324",
];

/** The spec mutation kinds (the "attack" rows). */
export const SPEC_MUTATIONS = ["valid", "flip", "insert", "truncate", "duplicate", "huge-number", "long-line"] as const;
export type SpecMutation = (typeof SPEC_MUTATIONS)[number];

export function mutateSpec(r: Rng, kind: SpecMutation, text: string): SpecMutant {
  if (kind === "valid") return { text, description: "generated, unmutated" };
  if (kind === "flip") {
    const bytes = new TextEncoder().encode(text);
    const n = r.int(1, 10);
    const at: number[] = [];
    for (let i = 0; i < n && bytes.length; i++) {
      const k = r.int(0, bytes.length - 1);
      const mask = r.chance(0.5) ? 1 << r.int(0, 7) : r.int(1, 255);
      bytes[k]! ^= mask;
      at.push(k);
    }
    return { text: new TextDecoder().decode(bytes), description: `flip ${n} byte(s) at ${at.join(",")}` };
  }
  if (kind === "insert") {
    let out = text;
    const n = r.int(1, 5);
    const what: string[] = [];
    for (let i = 0; i < n; i++) {
      const s = r.pick(INSERTIONS);
      const k = r.int(0, out.length);
      out = out.slice(0, k) + s + out.slice(k);
      what.push(`${JSON.stringify(s)}@${k}`);
    }
    return { text: out, description: `insert ${what.join(" ")}` };
  }
  if (kind === "truncate") {
    if (r.chance(0.3)) {
      const bytes = new TextEncoder().encode(text);
      const k = r.int(0, bytes.length);
      return { text: new TextDecoder().decode(bytes.subarray(0, k)), description: `truncate to ${k} bytes` };
    }
    const k = r.int(0, text.length);
    return { text: text.slice(0, k), description: `truncate to ${k} chars` };
  }
  if (kind === "duplicate") {
    const lines = text.split("\n");
    const how = r.pick(["line", "whole", "many"] as const);
    if (how === "whole") {
      const k = r.int(2, 5);
      return {
        text: Array(k)
          .fill(text)
          .join(r.pick(["\n", ";", ""])),
        description: `whole text ×${k}`,
      };
    }
    const i = r.int(0, lines.length - 1);
    const k = how === "line" ? r.int(2, 4) : r.int(100, 3000);
    lines.splice(i, 0, ...Array(k - 1).fill(lines[i]));
    return { text: lines.join("\n"), description: `line ${i + 1} ×${k}` };
  }
  if (kind === "huge-number") {
    const nums = [...text.matchAll(/-?\d+(\.\d+)?([eE][+-]?\d+)?/g)];
    const h = r.pick(HUGE);
    if (!nums.length) return { text: `${text} ${h}`, description: `append ${h}` };
    const m = r.pick(nums);
    return {
      text: text.slice(0, m.index) + h + text.slice(m.index! + m[0].length),
      description: `number '${m[0]}' at ${m.index} → ${h.length > 30 ? `${h.slice(0, 12)}…(${h.length} chars)` : h}`,
    };
  }
  // long-line
  const how = r.pick([
    "identifier",
    "stages",
    "comment",
    "parens",
    "args",
    "options",
    "percent digits",
    "spaces",
  ] as const);
  const big = r.int(10_000, 200_000);
  let out: string;
  if (how === "identifier") out = `after layer 1 keep 25% by ${"a".repeat(big)}`;
  else if (how === "stages")
    out = Array.from({ length: Math.floor(big / 40) }, (_, i) => `after layer ${i} keep 50% by cls-attn`).join("; ");
  else if (how === "comment") out = `${text}# ${"x".repeat(big * 5)}`;
  else if (how === "parens")
    out = `after layer 1 keep 25% by cls-attn${"(".repeat(big)}${")".repeat(r.chance(0.5) ? big : 0)}`;
  else if (how === "args")
    out = `after layer 1 keep 25% by random(${Array.from({ length: Math.floor(big / 10) }, (_, i) => `seed: ${i}`).join(", ")})`;
  else if (how === "options")
    out = `after layer 1 keep 25% by cls-attn with ${Array(Math.floor(big / 6))
      .fill("mask")
      .join(", ")}`;
  else if (how === "percent digits") out = `after layer 1 keep ${"9".repeat(big)}.${"9".repeat(10)}% by cls-attn`;
  else out = `${" ".repeat(big)}${text}${"\t".repeat(1000)}`;
  return { text: out, description: `long line: ${how} (${out.length} chars)` };
}
