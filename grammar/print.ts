/** printSpec: the canonical text of an IR. parseSpec(printSpec(ir)) gives the same IR, spans and text aside. */
import type { Amount, ArgValue, SpecIR, StageIR, StagePosition, TokenSetDecl } from "./ir.js";

/** The position phrase; empty for `all-layers` (a `keep kv` stage without one). */
function position(p: StagePosition): string {
  switch (p.kind) {
    case "all-layers":
      return "";
    case "in-layers":
      return `in layers ${p.from}..${p.to}`;
    case "after-layer":
      return `after layer ${p.layer}`;
    case "in-layer":
      return `in layer ${p.layer}`;
    case "after-encoder":
      return "after encoder";
    case "before-layer-0":
      return "before layer 0";
  }
}

function amount(a: Amount, heads: boolean): string {
  switch (a.kind) {
    case "percent":
      return `${a.value}%`;
    case "count":
      return heads ? String(a.value) : `${a.value} tokens`;
    case "mass":
      return `mass ${a.value}%`;
    case "above":
      return `above ${a.value}`;
  }
}

function argValue(v: ArgValue): string {
  return Array.isArray(v) ? `${v[0]}..${v[1]}` : String(v);
}

/** `name` or `name(k: v, …)`: a criterion or an option with the arguments written. */
function withArgs(name: string, args: Record<string, ArgValue>): string {
  const written = Object.entries(args).map(([k, v]) => `${k}: ${argValue(v)}`);
  return written.length > 0 ? `${name}(${written.join(", ")})` : name;
}

function stage(s: StageIR): string {
  const where = position(s.position);
  const parts = where === "" ? [] : [where];
  if (s.during === "decode") parts.push("during decode");
  parts.push(s.action);
  if (s.target !== "stream") parts.push(s.target);
  if (s.amount !== undefined) parts.push(amount(s.amount, s.target === "heads"));
  if (s.of !== undefined) parts.push(`of ${s.ofEach ? "each " : ""}${s.of}`);
  parts.push(`by ${withArgs(s.criterion.name.toLowerCase(), s.criterion.args)}`);
  if (s.options.length > 0) parts.push(`with ${s.options.map((o) => withArgs(o, s.optionArgs?.[o] ?? {})).join(", ")}`);
  if (s.across !== undefined) parts.push(`across ${s.across}`);
  return parts.join(" ");
}

function tokenSet(t: TokenSetDecl): string {
  return `tokens ${t.name} = ${t.source.kind === "input" ? `input ${t.source.input}` : `after ${t.source.set}`}`;
}

/** One statement per line: the model hint, then token sets, then stages, each in IR order; ends with a newline. */
export function printSpec(spec: SpecIR): string {
  const lines: string[] = [];
  if (spec.model !== undefined) lines.push(`model ${spec.model.name}`);
  for (const t of spec.tokenSets) lines.push(tokenSet(t));
  for (const s of spec.stages) lines.push(stage(s));
  return lines.map((l) => `${l}\n`).join("");
}
