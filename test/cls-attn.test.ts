/**
 * cls-attn end to end on the torchvision ViT-Ti export: the compiled model, run in onnxruntime
 * (native CPU and WASM), keeps exactly the tokens the TypeScript reference picks from the dense
 * model's own attention probabilities, at batch 1 and 3, for several layers and percentages.
 */
import { expect, it, beforeAll } from "vitest";
import { readFileSync } from "node:fs";
import { describeShared, sharedModel } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { withOutputs, unfoldProbs, rows } from "./support/model-edit.js";
import { clsAttnKeep } from "./reference/cls-attn.js";

const MODEL = "synthetic/vit-ti16-cls-randinit/model.onnx";
const probsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Softmax_output_0`;

/** Batch of 3: the reference input and two deterministic variations of it. */
function batchOf3(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length * 3);
  out.set(x, 0);
  for (let i = 0; i < x.length; i++) {
    out[x.length + i] = x[i]! * 0.5 + Math.sin(i * 0.001);
    out[2 * x.length + i] = -x[i]! + Math.cos(i * 0.0007) * 0.3;
  }
  return out;
}

describeShared("cls-attn on the torchvision ViT-Ti (vit-ti16-cls-randinit)", () => {
  let model: Uint8Array;
  let feeds1: Feeds;
  let feeds3: Feeds;
  beforeAll(() => {
    model = readFileSync(sharedModel(MODEL));
    const x = readNpy(sharedModel("synthetic/vit-ti16-cls-randinit/ref_in.npy")).data as Float32Array;
    feeds1 = { pixel_values: { type: "float32", dims: [1, 3, 224, 224], data: x } };
    feeds3 = { pixel_values: { type: "float32", dims: [3, 3, 224, 224], data: batchOf3(x) } };
  });

  const cases: [number, number][] = [
    [0, 50],
    [2, 25],
    [5, 12.5],
    [10, 75],
  ];
  for (const [layer, percent] of cases) {
    it(`after layer ${layer} keep ${percent}%: kept sets equal the reference at batch 1 and 3`, async () => {
      const { model: pruned, report } = compile(model, `after layer ${layer} keep ${percent}% by cls-attn`, {
        exposeIndices: true,
      });
      const kept = Math.floor((percent / 100) * 196 + 0.5);
      expect(report.stages[0]).toMatchObject({ layer, tokensIn: 197, tokensOut: 1 + kept });
      const probe = withOutputs(model, [probsOf(layer)]);
      for (const feeds of [feeds1, feeds3]) {
        const dense = await runNode(probe, feeds, [probsOf(layer)]);
        const p = dense[probsOf(layer)]!;
        const expected = clsAttnKeep(unfoldProbs(p.data as Float32Array, p.dims, 3), percent, 1);
        const out = await runNode(pruned, feeds, ["prunec.stage0.indices", "logits"]);
        const idx = out["prunec.stage0.indices"]!;
        expect(idx.dims).toEqual([expected.length, 1 + kept]);
        expect(rows(idx.data as BigInt64Array, idx.dims)).toEqual(expected);
      }
    });
  }

  it("batch 3 gives each example exactly its batch-1 result", async () => {
    const { model: pruned } = compile(model, "after layer 2 keep 25% by cls-attn", { exposeIndices: true });
    const all = await runNode(pruned, feeds3, ["prunec.stage0.indices", "logits"]);
    const x3 = feeds3.pixel_values!.data as Float32Array;
    const per = x3.length / 3;
    for (let b = 0; b < 3; b++) {
      const one = await runNode(
        pruned,
        { pixel_values: { type: "float32", dims: [1, 3, 224, 224], data: x3.slice(b * per, (b + 1) * per) } },
        ["prunec.stage0.indices", "logits"],
      );
      const k = one["prunec.stage0.indices"]!.dims[1]!;
      expect(Array.from(one["prunec.stage0.indices"]!.data as BigInt64Array)).toEqual(
        Array.from((all["prunec.stage0.indices"]!.data as BigInt64Array).subarray(b * k, (b + 1) * k)),
      );
      const l1 = one.logits!.data as Float32Array;
      expect(maxAbsDiff(l1, (all.logits!.data as Float32Array).subarray(b * 1000, (b + 1) * 1000))).toBeLessThanOrEqual(
        1e-5,
      );
    }
  });

  it("WASM (onnxruntime-web in Node) gives the same indices and outputs as native CPU", async () => {
    const { model: pruned } = compile(model, "after layer 2 keep 25% by cls-attn", { exposeIndices: true });
    const native = await runNode(pruned, feeds3, ["prunec.stage0.indices", "logits"]);
    const wasm = await runWasm(pruned, feeds3, ["prunec.stage0.indices", "logits"]);
    expect(Array.from(wasm["prunec.stage0.indices"]!.data as BigInt64Array)).toEqual(
      Array.from(native["prunec.stage0.indices"]!.data as BigInt64Array),
    );
    expect(maxAbsDiff(wasm.logits!.data as Float32Array, native.logits!.data as Float32Array)).toBeLessThanOrEqual(
      1e-4,
    );
  });

  it("keep 100% compiles to a model whose outputs equal the original's (≤ 1e-5)", async () => {
    const { model: pruned } = compile(model, "after layer 3 keep 100% by cls-attn");
    const dense = await runNode(model, feeds3, ["logits"]);
    const same = await runNode(pruned, feeds3, ["logits"]);
    expect(maxAbsDiff(dense.logits!.data as Float32Array, same.logits!.data as Float32Array)).toBeLessThanOrEqual(1e-5);
  });

  it("two stages compose: the second indexes its own input tokens", async () => {
    const { model: pruned, report } = compile(
      model,
      "after layer 2 keep 50% by cls-attn\nafter layer 5 keep 50% by cls-attn",
      { exposeIndices: true },
    );
    expect(report.stages.map((s) => [s.tokensIn, s.tokensOut])).toEqual([
      [197, 99],
      [99, 50],
    ]);
    const out = await runNode(pruned, feeds3, ["prunec.stage0.indices", "prunec.stage1.indices", "logits"]);
    expect(out["prunec.stage1.indices"]!.dims).toEqual([3, 50]);
    const second = rows(out["prunec.stage1.indices"]!.data as BigInt64Array, [3, 50]);
    for (const r of second) {
      expect(r[0]).toBe(0);
      expect(Math.max(...r)).toBeLessThan(99);
      expect([...r].sort((a, b) => a - b)).toEqual(r);
    }
  });

  it("compiling twice gives byte-identical output", () => {
    const a = compile(model, "after layer 2 keep 25% by cls-attn").model;
    const b = compile(model, "after layer 2 keep 25% by cls-attn").model;
    expect(Buffer.compare(Buffer.from(a), Buffer.from(b))).toBe(0);
  });
});
