/**
 * `across frames` on onnxruntime-web's WebGPU EP: `after layer 0 keep 25% by evs across frames`
 * compiled for `--target webgpu` runs a 4-frame video per example (3 examples) in Chromium with
 * executionProviders ["webgpu"] only. Each call is fed the past onnxruntime-node's run left at the
 * call before (the first an empty past), so every call is compared on its own: the kept positions
 * equal onnxruntime-node's, and the state the call leaves (present.stage0.prunec_frame) is within
 * 1e-4 of it. test/evs.test.ts proves the CPU and WASM calls against the float64 EVS reference.
 *
 * Writes scratch/webgpu-evs.json.
 * Run: npm run test:webgpu, or npx vitest run --config test/webgpu/vitest.config.ts test/webgpu/evs.webgpu.ts
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compile } from "../../src/index.js";
import { parseDataset } from "../../src/data/prds.js";
import { maxAbsDiff, runNode, type Feeds, type Outputs } from "../helpers/ort.js";
import { REPO_ROOT } from "../helpers/shared.js";
import { batchAt, video } from "../support/frames.js";
import type { AdapterInfo } from "./browser.js";
import { browserSuite, type PageApi } from "./harness.js";

const REPORT_PATH = join(REPO_ROOT, "scratch", "webgpu-evs.json");
const SPEC = "after layer 0 keep 25% by evs across frames";
const PAST = "past_key_values.stage0.prunec_frame";
const PRESENT = "present.stage0.prunec_frame";
const INDICES = "prunec.stage0.indices";
const HIDDEN = 96;
const STATE_ATOL = 1e-4;

const set = parseDataset(readFileSync(join(REPO_ROOT, "examples", "digits", "sample.prds")), "sample.prds");
const image = (i: number) => Float32Array.from(set.pixels.subarray(i * 4096, (i + 1) * 4096), (p) => p / 255);
const videos = [1, 2, 3].map((i) => video(image(i), i));

const report = {
  generatedAt: new Date().toISOString(),
  wallSeconds: 0,
  spec: SPEC,
  browser: { userAgent: "", adapter: null as AdapterInfo | null, onnxruntimeWeb: "" },
  calls: [] as { frame: number; indicesEqual: boolean; maxAbsDiffState: number; runMs: number }[],
  blockedRequests: [] as string[],
  pageErrors: [] as string[],
};

describe("across frames (EVS) on WebGPU: each call against onnxruntime-node's", () => {
  const suite = browserSuite(report, REPORT_PATH, () =>
    report.calls
      .map(
        (c) =>
          `frame ${c.frame}: indices ${c.indicesEqual ? "equal" : "DIFFER"}, |Δstate| ${c.maxAbsDiffState.toExponential(1)}`,
      )
      .join("\n"),
  );

  it(`'${SPEC}', 3 videos of 4 frames: WebGPU keeps onnxruntime-node's positions at every call and leaves its state (≤ ${STATE_ATOL})`, async () => {
    const model = compile(new Uint8Array(readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"))), SPEC, {
      exposeIndices: true,
      target: "webgpu",
    }).model;
    // The CPU run, call by call: each call's feeds (its frame and the past the call before left).
    const cpu: Outputs[] = [];
    const calls: Feeds[] = [];
    let past: Feeds[string] = { type: "float32", dims: [videos.length, 0, HIDDEN], data: new Float32Array(0) };
    for (let t = 0; t < videos[0]!.length; t++) {
      const feeds: Feeds = { pixel_values: batchAt(videos, t), [PAST]: past };
      calls.push(feeds);
      const out = await runNode(model, feeds, [INDICES, PRESENT]);
      cpu.push(out);
      const present = out[PRESENT]!;
      past = { type: "float32", dims: present.dims, data: present.data as Float32Array };
    }
    // The same calls in the page, each with its own feeds.
    const batches = calls.map((feeds, t) =>
      Object.fromEntries(
        Object.entries(feeds).map(([name, f]) => {
          const data = f.data as Float32Array;
          const url = suite
            .server()
            .put(`evs.call${t}.${name}.bin`, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
          return [name, { type: f.type, dims: [...f.dims], url }];
        }),
      ),
    );
    const job = {
      id: "evs",
      model: suite.server().put("evs.onnx", model),
      batches,
      outputs: [INDICES, PRESENT],
      graphOptimizationLevel: "all",
    };
    const gpu = await suite.browser().page.evaluate((j) => (window as unknown as PageApi).prunecWebgpu.run(j), job);
    gpu.runs.forEach((run, t) => {
      const indicesEqual =
        JSON.stringify(run.outputs[INDICES]!.data.map(Number)) ===
        JSON.stringify(Array.from(cpu[t]![INDICES]!.data as BigInt64Array, Number));
      const diff = maxAbsDiff(Float32Array.from(run.outputs[PRESENT]!.data), cpu[t]![PRESENT]!.data as Float32Array);
      report.calls.push({ frame: t, indicesEqual, maxAbsDiffState: diff, runMs: run.runMs });
    });
    expect(report.calls.map((c) => c.indicesEqual)).toEqual([true, true, true, true]);
    expect(Math.max(...report.calls.map((c) => c.maxAbsDiffState))).toBeLessThanOrEqual(STATE_ATOL);
    // The first call keeps every token; later ones 16 of the 64 patches (+ CLS).
    expect(gpu.runs.map((r) => r.outputs[INDICES]!.dims[1])).toEqual([65, 17, 17, 17]);
  }, 180_000);
});
