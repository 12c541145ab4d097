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
  type ValueInfoProto,
} from "./onnx/gen/onnx_pb.js";
import { concat, decodeModel, encodeModelParts, nodeFields } from "./onnx/io.js";
import { checkExternalData, type ExternalRef } from "./onnx/external.js";
import { Graph, makeNode } from "./ir/graph.js";
import { shallowCopy } from "./ir/copy.js";
import { analyzeTransformer, type TransformerInfo } from "./analysis/transformer.js";
import { analyzeFromInputs } from "./analysis/shapes.js";
import type { Dim } from "./analysis/dims.js";
import { parseSpec } from "../grammar/index.js";
import { formatDiagnostics } from "../grammar/diagnostics.js";
import { registry } from "../passes/registry.js";
import { applyStage } from "../passes/prune-stage.js";
import { advance, initialState, type Lowering, type StageRecord, type StreamState } from "../passes/stream-state.js";
import { ensures } from "../passes/splice.js";
import type { SpecIR } from "../grammar/ir.js";
import type { StagePlan } from "./plan-types.js";
import { applyMergeStage } from "../passes/merge-stage.js";
import { planSpec } from "./plan.js";
import type { HeadPlan, KvPlan } from "./plan-types.js";
import { hostColumns } from "../passes/host-mask.js";
import { restoreTokens, restoreWhere } from "../passes/restore.js";
import { applyKvStage } from "../passes/kv-stage.js";
import { applyKvDecodeStage } from "../passes/kv-decode-stage.js";
import { applyKvCascadeStage } from "../passes/kv-cascade-stage.js";
import { applyHeadStage, type HeadStageResult } from "../passes/head-stage.js";
import { explicitRotary, rotatesInside } from "../passes/explicit-rotary.js";
import { modelInputs } from "./analysis/inputs.js";
import { PrunecError } from "./errors.js";
import { batchDim, valueInfo } from "./ir/value-info.js";
import { VERSION } from "./version.js";
import { verifyCompiled, type VerifyReport } from "./verify/verify.js";
import { stageTarget } from "./verify/stage-shapes.js";
import { foldShapeArithmetic } from "../passes/fold-shapes.js";

export interface CompileOptions {
  /** Names used in messages (file paths in the CLI). */
  modelName?: string;
  specName?: string;
  /** Add graph outputs `prunec.stageN.indices` (int64 [batch, kept]). */
  exposeIndices?: boolean;
  /**
   * KV-cache stages carry each evicted layer's slot validity from call to call
   * (`past_key_values.L.prunec_valid` in, `present.L.prunec_valid` out, float [batch, entries]), so
   * every example of a padded batch keeps its own count. The host feeds the presents back and an
   * empty [batch, 0] validity at the first call (passes/kv-stage.ts `KvState`). A stream stage
   * whose count differs per example on a cached decoder carries its padding's validity the same
   * way (`past_key_values.stageN.prunec_valid`, passes/front-padding.ts), so decode steps keep the
   * padding masked; before linear-attention layers it is required.
   */
  kvState?: boolean;
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
  /**
   * @internal `prunec bench` only: every keep/drop stage keeps its first K' tokens by a static Slice,
   * no scores and no selection (passes/kinds/oracle.ts), to measure what the token counts alone cost.
   */
  oracle?: boolean;
  /**
   * @internal Tests and measurements only: false leaves the exporter's shape arithmetic below the
   * stages as it was (passes/fold-shapes.ts), to check the folded values against onnxruntime's
   * (test/fold-shapes.test.ts) and to measure what folding gains.
   */
  foldShapes?: boolean;
  /**
   * Called with each compile step's name and wall time in ms, in order (`prunec compile --timings`):
   * the front end's parts, the rewrite steps, verification and encoding.
   */
  profile?: (step: string, ms: number) => void;
}

