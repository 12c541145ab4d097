/**
 * Attention criteria and the per-token carry on the real graph-only exports (../shared/models/
 * graph-only, synthetic weights at their recorded external-data offsets, cut to their first layers).
 *
 * 1. Behind fused com.microsoft.MultiHeadAttention (Qwen3.5 int8: MHA + RotaryEmbedding, an
 *    attention_bias built from image_grid_thw, batch-less stream; Gemma-3 fp32: MHA over 4096
 *    tokens), the scores prunec recomputes from the op's inputs equal those it reads from the
 *    unfused twin (test/support/unfuse.ts: the op replaced by its definition in plain ops, reading
 *    the same weight files), the kept sets are identical, and the twin computes what the fused kernel
 *    does. Two images in one Qwen3.5 call make the attention_bias block-diagonal.
 * 2. The carry: below a stage, the kept tokens must attend to the kept tokens only, with their own
 *    attention-bias rows and columns, rotary positions and tables. So the pruned model's rows equal
 *    the rows, at the kept positions, of the dense model whose attentions below the stage mask the
 *    dropped keys (test/support/dense-edits.ts), and that masking visibly changes those rows.
 *
 * Each compiled variant runs once: the scoring and selection subgraphs of several criteria are
 * joined into one model (test/support/stage-union.ts), which matters for Gemma (4096 tokens; its
 * layer costs seconds on 2 cores, so it is cut to one layer).
 */
import { expect, it } from "vitest";
import { readFileSync, writeFileSync } from "node:fs";
import { describeShared, sharedModel } from "./helpers/shared.js";
import { maxAbsDiff, runNode, type Feeds, type OrtOutput } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { decodeModel } from "../src/onnx/io.js";
import { denseName } from "../passes/gather-tokens.js";
import { residualOutput, truncateToLayers } from "./support/synthetic-weights.js";
import { unfuseMultiHeadAttention } from "./support/unfuse.js";
import { rows, unfoldProbs, withOutputs } from "./support/model-edit.js";
import { stageUnion } from "./support/stage-union.js";
import {
  GRAPH_ONLY,
  imageRanges,
  gemmaFeeds,
  qwen2Feeds,
  qwen35Feeds,
  withWeights,
} from "./support/graph-only-inputs.js";
import { carriedTensors, dynamicQuantizersBelow, freezeDynamicQuantization, maskKeys } from "./support/dense-edits.js";
import { globalAttnKeep, keepCount, type Probs } from "./reference/cls-attn.js";
import { pagerankKeep } from "./reference/attention-scores.js";

const SEED = 1;

const SCORES_TOLERANCE = 1e-5;
const SCORES_RELATIVE = 1e-4;
const OUTPUT_TOLERANCE = 1e-4;
/** The masked dense model must differ from the plain one by more than this at the compared rows, or the carry check could not fail. */
const MASKING_MATTERS = 1e-3;

const f32 = (o: OrtOutput | undefined): Float32Array => o!.data as Float32Array;
const keptOf = (o: OrtOutput | undefined): number[][] => rows(o!.data as BigInt64Array, o!.dims);

/** Rows `kept` of a [N, D] or [1, N, D] tensor, concatenated. */
function rowsAt(o: OrtOutput, kept: readonly number[]): Float32Array {
  const d = o.dims.at(-1)!;
  const data = f32(o);
  const out = new Float32Array(kept.length * d);
  kept.forEach((t, i) => out.set(data.subarray(t * d, (t + 1) * d), i * d));
  return out;
}

/** [1, H, N, N] (or [H, N, N]) attention tensor as Probs ([B][H][N][N]). */
function asProbs(o: OrtOutput): Probs {
  const [n, m] = o.dims.slice(-2) as [number, number];
  const heads = f32(o).length / (n * m);
  return unfoldProbs(f32(o), [heads, n, m], heads);
}

interface RecomputeCase {
  file: string;
  layers: number;
  headSize: number;
  feeds: Feeds;
  specs: string[];
  /** Also check the kept sets against the TypeScript references on the twin's layer-0 probabilities/logits (small token counts only). */
  references: boolean;
}

/**
 * Compile each spec on the cut fused model and on its unfused twin, run both unions once; assert
 * scores ≤ 1e-5, identical kept sets, dense layer-0 (and, with 2+ layers, final) outputs of the twin
 * equal to the fused model's ≤ 1e-4, and the first spec's pruned outputs too.
 */
