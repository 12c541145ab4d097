/**
 * Issue 16's hybrid lowering on the real Qwen3.5 decoder (transformers.js export, int8, cut to 8
 * layers: gated delta-net linear attention in 0–2 and 4–6, GroupQueryAttention in 3 and 7;
 * synthetic weights): FastV's `of image` after layer 3, whose kept count differs per example,
 * compiles with each example's padding FIRST, as zero rows (passes/front-padding.ts), the fact
 * test/hybrid-padding.test.ts measured.
 *
 * Batch 2, unpadded prompts of 48 tokens: example 0 has 32 image tokens (keeps 16 + 16 text = 32),
 * example 1 has 16 (keeps 8 + 32 text = 40), so example 0 carries 8 padding rows.
 *
 * The int8 export quantises activations with one scale per TENSOR (DynamicQuantizeLinear), so the
 * examples of a batch interact even in the dense model; the compiled batch is therefore compared
 * with an independent reference at the same batch, not with each example alone:
 * - kept sets: FastV's definition on the dense batch-2 run's own tensors (layer 3's rotated query of
 *   the last token against its present key, softmax per head, mean over heads; the best half of
 *   each example's image tokens), exposed as [−1 × padding, kept ascending];
 * - layers 4–7: the dense model's layers 4–7 (injectStream) fed the same left-padded batch of kept
 *   rows (zero rows in front, attention_mask 0 on them, the kept tokens' own positions): logits,
 *   layer 7's cache and the conv/recurrent states of layers 4–6;
 * - the M-RoPE rows layer 7 rotates with are the dense rows of the kept tokens, in the same order.
 * At batch 1 nothing is padded.
 */
import { readFileSync } from "node:fs";
import { expect } from "vitest";
import { describeShared, itShared, sharedModel } from "./helpers/shared.js";
import { compile } from "../src/compile.js";
import { decodeModel } from "../src/onnx/io.js";
import { maxAbsDiff, runNode, type Feeds, type Outputs } from "./helpers/ort.js";
import { cutDecoder, decoderFeeds, injectStream } from "./support/decoder-cut.js";
import { uniform, withWeights } from "./support/graph-only-inputs.js";
import { withOutputs, rows } from "./support/model-edit.js";
import { fastvKept } from "./reference/decoder.js";

const QWEN35 = "graph-only/qwen3.5-0.8b-vlm-int8/decoder_model_merged_quantized.onnx";
const SPEC = "tokens image = input image_mask\nafter layer 3 drop 50% of image by last-token-attn";
const VOCAB = 256;
const N = 48;
const [HIDDEN, HEADS, KV_HEADS, D] = [1024, 8, 2, 256];
/** Example 0: image tokens 8..39 (32); example 1: 8..23 (16). */
const IMAGES = [32, 16].map((n) => Array.from({ length: N }, (_, j) => j >= 8 && j < 8 + n));
const QUERY = "/model/layers.3/attn/q_mrope/Output/Reshape/output_0";
const TABLE = "/model/mrope_flattened_cache_interleaved/cos/Concat/output_0";
/** The two summands of layer 4's fused input Skip norm: the stream entering layer 4. */
const SUMMANDS = ["/model/layers.3/post_attention_layernorm/output_3", "/model/layers.3/mlp/down_proj/MatMul/output_0"];
const STATES = [
  "present_conv.4",
  "present_recurrent.4",
  "present_conv.5",
  "present_recurrent.5",
  "present_conv.6",
].concat(["present_recurrent.6", "present.7.key", "present.7.value"]);

const VALID = "present.stage0.prunec_valid";
const PAST_VALID = "past_key_values.stage0.prunec_valid";
const STEPS = 4;

const floats = (o: Outputs, name: string) => o[name]!.data as Float32Array;
const largest = (a: Float32Array) => a.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
const argmax = (a: Float32Array) => a.reduce((best, v, i) => (v > a[best]! ? i : best), 0);

/** FastV's kept positions of example `b` from the dense run's layer-3 query (rotated) and present key. */
function referenceKept(full: Outputs, b: number, batch: number): number[] {
  const q = floats(full, QUERY).subarray(b * N * HEADS * D, (b + 1) * N * HEADS * D);
  const keys = floats(full, "present.3.key").subarray(b * KV_HEADS * N * D, (b + 1) * KV_HEADS * N * D);
  expect(full["present.3.key"]!.dims).toEqual([batch, KV_HEADS, N, D]);
  const last = (N - 1) * HEADS * D;
  const scores = new Array<number>(N).fill(0);
  for (let h = 0; h < HEADS; h++) {
    const g = Math.floor(h / (HEADS / KV_HEADS));
    const logits = Array.from({ length: N }, (_, j) => {
      let s = 0;
      for (let t = 0; t < D; t++) s += q[last + h * D + t]! * keys[(g * N + j) * D + t]!;
      return s / Math.sqrt(D);
    });
    const max = Math.max(...logits);
    const e = logits.map((x) => Math.exp(x - max));
    const sum = e.reduce((a, c) => a + c, 0);
    e.forEach((x, j) => (scores[j] = scores[j]! + x / sum / HEADS));
  }
  return fastvKept(scores, IMAGES[b]!, 50);
}

