/**
 * `with recycle(grid: a)` (VFlowOpt's grid-group recycling) on onnxruntime-web's WebGPU EP:
 * `after layer 2 keep 90% by cls-attn with recycle(grid: 4)` on the digits ViT, compiled for
 * `--target webgpu`, runs the digits samples (batch 1 and 3; at batch 3 the counts differ, so the
 * batch pads) in Chromium with executionProviders ["webgpu"] only; the kept positions (−1 padding
 * included) and counts equal onnxruntime-node's and the logits are within 1e-3 of them. The stage
 * keeps the index lowering (its count differs per example) and says so. test/vflowopt.test.ts
 * proves the CPU and WASM runs against the float64 reference on these inputs.
 *
 * Writes scratch/webgpu-vflowopt.json.
 * Run: npx vitest run --config test/webgpu/vitest.config.ts test/webgpu/vflowopt.webgpu.ts
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

const REPORT_PATH = join(REPO_ROOT, "scratch", "webgpu-vflowopt.json");
const SPEC = "after layer 2 keep 90% by cls-attn with recycle(grid: 4)";
const COUNTS = "prunec.stage0.counts";
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

describe("with recycle(grid: a) on WebGPU against onnxruntime-node", () => {
  const suite = browserSuite(report, REPORT_PATH, () =>
    report.runs
      .map(
        (r) =>
          `batch ${r.batch}: indices ${r.indicesEqual ? "equal" : "DIFFER"}, |Δlogits| ${r.maxAbsDiffLogits.toExponential(1)}`,
      )
      .join("\n"),
  );

  it(`'${SPEC}' (target webgpu), digits at batch 1 and 3: WebGPU keeps onnxruntime-node's positions, logits ≤ ${LOGITS_ATOL}`, async () => {
    const { model, report: compiled } = compile(
      new Uint8Array(readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"))),
      SPEC,
      { exposeIndices: true, target: "webgpu" },
    );
    expect(compiled.stages[0]).toMatchObject({ lowering: "index", loweringNote: "the count differs per example" });
    const feeds = digitsFeeds();
    const cpu = await Promise.all(feeds.map((f) => runNode(model, f, [INDICES, COUNTS, "logits"])));
    const batches = feeds.map((f, i) => {
      const data = f.pixel_values!.data as Float32Array;
      const url = suite
        .server()
        .put(`vflowopt.batch${i}.bin`, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      return { pixel_values: { type: "float32", dims: [...f.pixel_values!.dims], url } };
    });
    const job = {
      id: "vflowopt",
      model: suite.server().put("vflowopt.onnx", model),
      batches,
      outputs: [INDICES, COUNTS, "logits"],
      graphOptimizationLevel: "all",
    };
    const gpu = await suite.browser().page.evaluate((j) => (window as unknown as PageApi).prunecWebgpu.run(j), job);
    gpu.runs.forEach((run, i) => {
      const same = (name: string) =>
        JSON.stringify(run.outputs[name]!.data.map(Number)) ===
        JSON.stringify(Array.from(cpu[i]![name]!.data as BigInt64Array, Number));
      const indicesEqual = same(INDICES) && same(COUNTS);
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
    // At batch 3 the examples keep different counts: the rows pad to the largest.
    expect(new Set(Array.from(cpu[1]![COUNTS]!.data as BigInt64Array, Number)).size).toBeGreaterThan(1);
  }, 180_000);
});