/** Runs `f`, reporting its wall time to `profile` under `name` when one is given. */
function timed<T>(profile: CompileOptions["profile"], name: string, f: () => T): T {
  if (!profile) return f();
  const t0 = performance.now();
  const result = f();
  profile(name, performance.now() - t0);
  return result;
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
  /** KV-cache stages (`keep kv`): the layers whose caches each evicts at prefill. */
  kvStages: KvStageReport[];
  /** Head stages (`keep heads`): the heads each example keeps in the layers after each. */
  headStages: HeadStageReport[];
  /** Tokens each layer processes, dense and after the schedule. */
  tokensPerLayer: { layer: number; dense: Dim | undefined; pruned: Dim | undefined }[];
  /** Names of every node prunec added. */
  addedNodes: string[];
  /** Nodes of the exporter's shape arithmetic below the stages that became constants (passes/fold-shapes.ts). */
  foldedNodes: number;
  /**
   * Graph outputs with one row per token whose row count a stage changed (see `PerTokenOutput`):
   * their rows are the kept tokens now, not the dense model's.
   */
  perTokenOutputs: PerTokenOutput[];
  /** What compile verified on the rewritten graph before encoding it (src/verify). */
  verification: VerifyReport;
}

export interface KvStageReport {
  stage: number;
  criterion: string;
  /** The amount as written, e.g. "keep kv 25%". */
  amount: string;
  layers: number[];
  line: number;
  /** When it evicts: at the prefill only, or at every call (`during decode`). */
  when: "prefill" | "every call";
}

export interface HeadStageReport {
  stage: number;
  criterion: string;
  /** The amount as written, e.g. "keep heads 50%". */
  amount: string;
  /** The layer after which heads leave; layers layer+1..until run `headsOut` heads. */
  layer: number;
  until: number;
  headsIn: number;
  headsOut: number;
  line: number;
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
  /** The pruned graph as encoded (its weights are views of the input's bytes): read it instead of decoding `model`. */
  graph: GraphProto;
  report: CompileReport;
  /** The input model's external data references (location, offset, length per initializer), as checked. */
  inputExternalData: readonly ExternalRef[];
}

/**
 * `tokens SET = input NAME` naming an input the model lacks adds it: a boolean [batch, sequence]
 * mask the caller feeds (language.md). Only sets a stage uses are added.
 */
function withSetInputs(
  graph: GraphProto,
  spec: SpecIR,
  plans: StagePlan[],
  kvPlans: readonly KvPlan[],
  info: TransformerInfo,
): GraphProto {
  const used = new Set([
    ...[...plans, ...kvPlans].flatMap((p) => (p.ofSet ? [p.ofSet.input] : [])),
    ...plans.flatMap((p) => Object.values(p.readSets ?? {})),
  ]);
  const existing = new Set(graph.input.map((i) => i.name));
  const added = spec.tokenSets.filter(
    (t) => t.source.kind === "input" && used.has(t.source.input) && !existing.has(t.source.input),
  );
  if (!added.length) return graph;
  const dims = [batchDim(graph) ?? "batch", info.tokens ?? "sequence"];
  return shallowCopy(graph, {
    input: [...graph.input, ...added.map((t) => valueInfo((t.source as { input: string }).input, DT.BOOL, dims))],
  });
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
  const { model: out, report: rep, inputExternalData, input } = compileModel(modelBytes, specText, options);
  // The input's nodes that the compile kept are written as their bytes there (passes never mutate a node).
  const parts = timed(options.profile, "encode", () => encodeModelParts(out, nodeFields(input, modelBytes)));
  let bytes: Uint8Array | undefined;
  return {
    get model() {
      bytes ??= concat(parts);
      return bytes;
    },
    parts,
    graph: out.graph!,
    report: rep,
    inputExternalData,
  };
}

/** What the compile steps read and return: the inputs as analysed and planned, the graph so far, the stream state. */
interface Compilation {
  readonly options: CompileOptions;
  readonly modelName: string;
  /** The input's external data references, checked (none escapes the model's folder). */
  readonly inputExternalData: readonly ExternalRef[];
  readonly specText: string;
  readonly spec: SpecIR;
  readonly model: ModelProto;
  readonly opset: number;
  /** The input graph in topological order (stages are placed by file position). */
  readonly input: GraphProto;
  info: TransformerInfo;
  plans: StagePlan[];
  /** KV-cache stages (`keep kv`), applied after the stream stages. */
  kvPlans: KvPlan[];
  /** Head stages (`keep heads`), applied after the stream stages. */
  headPlans: HeadPlan[];
  /** Per head stage: int64 [B, K] the heads each example keeps (dense ids). */
  headIndices: Map<number, string>;
  /** Per KV stage: its kept positions per layer (int64 [B, kvH, K']). */
  kvIndices: Map<number, Map<number, string>>;
  /** The graph as the steps so far left it. */
  graph: GraphProto;
  state: StreamState;
  perTokenOutputs: PerTokenOutput[];
  /** Nodes the shape folding removed. */
  foldedNodes: number;
}

