/** `prunec inspect`: what the analysis found, as a table for people and as JSON for tools. */
import { renderTable } from "./table.js";
import { decodeModel } from "./onnx/io.js";
import { checkExternalData } from "./onnx/external.js";
import { Graph } from "./ir/graph.js";
import { analyzeTransformer, type LayerInfo, type TransformerInfo } from "./analysis/transformer.js";
import type { Dim } from "./analysis/dims.js";
import type { SpatialMerge } from "./analysis/merge.js";
import { explainNoAttention, explainTransformer, type Explanation } from "./analysis/explain.js";
import { missText, type Step } from "./analysis/match.js";
import { CRITERIA, registry, requiredSets } from "../passes/registry.js";
import { parseSpec } from "../grammar/parse-spec.js";
import { planStages } from "./plan.js";
import { PrunecError } from "./errors.js";
import type { CriterionModule } from "../passes/criterion.js";
import { opsetOf } from "./compile.js";

export interface CriterionReport {
  name: string;
  ok: boolean;
  /** The planner's message when the criterion cannot run there. */
  why?: string;
}

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
  criteria: CriterionReport[];
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
  /** Why prunec cannot prove the token structure (every stage is refused), or null. */
  unproven: string | null;
  cls: TransformerInfo["cls"];
  /** Spatial merge after the encoder (token fold or pooling), if any. */
  merge: SpatialMerge | null;
  /** Criteria an `after encoder` stage can use (scored at the last layer). */
  afterEncoder: CriterionReport[];
  externalData: number;
  layers: LayerReport[];
  /** With `explain`: what the matchers looked for and where matching stopped (src/analysis/explain.ts). */
  explanation?: Explanation;
}

export interface InspectOptions {
  /** Add `explanation` to the report. */
  explain?: boolean;
}

/**
 * Whether `position keep 50% by CRITERION` (`merge 25%` for similarity) would compile as a first stage, asked of the planner
 * itself, so inspect says exactly what compile would. Required layer arguments get the layer
 * itself (`layers: l..l`, `object_layer: l`), which every such criterion accepts when the layer
 * qualifies. Returns the planner's message, or undefined.
 */
function probe(info: TransformerInfo, position: string, c: CriterionModule, layer: number): string | undefined {
  const args = Object.entries(c.args)
    .filter(([, a]) => a.default === undefined)
    .map(([name, a]) => `${name}: ${a.type === "range" ? `${layer}..${layer}` : layer}`);
  // similarity is ToMe's merge criterion: probe it with a merge (25% stays under ToMe's cap of half the tokens).
  const action = c.name === "similarity" ? "merge 25%" : "keep 50%";
  // Token sets a criterion needs are declared as new mask inputs (what a spec would do).
  const sets = requiredSets(c.name)
    .map((set) => `tokens ${set} = input ${set}_mask\n`)
    .join("");
  // A criterion that only runs across frames (evs) is probed as such.
  const across = c.frames?.required ? " across frames" : "";
  const text = `${sets}${position} ${action} by ${c.name}${args.length ? `(${args.join(", ")})` : ""}${across}`;
  const { spec, diagnostics } = parseSpec(text, "inspect", registry);
  if (!spec) return diagnostics[0]?.message ?? "does not parse";
  try {
    planStages(spec, info);
    return undefined;
  } catch (e) {
    if (!(e instanceof PrunecError)) throw e;
    const message = e.diagnostics[0]?.message ?? e.message;
    // "X cannot run after layer L: why" → "why" (the table already says which criterion and layer).
    const prefix = new RegExp(`^${c.name} cannot run [^:]*: `);
    return message.replace(prefix, "");
  }
}

function criteriaAt(info: TransformerInfo, position: string, layer: number): CriterionReport[] {
  return CRITERIA.map((c) => {
    const why = probe(info, position, c, layer);
    return why ? { name: c.name, ok: false, why } : { name: c.name, ok: true };
  });
}

function layerReport(info: TransformerInfo, l: LayerInfo): LayerReport {
  return {
    index: l.index,
    name: l.name ?? null,
    attention: l.kind,
    anchor: l.core?.anchor.name ?? null,
    heads: l.heads ?? null,
    headSize: l.headSize ?? null,
    probabilities: l.core?.probs ? (l.probsLayout ?? "unknown layout") : null,
    quantization: l.quantization ?? null,
    rotary: l.rotary,
    residual: l.residual ? { input: l.residual.input, output: l.residual.output } : null,
    criteria: criteriaAt(info, `after layer ${l.index}`, l.index),
  };
}

/** The analysis; with `explain`, a model with no transformer layers is refused with why each Softmax is not attention. */
function analyzeWithReasons(g: Graph, modelName: string, explain: boolean): TransformerInfo {
  try {
    return analyzeTransformer(g, modelName);
  } catch (e) {
    if (!explain || !(e instanceof PrunecError) || e.kind !== "analysis") throw e;
    throw new PrunecError("analysis", [e.message, ...explainNoAttention(g).map((l) => `  ${l}`)].join("\n"));
  }
}

