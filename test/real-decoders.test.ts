/**
 * FastV compiled into the real transformers.js decoders of ../shared/models/graph-only, on synthetic
 * weights, cut to their first layers with a small LM head (test/support/decoder-cut.ts):
 *
 * - Gemma-3 4B (fp32, GroupQueryAttention with rotary inside the op, sliding-window layers, q/k
 *   norms, sandwich norms): `after layer 0 drop 50% of image by last-token-attn` on 2 layers.
 *
 *   Checked: the kept set equals a TypeScript reference computed from the dense model's own
 *   tensors (layer 0's query before rotary, rotated here with the model's cos/sin caches read from
 *   the weight files, and its present key); the present caches are N long before the stage and K'
 *   after; prefill and 4 greedy decode steps equal the dense model with the dropped keys masked
 *   from layer 1 on (what a pruned cache means; positions untouched).
 * - Qwen3.5 0.8B (int8 MatMulInteger, hybrid: gated delta-net linear attention in layers 0–2 and
 *   4–6, GroupQueryAttention in 3 and 7, every residual add fused into a Skip norm, M-RoPE tables
 *   flattened over batch·tokens): `after layer 3 keep 75% by pagerank` (AIM) on 8 layers.
 *   Checked: the kept set equals the pagerank reference on layer 3's causal logits (rotated q and
 *   present key from the dense model); layer 7's rotary tables are the dense rows of the kept tokens
 *   (positions kept); prefill logits, layer 7's cache and layers 4–6's linear-attention states equal
 *   an independent reference: the dense model's layers 4–7 run on the kept rows of the stream
 *   entering layer 4 at the kept positions (masked-dense equality does not apply: a linear-attention
 *   layer over the kept tokens is not the dense one with keys masked); layer 3 holds N, layer 7 K'
 *   and grows by one per decode step, and each of 4 greedy decode steps equals the reference
 *   continued from its own caches and states (the new token's stream from the dense layers 0–3).
 */
import { expect } from "vitest";
import { openSync, readSync, closeSync, readFileSync } from "node:fs";
import { describeShared, itShared, sharedModel } from "./helpers/shared.js";
import { compile } from "../src/compile.js";
import { decodeModel } from "../src/onnx/io.js";
import type { ModelProto } from "../src/onnx/gen/onnx_pb.js";
import { maxAbsDiff, withNodeSessions, type Feeds } from "./helpers/ort.js";
import { cutDecoder, decoderFeeds, injectStream, type DecoderStep } from "./support/decoder-cut.js";
import { maskKeysInput, MASKED } from "./support/dense-edits.js";
import { uniform, withWeights } from "./support/graph-only-inputs.js";
import { withOutputs, rows } from "./support/model-edit.js";
import { fastvKept } from "./reference/decoder.js";
import { pagerankKeep } from "./reference/attention-scores.js";

const GEMMA = "graph-only/gemma-3-4b-vlm/decoder_model_merged.onnx";
const QWEN35 = "graph-only/qwen3.5-0.8b-vlm-int8/decoder_model_merged_quantized.onnx";
const SPEC = "tokens image = input image_mask\nafter layer 0 drop 50% of image by last-token-attn";
const VOCAB = 256;
const STEPS = 4;
/** Prompt: 8 text tokens, 32 image tokens, 8 text tokens. */
const N = 48;
const IMAGE = Array.from({ length: N }, (_, j) => j >= 8 && j < 40);

/** float32 values of an external initializer, read from the weight file written under `path`. */
function externalFloats(
  model: ModelProto,
  name: string,
  path: (file: string) => string,
): { data: Float32Array; dims: number[] } {
  const t = model.graph!.initializer.find((i) => i.name === name)!;
  const entry = (key: string) => t.externalData.find((e) => e.key === key)?.value;
  const length = Number(entry("length"));
  const bytes = Buffer.alloc(length);
  const fd = openSync(path(entry("location")!), "r");
  readSync(fd, bytes, 0, length, Number(entry("offset") ?? 0));
  closeSync(fd);
  return { data: new Float32Array(bytes.buffer, bytes.byteOffset, length / 4), dims: t.dims.map(Number) };
}