/**
 * The rewrite, as named steps over the planned compilation. Each returns the next compilation;
 * after each (but the test hook) the graph is checked well formed (passes/splice.ts `ensures`).
 */
const STEPS: readonly { name: string; run: (c: Compilation) => Compilation; unchecked?: true }[] = [
  {
    name: "add token-set inputs",
    run: (c) => ({ ...c, graph: withSetInputs(c.graph, c.spec, c.plans, c.kvPlans, c.info) }),
  },
  { name: "move rotary out of fused attention", run: moveRotary },
  { name: "apply stages", run: applyStages },
  {
    name: "restore dropped tokens",
    run: (c) => {
      const records = c.state.stages.flatMap((s) => (s.restore ? [s.restore] : []));
      return records.length ? { ...c, graph: restoreTokens(c.graph, c.info, records, c.opset) } : c;
    },
  },
  { name: "prune heads", run: pruneHeads },
  { name: "evict KV caches", run: evictCaches },
  {
    name: "expose indices",
    run: (c) =>
      c.options.exposeIndices
        ? {
            ...c,
            graph: exposeHeads(
              exposeKvIndices(exposeIndices(c.graph, c.state.stages, c.info, c.plans), c.kvIndices),
              c.headIndices,
            ),
          }
        : c,
  },
  { name: "declare evicted caches", run: (c) => ({ ...c, graph: declareEvictedCaches(c.graph, c.kvPlans) }) },
  {
    name: "fold shape arithmetic below stages",
    run: (c) => {
      if (c.options.foldShapes === false) return c;
      const graph = foldShapeArithmetic(
        c.graph,
        c.plans.flatMap((p) => stageTarget(p, c.info)?.tensor ?? []),
      );
      return { ...c, graph, foldedNodes: c.graph.node.length - graph.node.length };
    },
  },
  {
    name: "refresh output shapes",
    run: (c) => (c.plans.length ? { ...c, graph: refreshOutputShapes(c.graph, c.input, c.plans) } : c),
  },
  { name: "declare encoder outputs", run: (c) => ({ ...c, graph: declareEncoderOutputs(c.graph, c.plans) }) },
  {
    name: "list per-token outputs",
    run: (c) => ({
      ...c,
      perTokenOutputs: c.plans.length ? wholeIfRestored(shrunkOutputs(c.input, c.graph, c.info, c.plans), c) : [],
    }),
  },
  {
    name: "test mutation",
    run: (c) => (c.options.__testMutate ? { ...c, graph: c.options.__testMutate(c.graph) } : c),
    unchecked: true,
  },
];

