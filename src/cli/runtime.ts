/**
 * Running models for the CLI's eval/bench/report: onnxruntime-node (native CPU) or onnxruntime-web's
 * WASM backend inside Node. Node-only (reads the WASM binary from node_modules: nothing is fetched).
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import * as ortNode from "onnxruntime-node";

export type ExecutionProvider = "cpu" | "wasm";

export interface FloatInput {
  data: Float32Array;
  dims: number[];
}

export interface Session {
  inputNames: readonly string[];
  outputNames: readonly string[];
  /** Run with float32 feeds; returns the requested outputs' data and dims. */
  run(feeds: Record<string, FloatInput>, outputs?: string[]): Promise<Record<string, { data: Float32Array | BigInt64Array; dims: number[] }>>;
  release(): Promise<void>;
}

type OrtWeb = typeof import("onnxruntime-web");
let ortWeb: Promise<OrtWeb> | undefined;

/** onnxruntime-web configured for offline, single-threaded WASM in Node. */
export function loadOrtWeb(): Promise<OrtWeb> {
  ortWeb ??= (async () => {
    const ort = await import("onnxruntime-web");
    const dist = dirname(createRequire(import.meta.url).resolve("onnxruntime-web"));
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

export async function openSession(model: Uint8Array, ep: ExecutionProvider, options: { spinning?: boolean } = {}): Promise<Session> {
  if (ep === "wasm") {
    const ort = await loadOrtWeb();
    const s = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
    return wrap(s as unknown as AnySession, (f) => new ort.Tensor("float32", f.data, f.dims));
  }
  const opts: ortNode.InferenceSession.SessionOptions = { executionProviders: ["cpu"] };
  if (options.spinning === false) opts.extra = { session: { intra_op: { allow_spinning: "0" } } };
  const s = await ortNode.InferenceSession.create(model, opts);
  return wrap(s as unknown as AnySession, (f) => new ortNode.Tensor("float32", f.data, f.dims));
}