/** Rotate-half rotary of one [heads·d] row at `pos` with cos/sin caches [positions, d/2]. */
function rotate(
  row: Float32Array,
  heads: number,
  d: number,
  pos: number,
  cos: Float32Array,
  sin: Float32Array,
): Float64Array {
  const half = d / 2;
  const out = new Float64Array(row.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      const c = cos[pos * half + i]!;
      const s = sin[pos * half + i]!;
      const a = row[h * d + i]!;
      const b = row[h * d + half + i]!;
      out[h * d + i] = a * c - b * s;
      out[h * d + half + i] = b * c + a * s;
    }
  }
  return out;
}

/** Mean over heads of the last query's softmax(q·kᵀ/√d) over every key: FastV's scores. */
function lastRowScores(
  q: Float64Array,
  keys: Float32Array,
  heads: number,
  kvHeads: number,
  n: number,
  d: number,
): number[] {
  const scores = new Array<number>(n).fill(0);
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / (heads / kvHeads));
    const logits = Array.from({ length: n }, (_, j) => {
      let s = 0;
      for (let t = 0; t < d; t++) s += q[h * d + t]! * keys[(g * n + j) * d + t]!;
      return s / Math.sqrt(d);
    });
    const max = Math.max(...logits);
    const e = logits.map((x) => Math.exp(x - max));
    const sum = e.reduce((a, b) => a + b, 0);
    e.forEach((x, j) => (scores[j] = scores[j]! + x / sum / heads));
  }
  return scores;
}

/** Token embeddings stand-in (the embedding model is separate): a fixed vector per token id. */
const embed = (token: number, hidden: number) => uniform(hidden, 1000 + token);

const largest = (a: Float32Array) => a.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
const argmax = (a: Float32Array) => a.reduce((best, v, i) => (v > a[best]! ? i : best), 0);