async function recomputeEqualsTwin(c: RecomputeCase): Promise<void> {
  const cut = truncateToLayers(readFileSync(sharedModel(c.file)), c.layers);
  const twin = unfuseMultiHeadAttention(cut, c.headSize);
  const ops = (m: Uint8Array) => decodeModel(m).graph!.node.map((n) => n.opType);
  expect(ops(cut).filter((o) => o === "MultiHeadAttention")).toHaveLength(c.layers);
  expect(ops(twin)).not.toContain("MultiHeadAttention");
  expect(ops(twin).filter((o) => o === "Softmax")).toHaveLength(c.layers);

  const r0 = residualOutput(cut, 0);
  const last = residualOutput(cut, c.layers - 1);
  const fused = stageUnion(c.specs.map((s) => compile(cut, s, { exposeIndices: true }).model));
  const unfused = stageUnion(c.specs.map((s) => compile(twin, s, { exposeIndices: true }).model));
  // The twin's layer-0 softmax, input (logits) and output (probabilities), for the references.
  const softmax0 = decodeModel(twin).graph!.node.find((n) => n.opType === "Softmax")!;
  const twinExtra = c.references ? [softmax0.input[0]!, softmax0.output[0]!] : [];
  const files: Record<string, Uint8Array> = {
    "fused.onnx": withOutputs(fused.model, [denseName(r0)]),
    "twin.onnx": withOutputs(unfused.model, [denseName(r0), ...twinExtra]),
  };
  if (c.layers > 1) Object.assign(files, { "fused-dense.onnx": cut, "twin-dense.onnx": twin });

  await withWeights(cut, SEED, files, async (path) => {
    const a = await runNode(path("fused.onnx"), c.feeds);
    const b = await runNode(path("twin.onnx"), c.feeds);
    c.specs.forEach((spec, i) => {
      const sa = fused.stages[i]!;
      const sb = unfused.stages[i]!;
      const kept = keptOf(a[sa.indices]);
      expect(kept[0]).toHaveLength(keepCount(50, f32(a[sa.scores]).length));
      expect(kept, spec).toEqual(keptOf(b[sb.indices]));
      if (c.references) {
        const expected = /global-attn/.test(spec)
          ? globalAttnKeep(asProbs(b[softmax0.output[0]!]!), 50, 0)
          : /pagerank/.test(spec)
            ? pagerankKeep(asProbs(b[softmax0.input[0]!]!), 50, 0)
            : undefined;
        if (expected) expect(kept, `${spec}: TypeScript reference`).toEqual(expected);
      }
      const diff = maxAbsDiff(f32(a[sa.scores]), f32(b[sb.scores]));
      // Gemma's column means are ~1/4096: also bound the difference relative to the scores' size.
      const size = f32(b[sb.scores]).reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      expect(size, spec).toBeGreaterThan(0);
      expect(diff, spec).toBeLessThanOrEqual(SCORES_TOLERANCE);
      expect(diff, spec).toBeLessThanOrEqual(SCORES_RELATIVE * size);
    });
    // Different criteria pick different tokens (the union does not hand every criterion one subgraph).
    expect(new Set(fused.stages.map((s) => JSON.stringify(keptOf(a[s.indices])))).size).toBe(c.specs.length);

    let dense = maxAbsDiff(f32(a[denseName(r0)]), f32(b[denseName(r0)]));
    if (c.layers > 1) {
      const da = (await runNode(path("fused-dense.onnx"), c.feeds, [last]))[last]!;
      const db = (await runNode(path("twin-dense.onnx"), c.feeds, [last]))[last]!;
      dense = Math.max(dense, maxAbsDiff(f32(da), f32(db)));
    }
    expect(dense).toBeLessThanOrEqual(OUTPUT_TOLERANCE);
    const pruned = maxAbsDiff(f32(a[last]), f32(b[last]));
    expect(pruned).toBeLessThanOrEqual(OUTPUT_TOLERANCE);
  });
}

