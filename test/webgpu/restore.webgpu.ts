/**
 * `with restore` on onnxruntime-web's WebGPU EP: the per-patch digits model (examples/digit-masks)
 * compiled with restoring stages (keep: ScatterElements back into each stage's input; merge:
 * tomesd's unmerge as a one-hot MatMul) runs in Chromium with executionProviders ["webgpu"] only,
 * on a batch of 4 sample images, and gives the kept positions and the [4, 64, 2] logits that
 * onnxruntime-node (CPU) gives (logits within 1e-3, the capabilities suite's tolerance).
 * test/restore.test.ts proves the CPU rows against DToP's canvas and the ToMe reference.
 *
 * Writes scratch/webgpu-restore.json.
 * Run: npm run test:webgpu, or npx vitest run --config test/webgpu/vitest.config.ts test/webgpu/restore.webgpu.ts
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compile } from "../../src/index.js";
import { batchInput, parseDataset } from "../../src/data/prds.js";
import { maxAbsDiff, runNode } from "../helpers/ort.js";
import { REPO_ROOT } from "../helpers/shared.js";
import type { ModelCase, Sample } from "./models.js";
import { browserSuite, feedsOf, runInBrowser } from "./harness.js";

const DIR = join(REPO_ROOT, "examples", "digit-masks");
const REPORT_PATH = join(REPO_ROOT, "scratch", "webgpu-restore.json");
const LOGITS_ATOL = 1e-3;
const BATCH = 4;
const SPECS = [
  { key: "keep-restore", spec: "after layer 2 keep 25% by cls-attn with restore", stages: 1 },
  {
    key: "two-stage-restore",
    spec: "after layer 1 keep 50% by cls-attn with restore\nafter layer 3 keep 50% by cls-attn with restore",
    stages: 2,
  },
  { key: "merge-restore", spec: "after layer 2 merge 25% by similarity with restore", stages: 1 },
  // Restored at intermediate layers (nested points): the layers after them compute every token.
  {
    key: "restore-at-layers",
    spec: "after layer 1 keep 50% by cls-attn with restore(layer: 4)\nafter layer 2 keep 50% by cls-attn with restore(layer: 3)",
    stages: 2,
  },
];

const set = parseDataset(readFileSync(join(DIR, "sample.prds")), "digit-masks/sample.prds");
const samples: Sample[] = Array.from({ length: BATCH }, (_, i) => ({
  id: `digit-masks/sample.prds[${i}]`,
  data: batchInput(set, i, i + 1).data,
}));
const mc: ModelCase = {
  name: "digit-masks",
  modelPath: join(DIR, "model.onnx"),
  input: "pixel_values",
  output: "logits",
  image: [1, 64, 64],
  specs: SPECS.map((s) => s.spec),
  batchSize: BATCH,
  batchCount: 1,
  candidates: () => samples,
};

const report = {
  generatedAt: new Date().toISOString(),
  wallSeconds: 0,
  model: mc.modelPath,
  browser: { userAgent: "", adapter: null as null | import("./browser.js").AdapterInfo, onnxruntimeWeb: "" },
  results: [] as { key: string; spec: string; maxAbsDiffLogits: number; indicesEqual: boolean; runMs: number }[],
  blockedRequests: [] as string[],
  pageErrors: [] as string[],
};

describe("with restore on WebGPU (digit-masks, batch 4)", () => {
  const suite = browserSuite(report, REPORT_PATH, () =>
    report.results.map((r) => `${r.key}: |Δlogits| ${r.maxAbsDiffLogits.toExponential(1)}`).join("\n"),
  );

  const dense = new Uint8Array(readFileSync(mc.modelPath));
  for (const s of SPECS)
    it(`${s.key}: '${s.spec.replace("\n", "; ")}': kept positions equal and [4, 64, 2] logits within ${LOGITS_ATOL} of CPU`, async () => {
      const model = compile(dense, s.spec, { exposeIndices: true, target: "webgpu" }).model;
      const outputs = ["logits", ...Array.from({ length: s.stages }, (_, i) => `prunec.stage${i}.indices`)];
      const cpu = await runNode(model, feedsOf(mc, samples), outputs);
      const gpu = await runInBrowser(suite.server(), suite.browser(), mc, s.key, model, [samples], outputs);
      const run = gpu.runs[0]!;
      const indicesEqual = outputs
        .slice(1)
        .every(
          (o) =>
            JSON.stringify(run.outputs[o]!.data.map(Number)) ===
            JSON.stringify(Array.from(cpu[o]!.data as BigInt64Array, Number)),
        );
      expect(run.outputs["logits"]!.dims).toEqual([BATCH, 64, 2]);
      const diff = maxAbsDiff(Float32Array.from(run.outputs["logits"]!.data), cpu["logits"]!.data as Float32Array);
      report.results.push({ key: s.key, spec: s.spec, maxAbsDiffLogits: diff, indicesEqual, runMs: run.runMs });
      expect(indicesEqual).toBe(true);
      expect(diff).toBeLessThanOrEqual(LOGITS_ATOL);
    }, 120_000);
});