/** Everything compile does but encoding: the pruned, verified model and its report (`check` runs this too). */
export function compileModel(
  modelBytes: Uint8Array,
  specText: string,
  options: CompileOptions = {},
): { model: ModelProto; report: CompileReport; inputExternalData: readonly ExternalRef[]; input: ModelProto } {
  let c = frontEnd(modelBytes, specText, options);
  for (const step of STEPS) {
    const next = step.unchecked ? step.run(c) : timed(options.profile, step.name, () => step.run(c));
    if (!step.unchecked && next.graph !== c.graph)
      timed(options.profile, "ensures", () => ensures(c.graph, next.graph, `compile step '${step.name}'`));
    c = next;
  }
  // Post-condition: a well-formed graph whose shapes agree with every stage's token count.
  const verification = timed(options.profile, "verify", () =>
    verifyCompiled(c.graph, c.input, c.plans, c.info, c.modelName),
  );
  const rep: CompileReport = {
    ...report(
      c.info,
      c.plans,
      c.state,
      c.spec.stages.map((s) => s.span.line),
    ),
    kvStages: c.kvPlans.map((p) => ({
      stage: p.stage,
      criterion: p.criterion.name,
      amount: p.text,
      layers: p.layers.map((l) => l.index),
      line: c.spec.stages[p.stage]?.span.line ?? 0,
      when: p.decode ? ("every call" as const) : ("prefill" as const),
    })),
    headStages: c.headPlans.map((p) => ({
      stage: p.stage,
      criterion: p.criterion.name,
      amount: p.text,
      layer: p.layer.index,
      until: p.until,
      headsIn: p.headsIn,
      headsOut: p.keep,
      line: c.spec.stages[p.stage]?.span.line ?? 0,
    })),
    perTokenOutputs: c.perTokenOutputs,
    foldedNodes: c.foldedNodes,
    verification,
  };
  return {
    model: shallowCopy(c.model, { graph: c.graph, metadataProps: withMetadata(c.model, specText, rep) }),
    report: rep,
    inputExternalData: c.inputExternalData,
    // The input as decoded: its nodes are the compiled model's wherever a pass left them.
    input: c.model,
  };
}

/** Decode, check external data, parse, analyse, sort, plan: every refusal happens here, before any rewrite. */
function frontEnd(modelBytes: Uint8Array, specText: string, options: CompileOptions): Compilation {
  const modelName = options.modelName ?? "model";
  const specName = options.specName ?? "spec.prune";
  const at = <T>(name: string, f: () => T): T => timed(options.profile, name, f);
  const model = at("decode", () => decodeModel(modelBytes, modelName));
  const inputExternalData = checkExternalData(model, modelName);
  const spec = at("parse", () => parseOrThrow(specText, specName));
  if (options.requireStages && !spec.stages.length) throw new PrunecError("spec", noStagesMessage(specName));
  const dense = Graph.of(model.graph!);
  const info = at("analyse", () => analyzeTransformer(dense, modelName));
  // Stages are placed by file position: an input written out of topological order is sorted first (the same nodes).
  const order = at("sort", () => dense.order);
  const input = order.every((n, i) => n === model.graph!.node[i])
    ? model.graph!
    : shallowCopy(model.graph!, { node: order });
  const {
    stream: plans,
    kv: kvPlans,
    heads: headPlans,
  } = at("plan", () =>
    planSpec(spec, info, modelInputs(input), dense, {
      kvState: options.kvState ?? false,
    }),
  );
  const opset = opsetOf(model);
  if ((plans.length || kvPlans.length || headPlans.length) && opset < 13) {
    throw new PrunecError(
      "apply",
      `${modelName}: opset ${opset} is too old; prunec emits opset-13 operators (re-export with opset ≥ 13)`,
    );
  }
  // Token sets a stage restricts to start as their mask inputs; each stage gathers them (passes/prune-stage.ts).
  const sets = new Map(plans.flatMap((p) => (p.ofSet ? [[p.ofSet.name, p.ofSet.input] as const] : [])));
  const state = initialState(info.tokenAxis ?? 1, info.batchAxis, info.tokens, sets);
  return {
    options,
    modelName,
    specText,
    spec,
    model,
    inputExternalData,
    opset,
    input,
    info,
    plans,
    kvPlans,
    kvIndices: new Map(),
    headPlans,
    headIndices: new Map(),
    graph: input,
    state,
    perTokenOutputs: [],
    foldedNodes: 0,
  };
}

/**
 * Attention that rotates q/k inside the op, from the first stage's layer on: rotary moves out of
 * it, so kept tokens keep their positions; the stages are planned again on the rewritten graph.
 */