export function inspectModel(bytes: Uint8Array, modelName: string, options: InspectOptions = {}): InspectReport {
  const model = decodeModel(bytes, modelName);
  const ext = checkExternalData(model, modelName);
  const g = new Graph(model.graph!);
  const info = analyzeWithReasons(g, modelName, options.explain ?? false);
  const io = (names: string[]) => names.map((name) => ({ name, shape: info.shapes.get(name) ?? null }));
  const report: InspectReport = {
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
    unproven: info.unproven ?? null,
    cls: info.cls,
    merge: info.merge ?? null,
    afterEncoder: criteriaAt(info, "after encoder", info.layers.length - 1),
    externalData: ext.length,
    layers: info.layers.map((l) => layerReport(info, l)),
  };
  if (options.explain) report.explanation = explainTransformer(g, info);
  return report;
}

const stepText = (s: Step): string => `${s.looked}: ${s.found ?? `not found: ${s.miss ? missText(s.miss) : "?"}`}`;

/** `inspect --explain`'s text: per layer, what was looked for and where matching stopped; then the model-level facts. */
export function formatExplanation(e: Explanation): string {
  const lines = ["explanation (what prunec looked for, and where matching stopped):"];
  lines.push(`  layers:          ${e.layering}`);
  lines.push(`  token axis:      ${e.tokenAxis}`);
  lines.push(`  CLS:             ${e.cls}`);
  lines.push(`  token structure: ${e.tokenStructure}`);
  for (const l of e.layers) {
    lines.push(`  layer ${l.index}${l.name ? ` ('${l.name}')` : ""}:`);
    lines.push(`    ${stepText(l.attention)}`);
    for (const s of l.residual) lines.push(`    ${stepText(s)}`);
    lines.push(
      `    residual block: ${l.block ? `found (${l.block.layout}): '${l.block.input}' → '${l.block.output}'` : "not found, so no stage can act after this layer"}`,
    );
    for (const m of l.notAttention) lines.push(`    Softmax '${m.softmax}' is not attention: ${missText(m)}`);
    if (l.notAttentionOmitted) lines.push(`    and ${l.notAttentionOmitted} more Softmax nodes that are not attention`);
  }
  if (e.notAttention.length) {
    lines.push(`  Softmax nodes outside the layers that are not attention:`);
    for (const m of e.notAttention) lines.push(`    '${m.softmax}': ${missText(m)}`);
    if (e.notAttentionOmitted) lines.push(`    and ${e.notAttentionOmitted} more`);
  }
  return lines.join("\n");
}

function mergeText(m: SpatialMerge): string {
  if (m.kind === "pool" && m.kernel && m.grid)
    return `${m.kernel.join("×")} pool over the ${m.grid.join("×")} token grid (${m.groupSize} tokens → 1)`;
  return `fold of ${m.groupSize} consecutive tokens into one`;
}

const shapeText = (s: Dim[] | null): string => (s ? `[${s.join(", ")}]` : "[?]");

/** The report as text; `width`: the table fits it (the criteria wrap, or go under each row), and the CLI wraps the prose. */
export function formatInspect(r: InspectReport, options: { width?: number } = {}): string {
  const lines: string[] = [];
  lines.push(
    `${r.model}: ${r.layerCount} transformer layers (opset ${r.opset}, IR ${r.irVersion}${r.producer ? `, ${r.producer}` : ""})`,
  );
  lines.push(`  inputs:  ${r.inputs.map((i) => `${i.name} ${shapeText(i.shape)}`).join(", ")}`);
  lines.push(`  outputs: ${r.outputs.map((o) => `${o.name} ${shapeText(o.shape)}`).join(", ")}`);
  const axes =
    r.tokenAxis === null
      ? "unknown"
      : `token axis ${r.tokenAxis}, ${r.batchAxis === null ? "no batch axis" : `batch axis ${r.batchAxis}`}`;
  lines.push(
    r.unproven
      ? `  tokens:  not provable, so no stage compiles: ${r.unproven}`
      : `  tokens:  ${r.tokens ?? "?"} (${axes}), hidden ${r.hidden ?? "?"}`,
  );
  lines.push(
    `  CLS:     ${r.cls.present ? `yes, at index ${r.cls.index}${r.cls.prefixTokens > 1 ? ` (${r.cls.prefixTokens} special tokens in front)` : ""}` : "no"}`,
  );
  if (r.merge) lines.push(`  merge:   ${mergeText(r.merge)} after the encoder (${r.merge.node})`);
  if (r.externalData)
    lines.push(`  weights: ${r.externalData} initializers in external data files (not needed to compile)`);
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
  lines.push(
    "",
    ...renderTable(header, rows, {
      width: options.width,
      indent: "  ",
      rule: true,
      wrap: header.length - 1,
      stack: "criteria",
    }),
  );
  const reasons = new Map<string, string>();
  for (const l of r.layers)
    for (const c of l.criteria)
      if (!c.ok && c.why && !reasons.has(c.name)) reasons.set(c.name, `layer ${l.index}: ${c.why}`);
  if (!r.unproven) for (const [name, why] of reasons) lines.push(`  ${name} unavailable at ${why}`);
  const encoder = r.afterEncoder.filter((c) => c.ok).map((c) => c.name);
  lines.push(
    "",
    `  after encoder: ${encoder.length ? encoder.join(", ") : `no criterion (${r.afterEncoder[0]?.why ?? "?"})`}`,
  );
  if (r.explanation) lines.push("", formatExplanation(r.explanation));
  return lines.join("\n");
}
