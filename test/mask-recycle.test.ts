/**
 * `with mask` keeps every token and masks the dropped keys in later layers: at the kept positions
 * (here: the CLS token the classifiers read) it computes what the gather lowering does. `with
 * recycle` appends the score-weighted mean of the dropped tokens as one extra token.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { parseDataset, batchInput } from "../src/data/prds.js";
import { withOutputs, unfoldProbs, rows } from "./support/model-edit.js";
import { buildFusedVit, FUSED_VIT } from "./support/fused-vit.js";
import { clsScores } from "./reference/cls-attn.js";

const tiny = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
const x = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
const tinyFeeds: Feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
const digits = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
const sample = parseDataset(readFileSync(join(REPO_ROOT, "examples", "digits", "sample.prds")));
const digitBatch = batchInput(sample, 0, 3);
const digitFeeds: Feeds = { pixel_values: { type: "float32", dims: digitBatch.dims, data: digitBatch.data } };
const fused = buildFusedVit();
const fusedFeeds: Feeds = (() => {
  const size = FUSED_VIT.patches * FUSED_VIT.inputs;
  const data = new Float32Array(3 * size).map((_, i) => Math.sin(i * 0.37) * 1.5);
  return { patches: { type: "float32", dims: [3, FUSED_VIT.patches, FUSED_VIT.inputs], data } };
})();

async function both(model: Uint8Array, feeds: Feeds, spec: string, stages: number, run = runNode) {
  const names = [...Array(stages).keys()].map((i) => `prunec.stage${i}.indices`);
  const gathered = await run(compile(model, spec, { exposeIndices: true }).model, feeds);
  const maskedSpec = spec
    .split("\n")
    .map((l) => `${l} with mask`)
    .join("\n");
  const masked = await run(compile(model, maskedSpec, { exposeIndices: true }).model, feeds);
  return { gathered, masked, names };
}

describe("with mask", () => {
  const cases: [string, Uint8Array, Feeds, string][] = [
    ["tiny ViT, cls-attn", tiny, tinyFeeds, "after layer 1 keep 25% by cls-attn"],
    ["digits, global-attn", digits, digitFeeds, "after layer 1 keep 25% by global-attn"],
    [
      "fused MultiHeadAttention with an attention_bias, cls-attn",
      fused,
      fusedFeeds,
      "after layer 0 keep 25% by cls-attn",
    ],
  ];
  for (const [name, model, feeds, spec] of cases) {
    it(`${name}: the same kept tokens and the same outputs (≤ 1e-5) as the gather lowering, CPU and WASM`, async () => {
      for (const run of [runNode, runWasm]) {
        const { gathered, masked } = await both(model, feeds, spec, 1, run);
        expect(masked["prunec.stage0.indices"]!.data).toEqual(gathered["prunec.stage0.indices"]!.data);
        const out = Object.keys(gathered).find((k) => !k.startsWith("prunec."))!;
        expect(maxAbsDiff(masked[out]!.data as Float32Array, gathered[out]!.data as Float32Array)).toBeLessThanOrEqual(
          1e-5,
        );
      }
    });
  }

  it("two masked stages: positions numbered as the model's tokens, the same tokens as two gather stages, equal outputs", async () => {
    const spec = "after layer 0 keep 50% by cls-attn\nafter layer 2 keep 50% by cls-attn";
    const { gathered, masked } = await both(tiny, tinyFeeds, spec, 2);
    const g0 = rows(gathered["prunec.stage0.indices"]!.data as BigInt64Array, gathered["prunec.stage0.indices"]!.dims);
    const g1 = rows(gathered["prunec.stage1.indices"]!.data as BigInt64Array, gathered["prunec.stage1.indices"]!.dims);
    const m1 = rows(masked["prunec.stage1.indices"]!.data as BigInt64Array, masked["prunec.stage1.indices"]!.dims);
    expect(m1).toEqual(g1.map((r, b) => r.map((i) => g0[b]![i]!)));
    expect(
      maxAbsDiff(masked["logits"]!.data as Float32Array, gathered["logits"]!.data as Float32Array),
    ).toBeLessThanOrEqual(1e-5);
  });

  it("removes nothing: every layer still computes every token", () => {
    const { report } = compile(tiny, "after layer 1 keep 25% by cls-attn with mask");
    expect(report.tokensPerLayer.map((t) => t.pruned)).toEqual([65, 65, 65, 65]);
    expect(report.stages[0]!.tokensOut).toBe(17);
  });

  it("a gather stage after a masked one is rejected", () => {
    expect(() =>
      compile(tiny, "after layer 0 keep 50% by cls-attn with mask\nafter layer 2 keep 50% by cls-attn", {
        specName: "m.prune",
      }),
    ).toThrow(
      "m.prune:2:1: error: an earlier stage is 'with mask', so its dropped tokens are still in the stream; later stages must be 'with mask' too",
    );
  });
});

describe("with recycle", () => {
  const residual = "/encoder/layers/encoder_layer_1/Add_1_output_0";
  const probs = "/encoder/layers/encoder_layer_1/self_attention/Softmax_output_0";

  const recycleCases: [string, Uint8Array, Feeds, number][] = [
    ["tiny ViT, batch 2", tiny, tinyFeeds, 2],
    ["digits, batch 3", digits, digitFeeds, 4],
    [
      "digits, batch 1",
      digits,
      { pixel_values: { type: "float32", dims: [1, 1, 64, 64], data: batchInput(sample, 5, 6).data } },
      4,
    ],
  ];
  for (const [name, model, feeds, heads] of recycleCases) {
    it(`${name}: appends the cls-attn-weighted mean of the dropped tokens; the exposed positions end in -1 (CPU and WASM)`, async () => {
      const compiled = compile(model, "after layer 1 keep 25% by cls-attn with recycle", { exposeIndices: true });
      expect(compiled.report.stages[0]!.tokensOut).toBe(18);
      const dense = await runNode(withOutputs(model, [residual, probs]), feeds, [residual, probs]);
      for (const run of [runNode, runWasm]) {
        const out = await run(withOutputs(compiled.model, [residual]), feeds, ["prunec.stage0.indices", residual]);
        const kept = rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims);
        const p = unfoldProbs(dense[probs]!.data as Float32Array, dense[probs]!.dims, heads);
        const [batch, n, d] = dense[residual]!.dims as [number, number, number];
        const x = dense[residual]!.data as Float32Array;
        const y = out[residual]!.data as Float32Array;
        expect(out[residual]!.dims).toEqual([batch, 18, d]);
        for (let b = 0; b < batch; b++) {
          expect(kept[b]!.length).toBe(18);
          expect(kept[b]![17]).toBe(-1);
          const keptSet = new Set(kept[b]!.slice(0, 17));
          const s = clsScores(p[b]!, 1);
          let total = 0;
          const mean = new Array<number>(d).fill(0);
          for (let j = 1; j < n; j++) {
            if (keptSet.has(j)) continue;
            const w = Math.max(0, s[j - 1]!);
            total += w;
            for (let k = 0; k < d; k++) mean[k]! += w * x[(b * n + j) * d + k]!;
          }
          const recycled = Array.from(y.subarray((b * 18 + 17) * d, (b * 18 + 18) * d));
          expect(
            maxAbsDiff(Float32Array.from(recycled), Float32Array.from(mean.map((v) => v / total))),
          ).toBeLessThanOrEqual(1e-5);
        }
      }
    });
  }

  it("is rejected where it cannot apply: nothing to recycle, per-token side tensors below, combined with mask", () => {
    expect(() => compile(tiny, "after layer 1 keep 100% by cls-attn with recycle", { specName: "r.prune" })).toThrow(
      "r.prune:1:42: error: 'with recycle' on a stage that keeps every token: there is nothing to recycle",
    );
    expect(() => compile(fused, "after layer 0 keep 25% by cls-attn with recycle")).toThrow(
      "'with recycle' after layer 0: the layers below read per-token tensors ('/encoder/layers.1.attn.attention_bias', '/encoder/layers.2.attn.attention_bias') that have no row for the recycled token",
    );
    expect(() =>
      compile(tiny, "after layer 1 keep 25% by fopru(strategy: rows) with recycle", { specName: "r.prune" }),
    ).toThrow(
      "r.prune:1:54: error: 'with recycle' needs a stage that ranks single tokens by score, but fopru keeps whole grid rows",
    );
    expect(() =>
      compile(tiny, "after layer 1 keep 25% by cls-attn with mask, recycle", { specName: "r.prune" }),
    ).toThrow(
      "r.prune:1:41: error: 'with mask' and 'with recycle' cannot be combined: a masked stage removes nothing to recycle",
    );
  });
});