function moveRotary(c: Compilation): Compilation {
  // A KV stage's own layer counts: its cache gets shorter, and the op would number positions from it.
  const first = Math.min(
    ...c.plans.filter((p) => !p.encoder).map((p) => p.layer.index),
    ...c.kvPlans.flatMap((p) => p.layers.map((l) => l.index)),
  );
  if (!c.info.layers.slice(first).some(rotatesInside)) return c;
  const rotary = explicitRotary(c.graph, c.info, first, c.opset, c.modelName);
  const rotated = Graph.of(rotary.graph);
  const info = analyzeTransformer(rotated, c.modelName);
  const {
    stream: plans,
    kv: kvPlans,
    heads: headPlans,
  } = planSpec(c.spec, info, modelInputs(rotary.graph), rotated, {
    kvState: c.options.kvState ?? false,
  });
  const state: StreamState = {
    ...c.state,
    carried: new Map([[rotary.positions!, { axes: [1], rank: 2 }]]),
    added: [...c.state.added, ...rotary.added],
  };
  return { ...c, graph: rotary.graph, info, plans, kvPlans, headPlans, state };
}

/** Each KV-cache stage in order, each on every layer it names (passes/kv-stage.ts). */
function evictCaches(c: Compilation): Compilation {
  let graph = c.graph;
  const added = [...c.state.added];
  const kvIndices = new Map(c.kvIndices);
  // Layers where a prefill stage is composed into a decode-time one: that stage builds its press.
  const composed = new Map<number, Set<number>>();
  for (const p of c.kvPlans) if (p.prefill) composed.set(p.prefill.plan.stage, new Set(p.prefill.layers));
  for (const whole of c.kvPlans) {
    const taken = composed.get(whole.stage);
    const plan = taken ? { ...whole, layers: whole.layers.filter((l) => !taken.has(l.index)) } : whole;
    if (!plan.layers.length) continue;
    const expose = c.options.exposeIndices ?? false;
    // Below stream stages a cached layer's slots line up with the first or last host-mask columns.
    const streamAbove = (layer: number) =>
      c.plans.some((p) => p.layer.index < layer) ? hostColumns(c.plans, layer) : undefined;
    const evicted =
      plan.decode?.kind === "cascade"
        ? applyKvCascadeStage(graph, c.info, plan, c.opset, expose)
        : plan.decode
          ? applyKvDecodeStage(graph, c.info, plan, c.opset, expose, streamAbove)
          : applyKvStage(graph, c.info, plan, c.opset, expose, streamAbove, c.options.kvState ?? false);
    graph = evicted.graph;
    added.push(...evicted.added);
    kvIndices.set(plan.stage, evicted.indices);
  }
  return { ...c, graph, kvIndices, state: { ...c.state, added } };
}

/** Each head stage in order, each reading the heads the previous one kept (passes/head-stage.ts). */
function pruneHeads(c: Compilation): Compilation {
  let graph = c.graph;
  const added = [...c.state.added];
  const headIndices = new Map(c.headIndices);
  let previous: HeadStageResult | undefined;
  for (const plan of c.headPlans) {
    previous = applyHeadStage(graph, c.info, plan, c.opset, previous);
    graph = previous.graph;
    added.push(...previous.added);
    headIndices.set(plan.stage, previous.kept);
  }
  return { ...c, graph, headIndices, state: { ...c.state, added } };
}

/** `prunec.stageN.heads`: int64 [batch, kept] the dense ids of the heads each example keeps. */
function exposeHeads(g: GraphProto, headIndices: ReadonlyMap<number, string>): GraphProto {
  if (!headIndices.size) return g;
  const nodes = [...headIndices].map(([stage, t]) =>
    makeNode("Identity", [t], [`prunec.stage${stage}.heads`], `prunec/stage${stage}/expose_heads`),
  );
  const outputs = [...headIndices].map(([stage]) =>
    valueInfo(`prunec.stage${stage}.heads`, DT.INT64, [batchDim(g) ?? "batch", `prunec_stage${stage}_heads`]),
  );
  return shallowCopy(g, { node: [...g.node, ...nodes], output: [...g.output, ...outputs] });
}

