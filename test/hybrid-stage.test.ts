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
 * - the M-RoPE rows layer 7 rotates with are the dense rows of the kept tokens, in the same order;
 * - 4 decode steps continue the reference bit for bit (--kv-state's validity masks the padding in
 *   layer 7's cache; declared valid instead, the padded example's logits differ), and a later call
 *   whose count would differ per example keeps every token (only the first call prunes).
 * At batch 1 nothing is padded. A second test stacks two per-example stages (12 layers): each pads
 * in front with its own validity pair, checked the same way against layers 4–7 and 8–11.
 */
import { readFileSync } from "node:fs";
import { expect } from "vitest";
import { describeShared, itShared, sharedModel } from "./helpers/shared.js";
import { compile } from "../src/compile.js";
import { decodeModel } from "../src/onnx/io.js";
import { maxAbsDiff, withNodeSessions, type Feeds, type Outputs } from "./helpers/ort.js";
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

/** The two summands of the fused Skip norm that enters layer L + 1: the stream leaving layer L. */
const leaving = (layer: number) => [
  `/model/layers.${layer}/post_attention_layernorm/output_3`,
  `/model/layers.${layer}/mlp/down_proj/MatMul/output_0`,
];

/** [2, rows, HIDDEN] from [2, n, HIDDEN] `data`: per example, the rows `picks` names (undefined: a zero row). */
function pickRows(data: Float32Array, n: number, picks: readonly (readonly (number | undefined)[])[]): Float32Array {
  const k = picks[0]!.length;
  const out = new Float32Array(picks.length * k * HIDDEN);
  picks.forEach((row, b) =>
    row.forEach((j, r) => {
      if (j !== undefined) out.set(data.subarray((b * n + j) * HIDDEN, (b * n + j + 1) * HIDDEN), (b * k + r) * HIDDEN);
    }),
  );
  return out;
}

/**
 * One call of a model cut open at `summands` (injectStream), at batch 2: the given summand rows,
 * the attention mask 0 on each example's first `pads[b]` columns (its padding, in front), and the
 * prompt's positions (M-RoPE's three axes alike; padding at 1) or, at a later call, decoderFeeds'.
 */
function injectedFeeds(
  model: Uint8Array,
  call: { rows: number; total: number; past?: Outputs; firstPosition?: number },
  summands: Record<string, Float32Array>,
  pads: readonly number[],
  positions?: readonly (readonly (number | undefined)[])[],
): Feeds {
  const feeds = decoderFeeds(model, { ...call, embeds: new Float32Array(2 * call.rows * HIDDEN), batch: 2 });
  const { total, rows: k } = call;
  feeds["attention_mask"] = {
    type: "int64",
    dims: [2, total],
    data: BigInt64Array.from({ length: 2 * total }, (_, i) => (i % total < pads[Math.floor(i / total)]! ? 0n : 1n)),
  };
  if (positions)
    feeds["position_ids"] = {
      type: "int64",
      dims: [3, 2, k],
      data: BigInt64Array.from({ length: 3 * 2 * k }, (_, i) => BigInt(positions[Math.floor(i / k) % 2]![i % k] ?? 1)),
    };
  for (const [t, data] of Object.entries(summands)) feeds[t] = { type: "float32", dims: [2, k, HIDDEN], data };
  return feeds;
}

