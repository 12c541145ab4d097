/**
 * The compile smoke run: the compiled model, before it takes its name, is loaded in
 * onnxruntime-node and run on synthetic inputs (smoke-feeds.ts) at batch 1 and 2 (a static-batch
 * model at its batch only). The session must load and run, and every output must be finite and
 * have its declared rank and static sizes. A failure is a PrunecError("verify") naming the stage
 * (from the node onnxruntime names) or the output, with onnxruntime's message. Skipped, with the
 * reason, when the weights are not beside the model or onnxruntime-node (an optional peer) is not
 * installed.
 *
 * The CLI runs it on the model staged under its temp name (src/cli/weights.ts), so onnxruntime
 * reads the file itself: from memory it would need the model assembled in one buffer, a third
 * copy of every weight next to the input's and onnxruntime's own. Pre-packing is off: it is how
 * MLAS lays weights out for speed (another copy of every MatMul weight, and time), not whether
 * the model loads and runs (ViT-B/16, 330 MB: 1.37 GB peak and 1.1 s before, docs/results.md).
 */
import { dirname, resolve } from "node:path";
import { create } from "@bufbuild/protobuf";
import type * as OrtNodeTypes from "onnxruntime-node";
import { decodeModel } from "../onnx/io.js";
import { GraphProtoSchema, NodeProtoSchema } from "../onnx/gen/onnx_pb.js";
import { Graph, type GraphProto } from "../ir/graph.js";
import type { Dim } from "../analysis/dims.js";
import type { StageReport } from "../compile.js";
import { PrunecError } from "../errors.js";
import { VERIFY_FAILED, stageLabel, type VerifyReport } from "../verify/verify.js";
import { loadOrtNode } from "./runtime.js";
import { checkExternalData, type ExternalRef } from "../onnx/external.js";
import { checkWeightFiles } from "./weights.js";
import { declared, feedInputs, syntheticFeed, type Declared, type SyntheticFeed } from "./smoke-feeds.js";

type OrtNode = typeof import("onnxruntime-node");

export interface SmokeReport {
  status: "passed" | "skipped";
  /** Why the run was skipped. */
  reason?: string;
  /** Batch sizes run. */
  batches: number[];
  /** Outputs checked in each run. */
  outputs: string[];
  /** Wall time of the smoke run (session creation included). */
  ms: number;
}

export interface SmokeContext {
  /** The input model's path: external weights resolve beside it (the compiled model keeps its locations). */
  modelPath: string;
  stages: readonly StageReport[];
  /** compile's own verification: the tensor each stage writes, and the batch size or symbol its analysis found. */
  verification: Pick<VerifyReport, "stages" | "batch">;
}

const skipped = (reason: string, t0: number): SmokeReport => ({
  status: "skipped",
  reason,
  batches: [],
  outputs: [],
  ms: performance.now() - t0,
});

/**
 * Which stage onnxruntime's message (or an output name) is about: a stage's own node
 * (`prunec/stage<N>/…`), else the last stage whose stream the named node reads, transitively.
 */
function where(message: string, graph: GraphProto, ctx: SmokeContext): string {
  const label = (n: number) => {
    const s = ctx.stages.find((x) => x.stage === n);
    return s ? stageLabel(s) : undefined;
  };
  const own = /prunec[/.]stage(\d+)[/.]/.exec(message);
  if (own && label(Number(own[1]))) return label(Number(own[1]))!;
  const named = /Name:\s*'([^']+)'|Node \(([^)]+)\)/.exec(message);
  const node = named
    ? graph.node.find((n) => n.name === (named[1] ?? named[2]))
    : graph.node.find((n) => n.output.includes(message));
  if (!node) return "the compiled model";
  const g = new Graph(graph);
  const stage = ctx.verification.stages
    .filter((s) => g.descendants(s.tensor).has(node) || node.output.includes(s.tensor))
    .at(-1);
  return stage && label(stage.stage) ? `below ${label(stage.stage)!}` : "the compiled model";
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e)).trim();

