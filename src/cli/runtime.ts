/**
 * Running models for the CLI's eval/bench/report: onnxruntime-node (native CPU) or onnxruntime-web's
 * WASM backend inside Node. Node-only (reads the WASM binary from node_modules: nothing is fetched).
 * Both runtimes are optional peer dependencies, imported only when a command runs a model, so
 * compile/check/fmt/inspect work without them.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import type * as OrtNodeTypes from "onnxruntime-node";
import type * as OrtWebTypes from "onnxruntime-web";
import { PrunecError } from "../errors.js";
import { checkWeightFiles, externalRefs } from "./weights.js";
import { readInput } from "./files.js";
import { importPeer } from "./peers.js";

export type ExecutionProvider = "cpu" | "wasm";

export interface FloatInput {
  data: Float32Array;
  dims: number[];
}

export interface Session {
  inputNames: readonly string[];
  outputNames: readonly string[];
  /** Run with float32 feeds; returns the requested outputs' data and dims. */
  run(
    feeds: Record<string, FloatInput>,
    outputs?: string[],
  ): Promise<Record<string, { data: Float32Array | BigInt64Array; dims: number[] }>>;
  release(): Promise<void>;
}

type OrtNode = typeof import("onnxruntime-node");
type OrtWeb = typeof import("onnxruntime-web");
let ortNode: Promise<OrtNode> | undefined;
let ortWeb: Promise<OrtWeb> | undefined;

/** A missing (or broken) optional runtime as a PrunecError (exit 7) saying how to install it. */
export function runtimeError(pkg: string, command: string | undefined, e: unknown): PrunecError {
  const who = command ? (command.includes(" ") ? command : `prunec ${command}`) : "running models";
  const code = (e as { code?: unknown } | null)?.code;
  const why = e instanceof Error ? e.message : String(e);
  if ((code === "ERR_MODULE_NOT_FOUND" || code === "MODULE_NOT_FOUND") && why.includes(pkg)) {
    return new PrunecError("runtime", `${who} needs ${pkg}, an optional peer dependency: npm install ${pkg}`);
  }
  return new PrunecError(
    "runtime",
    `${who} needs ${pkg}, which is installed but failed to load (${why}); reinstall it: npm install ${pkg}`,
  );
}

/**
 * onnxruntime-node's telemetry off for this process, unless the user set ORT_DISABLE_TELEMETRY:
 * since 1.30 every process that creates a session records usage events (device, OS, Node version,
 * run counts) in ~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db, a database of
 * megabytes, for upload; a compiler's smoke run should leave nothing behind. Call it before
 * onnxruntime-node is imported (the bench scripts do, through bench/no-telemetry.ts).
 */
export function ortTelemetryOff(): void {
  process.env["ORT_DISABLE_TELEMETRY"] ??= "1";
}

/** onnxruntime-node, imported on first use (telemetry off); `command` names the CLI command in the missing-runtime message. */
export function loadOrtNode(command?: string): Promise<OrtNode> {
  ortTelemetryOff();
  ortNode ??= importPeer("onnxruntime-node").catch((e: unknown) => {
    ortNode = undefined; // let a later call retry (and report) instead of caching the failure
    throw runtimeError("onnxruntime-node", command, e);
  });
  return ortNode;
}

/** onnxruntime-web configured for offline, single-threaded WASM in Node. */
export function loadOrtWeb(command?: string): Promise<OrtWeb> {
  ortWeb ??= (async () => {
    let ort: OrtWeb;
    let dist: string;
    try {
      ort = await importPeer("onnxruntime-web");
      dist = dirname(createRequire(import.meta.url).resolve("onnxruntime-web"));
    } catch (e) {
      ortWeb = undefined;
      throw runtimeError("onnxruntime-web", command, e);
    }
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.proxy = false;
    ort.env.wasm.wasmBinary = readFileSync(join(dist, "ort-wasm-simd-threaded.wasm"));
    ort.env.logLevel = "error";
    return ort;
  })();
  return ortWeb;
}

interface AnyTensor {
  data: unknown;
  dims: readonly number[];
  dispose(): void;
}
interface AnySession {
  inputNames: readonly string[];
  outputNames: readonly string[];
  run(feeds: Record<string, unknown>, fetches?: string[]): Promise<Record<string, AnyTensor>>;
  release(): Promise<void>;
}

function wrap(session: AnySession, tensor: (f: FloatInput) => unknown): Session {
  return {
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    async run(feeds, outputs) {
      const ortFeeds = Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, tensor(v)]));
      const res = outputs ? await session.run(ortFeeds, outputs) : await session.run(ortFeeds);
      const out: Record<string, { data: Float32Array | BigInt64Array; dims: number[] }> = {};
      for (const [k, t] of Object.entries(res)) {
        out[k] = { data: (t.data as Float32Array | BigInt64Array).slice(), dims: [...t.dims] };
        t.dispose();
      }
      return out;
    },
    release: () => session.release(),
  };
}

export interface SessionOptions {
  /** false: idle pool threads sleep instead of spinning (sessions measured side by side). */
  spinning?: boolean;
  /** Intra-op threads of a CPU session (onnxruntime's default: one per core). */
  threads?: number;
  /** The CLI command, named in the message when the runtime is not installed. */
  command?: string;
  /**
   * The file the model was read from (for a compiled model: its input's). External data resolves
   * against this file's folder, and only there, after prunec checked every file (exit 2/3). Without
   * it, a model with external data is refused rather than resolved against the working directory.
   */
  modelPath?: string;
}

export async function openSession(
  model: Uint8Array,
  ep: ExecutionProvider,
  options: SessionOptions = {},
): Promise<Session> {
  if (options.modelPath === undefined && externalRefs(model, "model").length) {
    throw new PrunecError("io", "model: has external data but no file path to resolve it against");
  }
  const weights = options.modelPath === undefined ? undefined : checkWeightFiles(model, options.modelPath);
  const external = weights !== undefined && weights.files.size > 0;
  if (ep === "wasm") {
    const ort = await loadOrtWeb(options.command);
    const opts: OrtWebTypes.InferenceSession.SessionOptions = { executionProviders: ["wasm"] };
    // onnxruntime-web reads no files itself in Node: hand it each weight file's bytes by location.
    if (external)
      opts.externalData = [...weights.files].map(([path, file]) => ({
        path,
        data: readInput(file, "external data").bytes,
      }));
    const s = await ort.InferenceSession.create(model, opts);
    return wrap(s as unknown as AnySession, (f) => new ort.Tensor("float32", f.data, f.dims));
  }
  const ort = await loadOrtNode(options.command);
  const session: Record<string, unknown> = {};
  if (options.spinning === false) session["intra_op"] = { allow_spinning: "0" };
  // A model given as bytes would resolve external data against the working directory.
  if (external) session["model_external_initializers_file_folder_path"] = resolve(weights.dir);
  const opts: OrtNodeTypes.InferenceSession.SessionOptions = { executionProviders: ["cpu"] };
  if (options.threads !== undefined) opts.intraOpNumThreads = options.threads;
  if (Object.keys(session).length) opts.extra = { session };
  const s = await ort.InferenceSession.create(model, opts);
  return wrap(s as unknown as AnySession, (f) => new ort.Tensor("float32", f.data, f.dims));
}
