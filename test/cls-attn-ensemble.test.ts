/**
 * cls-attn-ensemble (VTC-CLS) end to end: the compiled model keeps exactly the tokens the
 * TypeScript reference picks from the dense model's own attention probabilities of every layer in
 * the range (sum over layers of the head-mean CLS row), at batch 1 and 3, on onnxruntime-node CPU
 * and WASM; after an earlier stage the range must start after that stage's layer.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describeShared, sharedModel, REPO_ROOT } from "./helpers/shared.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { withOutputs, unfoldProbs } from "./support/model-edit.js";
import { clsAttnKeep, type Probs } from "./reference/cls-attn.js";
import { ensembleKeep } from "./reference/attention-scores.js";
import {
  expectKeptAsReference,
  rejection,
  tinyFeeds,
  digitsFeeds,
  kept,
  expectDenseLogits,
  vitTiModel,
  vitTiFeeds,
} from "./support/cases.js";

const probsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Softmax_output_0`;

/** Probabilities [batch][h][q][k] of each layer lo..hi, read from `model` (the dense or a once-pruned model). */
async function layerProbs(model: Uint8Array, feeds: Feeds, lo: number, hi: number, heads: number): Promise<Probs[]> {
  const names = Array.from({ length: hi - lo + 1 }, (_, i) => probsOf(lo + i));
  const out = await runNode(withOutputs(model, names), feeds, names);
  return names.map((n) => unfoldProbs(out[n]!.data as Float32Array, out[n]!.dims, heads));
}

/** Compiles `spec` (one stage), checks CPU and WASM against the reference from the dense model's layers lo..hi. */
async function expectReference(
  model: Uint8Array,
  feeds: Feeds[],
  spec: string,
  lo: number,
  hi: number,
  percent: number,
  heads: number,
) {
  await expectKeptAsReference(model, spec, feeds, async (f) =>
    ensembleKeep(await layerProbs(model, f, lo, hi, heads), percent, 1),
  );
}

