/**
 * global-attn end to end: the compiled model's kept sets equal the TypeScript reference computed
 * from the dense model's own probabilities (batch 1 and 3 on ViT-Ti, batch 2 on the tiny ViT;
 * CPU and WASM), and stages mix with cls-attn.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describeShared, sharedModel, REPO_ROOT } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { withOutputs, unfoldProbs, rows } from "./support/model-edit.js";
import { globalAttnKeep, clsAttnKeep } from "./reference/cls-attn.js";

const probsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Softmax_output_0`;

async function expectReference(
  model: Uint8Array,
  feeds: Feeds,
  layer: number,
  percent: number,
  heads: number,
  run = runNode,
) {
  const pruned = compile(model, `after layer ${layer} keep ${percent}% by global-attn`, { exposeIndices: true }).model;
  const p = (await runNode(withOutputs(model, [probsOf(layer)]), feeds, [probsOf(layer)]))[probsOf(layer)]!;
  const expected = globalAttnKeep(unfoldProbs(p.data as Float32Array, p.dims, heads), percent, 1);
  const out = (await run(pruned, feeds, ["prunec.stage0.indices"]))["prunec.stage0.indices"]!;
  expect(rows(out.data as BigInt64Array, out.dims)).toEqual(expected);
}

describe("global-attn on the built-in tiny ViT", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
  const x = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
  const feeds: Feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
  it("after layer 1 keep 50%: exact kept sets on CPU and WASM", async () => {
    await expectReference(model, feeds, 1, 50, 2);
    await expectReference(model, feeds, 1, 50, 2, runWasm);
  });
  it("mixes with cls-attn: the second stage's indices number its own input tokens", async () => {
    const { model: pruned, report } = compile(
      model,
      "after layer 0 keep 50% by cls-attn\nafter layer 2 keep 50% by global-attn",
      { exposeIndices: true },
    );
    expect(report.stages.map((s) => [s.criterion, s.tokensIn, s.tokensOut])).toEqual([
      ["cls-attn", 65, 33],
      ["global-attn", 33, 17],
    ]);
    // Reference for stage 1: probabilities of layer 2 in the once-pruned model.
    const once = compile(model, "after layer 0 keep 50% by cls-attn").model;
    const p = (await runNode(withOutputs(once, [probsOf(2)]), feeds, [probsOf(2)]))[probsOf(2)]!;
    const expected = globalAttnKeep(unfoldProbs(p.data as Float32Array, p.dims, 2), 50, 1);
    const p0 = (await runNode(withOutputs(model, [probsOf(0)]), feeds, [probsOf(0)]))[probsOf(0)]!;
    const expected0 = clsAttnKeep(unfoldProbs(p0.data as Float32Array, p0.dims, 2), 50, 1);
    const out = await runNode(pruned, feeds, ["prunec.stage0.indices", "prunec.stage1.indices"]);
    expect(rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims)).toEqual(
      expected0,
    );
    expect(rows(out["prunec.stage1.indices"]!.data as BigInt64Array, out["prunec.stage1.indices"]!.dims)).toEqual(
      expected,
    );
  });
});

describeShared("global-attn on the torchvision ViT-Ti (vit-ti16-cls-randinit)", () => {
  const x = () => readNpy(sharedModel("synthetic/vit-ti16-cls-randinit/ref_in.npy")).data as Float32Array;
  it("layers 1 and 6 at 25% and 50%: exact kept sets at batch 1 and 3", async () => {
    const model = readFileSync(sharedModel("synthetic/vit-ti16-cls-randinit/model.onnx"));
    const one = x();
    const three = new Float32Array(one.length * 3);
    for (let b = 0; b < 3; b++)
      for (let i = 0; i < one.length; i++)
        three[b * one.length + i] = one[i]! * (1 - 0.4 * b) + 0.1 * b * Math.sin(i * 0.01);
    for (const [layer, percent] of [
      [1, 25],
      [6, 50],
    ] as const) {
      await expectReference(
        model,
        { pixel_values: { type: "float32", dims: [1, 3, 224, 224], data: one } },
        layer,
        percent,
        3,
      );
      await expectReference(
        model,
        { pixel_values: { type: "float32", dims: [3, 3, 224, 224], data: three } },
        layer,
        percent,
        3,
      );
    }
  });
});
