/**
 * The library API: model bytes + spec text in, pruned model bytes + a report out.
 * Pipeline: decode → check external data → parse spec → analyse → plan (all checks) → apply stages
 * → expose indices → fix output shapes → verify (src/verify) → record metadata → encode. Imports
 * nothing Node-only.
 */
import { create } from "@bufbuild/protobuf";
import {
  StringStringEntryProtoSchema,
  TensorProto_DataType as DT,
  type ModelProto,
  type GraphProto,
  type NodeProto,
} from "./onnx/gen/onnx_pb.js";
import { concat, decodeModel, encodeModelParts } from "./onnx/io.js";
import { checkExternalData } from "./onnx/external.js";
import { Graph, makeNode } from "./ir/graph.js";
import { shallowCopy } from "./ir/copy.js";
import { analyzeTransformer, type TransformerInfo } from "./analysis/transformer.js";
import { inferShapes } from "./analysis/shapes.js";
import type { Dim } from "./analysis/dims.js";
import { parseSpec } from "../grammar/index.js";
import { formatDiagnostics } from "../grammar/diagnostics.js";
import { registry } from "../passes/registry.js";
import { applyStage, type Lowering } from "../passes/prune-stage.js";
import type { StagePlan } from "./plan-types.js";
import { applyMergeStage } from "../passes/merge-stage.js";
import type { TokenAxes } from "../passes/carry-tokens.js";
import { planStages } from "./plan.js";
import { explicitRotary, rotatesInside } from "../passes/explicit-rotary.js";
import { modelInputs } from "./analysis/inputs.js";
import { PrunecError } from "./errors.js";
import { batchDim, valueInfo } from "./ir/value-info.js";
import { VERSION } from "./version.js";
import { verifyCompiled, type VerifyReport } from "./verify/verify.js";

export interface CompileOptions {
  /** Names used in messages (file paths in the CLI). */
  modelName?: string;
  specName?: string;
  /** Add graph outputs `prunec.stageN.indices` (int64 [batch, kept]). */
  exposeIndices?: boolean;
  /**
   * The execution provider the model is for. `webgpu` keeps the added subgraph GPU-resident (no
   * int64 arithmetic, which onnxruntime-web's WebGPU EP runs on the CPU); default `cpu` (any EP).
   */
  target?: "cpu" | "webgpu";
  /**
   * Refuse a spec without stages (empty, blank, comments, sets or a model hint only) with
   * PrunecError "spec" (exit 4) instead of returning an unpruned copy. The CLI sets it; the library
   * default accepts such a spec (the identity schedule).
   */
  requireStages?: boolean;
  /**
   * @internal Tests only, not part of the API: rewrites the graph after the passes and before
   * verification, so a test can prove verification refuses a corrupted stage.
   */
  __testMutate?: (g: GraphProto) => GraphProto;
}

export interface StageReport {
  stage: number;
  layer: number;
  criterion: string;
  tokensIn: Dim;
  tokensOut: Dim;
  line: number;
  /** How selection was lowered (see passes/prune-stage.ts). */
  lowering: Lowering;
  /** `--target webgpu` asked for the GPU-resident lowering and this stage could not have it: why. */
  loweringNote?: string;
}

export interface CompileReport {
  stages: StageReport[];
  /** Tokens each layer processes, dense and after the schedule. */
  tokensPerLayer: { layer: number; dense: Dim | undefined; pruned: Dim | undefined }[];
  /** Names of every node prunec added. */
  addedNodes: string[];
  /**
   * Graph outputs with one row per token whose row count a stage changed (see `PerTokenOutput`):
   * their rows are the kept tokens now, not the dense model's.
   */
  perTokenOutputs: PerTokenOutput[];
  /** What compile verified on the rewritten graph before encoding it (src/verify). */
  verification: VerifyReport;
}

/** A graph output whose token axis a stage shrank. */
export interface PerTokenOutput {
  output: string;
  /** The output's axis that counts tokens. */
  axis: number;
  /** Rows before and after the schedule (symbolic names where the count is per input). */
  denseRows: Dim;
  rows: Dim;
  /** The stages that removed its rows (0-based), in order. */
  stages: number[];
  /**
   * Where each row's position is found: `prunec.stageN.indices` of each stage (with
   * --expose-indices), numbered as that stage's input tokens; compose them in order.
   */
  positions: string[];
}

export interface CompileResult {
  /** The pruned model (assembled on first access from `parts`). */
  readonly model: Uint8Array;
  /** The same bytes as consecutive segments, for writing without assembling (weights are views). */
  parts: Uint8Array[];
  report: CompileReport;
}

