/**
 * Running ONNX models in tests, on onnxruntime-node (native CPU EP) and on onnxruntime-web's WASM
 * backend inside Node (what a browser would run). Both take and return plain objects, so results
 * from the two can be compared directly, and both release their session before returning.
 *
 * WASM in Node: `import("onnxruntime-web")` resolves (export condition "node") to
 * dist/ort.node.min.mjs, which locates its Emscripten glue, dist/ort-wasm-simd-threaded.mjs, from
 * its own import.meta.url (vitest leaves node_modules unbundled, so that URL is the real file).
 * We hand it the .wasm binary read from node_modules ourselves (`env.wasm.wasmBinary`), so nothing
 * is ever fetched, and pin `env.wasm.numThreads = 1` (no worker threads, deterministic).
 */
import { readFileSync } from "node:fs";
import type { NpyArray } from "./npy.js";
import { loadOrtWeb as loadOrtWebShared } from "../../src/cli/runtime.js";

export type TensorData =
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array
  | Int32Array
  | Uint32Array
  | Int16Array
  | Uint16Array
  | Int8Array
  | Uint8Array;

/** onnxruntime's tensor type names (the ones with typed-array data). */
export type TensorType =
  | "float32"
  | "float64"
  | "float16"
  | "int64"
  | "uint64"
  | "int32"
  | "uint32"
  | "int16"
  | "uint16"
  | "int8"
  | "uint8"
  | "bool";

/** A feed: onnxruntime type name, shape, and data in C order. */
export interface TensorLike {
  type: TensorType;
  dims: readonly number[];
  data: TensorData;
}

/** A fetched output. `data` is a copy owned by the caller (valid after the session is released). */
export interface OrtOutput {
  type: string;
  dims: number[];
  data: TensorData;
}

export type Feeds = Record<string, TensorLike>;
export type Outputs = Record<string, OrtOutput>;

export interface RunOptions {
  /** onnxruntime graph optimisation level; default "all" (onnxruntime's own default). */
  graphOptimizationLevel?: "disabled" | "basic" | "extended" | "layout" | "all";
}

/** A .npy array as a feed. */
export function npyFeed(a: NpyArray): TensorLike {
  return { type: a.dtype, dims: a.shape, data: a.data };
}

interface MinimalTensor {
  type: string;
  dims: readonly number[];
  data: unknown;
}

function copyOut(t: MinimalTensor): OrtOutput {
  const d = t.data;
  if (!ArrayBuffer.isView(d) || d instanceof DataView) {
    throw new Error(`output of type ${t.type} has non-typed-array data; not supported by the test helpers`);
  }
  return { type: t.type, dims: [...t.dims], data: (d as TensorData).slice() };
}

function modelInput(model: Uint8Array | string): Uint8Array {
  return typeof model === "string" ? readFileSync(model) : model;
}

/** The part of an onnxruntime InferenceSession (node or web) the runners use. */
interface SessionLike {
  outputNames: readonly string[];
  run(feeds: Record<string, unknown>, fetches?: string[]): Promise<Record<string, MinimalTensor & { dispose(): void }>>;
  release(): Promise<void>;
}

/** Feed, run, copy the outputs out: the same for both backends. */
async function runOnce(
  session: SessionLike,
  makeTensor: (f: TensorLike) => unknown,
  feeds: Feeds,
  outputs: string[] | undefined,
  backend: string,
): Promise<Outputs> {
  const ortFeeds: Record<string, unknown> = {};
  for (const [name, f] of Object.entries(feeds)) ortFeeds[name] = makeTensor(f);
  const res = outputs ? await session.run(ortFeeds, outputs) : await session.run(ortFeeds);
  const out: Outputs = {};
  for (const name of outputs ?? session.outputNames) {
    const t = res[name];
    if (t === undefined) throw new Error(`${backend} returned no output '${name}'`);
    out[name] = copyOut(t);
  }
  for (const t of Object.values(res)) t.dispose();
  return out;
}

/** runOnce, then release the session. */
async function runSession(...args: Parameters<typeof runOnce>): Promise<Outputs> {
  try {
    return await runOnce(...args);
  } finally {
    await args[0].release();
  }
}

