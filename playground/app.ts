/**
 * The playground (issue 18): prunec's own compiler in the page. A spec is checked as it is typed
 * (src/check.ts: the CLI's engine, with its carets and did-you-mean), compiled in the page
 * (src/compile.ts), and the dense and pruned models run in onnxruntime-web (WebGPU when the browser
 * has an adapter, else WASM) on the digits sample set: accuracy, median latency, kept-patch
 * overlays, and the pruned bytes to download. Nothing leaves the page.
 *
 * Bundled by scripts/playground.ts (esbuild); onnxruntime-web is loaded from beside the page.
 */
import * as ort from "onnxruntime-web/webgpu";
import { checkSpec } from "../src/check.js";
import { compile } from "../src/compile.js";
import { formatDiagnostics } from "../grammar/index.js";
import { batchInput, parseDataset, type Dataset } from "../src/data/prds.js";
import { argmax, keptPatches, overlayRgba } from "../src/data/overlay.js";
import { inspectModel, type InspectReport } from "../src/inspect.js";
import { VERSION } from "../src/version.js";

ort.env.wasm.numThreads = 1; // the page is not cross-origin isolated
ort.env.wasm.proxy = false;
// Absolute: a relative path would resolve against the ORT module, which already sits in ./ort/.
ort.env.wasm.wasmPaths = new URL("./ort/", location.href).href;

const SPEC_NAME = "spec.prune";
const RUNS = 20;
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

interface Model {
  name: string;
  bytes: Uint8Array;
}

/** The loaded model, inspected once (src/inspect.ts), or why prunec cannot analyse it. */
interface LoadedModel extends Model {
  info: InspectReport | { why: string };
}

interface State {
  model: LoadedModel | undefined;
  sample: Dataset | undefined;
  provider: "webgpu" | "wasm";
  /** The last successful compile, for the download link and the test hook. */
  pruned: Uint8Array | undefined;
}

const state: State = { model: undefined, sample: undefined, provider: "wasm", pruned: undefined };