function showDims(dims: readonly (Dim | undefined)[]): string {
  return `[${dims.map((d) => d ?? "?").join(", ")}]`;
}

/** What is wrong with one output of one run, if anything. */
function outputProblem(
  d: Declared,
  t: { dims: readonly number[]; data: unknown; type: string },
  batchSymbol: Dim | undefined,
  batch: number,
): string | undefined {
  if (d.dims) {
    const sizeOk = (x: Dim | undefined, i: number) =>
      typeof x === "number" ? t.dims[i] === x : x === undefined || x !== batchSymbol || t.dims[i] === batch;
    if (t.dims.length !== d.dims.length || !d.dims.every(sizeOk))
      return `has shape [${t.dims.join(", ")}], declared ${showDims(d.dims)}`;
  }
  if ((t.type === "float32" || t.type === "float64") && ArrayBuffer.isView(t.data)) {
    const values = t.data as Float32Array | Float64Array;
    const bad = values.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) return `is not finite (${values[bad]} at element ${bad} of ${values.length})`;
  }
  if (t.type === "float16" && t.data instanceof Uint16Array) {
    const bad = t.data.findIndex((bits) => (bits & 0x7c00) === 0x7c00); // exponent all ones: Inf or NaN
    if (bad >= 0) return `is not finite (element ${bad} of ${t.data.length})`;
  }
  return undefined;
}

/**
 * The compiled model as the smoke run loads it: its bytes (external locations resolve beside the
 * input model), or the file it is staged in with its weight files beside it, and its graph.
 */
export type SmokeModel = Uint8Array | StagedForSmoke;

/** A compiled model staged in a file: its graph (smokeGraph's, holding no tensor) and its external references. */
export interface StagedForSmoke {
  file: string;
  graph: GraphProto;
  refs: readonly ExternalRef[];
}

/** The smoke run's view of a compiled graph staged in `file`: smokeGraph's graph, its external references checked against `modelPath`. */
export function stagedForSmoke(file: string, graph: GraphProto, modelPath: string): StagedForSmoke {
  return { file, graph: smokeGraph(graph), refs: checkExternalData({ graph }, modelPath) };
}

/**
 * What the smoke run reads of a graph (inputs to feed, outputs to check, nodes to name a failure's
 * stage), holding none of its tensors: a tensor's bytes are views of the input model, and one view
 * keeps the whole input buffer alive while onnxruntime loads the output.
 */
export function smokeGraph(graph: GraphProto): GraphProto {
  const inits = new Set(graph.initializer.map((t) => t.name));
  return create(GraphProtoSchema, {
    input: graph.input.filter((i) => !inits.has(i.name)),
    output: graph.output,
    node: graph.node.map((n) =>
      create(NodeProtoSchema, { name: n.name, opType: n.opType, domain: n.domain, input: n.input, output: n.output }),
    ),
  });
}

/**
 * Pre: `compiled` is what compile returned, not yet under its name.
 * Post: the report of a passed or skipped run; throws PrunecError("verify") when the model fails.
 */