// Measured (onnxruntime-node 1.30, 2 cores): recomputed scores equal the twin's bitwise (0) in every
// case (the recompute and the twin run the same fp32 ops: MatMul, Mul by scale, Add bias, Softmax);
// dense twin vs fused kernel: 0 on Qwen3.5 (scale 0.125 is exact), 2.7e-6 on Gemma.
describeShared("real fused graphs: prunec's recomputed attention equals the unfused twin's", () => {
  const qwenSpecs = ["after layer 0 keep 50% by global-attn", "after layer 0 keep 50% by pagerank"];

  it("qwen3.5 int8 (2 layers), one 8×8 image: global-attn and pagerank scores and kept sets equal the twin's and the references'", async () => {
    await recomputeEqualsTwin({
      file: GRAPH_ONLY.qwen35,
      layers: 2,
      headSize: 64,
      feeds: qwen35Feeds([[1, 8, 8]], SEED),
      specs: qwenSpecs,
      references: true,
    });
  });

  it("qwen3.5 int8 (2 layers), two 4×4 images in one call (block-diagonal attention_bias): the same", async () => {
    await recomputeEqualsTwin({
      file: GRAPH_ONLY.qwen35,
      layers: 2,
      headSize: 64,
      feeds: qwen35Feeds(
        [
          [1, 4, 4],
          [1, 4, 4],
        ],
        SEED,
      ),
      specs: qwenSpecs,
      references: true,
    });
  });

  it("gemma-3 fp32 (1 layer, 4096 tokens): global-attn, pagerank and hiprune(object_layer: 0) scores and kept sets equal the twin's", async () => {
    await recomputeEqualsTwin({
      file: GRAPH_ONLY.gemma,
      layers: 1,
      headSize: 72,
      feeds: gemmaFeeds(SEED),
      specs: [...qwenSpecs, "after layer 0 keep 50% by hiprune(object_layer: 0)"],
      references: false,
    });
  }, 180_000);
});