/**
 * `tokens SET = input NAME` naming an input the model lacks adds it: a boolean [batch, sequence]
 * mask the caller feeds (language.md). Only sets a stage uses are added.
 */
function withSetInputs(graph: GraphProto, spec: ReturnType<typeof parseOrThrow>, plans: StagePlan[], info: TransformerInfo): GraphProto {
  const used = new Set(plans.flatMap((p) => (p.ofSet ? [p.ofSet.input] : [])));
  const existing = new Set(graph.input.map((i) => i.name));
  const added = spec.tokenSets.filter((t) => t.source.kind === "input" && used.has(t.source.input) && !existing.has(t.source.input));
  if (!added.length) return graph;
  const dims = [batchDim(graph) ?? "batch", info.tokens ?? "sequence"];
  return shallowCopy(graph, { input: [...graph.input, ...added.map((t) => valueInfo((t.source as { input: string }).input, DT.BOOL, dims))] });
}

/** The refusal of a spec that prunes nothing (compile with `requireStages`, and `check`). */
export function noStagesMessage(specName: string): string {
  return `${specName}: no stages: the spec prunes nothing (an unpruned copy is not written)`;
}

export function parseOrThrow(specText: string, specName: string) {
  const { spec, diagnostics } = parseSpec(specText, specName, registry);
  if (!spec || diagnostics.length) throw new PrunecError("spec", formatDiagnostics(diagnostics, specText), diagnostics);
  return spec;
}

export function opsetOf(model: ModelProto): number {
  const entry = model.opsetImport.find((o) => o.domain === "" || o.domain === "ai.onnx");
  return entry ? Number(entry.version) : 0;
}

export function compile(modelBytes: Uint8Array, specText: string, options: CompileOptions = {}): CompileResult {
  const { model: out, report: rep } = compileModel(modelBytes, specText, options);
  const parts = encodeModelParts(out);
  let bytes: Uint8Array | undefined;
  return {
    get model() {
      bytes ??= concat(parts);
      return bytes;
    },
    parts,
    report: rep,
  };
}

/** Everything compile does but encoding: the pruned, verified model and its report (`check` runs this too). */
export function compileModel(modelBytes: Uint8Array, specText: string, options: CompileOptions = {}): { model: ModelProto; report: CompileReport } {
  const modelName = options.modelName ?? "model";
  const specName = options.specName ?? "spec.prune";
  const model = decodeModel(modelBytes, modelName);
  checkExternalData(model, modelName);
  const spec = parseOrThrow(specText, specName);
  if (options.requireStages && !spec.stages.length) throw new PrunecError("spec", noStagesMessage(specName));
  const dense = new Graph(model.graph!);
  let info = analyzeTransformer(dense, modelName);
  // Stages are placed by file position: an input written out of topological order is sorted first (the same nodes).
  const order = dense.order;
  const graph = order.every((n, i) => n === model.graph!.node[i]) ? model.graph! : shallowCopy(model.graph!, { node: order });
  let plans = planStages(spec, info, modelInputs(graph));
  const opset = opsetOf(model);
  if (plans.length && opset < 13) {
    throw new PrunecError("apply", `${modelName}: opset ${opset} is too old; prunec emits opset-13 operators (re-export with opset ≥ 13)`);
  }

  let g: GraphProto = withSetInputs(graph, spec, plans, info);
  const added: NodeProto[] = [];
  const carried = new Map<string, TokenAxes>();
  // Attention that rotates q/k inside the op, from the first stage's layer on: rotary moves out of
  // it, so kept tokens keep their positions; the stages are planned again on the rewritten graph.
  const first = Math.min(...plans.filter((p) => !p.encoder).map((p) => p.layer.index));
  if (info.layers.slice(first).some(rotatesInside)) {
    const rotary = explicitRotary(g, info, first, opset, modelName);
    g = rotary.graph;
    added.push(...rotary.added);
    carried.set(rotary.positions!, { axes: [1], rank: 2 });
    info = analyzeTransformer(new Graph(g), modelName);
    plans = planStages(spec, info, modelInputs(g));
  }
  const indices: string[] = [];
  /** Adaptive stages: stage → int64 [B] tokens each example keeps. */
  const counts = new Map<number, string>();
  const lowerings: { lowering: Lowering; note?: string }[] = [];
  let maskBias: string | undefined;
  let validBias: string | undefined;
  // Token sets a stage restricts to start as their mask inputs; each stage gathers them (passes/prune-stage.ts).
  let sets = new Map(plans.flatMap((p) => (p.ofSet ? [[p.ofSet.name, p.ofSet.input] as const] : [])));
  for (const plan of plans) {
    const biases = { ...(maskBias ? { maskBias } : {}), ...(validBias ? { validBias } : {}) };
    const stageOptions = { opset, target: options.target ?? "cpu", expose: options.exposeIndices ?? false, carried, sets, ...biases } as const;
    const result = plan.merge ? applyMergeStage(g, info, plan, stageOptions) : applyStage(g, info, plan, stageOptions);
    for (const [t, axes] of result.carried) carried.set(t, axes);
    maskBias = result.maskBias ?? maskBias;
    validBias = result.validBias;
    sets = result.sets;
    g = result.graph;
    added.push(...result.added);
    if (result.indices) indices.push(result.indices);
    if (result.counts) counts.set(indices.length - 1, result.counts);
    lowerings.push({ lowering: result.lowering, ...(result.loweringNote ? { note: result.loweringNote } : {}) });
  }
  if (options.exposeIndices) g = exposeIndices(g, indices, counts, info, plans);
  if (plans.length) g = refreshOutputShapes(g, graph, plans);
  g = declareEncoderOutputs(g, plans);
  const perTokenOutputs = plans.length ? shrunkOutputs(graph, g, info, plans) : [];
  if (options.__testMutate) g = options.__testMutate(g);
  // Post-condition: a well-formed graph whose shapes agree with every stage's token count.
  const verification = verifyCompiled(g, graph, plans, info, modelName);

  const rep: CompileReport = { ...report(info, plans, added, spec.stages.map((s) => s.span.line), lowerings), perTokenOutputs, verification };
  return { model: shallowCopy(model, { graph: g, metadataProps: withMetadata(model, specText, rep) }), report: rep };
}

