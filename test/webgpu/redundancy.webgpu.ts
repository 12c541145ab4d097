/**
 * redundancy (Zero-TPrune's S-stage) on onnxruntime-web's WebGPU EP: `after layer 5 drop 25% by
 * redundancy` on the digits ViT, compiled for `--target webgpu`, runs the digits samples (batch 1
 * and 3) in Chromium with executionProviders ["webgpu"] only; the kept positions equal
 * onnxruntime-node's and the logits are within 1e-3 of them. test/redundancy.test.ts proves the CPU
 * and WASM runs against the float64 reference on these inputs (partition and drop margins > 1e-5).
 *
 * Writes scratch/webgpu-redundancy.json.
 * Run: npx vitest run --config test/webgpu/vitest.config.ts test/webgpu/redundancy.webgpu.ts
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compile } from "../../src/index.js";
import { maxAbsDiff, runNode } from "../helpers/ort.js";
import { REPO_ROOT } from "../helpers/shared.js";
import { digitsFeeds } from "../support/cases.js";
import type { AdapterInfo } from "./browser.js";
import { browserSuite, type PageApi } from "./harness.js";

const REPORT_PATH = join(REPO_ROOT, "scratch", "webgpu-redundancy.json");
const SPEC = "after layer 5 drop 25% by redundancy";
const INDICES = "prunec.stage0.indices";
const LOGITS_ATOL = 1e-3;

const report = {
  generatedAt: new Date().toISOString(),
  wallSeconds: 0,
  spec: SPEC,
  browser: { userAgent: "", adapter: null as AdapterInfo | null, onnxruntimeWeb: "" },
  runs: [] as { batch: number; indicesEqual: boolean; maxAbsDiffLogits: number; runMs: number }[],
  blockedRequests: [] as string[],
  pageErrors: [] as string[],
};

describe("redundancy on WebGPU against onnxruntime-node", () => {
  const suite = browserSuite(report, REPORT_PATH, () =>
    report.runs
      .map(
        (r) =>
          `batch ${r.batch}: indices ${r.indicesEqual ? "equal" : "DIFFER"}, |Δlogits| ${r.maxAbsDiffLogits.toExponential(1)}`,
      )
      .join("\n"),
  );

  it(`'${SPEC}' (target webgpu), digits at batch 1 and 3: WebGPU keeps onnxruntime-node's positions, logits ≤ ${LOGITS_ATOL}`, async () => {
    const model = compile(new Uint8Array(readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"))), SPEC, {
      exposeIndices: true,
      target: "webgpu",
    }).model;
    const feeds = digitsFeeds();
    const cpu = await Promise.all(feeds.map((f) => runNode(model, f, [INDICES, "logits"])));
    const batches = feeds.map((f, i) => {
      const data = f.pixel_values!.data as Float32Array;
      const url = suite
        .server()
        .put(`redundancy.batch${i}.bin`, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      return { pixel_values: { type: "float32", dims: [...f.pixel_values!.dims], url } };
    });
    const job = {
      id: "redundancy",
      model: suite.server().put("redundancy.onnx", model),
      batches,
      outputs: [INDICES, "logits"],
      graphOptimizationLevel: "all",
    };
    const gpu = await suite.browser().page.evaluate((j) => (window as unknown as PageApi).prunecWebgpu.run(j), job);
    gpu.runs.forEach((run, i) => {
      const indicesEqual =
        JSON.stringify(run.outputs[INDICES]!.data.map(Number)) ===
        JSON.stringify(Array.from(cpu[i]![INDICES]!.data as BigInt64Array, Number));
      const diff = maxAbsDiff(Float32Array.from(run.outputs["logits"]!.data), cpu[i]!["logits"]!.data as Float32Array);
      report.runs.push({
        batch: feeds[i]!.pixel_values!.dims[0]!,
        indicesEqual,
        maxAbsDiffLogits: diff,
        runMs: run.runMs,
      });
    });
    expect(report.runs.map((r) => r.indicesEqual)).toEqual([true, true]);
    expect(Math.max(...report.runs.map((r) => r.maxAbsDiffLogits))).toBeLessThanOrEqual(LOGITS_ATOL);
    // 64 patches: 16 dropped, CLS kept.
    expect(gpu.runs.map((r) => r.outputs[INDICES]!.dims[1])).toEqual([49, 49]);
  }, 180_000);
});
