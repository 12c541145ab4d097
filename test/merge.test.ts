/**
 * Spatial merges after the encoder (src/analysis/merge.ts) on the real exports: Qwen towers fold 4
 * consecutive tokens into the hidden axis, Gemma-3 average-pools its 64×64 token grid 4×4; plain
 * ViTs have no merge, and a model cut before its merger (test/support) has none either.
 */
import { expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describeShared, sharedModel, REPO_ROOT } from "./helpers/shared.js";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { spatialMerge } from "../src/analysis/merge.js";
import { formatInspect, inspectModel } from "../src/inspect.js";
import { truncateToLayers } from "./support/synthetic-weights.js";

function mergeOf(bytes: Uint8Array) {
  const g = new Graph(decodeModel(bytes).graph!);
  const info = analyzeTransformer(g);
  const merge = spatialMerge(g, info);
  expect(info.merge).toEqual(merge); // the analysis carries the same fact
  return merge;
}

const shared = (rel: string) => readFileSync(sharedModel(rel));

describeShared("spatial merge after the encoder, on the real exports", () => {
  it("qwen3.5 int8 (transformers.js): merger LayerNorm → Reshape [-1, 3072] folds 4 tokens of 768", () => {
    expect(mergeOf(shared("graph-only/qwen3.5-0.8b-vlm-int8/vision_encoder_quantized.onnx"))).toEqual({
      kind: "fold",
      groupSize: 4,
      node: "/model/merger/Reshape",
    });
  });

  it("qwen2-vl (torch export): ln_q LayerNorm → Reshape [-1, 5120] folds 4 tokens of 1280", () => {
    expect(mergeOf(shared("graph-only/qwen2-vl-2b-vision-tower-torchexport/model.onnx"))).toEqual({
      kind: "fold",
      groupSize: 4,
      node: "/visual/merger/Reshape",
    });
  });

  for (const file of ["vision_encoder.onnx", "vision_encoder_quantized.onnx"]) {
    it(`gemma-3 ${file}: post-norm → Transpose → Reshape [0, 1152, 64, 64] → AveragePool 4×4 stride 4`, () => {
      expect(mergeOf(shared(`graph-only/gemma-3-4b-vlm/${file}`))).toEqual({
        kind: "pool",
        groupSize: 16,
        grid: [64, 64],
        kernel: [4, 4],
        node: "/model/multimodal_projector/AveragePool",
      });
    });
  }

  it("plain ViTs (vit-ti16, tiny-vit): none", () => {
    expect(mergeOf(shared("synthetic/vit-ti16-cls-randinit/model.onnx"))).toBeUndefined();
    expect(mergeOf(readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx")))).toBeUndefined();
  });

  it("a model cut before its merger has none; inspect reports the merge", () => {
    const qwen = shared("graph-only/qwen3.5-0.8b-vlm-int8/vision_encoder_quantized.onnx");
    expect(mergeOf(truncateToLayers(qwen, 2))).toBeUndefined();
    const gemma = inspectModel(shared("graph-only/gemma-3-4b-vlm/vision_encoder.onnx"), "gemma.onnx");
    expect(gemma.merge).toMatchObject({ kind: "pool", groupSize: 16 });
    expect(formatInspect(gemma)).toContain(
      "merge:   4×4 pool over the 64×64 token grid (16 tokens → 1) after the encoder (/model/multimodal_projector/AveragePool)",
    );
    expect(
      inspectModel(readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx")), "t.onnx").merge,
    ).toBeNull();
  });
});
