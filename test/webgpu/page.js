// @ts-check
/**
 * The browser half of the WebGPU suite (plain ESM, no bundler). It exposes `window.prunecWebgpu`,
 * which the suite drives with page.evaluate:
 *
 *   adapter()  → the WebGPU adapter's info (null when there is none)
 *   run(job)   → create a session with ONLY the "webgpu" execution provider, run it, return the
 *                outputs as plain arrays and every console line emitted meanwhile (ORT's verbose
 *                log, which includes the node placement messages).
 *   bench(job) → wall times of interleaved warm runs of several models (opt-in timing).
 *
 * Console lines are captured in-page (console.* is wrapped before onnxruntime-web is imported, so
 * the wasm module's stdout/stderr printers, which go through console, are captured too); the suite
 * also records the whole browser console through Playwright.
 */

/** @type {string[]} */
const captured = [];
for (const level of /** @type {const} */ (["log", "info", "warn", "error", "debug"])) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    captured.push(args.map((a) => (typeof a === "string" ? a : String(a))).join(" "));
    original(...args);
  };
}

const ort = await import("onnxruntime-web/webgpu");
ort.env.wasm.numThreads = 1; // the page is not cross-origin isolated; the CPU fallback runs single-threaded
ort.env.wasm.proxy = false;
ort.env.wasm.wasmPaths = "/ort/";
ort.env.logLevel = "verbose";
ort.env.debug = false;

/** @param {string} url */
async function bytes(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

/** @type {Record<string, (b: ArrayBuffer) => any>} */
const ARRAYS = {
  float32: (b) => new Float32Array(b),
  int64: (b) => new BigInt64Array(b),
  int32: (b) => new Int32Array(b),
  uint8: (b) => new Uint8Array(b),
  bool: (b) => new Uint8Array(b),
};

/**
 * One session, several batches: session creation (and WebGPU shader compilation) is the slow part
 * on SwiftShader, so all of a model's batches go through the same session.
 *
 * @param {{ id: string, model: string,
 *           batches: Record<string, { type: string, dims: number[], url: string }>[],
 *           outputs: string[], graphOptimizationLevel?: "disabled" | "basic" | "extended" | "all" }} job
 */
async function run(job) {
  const start = captured.length;
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(await bytes(job.model), {
    executionProviders: ["webgpu"], // nothing else: an unavailable WebGPU must throw, not fall back to wasm
    graphOptimizationLevel: job.graphOptimizationLevel ?? "all",
    logId: job.id,
    logSeverityLevel: 0, // verbose: the node placement messages are VERBOSE/INFO
    logVerbosityLevel: 0,
  });
  const createMs = performance.now() - t0;
  try {
    /** @type {{ outputs: Record<string, { type: string, dims: number[], data: number[] }>, runMs: number }[]} */
    const runs = [];
    for (const batch of job.batches) {
      /** @type {Record<string, any>} */
      const feeds = {};
      for (const [name, f] of Object.entries(batch)) {
        const make = ARRAYS[f.type];
        if (!make) throw new Error(`feed type ${f.type} not supported by the page`);
        const raw = await bytes(f.url);
        feeds[name] = new ort.Tensor(/** @type {any} */ (f.type), make(raw.buffer), f.dims);
      }
      const t1 = performance.now();
      const res = await session.run(feeds, job.outputs);
      const runMs = performance.now() - t1;
      /** @type {Record<string, { type: string, dims: number[], data: number[] }>} */
      const outputs = {};
      for (const name of job.outputs) {
        const t = res[name];
        if (!t) throw new Error(`no output ${name}`);
        const data = /** @type {ArrayLike<number | bigint>} */ (await t.getData());
        outputs[name] = { type: t.type, dims: [...t.dims], data: Array.from(data, (v) => Number(v)) };
        t.dispose();
      }
      runs.push({ outputs, runMs });
    }
    return { runs, createMs, log: captured.slice(start) };
  } finally {
    await session.release();
    captured.length = start; // the lines were handed back; keep the page's memory flat
  }
}

/**
 * Timing (opt-in, PRUNEC_WEBGPU_BENCH): all of a model's variants open at once, one warm-up run
 * each (compiles the shaders), then `rounds` rounds in which every session runs the same feeds
 * once, the order rotating each round, so drifting machine load hits every variant alike.
 * Returns, per model, the wall time of each session.run (outputs fetched to the CPU, as ORT does
 * by default). Logging is off for these sessions.
 *
 * @param {{ models: { id: string, model: string, outputs: string[] }[],
 *           feeds: Record<string, { type: string, dims: number[], url: string }>, rounds: number }} job
 */
async function bench(job) {
  const start = captured.length;
  /** @type {any[]} */
  const sessions = [];
  try {
    for (const m of job.models) {
      sessions.push(
        await ort.InferenceSession.create(await bytes(m.model), {
          executionProviders: ["webgpu"],
          graphOptimizationLevel: "all",
          logId: `${m.id}.bench`,
          logSeverityLevel: 3,
        }),
      );
    }
    /** @type {Record<string, any>} */
    const feeds = {};
    for (const [name, f] of Object.entries(job.feeds)) {
      const make = ARRAYS[f.type];
      if (!make) throw new Error(`feed type ${f.type} not supported by the page`);
      feeds[name] = new ort.Tensor(/** @type {any} */ (f.type), make((await bytes(f.url)).buffer), f.dims);
    }
    /** @param {number} i */
    const once = async (i) => {
      const t = performance.now();
      const res = await sessions[i].run(feeds, job.models[i].outputs);
      const ms = performance.now() - t;
      for (const name of job.models[i].outputs) res[name]?.dispose();
      return ms;
    };
    for (let i = 0; i < sessions.length; i++) await once(i);
    /** @type {number[][]} */
    const ms = job.models.map(() => []);
    for (let r = 0; r < job.rounds; r++) {
      for (let j = 0; j < sessions.length; j++) {
        const i = (r + j) % sessions.length;
        ms[i].push(await once(i));
      }
    }
    return ms;
  } finally {
    for (const s of sessions) await s.release();
    captured.length = start;
  }
}

async function adapter() {
  const gpu = /** @type {any} */ (navigator).gpu;
  if (!gpu) return null;
  const a = await gpu.requestAdapter();
  if (!a) return null;
  const info = a.info ?? {};
  return {
    vendor: info.vendor ?? "",
    architecture: info.architecture ?? "",
    device: info.device ?? "",
    description: info.description ?? "",
    isFallbackAdapter: Boolean(info.isFallbackAdapter ?? a.isFallbackAdapter),
  };
}

/** @type {any} */ (window).prunecWebgpu = { run, bench, adapter, ortVersion: ort.env.versions?.web ?? "" };
/** @type {HTMLElement} */ (document.getElementById("status")).textContent = "ready";