async function fetchBytes(path: string): Promise<Uint8Array> {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

/** WebGPU when the browser hands out an adapter, else WASM (the page says which). */
async function chooseProvider(): Promise<"webgpu" | "wasm"> {
  const gpu = (navigator as Navigator & { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
  if (!gpu) return "wasm";
  try {
    return (await gpu.requestAdapter()) ? "webgpu" : "wasm";
  } catch {
    return "wasm";
  }
}

function inspected(model: Model): LoadedModel {
  try {
    return { ...model, info: inspectModel(model.bytes, model.name) };
  } catch (e) {
    return { ...model, info: { why: (e as Error).message } };
  }
}

function summarize({ name, info }: LoadedModel): string {
  if ("why" in info) return `${name}: ${info.why}`;
  return `${name}: ${info.layers.length} layers, ${String(info.tokens)} tokens${info.cls ? ", CLS first" : ""}`;
}

/** Live diagnostics: the same check the CLI runs (`prunec check SPEC MODEL`), with carets. */
function check(): boolean {
  const text = $<HTMLTextAreaElement>("spec").value;
  const out = $<HTMLPreElement>("diagnostics");
  const model = state.model;
  const r = checkSpec(text, SPEC_NAME, model ? { bytes: model.bytes, name: model.name } : undefined);
  if (r.ok) {
    out.className = "ok";
    out.textContent = `ok: ${r.stages.map((s) => `${s.text} (${String(s.tokensIn)} → ${String(s.tokensOut)} tokens)`).join("; ")}`;
  } else {
    out.className = "";
    out.textContent = r.diagnostics.length ? formatDiagnostics(r.diagnostics, text) : (r.refusal?.message ?? r.summary);
  }
  $<HTMLButtonElement>("compile").disabled = !r.ok;
  return r.ok;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

interface Run {
  predictions: number[];
  latencyMs: number;
  outputs: Record<string, ort.Tensor>;
}

/** Every sample example in one batch (predictions, exposed indices), then batch-1 latency (median of RUNS). */
async function runModel(bytes: Uint8Array, data: Dataset): Promise<Run> {
  const session = await ort.InferenceSession.create(bytes, { executionProviders: [state.provider] });
  try {
    const input = session.inputNames[0]!;
    const x = batchInput(data, 0, data.header.n);
    const outputs = await session.run({ [input]: new ort.Tensor("float32", x.data, x.dims) });
    const logits = outputs[session.outputNames.find((n) => !n.startsWith("prunec."))!]!;
    const classes = logits.dims.at(-1)!;
    const values = logits.data as Float32Array;
    const predictions = Array.from({ length: data.header.n }, (_, b) =>
      argmax(values.subarray(b * classes, (b + 1) * classes)),
    );
    const one = batchInput(data, 0, 1);
    const feeds = { [input]: new ort.Tensor("float32", one.data, one.dims) };
    await session.run(feeds); // warm-up: shaders and kernels
    const times: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const t = performance.now();
      await session.run(feeds);
      times.push(performance.now() - t);
    }
    return { predictions, latencyMs: median(times), outputs };
  } finally {
    await session.release();
  }
}

function row(label: string, dense: string, pruned: string): string {
  return `<tr><th>${label}</th><td>${dense}</td><td>${pruned}</td></tr>`;
}

function drawOverlays(data: Dataset, run: Run, dense: Run, stages: number, tokens: number, prefix: number): void {
  const box = $<HTMLDivElement>("overlays");
  box.replaceChildren();
  const grid = Math.round(Math.sqrt(tokens - prefix));
  const indices = Array.from({ length: stages }, (_, s) => {
    const t = run.outputs[`prunec.stage${s}.indices`]!;
    return { data: t.data as BigInt64Array, dims: t.dims };
  });
  for (let b = 0; b < data.header.n; b++) {
    const kept = keptPatches(indices, tokens, prefix, b);
    const img = overlayRgba(data, b, grid, new Set(kept), 2);
    const canvas = document.createElement("canvas");
    canvas.width = img.width;
    canvas.height = img.height;
    canvas.dataset["kept"] = kept.join(",");
    canvas.getContext("2d")!.putImageData(new ImageData(new Uint8ClampedArray(img.data), img.width, img.height), 0, 0);
    const fig = document.createElement("figure");
    const caption = document.createElement("figcaption");
    const names = data.header.labels;
    const name = (c: number) => names?.[c] ?? String(c);
    caption.textContent = `${name(data.labels[b]!)}: ${name(dense.predictions[b]!)} → ${name(run.predictions[b]!)}`;
    fig.append(canvas, caption);
    box.append(fig);
  }
}

async function compileAndRun(): Promise<void> {
  const status = $<HTMLSpanElement>("compile-status");
  const model = state.model;
  if (!model || !check()) return;
  const text = $<HTMLTextAreaElement>("spec").value;
  status.textContent = "compiling…";
  try {
    const t = performance.now();
    const shipped = compile(model.bytes, text, { modelName: model.name, specName: SPEC_NAME });
    const compileMs = performance.now() - t;
    state.pruned = shipped.model;
    const link = $<HTMLAnchorElement>("download");
    link.href = URL.createObjectURL(
      new Blob([shipped.model as Uint8Array<ArrayBuffer>], { type: "application/octet-stream" }),
    );
    link.download = model.name.replace(/\.onnx$/i, "") + ".pruned.onnx";
    const tbody = $<HTMLTableElement>("comparison").tBodies[0]!;
    const stages = shipped.report.stages.length;
    tbody.innerHTML = row("compile (in the page)", "", `${compileMs.toFixed(0)} ms`);
    $<HTMLElement>("results").hidden = false;
    const data = state.sample;
    const input = model.info;
    if (!data || "why" in input || !fitsSample(input)) {
      status.textContent = `compiled (${stages} stage${stages === 1 ? "" : "s"}); no sample set for this model's input`;
      return;
    }
    status.textContent = `running on ${state.provider}…`;
    const dense = await runModel(model.bytes, data);
    // The overlays need the kept positions: a second compile exposes them (the download has none).
    const exposed = compile(model.bytes, text, { modelName: model.name, specName: SPEC_NAME, exposeIndices: true });
    const pruned = await runModel(exposed.model, data);
    const shippedRun = await runModel(shipped.model, data);
    const acc = (r: Run) => r.predictions.filter((p, b) => p === data.labels[b]).length;
    const n = data.header.n;
    tbody.innerHTML += [
      row(`accuracy on the ${n} samples`, `${acc(dense)}/${n}`, `${acc(pruned)}/${n}`),
      row(
        `latency, batch 1 (median of ${RUNS}, ${state.provider})`,
        `${dense.latencyMs.toFixed(2)} ms`,
        `${shippedRun.latencyMs.toFixed(2)} ms`,
      ),
      row("tokens after the last stage", String(input.tokens), String(shipped.report.stages.at(-1)?.tokensOut ?? "")),
    ].join("");
    drawOverlays(data, pruned, dense, stages, Number(input.tokens), input.cls ? 1 : 0);
    status.textContent = "done";
  } catch (e) {
    status.textContent = "";
    const out = $<HTMLPreElement>("diagnostics");
    out.className = "";
    out.textContent = (e as Error).message;
  }
}

/** The sample set fits a model whose first input is [batch, channels, height, width] of its images. */
function fitsSample(info: InspectReport): boolean {
  const d = state.sample?.header;
  const shape = info.inputs[0]?.shape;
  return d !== undefined && shape?.length === 4 && shape.slice(1).join(",") === `${d.channels},${d.height},${d.width}`;
}

async function setModel(model: Model): Promise<void> {
  state.model = inspected(model);
  state.pruned = undefined;
  $<HTMLElement>("results").hidden = true;
  $<HTMLPreElement>("model-summary").textContent = summarize(state.model);
  check();
}

async function main(): Promise<void> {
  $<HTMLSpanElement>("version").textContent = `prunec ${VERSION}`;
  state.provider = await chooseProvider();
  $<HTMLSpanElement>("provider").textContent = `onnxruntime-web ${ort.env.versions?.web ?? ""} on ${state.provider}`;
  state.sample = parseDataset(await fetchBytes("./models/digits-sample.prds"), "digits-sample.prds");
  const digits = { name: "digits.onnx", bytes: await fetchBytes("./models/digits.onnx") };
  await setModel(digits);
  let timer: number | undefined;
  $<HTMLTextAreaElement>("spec").addEventListener("input", () => {
    clearTimeout(timer);
    timer = window.setTimeout(check, 250);
  });
  $<HTMLButtonElement>("compile").addEventListener("click", () => void compileAndRun());
  $<HTMLInputElement>("model-file").addEventListener("change", async (ev) => {
    const file = (ev.target as HTMLInputElement).files?.[0];
    if (!file) return;
    (document.querySelector('input[value="file"]') as HTMLInputElement).checked = true;
    await setModel({ name: file.name, bytes: new Uint8Array(await file.arrayBuffer()) });
  });
  (document.querySelector('input[value="digits"]') as HTMLInputElement).addEventListener(
    "change",
    () => void setModel(digits),
  );
  // For tests and curious users: the state, and a promise that settles when a compile and run end.
  Object.assign(window, { prunecPlayground: { state, check, compileAndRun } });
  document.body.dataset["ready"] = "true";
}

void main();