describeShared("per-example counts before linear attention: padding in front as zero rows (Qwen3.5, 8 layers)", () => {
  itShared(
    "FastV `of image` after layer 3 at batch 2: kept sets = FastV's definition on the dense tensors, padding first (−1); logits, layer 7's cache and layers 4–6's states = the dense layers 4–7 on the left-padded kept rows; at batch 1 nothing is padded",
    async () => {
      const dense = cutDecoder(readFileSync(sharedModel(QWEN35)), 8, VOCAB);
      const pruned = compile(dense, SPEC, { exposeIndices: true, kvState: true }).model;
      const carriedTable = decodeModel(pruned).graph!.node.find(
        (n) => n.name === "/model/layers.7/attn/q_mrope/RotaryEmbedding",
      )!.input[2]!;
      expect(carriedTable).not.toBe(TABLE);
      const files = {
        "dense.onnx": withOutputs(dense, [QUERY, TABLE, ...SUMMANDS]),
        "pruned.onnx": withOutputs(pruned, [carriedTable]),
        "below.onnx": injectStream(dense, SUMMANDS, HIDDEN),
      };
      await withWeights(dense, 1, files, async (path) => {
        const prompt = uniform(2 * N * HIDDEN, 7);
        const batch2 = { embeds: prompt, rows: N, total: N, batch: 2 };
        const full = await runNode(path("dense.onnx"), decoderFeeds(dense, batch2));
        const kept = [0, 1].map((b) => referenceKept(full, b, 2));
        expect(kept.map((k) => k.length)).toEqual([32, 40]);
        const kmax = 40;
        const pads = kept.map((k) => kmax - k.length);

        let p = await runNode(path("pruned.onnx"), decoderFeeds(pruned, { ...batch2, image: IMAGES.flat() }));
        const idx = p["prunec.stage0.indices"]!;
        expect(rows(idx.data as BigInt64Array, idx.dims)).toEqual(
          kept.map((k, b) => [...new Array<number>(pads[b]!).fill(-1), ...k]),
        );
        expect(Array.from(p["prunec.stage0.counts"]!.data as BigInt64Array, Number)).toEqual([32, 40]);
        expect(p["present.3.key"]!.dims).toEqual([2, KV_HEADS, N, D]);
        expect(p["present.7.key"]!.dims).toEqual([2, KV_HEADS, kmax, D]);
        expect(p["logits"]!.dims).toEqual([2, kmax, VOCAB]);

        // Layer 7's M-RoPE rows: the dense rows (example·N + position) of each kept token, in the stream's order.
        const width = full[TABLE]!.dims[1]!;
        expect(p[carriedTable]!.dims).toEqual([2 * kmax, width]);
        kept.forEach((k, b) =>
          k.forEach((j, r) => {
            const at = (b * kmax + pads[b]! + r) * width;
            const want = floats(full, TABLE).subarray((b * N + j) * width, (b * N + j + 1) * width);
            expect(maxAbsDiff(floats(p, carriedTable).subarray(at, at + width), want)).toBe(0);
          }),
        );

        // The reference: dense layers 4–7 on [zero rows × pads, kept rows], padding masked, kept positions.
        const at = (b: number, r: number): number | undefined => (r < pads[b]! ? undefined : kept[b]![r - pads[b]!]);
        const injected: Feeds = decoderFeeds(files["below.onnx"], {
          embeds: new Float32Array(2 * kmax * HIDDEN),
          rows: kmax,
          total: kmax,
          batch: 2,
        });
        injected["attention_mask"] = {
          type: "int64",
          dims: [2, kmax],
          data: BigInt64Array.from({ length: 2 * kmax }, (_, i) =>
            at(Math.floor(i / kmax), i % kmax) === undefined ? 0n : 1n,
          ),
        };
        injected["position_ids"] = {
          type: "int64",
          dims: [3, 2, kmax],
          // HF's left-padding convention puts padding at position 1; a zero row's rotation is zero anyway.
          data: BigInt64Array.from({ length: 3 * 2 * kmax }, (_, i) => {
            const b = Math.floor(i / kmax) % 2;
            return BigInt(at(b, i % kmax) ?? 1);
          }),
        };
        for (const t of SUMMANDS) {
          const data = new Float32Array(2 * kmax * HIDDEN);
          for (let b = 0; b < 2; b++)
            for (let r = pads[b]!; r < kmax; r++) {
              const j = at(b, r)!;
              data.set(
                floats(full, t).subarray((b * N + j) * HIDDEN, (b * N + j + 1) * HIDDEN),
                (b * kmax + r) * HIDDEN,
              );
            }
          injected[t] = { type: "float32", dims: [2, kmax, HIDDEN], data };
        }
        const below = await runNode(path("below.onnx"), injected);
        // Measured bit-identical (the same rows through the same int8 ops; zero rows quantise exactly).
        const differences = (o: Outputs, r: Outputs) =>
          ["logits", ...STATES].map((s) => maxAbsDiff(floats(o, s), floats(r, s)));
        expect(differences(p, below)).toEqual(new Array(1 + STATES.length).fill(0));
        expect(largest(floats(below, "logits"))).toBeGreaterThan(1e-3);
        // --kv-state: which of layer 7's cache slots are padding, for later calls.
        expect(Array.from(floats(p, VALID))).toEqual(
          pads.flatMap((n) => Array.from({ length: kmax }, (_, r) => (r < n ? 0 : 1))),
        );

        // Later calls: the dense layers 0–3 (full caches) give the new tokens' stream entering
        // layer 4; the reference's layers 4–7 continue from their own caches and states, the padding
        // still masked by the host's attention mask. The compiled model masks it by the carried validity.
        let a = full;
        let ref = below;
        let fed = 0; // tokens fed after the prompt
        const call = async (x: Float32Array, rowsNow: number, image: boolean[]) => {
          const next = { embeds: x, rows: rowsNow, total: N + fed + rowsNow, firstPosition: N + fed, batch: 2 };
          const before = p;
          p = await runNode(path("pruned.onnx"), decoderFeeds(pruned, { ...next, past: p, image }));
          a = await runNode(path("dense.onnx"), decoderFeeds(dense, { ...next, past: a }));
          const total = kmax + fed + rowsNow;
          const feeds = decoderFeeds(files["below.onnx"], {
            ...next,
            embeds: new Float32Array(2 * rowsNow * HIDDEN),
            total,
            past: ref,
          });
          feeds["attention_mask"] = {
            type: "int64",
            dims: [2, total],
            data: BigInt64Array.from({ length: 2 * total }, (_, i) =>
              i % total < pads[Math.floor(i / total)]! ? 0n : 1n,
            ),
          };
          for (const t of SUMMANDS) feeds[t] = { type: "float32", dims: [2, rowsNow, HIDDEN], data: floats(a, t) };
          ref = await runNode(path("below.onnx"), feeds);
          fed += rowsNow;
          expect(p["present.7.key"]!.dims[2]).toBe(total);
          expect(p[VALID]!.dims).toEqual([2, total]);
          return { before, next };
        };
        const last = (o: Outputs, b: number) => {
          const rowsOut = o["logits"]!.dims[1]!;
          return floats(o, "logits").subarray(((b + 1) * rowsOut - 1) * VOCAB, (b + 1) * rowsOut * VOCAB);
        };
        for (let step = 1; step <= STEPS; step++) {
          const tokens = [0, 1].map((b) => argmax(last(p, b)));
          expect(tokens).toEqual([0, 1].map((b) => argmax(last(ref, b))));
          const x = new Float32Array(2 * HIDDEN);
          tokens.forEach((t, b) => x.set(uniform(HIDDEN, 1000 + t), b * HIDDEN));
          const { before, next } = await call(x, 1, [false, false]);
          const d = differences(p, ref);
          console.log(`decode step ${step}: logits, states max |Δ| ${d.join(", ")}`);
          expect(d).toEqual(new Array(1 + STATES.length).fill(0));
          if (step === 1) {
            // Control: the same call with every slot declared valid attends to the padding: example 0 differs.
            const all = decoderFeeds(pruned, { ...next, past: before, image: [false, false] });
            all[PAST_VALID] = { type: "float32", dims: [2, kmax], data: new Float32Array(2 * kmax).fill(1) };
            const control = await runNode(path("pruned.onnx"), all);
            const [d0, d1] = [0, 1].map((b) => maxAbsDiff(last(control, b), last(ref, b)));
            console.log(`control (padding slots declared valid): logits max |Δ| ${d0}, ${d1}`);
            expect(d0).toBeGreaterThan(0);
          }
        }
        // A later call whose count differs per example: example 0's new token is an image token, so
        // alone it would drop it (50% of 1, rounded up) and pad with a zero row after real ones,
        // which decays the recurrence. Only the first call prunes: both keep their token, exactly.
        // (Several tokens per example at a later call: onnxruntime's GroupQueryAttention refuses
        // them at batch > 1, "batch_size must be 1 when sequence_length > 1 and past context is given".)
        await call(uniform(2 * HIDDEN, 11), 1, [true, false]);
        const chunk = p["prunec.stage0.indices"]!;
        expect(rows(chunk.data as BigInt64Array, chunk.dims)).toEqual([[0], [0]]);
        expect(differences(p, ref)).toEqual(new Array(1 + STATES.length).fill(0));

        // Batch 1: nothing padded; the kept set is FastV's on the dense batch-1 run.
        const alone = { embeds: prompt.subarray(0, N * HIDDEN), rows: N, total: N };
        const full1 = await runNode(path("dense.onnx"), decoderFeeds(dense, alone));
        const p1 = await runNode(path("pruned.onnx"), decoderFeeds(pruned, { ...alone, image: IMAGES[0]! }));
        const idx1 = p1["prunec.stage0.indices"]!;
        expect(rows(idx1.data as BigInt64Array, idx1.dims)).toEqual([referenceKept(full1, 0, 1)]);
        expect(p1["present.7.key"]!.dims).toEqual([1, KV_HEADS, 32, D]);
      });
    },
    300_000,
  );
});