describeShared("FastV in real decoders on synthetic weights", () => {
  itShared(
    "gemma-3 (2 layers, GroupQueryAttention rotating inside the op): kept set = reference from the dense model's tensors; caches N then K'; prefill + decode = dense with dropped keys masked",
    async () => {
      const dense = cutDecoder(readFileSync(sharedModel(GEMMA)), 2, VOCAB);
      const model = decodeModel(dense);
      const [hidden, heads, kvHeads, d] = [2560, 8, 4, 256];
      const pruned = compile(dense, SPEC, { exposeIndices: true }).model;
      const query = "/model/layers.0/attn/q_norm/Reshape_2/output_0";
      const masked = maskKeysInput(dense, 1);
      await withWeights(
        dense,
        1,
        { "dense.onnx": withOutputs(dense, [query]), "pruned.onnx": pruned, "masked.onnx": masked },
        (path) =>
          withNodeSessions(async (run) => {
            const prompt = uniform(N * hidden, 7);
            // Reference kept set from the dense model's own layer-0 tensors.
            const dense0 = await run(path("dense.onnx"), decoderFeeds(dense, { embeds: prompt, rows: N, total: N }));
            const cos = externalFloats(model, "cos_cache_local", path).data;
            const sin = externalFloats(model, "sin_cache_local", path).data;
            const q = dense0[query]!.data as Float32Array;
            const last = rotate(q.subarray((N - 1) * heads * d, N * heads * d), heads, d, N - 1, cos, sin);
            const scores = lastRowScores(last, dense0["present.0.key"]!.data as Float32Array, heads, kvHeads, N, d);
            const kept = fastvKept(scores, IMAGE, 50);
            expect(kept).toHaveLength(N - 16);

            // The compiled model: same kept set, caches N (layer 0) and K' (layer 1).
            let p = await run(
              path("pruned.onnx"),
              decoderFeeds(pruned, { embeds: prompt, rows: N, total: N, image: IMAGE }),
            );
            const idx = p["prunec.stage0.indices"]!;
            expect(rows(idx.data as BigInt64Array, idx.dims)[0]).toEqual(kept);
            expect(p["present.0.key"]!.dims).toEqual([1, kvHeads, N, d]);
            expect(p["present.1.key"]!.dims).toEqual([1, kvHeads, kept.length, d]);

            // Dense with the dropped keys masked from layer 1 on, step by step.
            const keep = new Set(kept);
            const mask = (total: number) =>
              Float32Array.from({ length: total }, (_, j) => (j >= N || keep.has(j) ? 0 : MASKED));
            const maskedFeeds = (step: DecoderStep): Feeds => ({
              ...decoderFeeds(masked, step),
              key_mask: { type: "float32", dims: [1, step.total], data: mask(step.total) },
            });
            let m = await run(path("masked.onnx"), maskedFeeds({ embeds: prompt, rows: N, total: N }));
            const scale = largest(m["logits"]!.data as Float32Array);
            expect(
              maxAbsDiff(p["logits"]!.data as Float32Array, m["logits"]!.data as Float32Array),
            ).toBeLessThanOrEqual(1e-4 * scale);
            let token = argmax(p["logits"]!.data as Float32Array);
            for (let step = 1; step <= STEPS; step++) {
              const total = N + step;
              p = await run(
                path("pruned.onnx"),
                decoderFeeds(pruned, { embeds: embed(token, hidden), rows: 1, total, past: p, image: [false] }),
              );
              m = await run(
                path("masked.onnx"),
                maskedFeeds({ embeds: embed(token, hidden), rows: 1, total, past: m }),
              );
              expect(p["present.1.key"]!.dims[2]).toBe(kept.length + step);
              expect(
                maxAbsDiff(p["logits"]!.data as Float32Array, m["logits"]!.data as Float32Array),
              ).toBeLessThanOrEqual(1e-4 * scale);
              token = argmax(p["logits"]!.data as Float32Array);
              expect(token).toBe(argmax(m["logits"]!.data as Float32Array));
            }
          }),
      );
    },
    300_000,
  );
  itShared(
    "qwen3.5 (8 layers, hybrid, Skip norms, M-RoPE): pagerank after layer 3 keeps the reference's set; the kept tokens' rotary rows and caches follow; decode steps run",
    async () => {
      const dense = cutDecoder(readFileSync(sharedModel(QWEN35)), 8, VOCAB);
      const pruned = compile(dense, "after layer 3 keep 75% by pagerank", { exposeIndices: true }).model;
      const prunedGraph = decodeModel(pruned).graph!;
      const query = "/model/layers.3/attn/q_mrope/Output/Reshape/output_0";
      const table = "/model/mrope_flattened_cache_interleaved/cos/Concat/output_0";
      const carriedTable = prunedGraph.node.find((n) => n.name === "/model/layers.7/attn/q_mrope/RotaryEmbedding")!
        .input[2]!;
      expect(carriedTable).not.toBe(table);
      const [hidden, heads, kvHeads, d] = [1024, 8, 2, 256];
      const SUMMANDS = [
        "/model/layers.3/post_attention_layernorm/output_3",
        "/model/layers.3/mlp/down_proj/MatMul/output_0",
      ];
      const files = {
        "dense.onnx": withOutputs(dense, [query, table, ...SUMMANDS]),
        "pruned.onnx": withOutputs(pruned, [carriedTable]),
        "below.onnx": injectStream(dense, SUMMANDS, hidden),
      };
      await withWeights(dense, 1, files, (path) =>
        withNodeSessions(async (run) => {
          const prompt = uniform(N * hidden, 7);
          const full = await run(path("dense.onnx"), decoderFeeds(dense, { embeds: prompt, rows: N, total: N }));
          // Layer 3's causal logits per head from its rotated query and present key: pagerank's reference.
          const q = full[query]!.data as Float32Array;
          const keys = full["present.3.key"]!.data as Float32Array;
          const logits = Array.from({ length: heads }, (_, h) =>
            Array.from({ length: N }, (_, i) =>
              Array.from({ length: N }, (_, j) => {
                if (j > i) return -Infinity;
                const g = Math.floor(h / (heads / kvHeads));
                let x = 0;
                for (let t = 0; t < d; t++) x += q[(i * heads + h) * d + t]! * keys[(g * N + j) * d + t]!;
                return x / Math.sqrt(d);
              }),
            ),
          );
          const [kept] = pagerankKeep([logits], 75, 0);
          expect(kept).toHaveLength(36);

          let p = await run(path("pruned.onnx"), decoderFeeds(pruned, { embeds: prompt, rows: N, total: N }));
          const idx = p["prunec.stage0.indices"]!;
          expect(rows(idx.data as BigInt64Array, idx.dims)[0]).toEqual(kept);
          // Layer 7 rotates the kept tokens with their own (dense) rows of the M-RoPE table.
          const denseRows = full[table]!;
          const width = denseRows.dims[1]!;
          const expectRows = Float32Array.from(
            kept!.flatMap((j) => Array.from((denseRows.data as Float32Array).subarray(j * width, (j + 1) * width))),
          );
          expect(p[carriedTable]!.dims).toEqual([kept!.length, width]);
          expect(maxAbsDiff(p[carriedTable]!.data as Float32Array, expectRows)).toBe(0);
          expect(p["present.3.key"]!.dims).toEqual([1, kvHeads, N, d]);
          expect(p["present.7.key"]!.dims).toEqual([1, kvHeads, kept!.length, d]);
          expect(p["present_recurrent.4"]!.dims).toEqual([1, 16, 128, 128]);
          expect(p["logits"]!.dims).toEqual([1, kept!.length, VOCAB]);
          // Independent reference for layers 4–7: the dense model run on the kept rows of the stream
          // entering layer 4 (the two summands of its fused Skip norm) at the kept positions.
          const streamRows = (t: string) => {
            const data = full[t]!.data as Float32Array;
            return Float32Array.from(kept!.flatMap((j) => Array.from(data.subarray(j * hidden, (j + 1) * hidden))));
          };
          const k = kept!.length;
          const injected: Feeds = {
            ...decoderFeeds(files["below.onnx"], { embeds: new Float32Array(k * hidden), rows: k, total: k }),
            position_ids: {
              type: "int64",
              dims: [3, 1, k],
              data: BigInt64Array.from({ length: 3 * k }, (_, i) => BigInt(kept![i % k]!)),
            },
          };
          for (const t of SUMMANDS) injected[t] = { type: "float32", dims: [1, k, hidden], data: streamRows(t) };
          const below = await run(path("below.onnx"), injected);
          const scale = largest(below["logits"]!.data as Float32Array);
          expect(
            maxAbsDiff(p["logits"]!.data as Float32Array, below["logits"]!.data as Float32Array),
          ).toBeLessThanOrEqual(1e-4 * scale);
          for (const name of ["present.7.key", "present.7.value", "present_recurrent.4", "present_conv.6"]) {
            expect(maxAbsDiff(p[name]!.data as Float32Array, below[name]!.data as Float32Array)).toBeLessThanOrEqual(
              1e-4 * Math.max(1, largest(below[name]!.data as Float32Array)),
            );
          }
          // Decode steps: the dense model (layers 0–3, full caches) gives the new token's stream
          // entering layer 4; the reference's layers 4–7 continue from their kept-token caches/states.
          let a = full;
          let ref = below;
          for (let step = 1; step <= STEPS; step++) {
            const token = argmax((p["logits"]!.data as Float32Array).subarray(-VOCAB));
            expect(token).toBe(argmax((ref["logits"]!.data as Float32Array).subarray(-VOCAB)));
            const x = embed(token, hidden);
            p = await run(
              path("pruned.onnx"),
              decoderFeeds(pruned, { embeds: x, rows: 1, total: N + step, past: p, firstPosition: N + step - 1 }),
            );
            a = await run(
              path("dense.onnx"),
              decoderFeeds(dense, { embeds: x, rows: 1, total: N + step, past: a, firstPosition: N + step - 1 }),
            );
            const next = decoderFeeds(files["below.onnx"], {
              embeds: new Float32Array(hidden),
              rows: 1,
              total: k + step,
              past: ref,
              firstPosition: N + step - 1,
            });
            for (const t of SUMMANDS)
              next[t] = { type: "float32", dims: [1, 1, hidden], data: a[t]!.data as Float32Array };
            ref = await run(path("below.onnx"), next);
            expect(p["present.3.key"]!.dims[2]).toBe(N + step);
            expect(p["present.7.key"]!.dims[2]).toBe(k + step);
            expect(
              maxAbsDiff(p["logits"]!.data as Float32Array, ref["logits"]!.data as Float32Array),
            ).toBeLessThanOrEqual(1e-4 * scale);
            expect(
              maxAbsDiff(
                p["present_recurrent.6"]!.data as Float32Array,
                ref["present_recurrent.6"]!.data as Float32Array,
              ),
            ).toBeLessThanOrEqual(1e-4 * Math.max(1, largest(ref["present_recurrent.6"]!.data as Float32Array)));
          }
        }),
      );
    },
    300_000,
  );
});