/** Metadata keys prunec writes; `eval` and `report` read the token counts back. */
export const META = { version: "prunec.version", spec: "prunec.spec", tokens: "prunec.tokens_per_layer" } as const;

function withMetadata(model: ModelProto, specText: string, rep: CompileReport) {
  const ours = new Map<string, string>([
    [META.version, VERSION],
    [META.spec, specText],
    [META.tokens, JSON.stringify(rep.tokensPerLayer.map((t) => t.pruned ?? null))],
  ]);
  const kept = model.metadataProps.filter((p) => !ours.has(p.key));
  return [...kept, ...[...ours].map(([key, value]) => create(StringStringEntryProtoSchema, { key, value }))];
}

function exposeIndices(g: GraphProto, indices: string[], counts: ReadonlyMap<number, string>, info: TransformerInfo, plans: StagePlan[]): GraphProto {
  const batch = batchDim(g);
  const batchDimOut = info.batchAxis === undefined ? 1 : batch ?? "batch";
  const nodes = indices.map((t, i) => makeNode("Identity", [t], [`prunec.stage${i}.indices`], `prunec/stage${i}/expose_indices`));
  const outputs = plans.map((p, i) => {
    const kept = typeof p.tokensOut === "number" ? p.tokensOut : `prunec_stage${i}_kept`;
    return valueInfo(`prunec.stage${i}.indices`, DT.INT64, [batchDimOut, kept]);
  });
  // Adaptive stages: how many of each row's positions the example really keeps (the rest pad to the batch maximum).
  for (const [i, t] of counts) {
    nodes.push(makeNode("Identity", [t], [`prunec.stage${i}.counts`], `prunec/stage${i}/expose_counts`));
    outputs.push(valueInfo(`prunec.stage${i}.counts`, DT.INT64, [batchDimOut]));
  }
  return shallowCopy(g, { node: [...g.node, ...nodes], output: [...g.output, ...outputs] });
}

/** An `after encoder` stage shrinks the output it acts on: declare its kept row count. */
function declareEncoderOutputs(g: GraphProto, plans: StagePlan[]): GraphProto {
  const encoder = plans.find((p) => p.encoder);
  if (!encoder?.encoder) return g;
  const { tensor, tokenAxis } = encoder.encoder;
  const rows = typeof encoder.tokensOut === "number" ? encoder.tokensOut : undefined;
  return shallowCopy(g, {
    output: g.output.map((o) => {
      if (o.name !== tensor || o.type?.value.case !== "tensorType" || !o.type.value.value.shape) return o;
      const dims = o.type.value.value.shape.dim.map((d, i): Dim | undefined =>
        i === tokenAxis ? rows : d.value.case === "dimValue" ? Number(d.value.value) : d.value.case === "dimParam" ? d.value.value : undefined,
      );
      return valueInfo(o.name, o.type.value.value.elemType, dims);
    }),
  });
}

