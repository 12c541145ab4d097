/**
 * VLA-Pruner across frames on onnxruntime-web's WebGPU EP: `after layer 1 keep 25% of image by
 * vla-pruner(action_layer: 4) across frames` on the synthetic 6-layer decoder, compiled for
 * `--target webgpu`, 6 control steps of 3 sequences (one with 12 image tokens, so the batch pads)
 * in Chromium with executionProviders ["webgpu"] only. Each call is fed the past onnxruntime-node's
 * run left at the call before, so every call is compared on its own: the kept positions equal
 * onnxruntime-node's and the state (present.stage0.prunec_frame) is within 1e-4 of it.
 * test/vla-pruner.test.ts proves the CPU and WASM calls against the float64 reference.
 *
 * Writes scratch/webgpu-vla-pruner.json.
 * Run: npx vitest run --config test/webgpu/vitest.config.ts test/webgpu/vla-pruner.webgpu.ts
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compile } from "../../src/index.js";
import { mulberry32 } from "../../src/random.js";
import { maxAbsDiff, runNode, type Feeds, type Outputs } from "../helpers/ort.js";
import { REPO_ROOT } from "../helpers/shared.js";
import { buildDecoder, DECODER } from "../support/decoder.js";
import type { AdapterInfo } from "./browser.js";
import { browserSuite, type PageApi } from "./harness.js";

const REPORT_PATH = join(REPO_ROOT, "scratch", "webgpu-vla-pruner.json");
const SPEC = `tokens image = input image_mask
tokens action = input action_mask
after layer 1 keep 25% of image by vla-pruner(action_layer: 4) across frames`;
const PAST = "past_key_values.stage0.prunec_frame";
const PRESENT = "present.stage0.prunec_frame";
const INDICES = "prunec.stage0.indices";
const STATE_ATOL = 1e-4;
const N = 24;
const STEPS = 6;

/** Step t of three sequences (as test/vla-pruner.test.ts builds them): ids and image masks [3, N]. */
function feedsAt(t: number): Feeds {
  const rows = [2, 3, 4].map((seed) => {
    const rand = mulberry32(seed);
    const slots = Array.from({ length: 16 }, (_, i) => 3 + ((i * 11 + seed * 7) % 61));
    for (let s = 1; s <= t; s++)
      for (let r = 0; r < 3; r++) {
        const free = [...Array(61).keys()].map((i) => i + 3).filter((id) => !slots.includes(id));
        slots[Math.floor(rand() * 16)] = free[Math.floor(rand() * free.length)]!;
      }
    const fewer = seed === 3;
    return {
      ids: [1, ...slots, 10, 11, 12, 13, 20, 21, 22],
      image: Array.from({ length: N }, (_, i) => i >= 1 && i < (fewer ? 13 : 17)),
    };
  });
  const dims = [rows.length, N];
  const ints = (f: (b: number, i: number) => number) =>
    BigInt64Array.from({ length: rows.length * N }, (_, x) => BigInt(f(Math.floor(x / N), x % N)));
  const bools = (f: (b: number, i: number) => boolean) =>
    Uint8Array.from({ length: rows.length * N }, (_, x) => (f(Math.floor(x / N), x % N) ? 1 : 0));
  return {
    input_ids: { type: "int64", dims, data: ints((b, i) => rows[b]!.ids[i]!) },
    attention_mask: { type: "int64", dims, data: ints(() => 1) },
    position_ids: { type: "int64", dims, data: ints((_b, i) => i) },
    image_mask: { type: "bool", dims, data: bools((b, i) => rows[b]!.image[i]!) },
    action_mask: { type: "bool", dims, data: bools((_b, i) => i >= 21) },
  };
}

const report = {
  generatedAt: new Date().toISOString(),
  wallSeconds: 0,
  spec: SPEC,
  browser: { userAgent: "", adapter: null as AdapterInfo | null, onnxruntimeWeb: "" },
  calls: [] as { step: number; indicesEqual: boolean; maxAbsDiffState: number; runMs: number }[],
  blockedRequests: [] as string[],
  pageErrors: [] as string[],
};

describe("across frames (VLA-Pruner) on WebGPU: each call against onnxruntime-node's", () => {
  const suite = browserSuite(report, REPORT_PATH, () =>
    report.calls
      .map(
        (c) =>
          `step ${c.step}: indices ${c.indicesEqual ? "equal" : "DIFFER"}, |Δstate| ${c.maxAbsDiffState.toExponential(1)}`,
      )
      .join("\n"),
  );

  it(`3 sequences of ${STEPS} steps: WebGPU keeps onnxruntime-node's positions at every call and leaves its state (≤ ${STATE_ATOL})`, async () => {
    const model = compile(buildDecoder({ attention: "plain" }, { ...DECODER, layers: 6 }), SPEC, {
      exposeIndices: true,
      target: "webgpu",
    }).model;
    const cpu: Outputs[] = [];
    const calls: Feeds[] = [];
    let past: Feeds[string] = { type: "float32", dims: [3, 0, N], data: new Float32Array(0) };
    for (let t = 0; t < STEPS; t++) {
      const feeds: Feeds = { ...feedsAt(t), [PAST]: past };
      calls.push(feeds);
      const out = await runNode(model, feeds, [INDICES, PRESENT]);
      cpu.push(out);
      const present = out[PRESENT]!;
      past = { type: "float32", dims: present.dims, data: present.data as Float32Array };
    }
    const batches = calls.map((feeds, t) =>
      Object.fromEntries(
        Object.entries(feeds).map(([name, f]) => {
          const data = f.data as Float32Array | BigInt64Array | Uint8Array;
          const url = suite
            .server()
            .put(`vla.call${t}.${name}.bin`, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
          return [name, { type: f.type, dims: [...f.dims], url }];
        }),
      ),
    );
    const job = {
      id: "vla-pruner",
      model: suite.server().put("vla-pruner.onnx", model),
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
      report.calls.push({ step: t, indicesEqual, maxAbsDiffState: diff, runMs: run.runMs });
    });
    expect(report.calls.map((c) => c.indicesEqual)).toEqual(Array(STEPS).fill(true));
    expect(Math.max(...report.calls.map((c) => c.maxAbsDiffState))).toBeLessThanOrEqual(STATE_ATOL);
    // Every token while the history fills, then 8 others + 4 of 16 image tokens (the batch's largest).
    expect(gpu.runs.map((r) => r.outputs[INDICES]!.dims[1])).toEqual([24, 24, 24, 15, 15, 15]);
  }, 300_000);
});