export async function smokeRun(
  compiled: SmokeModel,
  ctx: SmokeContext,
  load: () => Promise<OrtNode> = () => loadOrtNode("compile"),
): Promise<SmokeReport> {
  const t0 = performance.now();
  const fail = (what: string, message: string) =>
    new PrunecError("verify", `${ctx.modelPath}: ${VERIFY_FAILED}: ${what}: ${message}`);
  const staged = compiled instanceof Uint8Array ? undefined : compiled;
  // onnxruntime names the file it loaded: the temp name says nothing to the user (it is gone by then).
  const why = (e: unknown) => (staged ? message(e).replaceAll(staged.file, "the compiled model") : message(e));
  try {
    // Staged: the placed files are the input's (linked, copied or found equal), so the input's are named.
    checkWeightFiles(staged ? staged.refs : (compiled as Uint8Array), ctx.modelPath);
  } catch (e) {
    if (e instanceof PrunecError && e.kind === "io")
      return skipped(`the weights are not beside the model (${e.message})`, t0);
    throw e;
  }
  let ort: OrtNode;
  try {
    ort = await load();
  } catch (e) {
    if (e instanceof PrunecError && e.kind === "runtime")
      return skipped(
        "onnxruntime-node is not installed (an optional peer dependency: npm install onnxruntime-node)",
        t0,
      );
    throw e;
  }
  const graph = staged ? staged.graph : decodeModel(compiled as Uint8Array, ctx.modelPath).graph!;
  const batchSymbol = ctx.verification.batch;
  const inputs = feedInputs(graph);
  const outputs = graph.output.map(declared);
  // A batch symbol the inputs really use: run at 1 and 2; otherwise (static batch, no batch) once.
  const batched = typeof batchSymbol === "string" && inputs.some((i) => i.dims?.includes(batchSymbol));
  const batches = batched ? [1, 2] : [typeof batchSymbol === "number" ? batchSymbol : 1];

  const feedsAt = (batch: number): Record<string, SyntheticFeed> | string => {
    const feeds: Record<string, SyntheticFeed> = {};
    for (const [k, d] of inputs.entries()) {
      const f = syntheticFeed(d, batchSymbol, batch, 1 + k * 7919 + batch);
      if (typeof f === "string") return f;
      feeds[d.name] = f;
    }
    return feeds;
  };
  const first = feedsAt(batches[0]!);
  if (typeof first === "string") return skipped(first, t0);

  const options: OrtNodeTypes.InferenceSession.SessionOptions = {
    executionProviders: ["cpu"],
    logSeverityLevel: 4, // onnxruntime's own log lines would duplicate the error reported here
    extra: {
      session: {
        disable_prepacking: "1",
        // Loaded from memory: external locations resolve against the input model's folder.
        ...(staged ? {} : { model_external_initializers_file_folder_path: dirname(resolve(ctx.modelPath)) }),
      },
    },
  };
  let session: OrtNodeTypes.InferenceSession;
  try {
    session = staged
      ? await ort.InferenceSession.create(staged.file, options)
      : await ort.InferenceSession.create(compiled as Uint8Array, options);
  } catch (e) {
    throw fail(where(why(e), graph, ctx), `onnxruntime cannot load it: ${why(e)}`);
  }
  try {
    for (const batch of batches) {
      const feeds = batch === batches[0] ? first : feedsAt(batch);
      if (typeof feeds === "string") return skipped(feeds, t0);
      const tensors = Object.fromEntries(
        Object.entries(feeds).map(([name, f]) => [name, new ort.Tensor(f.type, f.data, f.dims)]),
      );
      let result: OrtNodeTypes.InferenceSession.ReturnType;
      try {
        result = await session.run(tensors);
      } catch (e) {
        throw fail(where(why(e), graph, ctx), `onnxruntime fails to run it at batch ${batch}: ${why(e)}`);
      }
      for (const d of outputs) {
        const t = result[d.name];
        const problem = t
          ? outputProblem(d, { dims: t.dims, data: t.data, type: t.type }, batchSymbol, batch)
          : "is missing from onnxruntime's results";
        if (problem) throw fail(where(d.name, graph, ctx), `output '${d.name}' at batch ${batch} ${problem}`);
      }
      for (const t of Object.values(result)) t.dispose();
    }
  } finally {
    await session.release();
  }
  return { status: "passed", batches, outputs: outputs.map((o) => o.name), ms: performance.now() - t0 };
}

/** One line for the CLI: what the smoke run did. */
export function formatSmoke(r: SmokeReport): string {
  if (r.status === "skipped") return `onnxruntime smoke run skipped: ${r.reason}`;
  const at =
    r.batches.length > 1
      ? `batch ${r.batches.slice(0, -1).join(", ")} and ${r.batches.at(-1)}`
      : `batch ${r.batches[0]}`;
  return `onnxruntime smoke run passed at ${at}: ${r.outputs.length} output${r.outputs.length === 1 ? "" : "s"} finite with the declared shapes (${(r.ms / 1000).toFixed(2)} s)`;
}