/** `prunec.stageN.layerL.kv_indices`: int64 [batch, kv_heads, kept] positions each KV head keeps. */
function exposeKvIndices(g: GraphProto, kvIndices: ReadonlyMap<number, ReadonlyMap<number, string>>): GraphProto {
  const nodes: NodeProto[] = [];
  const outputs: ValueInfoProto[] = [];
  for (const [stage, layers] of kvIndices) {
    for (const [layer, t] of layers) {
      const name = `prunec.stage${stage}.layer${layer}.kv_indices`;
      nodes.push(makeNode("Identity", [t], [name], `prunec/stage${stage}/layer${layer}/expose_kv_indices`));
      outputs.push(
        valueInfo(name, DT.INT64, [batchDim(g) ?? "batch", undefined, `prunec_stage${stage}_layer${layer}_kept`]),
      );
    }
  }
  return nodes.length ? shallowCopy(g, { node: [...g.node, ...nodes], output: [...g.output, ...outputs] }) : g;
}

/**
 * Evicted caches hold K' entries, not the dense total: their graph outputs (present) and the
 * matching inputs (past) get a length of their own per layer, or onnxruntime, which takes equal
 * dimension names for equal sizes, would share buffers between layers of different lengths.
 */
function declareEvictedCaches(g: GraphProto, kvPlans: readonly KvPlan[]): GraphProto {
  const lengths = new Map<string, string>();
  for (const p of kvPlans) {
    for (const l of p.layers) {
      const c = l.cache;
      for (const t of [c?.presentKey, c?.presentValue]) if (t) lengths.set(t, `prunec_layer${l.index}_cache`);
      for (const t of [c?.pastKey, c?.pastValue]) if (t) lengths.set(t, `prunec_layer${l.index}_past`);
    }
  }
  if (!lengths.size) return g;
  const redeclare = (o: ValueInfoProto): ValueInfoProto => {
    const length = lengths.get(o.name);
    return length ? withDim(o, 2, length) : o;
  };
  return shallowCopy(g, { input: g.input.map(redeclare), output: g.output.map(redeclare) });
}

