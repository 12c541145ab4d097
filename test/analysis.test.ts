/** Transformer analysis on every shared model: layer counts, attention kinds, tokens, CLS. */
import { expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { describeShared, sharedModel } from "./helpers/shared.js";
import { inspectModel } from "../src/inspect.js";
import { PrunecError } from "../src/errors.js";

const inspect = (rel: string) => inspectModel(readFileSync(sharedModel(rel)), rel);

describeShared("transformer analysis of the shared models", () => {
  it("vit-ti16 (torchvision, TorchScript export): 12 MatMul+Softmax layers, CLS at 0, 197 tokens", () => {
    const r = inspect("synthetic/vit-ti16-cls-randinit/model.onnx");
    expect(r.layerCount).toBe(12);
    expect(r.layers.map((l) => l.attention)).toEqual(Array(12).fill("matmul-softmax"));
    expect(r.layers.every((l) => l.heads === 3 && l.headSize === 64 && l.residual !== null)).toBe(true);
    expect(r.layers[0]!.probabilities).toBe("batch*heads,q,k");
    expect(r.layers[0]!.residual).toEqual({
      input: "/encoder/Add_output_0",
      output: "/encoder/layers/encoder_layer_0/Add_1_output_0",
    });
    expect(r.layers[11]!.residual!.output).toBe("/encoder/layers/encoder_layer_11/Add_1_output_0");
    // Each layer's output residual is the next layer's input residual.
    for (let i = 1; i < 12; i++) expect(r.layers[i]!.residual!.input).toBe(r.layers[i - 1]!.residual!.output);
    expect(r).toMatchObject({
      tokens: 197,
      tokenAxis: 1,
      batchAxis: 0,
      hidden: 192,
      cls: { present: true, index: 0, prefixTokens: 1 },
    });
  });

  it("qwen2-vl vision tower (PyTorch 2.x export, Gemm): 32 layers, no batch axis, no CLS", () => {
    const r = inspect("graph-only/qwen2-vl-2b-vision-tower-torchexport/model.onnx");
    expect(r.layerCount).toBe(32);
    expect(
      r.layers.every(
        (l) => l.attention === "matmul-softmax" && l.residual !== null && l.heads === 16 && l.headSize === 80,
      ),
    ).toBe(true);
    expect(r).toMatchObject({ tokenAxis: 0, batchAxis: null, hidden: 1280, cls: { present: false } });
    expect(r.layers[0]!.criteria.find((c) => c.name === "cls-attn")!.ok).toBe(false);
  });

  for (const file of ["vision_encoder.onnx", "vision_encoder_quantized.onnx"]) {
    it(`gemma-3 ${file} (transformers.js, fused MultiHeadAttention): 27 layers, 4096 tokens`, () => {
      const r = inspect(`graph-only/gemma-3-4b-vlm/${file}`);
      expect(r.layerCount).toBe(27);
      expect(
        r.layers.every(
          (l) => l.attention === "MultiHeadAttention" && l.heads === 16 && l.headSize === 72 && l.residual !== null,
        ),
      ).toBe(true);
      expect(r).toMatchObject({ tokens: 4096, tokenAxis: 1, batchAxis: 0, hidden: 1152, cls: { present: false } });
      expect(r.layers[0]!.quantization).toBe(file.includes("quantized") ? "MatMulNBits" : null);
      expect(r.externalData).toBeGreaterThan(0);
    });
  }

  it("qwen3.5 int8 vision encoder (MatMulInteger, MultiHeadAttention + rotary): 12 layers", () => {
    const r = inspect("graph-only/qwen3.5-0.8b-vlm-int8/vision_encoder_quantized.onnx");
    expect(r.layerCount).toBe(12);
    expect(
      r.layers.every((l) => l.attention === "MultiHeadAttention" && l.quantization === "MatMulInteger" && l.rotary),
    ).toBe(true);
    expect(r.cls.present).toBe(false);
  });

  it("qwen3.5 decoder: 24 layers, full attention (GroupQueryAttention) every 4th, linear attention elsewhere", () => {
    const r = inspect("graph-only/qwen3.5-0.8b-vlm-int8/decoder_model_merged_quantized.onnx");
    expect(r.layerCount).toBe(24);
    const kinds = r.layers.map((l) => l.attention);
    expect(kinds.filter((k) => k === "GroupQueryAttention")).toHaveLength(6);
    expect(kinds.filter((k) => k === "linear-attention")).toHaveLength(18);
    expect(r.layers.filter((l) => l.attention === "GroupQueryAttention").map((l) => l.index)).toEqual([
      3, 7, 11, 15, 19, 23,
    ]);
  });

  it("gemma-3 decoder: 34 GroupQueryAttention layers", () => {
    const r = inspect("graph-only/gemma-3-4b-vlm/decoder_model_merged.onnx");
    expect(r.layerCount).toBe(34);
    expect(r.layers.every((l) => l.attention === "GroupQueryAttention")).toBe(true);
  });

  it("a model without attention is rejected with what was looked for", () => {
    let err: unknown;
    try {
      inspect("graph-only/gemma-3-4b-vlm/embed_tokens.onnx");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PrunecError);
    expect((err as PrunecError).message).toBe(
      "graph-only/gemma-3-4b-vlm/embed_tokens.onnx: no transformer layers found (looked for Softmax between a Q·Kᵀ MatMul and a P·V MatMul, and for com.microsoft MultiHeadAttention/Attention/GroupQueryAttention nodes; found none)",
    );
  });
});