// Measured: pruned vs masked dense rows 0 (Qwen3.5, quantization frozen; 0.073 with dynamic
// quantization) and 2.4e-6 (Qwen2-VL); masked vs plain dense at the kept rows 0.97 and 1.49.
describeShared(
  "real graphs: side tensors follow the kept tokens (pruned rows = dense rows with the dropped keys masked below the stage)",
  () => {
    it("qwen3.5 int8, two 4×4 images: the block-diagonal attention_bias (rows and columns) and RotaryEmbedding's position_ids are carried", async () => {
      const grids: [number, number, number][] = [
        [1, 4, 4],
        [1, 4, 4],
      ];
      const sizes = grids.map(([t, h, w]) => t * h * w);
      const n = sizes.reduce((a, b) => a + b, 0);
      const feeds = qwen35Feeds(grids, SEED);
      const cut = truncateToLayers(readFileSync(sharedModel(GRAPH_ONLY.qwen35)), 2);
      const r0 = residualOutput(cut, 0);
      const last = residualOutput(cut, 1);
      const quantizers = dynamicQuantizersBelow(cut, r0);
      expect(quantizers).toHaveLength(4); // layer 1: q/k/v input, attention output, MLP input, MLP hidden

      await withWeights(
        cut,
        SEED,
        {
          "probe.onnx": withOutputs(
            withOutputs(
              cut,
              quantizers.map((q) => q.scale),
            ),
            quantizers.map((q) => q.zeroPoint),
            2,
          ),
        },
        async (path) => {
          // DynamicQuantizeLinear's per-tensor range spans the tokens it sees: freeze it at the dense run's
          // parameters (the dense outputs stay the same), so that rows can be compared exactly.
          const probe = await runNode(path("probe.onnx"), feeds);
          const frozen = freezeDynamicQuantization(
            cut,
            new Map(
              quantizers.map((q) => [
                q.node,
                { scale: f32(probe[q.scale])[0]!, zeroPoint: probe[q.zeroPoint]!.data[0] as number },
              ]),
            ),
          );
          const spec = "after layer 0 keep 50% by global-attn";
          const pruned = compile(frozen, spec, { exposeIndices: true }).model;
          expect(carriedTensors(pruned, 0)).toEqual([
            "/model/vision_rope/attn_mask/UnsqueezeBatchHead/output_0",
            "/model/vision_rope/pos_ids/Unsqueeze/output_0",
          ]);
          writeFileSync(path("pruned.onnx"), pruned);
          writeFileSync(path("dense.onnx"), cut);
          writeFileSync(path("frozen.onnx"), frozen);
          writeFileSync(path("pruned-dynamic.onnx"), compile(cut, spec, { exposeIndices: true }).model);

          const out = await runNode(path("pruned.onnx"), feeds, ["prunec.stage0.indices", last]);
          const kept = keptOf(out["prunec.stage0.indices"])[0]!;
          expect(kept).toHaveLength(keepCount(50, n));
          // Both images keep tokens, and the kept positions are not a prefix (positions 0..K-1 would hide a missed position gather).
          for (const [s, e] of imageRanges(sizes)) expect(kept.some((t) => t >= s && t < e)).toBe(true);
          expect(kept.some((t, i) => t !== i)).toBe(true);

          writeFileSync(path("masked.onnx"), maskKeys(frozen, 1, kept, n));
          const masked = (await runNode(path("masked.onnx"), feeds, [last]))[last]!;
          const plain = (await runNode(path("frozen.onnx"), feeds, [last]))[last]!;
          const dense = (await runNode(path("dense.onnx"), feeds, [last]))[last]!;
          // Freezing at the dense run's parameters leaves the dense outputs as they were (measured: bitwise equal).
          expect(maxAbsDiff(f32(plain), f32(dense))).toBeLessThanOrEqual(OUTPUT_TOLERANCE);

          expect(out[last]!.dims).toEqual([kept.length, 768]);
          expect(maxAbsDiff(f32(out[last]), rowsAt(masked, kept))).toBeLessThanOrEqual(OUTPUT_TOLERANCE);
          expect(maxAbsDiff(rowsAt(plain, kept), rowsAt(masked, kept))).toBeGreaterThan(MASKING_MATTERS);

          // With dynamic quantization, the pruned model quantizes layer 1 with ranges over the kept tokens
          // only: same kept set, rows that differ from the masked dense ones by more than rounding.
          const dynamic = await runNode(path("pruned-dynamic.onnx"), feeds, ["prunec.stage0.indices", last]);
          expect(keptOf(dynamic["prunec.stage0.indices"])[0]).toEqual(kept);
          writeFileSync(path("masked-dynamic.onnx"), maskKeys(cut, 1, kept, n));
          const maskedDynamic = (await runNode(path("masked-dynamic.onnx"), feeds, [last]))[last]!;
          expect(maxAbsDiff(f32(dynamic[last]), rowsAt(maskedDynamic, kept))).toBeGreaterThan(OUTPUT_TOLERANCE);
        },
      );
    });

    it("qwen2-vl torch export, an 8×8 and a 4×4 image: the attention mask (rows and columns) and the rotary cos/sin tables are carried", async () => {
      const grids: [number, number][] = [
        [8, 8],
        [4, 4],
      ];
      const sizes = grids.map(([h, w]) => h * w);
      const n = sizes.reduce((a, b) => a + b, 0);
      const feeds = qwen2Feeds(grids, SEED);
      const cut = truncateToLayers(readFileSync(sharedModel(GRAPH_ONLY.qwen2)), 2);
      const last = residualOutput(cut, 1);
      const pruned = compile(cut, "after layer 0 keep 50% by norm", { exposeIndices: true }).model;
      expect(carriedTensors(pruned, 0)).toEqual([
        "/visual/blocks.0/attn/Cast_1_output_0",
        "/visual/blocks.0/attn/Cast_2_output_0",
        "/visual/blocks.1/attn/Cast_8_output_0",
      ]);

      await withWeights(cut, SEED, { "pruned.onnx": pruned, "dense.onnx": cut }, async (path) => {
        const out = await runNode(path("pruned.onnx"), feeds, ["prunec.stage0.indices", last]);
        const kept = keptOf(out["prunec.stage0.indices"])[0]!;
        expect(kept).toHaveLength(keepCount(50, n));
        for (const [s, e] of imageRanges(sizes)) expect(kept.some((t) => t >= s && t < e)).toBe(true);
        expect(kept.some((t, i) => t !== i)).toBe(true);

        writeFileSync(path("masked.onnx"), maskKeys(cut, 1, kept, n));
        const masked = (await runNode(path("masked.onnx"), feeds, [last]))[last]!;
        const plain = (await runNode(path("dense.onnx"), feeds, [last]))[last]!;
        expect(out[last]!.dims).toEqual([kept.length, 1280]);
        expect(maxAbsDiff(f32(out[last]), rowsAt(masked, kept))).toBeLessThanOrEqual(OUTPUT_TOLERANCE);
        expect(maxAbsDiff(rowsAt(plain, kept), rowsAt(masked, kept))).toBeGreaterThan(MASKING_MATTERS);
      });
    });
  },
);
