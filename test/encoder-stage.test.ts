/**
 * `after encoder` stages act on the model's output rows (tokens, or merged tokens: see
 * graph-only.test.ts for the Qwen fold and Gemma pooling), scored by the criterion at the last
 * layer. Here: a model whose output is the token stream, and a classifier that has none.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, itShared, sharedModel } from "./helpers/shared.js";
import { inspectModel } from "../src/inspect.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { truncateToLayers, residualOutput } from "./support/synthetic-weights.js";
import { withOutputs, unfoldProbs, rows } from "./support/model-edit.js";
import { clsAttnKeep } from "./reference/cls-attn.js";

const tiny = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
const x = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
const feeds: Feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
const probsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Softmax_output_0`;

describe("after encoder", () => {
  it("on a model that outputs its tokens: keeps the reference's rows (CLS first), equal to the dense output's rows, CPU and WASM", async () => {
    const features = truncateToLayers(tiny, 4); // output: the residual stream leaving the last layer [B, 65, D]
    const out = residualOutput(features, 3);
    const compiled = compile(features, "after encoder keep 25% by cls-attn", { exposeIndices: true });
    expect(compiled.report.stages.map((s) => [s.layer, s.tokensIn, s.tokensOut])).toEqual([[3, 65, 17]]);
    const p = (await runNode(withOutputs(features, [probsOf(3)]), feeds, [probsOf(3)]))[probsOf(3)]!;
    const expected = clsAttnKeep(unfoldProbs(p.data as Float32Array, p.dims, 2), 25, 1);
    const dense = (await runNode(features, feeds, [out]))[out]!;
    for (const run of [runNode, runWasm]) {
      const r = await run(compiled.model, feeds, ["prunec.stage0.indices", out]);
      const kept = rows(r["prunec.stage0.indices"]!.data as BigInt64Array, r["prunec.stage0.indices"]!.dims);
      expect(kept).toEqual(expected);
      const [batch, n, d] = dense.dims as [number, number, number];
      expect(r[out]!.dims).toEqual([batch, 17, d]);
      const a = r[out]!.data as Float32Array;
      const b = dense.data as Float32Array;
      // The same rows, up to float reassociation (ORT fuses the two graphs differently).
      let max = 0;
      kept.forEach((ks, bi) =>
        ks.forEach((t, i) => {
          for (let j = 0; j < d; j++)
            max = Math.max(max, Math.abs(a[(bi * 17 + i) * d + j]! - b[(bi * n + t) * d + j]!));
        }),
      );
      expect(max).toBeLessThanOrEqual(1e-5);
    }
  });

  it("on a classifier (no output with a token axis): rejected before writing", () => {
    expect(() => compile(tiny, "after encoder keep 25% by cls-attn", { specName: "t.prune" })).toThrow(
      "t.prune:1:1: error: 'after encoder' needs a model output with one row per token or per merged token (image features); this model's outputs have none",
    );
  });
});

describe("inspect asks the planner", () => {
  it("a classifier: every criterion at every layer, none after the encoder (with the planner's reason)", () => {
    const r = inspectModel(tiny, "tiny.onnx");
    // iga and transprune read the next layer's q/k, so the last layer cannot host them.
    const last = r.layers.length - 1;
    // vla-pruner reads its action rows at action_layer (default 15), below the stage: a 4-layer model has none.
    const vla = r.layers.map((l) => l.criteria.find((c) => c.name === "vla-pruner")!);
    expect(vla.every((c) => !c.ok)).toBe(true);
    expect(vla[0]!.why).toBe(
      "action_layer: 15 must be a layer below the stage (after layer 0) and at most 3: the action rows' attention is read after the stage's pruning",
    );
    const notOk = r.layers.flatMap((l) =>
      l.criteria.filter((c) => !c.ok && c.name !== "vla-pruner").map((c) => `${l.index}:${c.name}`),
    );
    expect(notOk).toEqual([`${last}:iga`, `${last}:transprune`]);
    expect(r.afterEncoder.every((c) => !c.ok)).toBe(true);
    expect(r.afterEncoder[0]!.why).toBe(
      "'after encoder' needs a model output with one row per token or per merged token (image features); this model's outputs have none",
    );
  });
  itShared("gemma-3 (pooled output): nothing inside the encoder, per-token criteria after it", () => {
    const r = inspectModel(readFileSync(sharedModel("graph-only/gemma-3-4b-vlm/vision_encoder.onnx")), "gemma.onnx");
    const norm = r.layers[3]!.criteria.find((c) => c.name === "norm")!;
    expect(norm.why).toBe(
      "the encoder output is pooled over the 64×64 token grid (node '/model/multimodal_projector/AveragePool'), which needs every token; prune 'after encoder' instead (it keeps whole pooled tokens)",
    );
    expect(r.afterEncoder.filter((c) => c.ok).map((c) => c.name)).toEqual([
      "global-attn",
      "hiprune",
      "fopru",
      "pagerank",
      "last-token-attn",
      "ttv",
      "text-attn",
      "norm",
      "random",
      "uniform",
      "spatten",
    ]);
  });
});
