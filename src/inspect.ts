/** `prunec inspect`: what the analysis found, as a table for people and as JSON for tools. */
import { decodeModel } from "./onnx/io.js";
import { checkExternalData } from "./onnx/external.js";
import { Graph } from "./ir/graph.js";
import { analyzeTransformer, type LayerInfo, type TransformerInfo } from "./analysis/transformer.js";
import type { Dim } from "./analysis/dims.js";
import type { SpatialMerge } from "./analysis/merge.js";
import { CRITERIA } from "../passes/registry.js";
import { argsWithDefaults, type CriterionInfo } from "../grammar/registry.js";
import type { ArgValue } from "../grammar/ir.js";
import { opsetOf } from "./compile.js";

export interface LayerReport {
  index: number;
  name: string | null;
  attention: string;
  anchor: string | null;
  heads: number | null;
  headSize: number | null;
  probabilities: string | null;
  quantization: string | null;
  rotary: boolean;
  residual: { input: string; output: string } | null;
  /** Criteria that can run at this layer, and why the others cannot. */
  criteria: { name: string; ok: boolean; why?: string }[];
}

export interface InspectReport {
  model: string;
  opset: number;
  irVersion: number;
  producer: string;
  inputs: { name: string; shape: Dim[] | null }[];
  outputs: { name: string; shape: Dim[] | null }[];
  layerCount: number;
  hidden: number | null;
  tokens: Dim | null;
  tokenAxis: number | null;
  batchAxis: number | null;
  cls: TransformerInfo["cls"];
  /** Spatial merge after the encoder (token fold or pooling), if any. */
  merge: SpatialMerge | null;
  externalData: number;
  layers: LayerReport[];
}

/**
 * Arguments for asking whether a criterion can run at layer `l` in a first stage: defaults, and for
 * required layer arguments the layer itself (`layers: l..l`, `object_layer: l`), the one choice
 * every such criterion accepts when the layer itself qualifies.
 */
function probeArgs(c: CriterionInfo, l: number): Record<string, ArgValue> {
  const given: Record<string, ArgValue> = {};
  for (const [name, arg] of Object.entries(c.args)) {
    if (arg.default !== undefined) continue;
    if (arg.type === "range") given[name] = [l, l];
    else if (arg.type === "integer") given[name] = l;
  }
  return argsWithDefaults(c, given);
}

function layerReport(info: TransformerInfo, l: LayerInfo): LayerReport {
  return {
    index: l.index,
    name: l.name ?? null,
    attention: l.kind,
    anchor: l.core?.anchor.name ?? null,
    heads: l.heads ?? null,
    headSize: l.headSize ?? null,
    probabilities: l.core?.probs ? l.probsLayout ?? "unknown layout" : null,
    quantization: l.quantization ?? null,
    rotary: l.rotary,
    residual: l.residual ? { input: l.residual.input, output: l.residual.output } : null,
    criteria: CRITERIA.map((c) => {
      const facts = { model: info, layer: l, args: probeArgs(c, l.index), tokensIn: info.tokens, firstLayer: 0, prefix: info.cls.prefixTokens };
      const why = c.unsupported(facts) ?? (l.residual ? undefined : "residual stream not found");
      return why ? { name: c.name, ok: false, why } : { name: c.name, ok: true };
    }),
  };
}

export function inspectModel(bytes: Uint8Array, modelName: string): InspectReport {
  const model = decodeModel(bytes, modelName);
  const ext = checkExternalData(model, modelName);
  const g = new Graph(model.graph!);
  const info = analyzeTransformer(g, modelName);
  const io = (names: string[]) => names.map((name) => ({ name, shape: info.shapes.get(name) ?? null }));
  return {
    model: modelName,
    opset: opsetOf(model),
    irVersion: Number(model.irVersion),
    producer: [model.producerName, model.producerVersion].filter(Boolean).join(" "),
    inputs: io([...g.inputs]),
    outputs: io([...g.outputs]),
    layerCount: info.layers.length,
    hidden: info.hidden ?? null,
    tokens: info.tokens ?? null,
    tokenAxis: info.tokenAxis ?? null,
    batchAxis: info.batchAxis ?? null,
    cls: info.cls,
    merge: info.merge ?? null,
    externalData: ext.length,
    layers: info.layers.map((l) => layerReport(info, l)),
  };
}

function mergeText(m: SpatialMerge): string {
  if (m.kind === "pool" && m.kernel && m.grid) return `${m.kernel.join("×")} pool over the ${m.grid.join("×")} token grid (${m.groupSize} tokens → 1)`;
  return `fold of ${m.groupSize} consecutive tokens into one`;
}

const shapeText = (s: Dim[] | null): string => (s ? `[${s.join(", ")}]` : "[?]");

export function formatInspect(r: InspectReport): string {
  const lines: string[] = [];
  lines.push(`${r.model}: ${r.layerCount} transformer layers (opset ${r.opset}, IR ${r.irVersion}${r.producer ? `, ${r.producer}` : ""})`);
  lines.push(`  inputs:  ${r.inputs.map((i) => `${i.name} ${shapeText(i.shape)}`).join(", ")}`);
  lines.push(`  outputs: ${r.outputs.map((o) => `${o.name} ${shapeText(o.shape)}`).join(", ")}`);
  const axes = r.tokenAxis === null ? "unknown" : `token axis ${r.tokenAxis}, ${r.batchAxis === null ? "no batch axis" : `batch axis ${r.batchAxis}`}`;
  lines.push(`  tokens:  ${r.tokens ?? "?"} (${axes}), hidden ${r.hidden ?? "?"}`);
  lines.push(`  CLS:     ${r.cls.present ? `yes, at index ${r.cls.index}${r.cls.prefixTokens > 1 ? ` (${r.cls.prefixTokens} special tokens in front)` : ""}` : "no"}`);
  if (r.merge) lines.push(`  merge:   ${mergeText(r.merge)} after the encoder (${r.merge.node})`);
  if (r.externalData) lines.push(`  weights: ${r.externalData} initializers in external data files (not needed to compile)`);
  const header = ["layer", "attention", "heads", "head size", "probs", "quant", "rotary", "residual", "criteria"];
  const rows = r.layers.map((l) => [
    String(l.index),
    l.attention,
    String(l.heads ?? "?"),
    String(l.headSize ?? "?"),
    l.probabilities ?? "fused",
    l.quantization ?? "-",
    l.rotary ? "yes" : "-",
    l.residual ? "found" : "not found",
    l.criteria.map((c) => (c.ok ? c.name : `no ${c.name}`)).join(", "),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const fmt = (row: string[]) => "  " + row.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  lines.push("", fmt(header), fmt(widths.map((w) => "-".repeat(w))), ...rows.map(fmt));
  const reasons = new Map<string, string>();
  for (const l of r.layers) for (const c of l.criteria) if (!c.ok && c.why && !reasons.has(c.name)) reasons.set(c.name, `layer ${l.index}: ${c.why}`);
  for (const [name, why] of reasons) lines.push(`  ${name} unavailable at ${why}`);
  return lines.join("\n");
}