async function nodeSession(
  model: Uint8Array | string,
  options: RunOptions,
): Promise<{ session: SessionLike; tensor: (f: TensorLike) => unknown }> {
  const ort = await import("onnxruntime-node");
  const sessionOptions = {
    executionProviders: ["cpu"],
    graphOptimizationLevel: options.graphOptimizationLevel ?? "all",
  } as const;
  const session =
    typeof model === "string"
      ? await ort.InferenceSession.create(model, sessionOptions)
      : await ort.InferenceSession.create(model, sessionOptions);
  const tensor = (f: TensorLike) => new ort.Tensor(f.type, f.data as never, [...f.dims]);
  return { session: session as unknown as SessionLike, tensor };
}

/** A runNode over sessions kept open (see withNodeSessions). */
export type CachedRun = (model: Uint8Array | string, feeds: Feeds, outputs?: string[]) => Promise<Outputs>;

/**
 * `f` with a runNode that opens one session per model (a path or the same bytes) and keeps it for
 * later calls, every session released when `f` settles: for loops that alternate several models.
 */
export async function withNodeSessions<T>(f: (run: CachedRun) => Promise<T>, options: RunOptions = {}): Promise<T> {
  const open = new Map<Uint8Array | string, ReturnType<typeof nodeSession>>();
  try {
    return await f(async (model, feeds, outputs) => {
      let s = open.get(model);
      if (!s) open.set(model, (s = nodeSession(model, options)));
      const { session, tensor } = await s;
      return runOnce(session, tensor, feeds, outputs, "onnxruntime-node");
    });
  } finally {
    for (const s of open.values()) await (await s).session.release();
  }
}

/** A run function over one open session (see withNode). */
export type NodeRun = (feeds: Feeds, outputs?: string[]) => Promise<Outputs>;

/**
 * `f` with a runNode-like function over one onnxruntime-node session for `model`, released when
 * `f` settles. For loops that run one model many times (a decode step per call): a session per
 * call was most of the KV-cache suites' time, and a session keeps no state between runs.
 */
export async function withNode<T>(
  model: Uint8Array | string,
  f: (run: NodeRun) => Promise<T>,
  options: RunOptions = {},
): Promise<T> {
  const { session, tensor } = await nodeSession(model, options);
  try {
    return await f((feeds, outputs) => runOnce(session, tensor, feeds, outputs, "onnxruntime-node"));
  } finally {
    await session.release();
  }
}

/**
 * Run a model on onnxruntime-node (CPU execution provider). `model` is the model bytes or a
 * file path (a path lets onnxruntime find external data beside the file). `outputs` restricts
 * (and orders) the fetched outputs; default: all graph outputs.
 */
export async function runNode(
  model: Uint8Array | string,
  feeds: Feeds,
  outputs?: string[],
  options: RunOptions = {},
): Promise<Outputs> {
  const { session, tensor } = await nodeSession(model, options);
  return runSession(session, tensor, feeds, outputs, "onnxruntime-node");
}

// One loader for the CLI and the tests: offline, single-threaded WASM (see src/cli/runtime.ts).
export { loadOrtWeb } from "../../src/cli/runtime.js";

/**
 * Run a model on onnxruntime-web's WASM backend inside Node (single thread). Same contract as
 * `runNode`; a path is read into memory (external data is not supported here).
 */
export async function runWasm(
  model: Uint8Array | string,
  feeds: Feeds,
  outputs?: string[],
  options: RunOptions = {},
): Promise<Outputs> {
  const ort = await loadOrtWebShared();
  const session = await ort.InferenceSession.create(modelInput(model), {
    executionProviders: ["wasm"],
    graphOptimizationLevel: options.graphOptimizationLevel ?? "all",
  });
  const tensor = (f: TensorLike) => new ort.Tensor(f.type, f.data as never, [...f.dims]);
  return runSession(session as unknown as SessionLike, tensor, feeds, outputs, "onnxruntime-web");
}

type Numeric = ArrayLike<number> | ArrayLike<bigint>;

/**
 * Largest |a[i] - b[i]|. Throws if the lengths differ. NaN in both at the same index counts as
 * equal; NaN in only one makes the result Infinity, so a tolerance check fails.
 */
export function maxAbsDiff(a: Numeric, b: Numeric): number {
  if (a.length !== b.length) throw new Error(`maxAbsDiff: lengths differ (${a.length} vs ${b.length})`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const x = Number(a[i]);
    const y = Number(b[i]);
    if (Number.isNaN(x) || Number.isNaN(y)) {
      if (Number.isNaN(x) && Number.isNaN(y)) continue;
      return Infinity;
    }
    if (x === y) continue; // also equal infinities
    const d = Math.abs(x - y);
    if (d > m) m = d;
  }
  return m;
}