/** Per example: `pads` padding rows (undefined) then `kept`. */
const padFront = (kept: readonly number[], width: number): (number | undefined)[] => [
  ...new Array<undefined>(width - kept.length).fill(undefined),
  ...kept,
];

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
      const { model: pruned, report } = compile(dense, SPEC, { exposeIndices: true, kvState: true });
      // The logits keep one row per kept token (checked in onnxruntime below), and the report says so;
      // the linear-attention ops have no shape rule, so the count is unknown to inference.
      expect(report.perTokenOutputs.map((o) => [o.output, o.axis, o.denseRows, o.rows, o.stages])).toEqual([
        ["logits", 1, "sequence_length", "?", [0]],
      ]);
      const carriedTable = decodeModel(pruned).graph!.node.find(
        (n) => n.name === "/model/layers.7/attn/q_mrope/RotaryEmbedding",
      )!.input[2]!;
      expect(carriedTable).not.toBe(TABLE);
      const files = {
        "dense.onnx": withOutputs(dense, [QUERY, TABLE, ...SUMMANDS]),
        "pruned.onnx": withOutputs(pruned, [carriedTable]),
        "below.onnx": injectStream(dense, SUMMANDS, HIDDEN),
      };
      await withWeights(dense, 1, files, (path) =>
        withNodeSessions(async (run) => {
          const prompt = uniform(2 * N * HIDDEN, 7);
          const batch2 = { embeds: prompt, rows: N, total: N, batch: 2 };
          const full = await run(path("dense.onnx"), decoderFeeds(dense, batch2));
          const kept = [0, 1].map((b) => referenceKept(full, b, 2));
          expect(kept.map((k) => k.length)).toEqual([32, 40]);
          const kmax = 40;
          const pads = kept.map((k) => kmax - k.length);

          let p = await run(path("pruned.onnx"), decoderFeeds(pruned, { ...batch2, image: IMAGES.flat() }));
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
          const rows0 = kept.map((k) => padFront(k, kmax));
          const injected = injectedFeeds(
            files["below.onnx"],
            { rows: kmax, total: kmax },
            Object.fromEntries(SUMMANDS.map((t) => [t, pickRows(floats(full, t), N, rows0)])),
            pads,
            rows0,
          );
          const below = await run(path("below.onnx"), injected);
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
            p = await run(path("pruned.onnx"), decoderFeeds(pruned, { ...next, past: p, image }));
            a = await run(path("dense.onnx"), decoderFeeds(dense, { ...next, past: a }));
            const total = kmax + fed + rowsNow;
            const feeds = injectedFeeds(
              files["below.onnx"],
              { rows: rowsNow, total, past: ref, firstPosition: N + fed },
              Object.fromEntries(SUMMANDS.map((t) => [t, floats(a, t)])),
              pads,
            );
            ref = await run(path("below.onnx"), feeds);
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
              const control = await run(path("pruned.onnx"), all);
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
          const full1 = await run(path("dense.onnx"), decoderFeeds(dense, alone));
          const p1 = await run(path("pruned.onnx"), decoderFeeds(pruned, { ...alone, image: IMAGES[0]! }));
          const idx1 = p1["prunec.stage0.indices"]!;
          expect(rows(idx1.data as BigInt64Array, idx1.dims)).toEqual([referenceKept(full1, 0, 1)]);
          expect(p1["present.7.key"]!.dims).toEqual([1, KV_HEADS, 32, D]);
        }),
      );
    },
    300_000,
  );

  itShared(
    "two per-example stages (FastV after layer 3, `keep 60% by norm` after layer 7; 12 layers, batch 2): each pads in front with its own validity; prefill and 2 decode steps = the dense layers 4–7 and 8–11 run on each stage's left-padded kept rows, bit for bit",
    async () => {
      const dense = cutDecoder(readFileSync(sharedModel(QWEN35)), 12, VOCAB);
      const pruned = compile(dense, `${SPEC}\nafter layer 7 keep 60% by norm`, {
        exposeIndices: true,
        kvState: true,
      }).model;
      const [s4, s8] = [leaving(3), leaving(7)];
      const files = {
        "dense.onnx": withOutputs(dense, [QUERY, ...s4]),
        "pruned.onnx": pruned,
        // Layers 4–7 on a given stream (what follows runs too, unread), and layers 8–11.
        "mid.onnx": withOutputs(injectStream(dense, s4, HIDDEN), s8),
        "below.onnx": injectStream(dense, s8, HIDDEN),
      };
      const states = (layers: number[]) =>
        layers.flatMap((l) =>
          l % 4 === 3 ? [`present.${l}.key`, `present.${l}.value`] : [`present_conv.${l}`, `present_recurrent.${l}`],
        );
      const exact = (o: Outputs, r: Outputs, names: string[]) =>
        names.map((n) => maxAbsDiff(floats(o, n), floats(r, n)));
      await withWeights(dense, 1, files, (path) =>
        withNodeSessions(async (run) => {
          const prompt = uniform(2 * N * HIDDEN, 7);
          let a = await run(path("dense.onnx"), decoderFeeds(dense, { embeds: prompt, rows: N, total: N, batch: 2 }));
          const kept0 = [0, 1].map((b) => referenceKept(a, b, 2));
          const k0 = Math.max(...kept0.map((k) => k.length));
          const pads0 = kept0.map((k) => k0 - k.length);
          const rows0 = kept0.map((k) => padFront(k, k0));
          let mid = await run(
            path("mid.onnx"),
            injectedFeeds(
              files["mid.onnx"],
              { rows: k0, total: k0 },
              Object.fromEntries(s4.map((t) => [t, pickRows(floats(a, t), N, rows0)])),
              pads0,
              rows0,
            ),
          );
          // Stage 1 by its definition: the L2 norm of each real row of the stream leaving layer 7
          // (the Skip norm's sum, in float32), round-half-up(60%) of each example's real rows, ties to the lower row.
          const sum = floats(mid, s8[0]!).map((x, i) => Math.fround(x + floats(mid, s8[1]!)[i]!));
          const kept1 = [0, 1].map((b) => {
            const real = Array.from({ length: k0 - pads0[b]! }, (_, i) => pads0[b]! + i);
            const norm = (r: number) => Math.hypot(...sum.subarray((b * k0 + r) * HIDDEN, (b * k0 + r + 1) * HIDDEN));
            const count = Math.max(1, Math.floor((120 * real.length + 100) / 200));
            return real
              .map((r) => ({ r, s: norm(r) }))
              .sort((x, y) => y.s - x.s || x.r - y.r)
              .slice(0, count)
              .map((x) => x.r)
              .sort((x, y) => x - y);
          });
          const k1 = Math.max(...kept1.map((k) => k.length));
          const pads1 = kept1.map((k) => k1 - k.length);
          const rows1 = kept1.map((k) => padFront(k, k1));
          expect(pads0).toEqual([8, 0]);
          expect(pads1).toEqual([5, 0]);
          let below = await run(
            path("below.onnx"),
            injectedFeeds(
              files["below.onnx"],
              { rows: k1, total: k1 },
              Object.fromEntries(s8.map((t) => [t, pickRows(floats(mid, t), k0, rows1)])),
              pads1,
              rows1.map((row, b) => row.map((r) => (r === undefined ? undefined : rows0[b]![r]))),
            ),
          );

          let p = await run(
            path("pruned.onnx"),
            decoderFeeds(pruned, { embeds: prompt, rows: N, total: N, batch: 2, image: IMAGES.flat() }),
          );
          const exposed = (o: Outputs, stage: number) => {
            const t = o[`prunec.stage${stage}.indices`]!;
            return rows(t.data as BigInt64Array, t.dims);
          };
          expect(exposed(p, 0)).toEqual(rows0.map((row) => row.map((j) => j ?? -1)));
          expect(exposed(p, 1)).toEqual(rows1.map((row) => row.map((j) => j ?? -1)));
          const check = (label: string) => {
            const d = [
              ...exact(p, below, ["logits", ...states([8, 9, 10, 11])]),
              ...exact(p, mid, states([4, 5, 6, 7])),
            ];
            console.log(`two stages, ${label}: max |Δ| ${d.join(", ")}`);
            expect(d).toEqual(new Array(d.length).fill(0));
          };
          check("prefill");
          for (let step = 1; step <= 2; step++) {
            const last = (o: Outputs, b: number) => {
              const k = o["logits"]!.dims[1]!;
              return floats(o, "logits").subarray(((b + 1) * k - 1) * VOCAB, (b + 1) * k * VOCAB);
            };
            const tokens = [0, 1].map((b) => argmax(last(p, b)));
            expect(tokens).toEqual([0, 1].map((b) => argmax(last(below, b))));
            const x = new Float32Array(2 * HIDDEN);
            tokens.forEach((t, b) => x.set(uniform(HIDDEN, 1000 + t), b * HIDDEN));
            const at = { rows: 1, firstPosition: N + step - 1 };
            p = await run(
              path("pruned.onnx"),
              decoderFeeds(pruned, { ...at, embeds: x, total: N + step, batch: 2, past: p, image: [false, false] }),
            );
            a = await run(
              path("dense.onnx"),
              decoderFeeds(dense, { ...at, embeds: x, total: N + step, batch: 2, past: a }),
            );
            const one = (o: Outputs, ts: string[]) => Object.fromEntries(ts.map((t) => [t, floats(o, t)]));
            mid = await run(
              path("mid.onnx"),
              injectedFeeds(files["mid.onnx"], { ...at, total: k0 + step, past: mid }, one(a, s4), pads0),
            );
            below = await run(
              path("below.onnx"),
              injectedFeeds(files["below.onnx"], { ...at, total: k1 + step, past: below }, one(mid, s8), pads1),
            );
            expect(p["present.stage1.prunec_valid"]!.dims).toEqual([2, k1 + step]);
            check(`decode step ${step}`);
          }
        }),
      );
    },
    300_000,
  );
});