/**
 * Graph outputs of the dense model with a token axis (the dense token count at some axis) whose
 * row count differs in the pruned graph: a stage below which they are computed shrank them. The
 * model's interface changes there, so compile says so (the CLI prints it, --json and the report
 * carry it). Masked stages change no shape and are not listed.
 */
function shrunkOutputs(original: GraphProto, pruned: GraphProto, info: TransformerInfo, plans: StagePlan[]): PerTokenOutput[] {
  const dense = info.tokens;
  if (dense === undefined) return [];
  const after = inferShapes(new Graph(pruned));
  const g = new Graph(original);
  // Outputs computed below each stage's gather (the encoder's output for `after encoder`).
  const below = plans.map((p) => {
    const r = p.encoder?.tensor ?? p.layer.residual?.output ?? "";
    return new Set([r, ...[...g.descendants(r)].flatMap((n) => n.output)]);
  });
  const result: PerTokenOutput[] = [];
  for (const o of original.output) {
    const before = info.shapes.get(o.name);
    const now = after.get(o.name);
    const axis: number = before ? before.indexOf(dense) : -1;
    if (!before || axis < 0 || before.lastIndexOf(dense) !== axis || now?.[axis] === dense) continue;
    const stages = plans.filter((p, i) => !p.mask && p.tokensOut !== p.tokensIn && below[i]!.has(o.name)).map((p) => p.stage);
    if (!stages.length) continue;
    result.push({ output: o.name, axis, denseRows: dense, rows: now?.[axis] ?? "?", stages, positions: stages.map((s) => `prunec.stage${s}.indices`) });
  }
  return result;
}

/** Graph outputs below a stage keep their declared shape only where it still holds. */
function refreshOutputShapes(g: GraphProto, original: GraphProto, plans: StagePlan[]): GraphProto {
  // Only a declared size equal to a token count a stage changed can have gone stale.
  const counts = new Set(plans.flatMap((p) => [p.tokensIn, typeof p.tokensIn === "number" ? p.tokensIn - p.prefix : -1]));
  const suspect = original.output.some((o) => o.type?.value.case === "tensorType" && (o.type.value.value.shape?.dim ?? []).some((d) => d.value.case === "dimValue" && counts.has(Number(d.value.value))));
  const symbolic = plans.some((p) => typeof p.tokensIn !== "number");
  if (!suspect && !symbolic) return g;
  const shapes = inferShapes(new Graph(g));
  const declared = new Set(original.output.map((o) => o.name));
  return shallowCopy(g, {
    output: g.output.map((o) => {
      if (!declared.has(o.name) || o.type?.value.case !== "tensorType") return o;
      const tensor = o.type.value.value;
      const inferred = shapes.get(o.name);
      const dims = tensor.shape?.dim ?? [];
      const same = inferred !== undefined && inferred.length === dims.length && dims.every((d, i) => d.value.case !== "dimValue" || Number(d.value.value) === inferred[i]);
      if (same || !tensor.shape) return o;
      return valueInfo(o.name, tensor.elemType, inferred ?? dims.map(() => undefined));
    }),
  });
}

function report(info: TransformerInfo, plans: StagePlan[], added: NodeProto[], lines: number[], lowerings: { lowering: Lowering; note?: string }[]): Omit<CompileReport, "verification" | "perTokenOutputs"> {
  const stages = plans.map((p, i) => ({
    lowering: lowerings[i]!.lowering,
    ...(lowerings[i]!.note ? { loweringNote: lowerings[i]!.note } : {}),
    stage: p.stage,
    layer: p.layer.index,
    criterion: p.criterion.name,
    tokensIn: p.tokensIn,
    tokensOut: p.tokensOut,
    line: lines[i] ?? 0,
  }));
  let current: Dim | undefined = info.tokens;
  const tokensPerLayer = info.layers.map((l) => {
    const row = { layer: l.index, dense: info.tokens, pruned: current };
    const stage = plans.find((p) => p.layer.index === l.index);
    // A masked stage removes nothing: later layers still compute every token.
    if (stage && !stage.mask) current = stage.tokensOut;
    return row;
  });
  return { stages, tokensPerLayer, addedNodes: added.map((n) => n.name) };
}