/** Each planned stage in order, each reading the stream state the previous one returned. */
function applyStages(c: Compilation): Compilation {
  const options = {
    opset: c.opset,
    target: c.options.target ?? "cpu",
    expose: c.options.exposeIndices ?? false,
    kvState: c.options.kvState ?? false,
    oracle: c.options.oracle ?? false,
  } as const;
  let graph = c.graph;
  let state = c.state;
  for (const plan of c.plans) {
    const lowered = plan.merge
      ? applyMergeStage(graph, c.info, plan, state, options)
      : applyStage(graph, c.info, plan, state, options);
    graph = lowered.graph;
    state = advance(state, lowered.effect);
  }
  return { ...c, graph, state };
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

function exposeIndices(
  g: GraphProto,
  stages: readonly StageRecord[],
  info: TransformerInfo,
  plans: StagePlan[],
): GraphProto {
  const batch = batchDim(g);
  const batchDimOut = info.batchAxis === undefined ? 1 : (batch ?? "batch");
  // With --expose-indices every stage emits its positions, so record i is stage i.
  const indices = stages.flatMap((s) => (s.indices ? [s] : []));
  // Named by the spec's stage numbers (KV-cache stages expose theirs in exposeKvIndices).
  const at = (i: number) => plans[i]?.stage ?? i;
  const nodes = indices.map((s, i) =>
    makeNode("Identity", [s.indices!], [`prunec.stage${at(i)}.indices`], `prunec/stage${at(i)}/expose_indices`),
  );
  const outputs = plans.map((p, i) => {
    const kept = typeof p.tokensOut === "number" ? p.tokensOut : `prunec_stage${p.stage}_kept`;
    return valueInfo(`prunec.stage${at(i)}.indices`, DT.INT64, [batchDimOut, kept]);
  });
  // Adaptive stages: how many of each row's positions the example really keeps (the rest pad to the batch maximum).
  indices.forEach((s, i) => {
    if (!s.counts) return;
    nodes.push(makeNode("Identity", [s.counts], [`prunec.stage${at(i)}.counts`], `prunec/stage${at(i)}/expose_counts`));
    outputs.push(valueInfo(`prunec.stage${at(i)}.counts`, DT.INT64, [batchDimOut]));
  });
  return shallowCopy(g, { node: [...g.node, ...nodes], output: [...g.output, ...outputs] });
}

/** A declared tensor with one dimension replaced (unknown: `undefined`); undeclared shapes stay as they are. */
function withDim(o: ValueInfoProto, axis: number, dim: Dim | undefined): ValueInfoProto {
  if (o.type?.value.case !== "tensorType" || !o.type.value.value.shape) return o;
  const dims = o.type.value.value.shape.dim.map((d, i): Dim | undefined =>
    i === axis
      ? dim
      : d.value.case === "dimValue"
        ? Number(d.value.value)
        : d.value.case === "dimParam"
          ? d.value.value
          : undefined,
  );
  return valueInfo(o.name, o.type.value.value.elemType, dims);
}

/** An `after encoder` stage shrinks the output it acts on: declare its kept row count. */
function declareEncoderOutputs(g: GraphProto, plans: StagePlan[]): GraphProto {
  const encoder = plans.find((p) => p.encoder);
  if (!encoder?.encoder) return g;
  const { tensor, tokenAxis } = encoder.encoder;
  const rows = typeof encoder.tokensOut === "number" ? encoder.tokensOut : undefined;
  return shallowCopy(g, {
    output: g.output.map((o) => (o.name === tensor ? withDim(o, tokenAxis, rows) : o)),
  });
}

/**
 * Graph outputs of the dense model with a token axis (the dense token count at some axis) whose
 * row count differs in the pruned graph: a stage below which they are computed shrank them. The
 * model's interface changes there, so compile says so (the CLI prints it, --json and the report
 * carry it). Masked stages change no shape and are not listed.
 */
function shrunkOutputs(
  original: GraphProto,
  pruned: GraphProto,
  info: TransformerInfo,
  plans: StagePlan[],
): PerTokenOutput[] {
  const dense = info.tokens;
  if (dense === undefined) return [];
  // Only an output with one token axis can have shrunk (a classifier's logits cannot): the pruned
  // graph is inferred, and the stages' descendants walked, only when there is one.
  const tokenAxis = (name: string): number => {
    const before = info.shapes.get(name);
    const axis = before ? before.indexOf(dense) : -1;
    return before && axis >= 0 && before.lastIndexOf(dense) === axis ? axis : -1;
  };
  const candidates = original.output.map((o) => ({ o, axis: tokenAxis(o.name) })).filter((c) => c.axis >= 0);
  if (!candidates.length) return [];
  // The pruned graph's own shapes, from its inputs: a declaration of the output may still say the dense count.
  const { shapes: after, algebra } = analyzeFromInputs(pruned);
  const below = plans.map((p) => tensorsBelow(original, p));
  const result: PerTokenOutput[] = [];
  for (const { o, axis } of candidates) {
    const now = after.get(o.name);
    if (now?.[axis] === dense) continue;
    const stages = plans
      .filter((p, i) => !p.mask && p.tokensOut !== p.tokensIn && below[i]!.has(o.name))
      .map((p) => p.stage);
    if (!stages.length) continue;
    const rows = now?.[axis];
    result.push({
      output: o.name,
      axis,
      denseRows: dense,
      // An op inference has no rule for leaves the count unknown: a fresh symbol's name means nothing to a user.
      rows: rows === undefined || algebra.isFresh(rows) ? "?" : rows,
      stages,
      positions: stages.map((s) => `prunec.stage${s}.indices`),
    });
  }
  return result;
}

/**
 * `with restore` promises a drop-in model: every output keeps one row per token. It restores at one
 * layer's output (the last by default), so an output that reads the stream between a stage and that
 * point (a head tapping an intermediate layer) would stay pruned: refused before anything is written.
 */
function wholeIfRestored(shrunk: PerTokenOutput[], c: Compilation): PerTokenOutput[] {
  const restoring = c.plans.find((p) => p.restore);
  const tap = shrunk[0];
  if (!restoring?.restore || !tap) return shrunk;
  const s = c.spec.stages[restoring.stage];
  throw new PrunecError(
    "apply",
    `${c.spec.file}:${s?.span.line ?? 1}:${s?.span.column ?? 1}: error: 'with restore' puts the dropped tokens back at ${restoreWhere(c.info, restoring.restore.at)}, but output '${tap.output}' reads the stream before that point and would keep ${String(tap.rows)} of its ${String(tap.denseRows)} rows; restore at or before the layer it reads ('with restore(layer: N)')`,
  );
}

/**
 * Graph outputs below a stage keep their declared shape only where it still holds. Only a declared
 * number can be stale (a symbol stands for any size). It is replaced by what inference from the
 * graph inputs proves there; where inference cannot tell (an op it has no rule for), a number equal
 * to a token count a stage changed is declared unknown and any other number stands. Believing the
 * declarations instead would keep exactly the stale count this step exists to replace.
 */
function refreshOutputShapes(g: GraphProto, original: GraphProto, plans: StagePlan[]): GraphProto {
  // Only a declared size equal to a token count a stage changed can have gone stale.
  const counts = new Set(
    plans.flatMap((p) => [p.tokensIn, typeof p.tokensIn === "number" ? p.tokensIn - p.prefix : -1]),
  );
  const suspect = original.output.some(
    (o) =>
      o.type?.value.case === "tensorType" &&
      (o.type.value.value.shape?.dim ?? []).some(
        (d) => d.value.case === "dimValue" && counts.has(Number(d.value.value)),
      ),
  );
  const symbolic = plans.some((p) => typeof p.tokensIn !== "number");
  if (!suspect && !symbolic) return g;
  const { shapes, algebra } = analyzeFromInputs(g);
  // An output no stage is above computes what it did: its declaration stands.
  const below = plans.map((p) => tensorsBelow(original, p));
  return shallowCopy(g, {
    output: g.output.map((o) => {
      const type = o.type?.value;
      if (!below.some((b) => b.has(o.name)) || type?.case !== "tensorType" || !type.value.shape) return o;
      const dims = type.value.shape.dim;
      const inferred = shapes.get(o.name);
      const proven = (i: number): Dim | undefined => {
        const x = inferred?.length === dims.length ? inferred[i] : undefined;
        return x === undefined || algebra.isFresh(x) ? undefined : x;
      };
      let stale = false;
      const next = dims.map((d, i): Dim | undefined => {
        if (d.value.case === "dimParam") return d.value.value;
        if (d.value.case !== "dimValue") return undefined;
        const declared = Number(d.value.value);
        const x = proven(i);
        if (x === declared || (x === undefined && !counts.has(declared))) return declared;
        stale = true;
        return x;
      });
      return stale ? valueInfo(o.name, type.value.elemType, next) : o;
    }),
  });
}

/** Tensors of the dense graph computed below a stage: its stream (the encoder's output for `after encoder`) and all it feeds. */
function tensorsBelow(original: GraphProto, p: StagePlan): Set<string> {
  const r = p.encoder?.tensor ?? p.layer.residual?.output ?? "";
  return new Set([r, ...[...Graph.of(original).descendants(r)].flatMap((n) => n.output)]);
}

function report(
  info: TransformerInfo,
  plans: StagePlan[],
  state: StreamState,
  lines: number[],
): Omit<CompileReport, "verification" | "perTokenOutputs" | "kvStages" | "headStages" | "foldedNodes"> {
  const stages = plans.map((p, i) => ({
    lowering: state.stages[i]!.lowering,
    ...(state.stages[i]!.loweringNote ? { loweringNote: state.stages[i]!.loweringNote } : {}),
    stage: p.stage,
    layer: p.layer.index,
    criterion: p.criterion.name,
    tokensIn: p.tokensIn,
    tokensOut: p.tokensOut,
    line: lines[i] ?? 0,
  }));
  let current: Dim | undefined = info.tokens;
  // The counts a restoring stage came in with, given back at its restore point (innermost last).
  const restores: { at: number; tokens: Dim | undefined }[] = [];
  const tokensPerLayer = info.layers.map((l) => {
    const row = { layer: l.index, dense: info.tokens, pruned: current };
    const stage = plans.find((p) => p.layer.index === l.index);
    if (stage?.restore) restores.push({ at: stage.restore.at, tokens: current });
    // A masked stage removes nothing: later layers still compute every token.
    if (stage && !stage.mask) current = stage.tokensOut;
    while (restores.at(-1)?.at === l.index) current = restores.pop()!.tokens;
    return row;
  });
  return { stages, tokensPerLayer, addedNodes: state.added.map((n) => n.name) };
}