describe("cls-attn-ensemble on the built-in tiny ViT (4 layers, 2 heads)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
  const feeds = tinyFeeds();

  it("after layer 2 keep 50% summing layers 0..2: exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    await expectReference(model, feeds, "after layer 2 keep 50% by cls-attn-ensemble(layers: 0..2)", 0, 2, 50, 2);
  });

  it("negative layers count from the end: layers -3..-2 after layer -2 is layers 1..2 after layer 2", async () => {
    const { report } = compile(model, "after layer -2 keep 25% by cls-attn-ensemble(layers: -3..-2)");
    expect(report.stages[0]).toMatchObject({ layer: 2, tokensIn: 65, tokensOut: 17 });
    await expectReference(model, feeds, "after layer -2 keep 25% by cls-attn-ensemble(layers: -3..-2)", 1, 2, 25, 2);
  });

  it("a one-layer range is cls-attn of that layer", async () => {
    const pruned = compile(model, "after layer 3 keep 25% by cls-attn-ensemble(layers: 3..3)", {
      exposeIndices: true,
    }).model;
    const [p3] = await layerProbs(model, feeds[1]!, 3, 3, 2);
    expect(await kept(pruned, feeds[1]!)).toEqual(clsAttnKeep(p3!, 25, 1));
  });

  it("as the second stage: the range starts after the first stage's layer and reads the pruned tokens", async () => {
    const spec = "after layer 0 keep 50% by cls-attn\nafter layer 3 keep 25% by cls-attn-ensemble(layers: 1..3)";
    const { model: pruned, report } = compile(model, spec, { exposeIndices: true });
    expect(report.stages.map((s) => [s.criterion, s.tokensIn, s.tokensOut])).toEqual([
      ["cls-attn", 65, 33],
      ["cls-attn-ensemble", 33, 9],
    ]);
    const once = compile(model, "after layer 0 keep 50% by cls-attn").model;
    for (const f of feeds) {
      const [p0] = await layerProbs(model, f, 0, 0, 2);
      const expected = ensembleKeep(await layerProbs(once, f, 1, 3, 2), 25, 1);
      expect(expected[0]!.length).toBe(9);
      for (const run of [runNode, runWasm]) {
        expect(await kept(pruned, f, run, 0)).toEqual(clsAttnKeep(p0!, 50, 1));
        expect(await kept(pruned, f, run, 1)).toEqual(expected);
      }
    }
  });

  it("keep 100% gives outputs equal to the original's (≤ 1e-5)", async () => {
    await expectDenseLogits(
      model,
      compile(model, "after layer 2 keep 100% by cls-attn-ensemble(layers: 0..2)").model,
      feeds[1]!,
    );
  });

  const rejected: [string, string, string][] = [
    [
      "a range reaching before the previous stage's layer",
      "after layer 1 keep 50% by cls-attn\nafter layer 3 keep 50% by cls-attn-ensemble(layers: 1..3)",
      "s.prune:2:27: error: cls-attn-ensemble cannot run after layer 3: layers 1..3 starts at layer 1, which saw different tokens: an earlier stage pruned after layer 1, so the range must lie within 2..3\n 2 | after layer 3 keep 50% by cls-attn-ensemble(layers: 1..3)\n   |                           ^~~~~~~~~~~~~~~~~",
    ],
    [
      "a range ending after the stage's layer",
      "after layer 2 keep 50% by cls-attn-ensemble(layers: -2..-1)",
      "s.prune:1:27: error: cls-attn-ensemble cannot run after layer 2: layers -2..-1 (layers 2..3) ends at layer 3, which has not run when this stage selects after layer 2; the range must lie within 0..2\n 1 | after layer 2 keep 50% by cls-attn-ensemble(layers: -2..-1)\n   |                           ^~~~~~~~~~~~~~~~~",
    ],
    [
      "a layer outside the model",
      "after layer 2 keep 50% by cls-attn-ensemble(layers: -9..1)",
      "s.prune:1:27: error: cls-attn-ensemble cannot run after layer 2: layer -9 of layers -9..1 is out of range: the model has 4 layers (0..3, or -1..-4 from the end)\n 1 | after layer 2 keep 50% by cls-attn-ensemble(layers: -9..1)\n   |                           ^~~~~~~~~~~~~~~~~",
    ],
    [
      "a range that resolves backwards",
      "after layer 2 keep 50% by cls-attn-ensemble(layers: -1..0)",
      "s.prune:1:27: error: cls-attn-ensemble cannot run after layer 2: layers -1..0 (layers 3..0) is empty; write the range from its first to its last layer\n 1 | after layer 2 keep 50% by cls-attn-ensemble(layers: -1..0)\n   |                           ^~~~~~~~~~~~~~~~~",
    ],
    [
      "no range",
      "after layer 2 keep 50% by cls-attn-ensemble",
      "s.prune:1:27: error: cls-attn-ensemble cannot run after layer 2: it needs the layer range whose CLS attention it sums, e.g. cls-attn-ensemble(layers: 0..2)\n 1 | after layer 2 keep 50% by cls-attn-ensemble\n   |                           ^~~~~~~~~~~~~~~~~",
    ],
  ];
  it.each(rejected)("rejects %s, naming the layers", (_what, spec, message) => {
    expect(rejection(model, spec)).toBe(message);
  });
});

describe("cls-attn-ensemble on the trained digits ViT (6 layers, 4 heads)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
  const feeds = digitsFeeds();
  it("after layer 4 keep 25% summing layers 1..4: exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    await expectReference(model, feeds, "after layer 4 keep 25% by cls-attn-ensemble(layers: 1..4)", 1, 4, 25, 4);
  });
  it("keep 100% gives outputs equal to the original's (≤ 1e-5)", async () => {
    await expectDenseLogits(
      model,
      compile(model, "after layer 4 keep 100% by cls-attn-ensemble(layers: 1..4)").model,
      feeds[1]!,
    );
  });
});

describeShared("cls-attn-ensemble on the torchvision ViT-Ti (vit-ti16-cls-randinit) and without CLS", () => {
  it("after layer 10 keep 25% summing layers 6..10: exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    const model = vitTiModel();
    const feeds = vitTiFeeds();
    await expectReference(model, feeds, "after layer 10 keep 25% by cls-attn-ensemble(layers: 6..10)", 6, 10, 25, 3);
  });

  it("a model without CLS (gemma-3 SigLIP) is rejected with the model fact", () => {
    const bytes = readFileSync(sharedModel("graph-only/gemma-3-4b-vlm/vision_encoder.onnx"));
    expect(rejection(bytes, "after layer 3 keep 50% by cls-attn-ensemble(layers: 1..3)", "g.prune")).toBe(
      "g.prune:1:27: error: cls-attn-ensemble cannot run after layer 3: the model has no CLS token (no learned token is concatenated in front of the patch tokens); use a criterion that does not need one\n 1 | after layer 3 keep 50% by cls-attn-ensemble(layers: 1..3)\n   |                           ^~~~~~~~~~~~~~~~~",
    );
  });
});
