/**
 * KV-cache stages (`keep kv … by PRESS`) on the project's GQA decoder (test/support/decoder.ts):
 * the kept positions per layer and KV head equal the float64 references written from the authors'
 * code (test/reference/kv-presses.ts), and greedy generation with the compiled model equals a
 * float64 generation loop that evicts at prefill and decodes over the kept cache, token for token.
 * `keep kv 100%` computes what the dense model computes.
 */
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { maxAbsDiff, runNode, runWasm, withNode } from "./helpers/ort.js";
import {
  buildDecoder,
  DECODER,
  generateGreedy,
  generateGreedyWithImageMask,
  imageMaskFeed,
  imagePrompt,
  openDecoderSession,
  prefillFeeds,
  promptBatch,
  rotaryFrequencies,
  type DecoderOptions,
  type PromptBatch,
} from "./support/decoder.js";
import { ReferenceDecoder, weightsFromModel } from "./reference/decoder.js";
import {
  causalProbs,
  h2oScores,
  keptCount,
  knormScores,
  kvpressSelect,
  pyramidLayerBudget,
  randomHashScores,
  snapkvScores,
  type LayerInput,
  type Mat,
  type PressSpec,
} from "./reference/kv-presses.js";
import { decodeModel } from "../src/onnx/io.js";
import { readNumbers } from "../src/onnx/tensor.js";
import { evictingGeneration } from "./reference/kv-generation.js";
import { rows } from "./support/model-edit.js";
import { firstErrorLine } from "./support/cases.js";

const TOL = 1e-4;
const STEPS = 32;
const WIDE: DecoderOptions = { ...DECODER, headSize: 16 };
/** The decoder's rotary frequencies, which expected attention's reference rotates by. */
const theta = rotaryFrequencies(WIDE);
const decoder = buildDecoder({ attention: "gqa" }, WIDE);
/** The same weights behind plain MatMul-Softmax attention with a Concat(past, k) cache, as torch exports it. */
const plainDecoder = buildDecoder({ attention: "plain-cache" }, WIDE);
const LAYOUTS = [
  { name: "GQA decoder", model: decoder },
  { name: "plain-attention decoder (Concat cache)", model: plainDecoder },
] as const;
const reference = new ReferenceDecoder(weightsFromModel(decoder, WIDE), WIDE);
const PROMPTS: number[][] = [
  [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 3, 7, 11],
  [1, 40, 41, 42, 43, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 4],
];
const single = (tokens: number[]): PromptBatch => promptBatch([tokens], "left");

/** The reference: dense prefill, eviction by the press, greedy decode over the kept cache. */
const referenceGeneration = (prompt: number[], press: PressSpec, steps: number) =>
  evictingGeneration(reference, prompt, press, steps);

/** `of image`: the press's own scores over the whole cache ([kvHead][position]), of which the image's entries compete. */
const SET_CASES: { by: string; scores: (x: LayerInput) => Mat }[] = [
  { by: "knorm", scores: (x) => knormScores(x.k) },
  { by: "snapkv(window: 4, kernel: 3)", scores: (x) => snapkvScores(causalProbs(x.q, x.k), x.k.length, 4, 3) },
  { by: "h2o(recent: 2)", scores: (x) => h2oScores(causalProbs(x.q, x.k), x.k.length) },
];

/** Example b of a batched generation: its greedy tokens and every decode step's logits equal the reference loop's. */
function expectGeneration(
  label: string,
  got: { tokens: number[][]; steps: Float32Array[] },
  b: number,
  want: { tokens: number[]; steps: Float64Array[] },
): void {
  const V = WIDE.vocab;
  expect([label, b, got.tokens[b]]).toEqual([label, b, want.tokens]);
  got.steps.forEach((logits, s) =>
    expect(maxAbsDiff(logits.subarray(b * V, (b + 1) * V), Float64Array.from(want.steps[s]!))).toBeLessThanOrEqual(TOL),
  );
}

/** Left-padded batches: the press of each example with the batch's count `k`. */
const PADDED_CASES: { spec: string; press: (k: number) => PressSpec }[] = [
  { spec: "keep kv 50% by knorm", press: (k) => ({ method: "knorm", budget: { keep: k } }) },
  {
    spec: "keep kv 50% by streaming(sinks: 2)",
    press: (k) => ({ method: "streaming", budget: { keep: k }, sinks: 2 }),
  },
  {
    spec: "keep kv 50% by snapkv(window: 4, kernel: 3)",
    press: (k) => ({ method: "snapkv", budget: { keep: k }, window: 4, kernel: 3 }),
  },
  { spec: "keep kv 50% by observed", press: (k) => ({ method: "observed", budget: { keep: k } }) },
  { spec: "keep kv 50% by tova", press: (k) => ({ method: "tova", budget: { keep: k } }) },
  { spec: "keep kv 50% by h2o(recent: 2)", press: (k) => ({ method: "h2o", heavy: k - 2, recent: 2 }) },
  {
    spec: "keep kv 50% by a2sf(forget: 0.9, recent: 2)",
    press: (k) => ({ method: "a2sf", total: k, forget: 0.9, recent: 2 }),
  },
  {
    spec: "keep kv 50% by expected-attn(sinks: 2, future: 16)",
    press: (k) => ({ method: "expected", budget: { keep: k }, theta, sinks: 2, future: 16 }),
  },
];

const CASES: { spec: string; press: (n: number) => PressSpec }[] = [
  { spec: "keep kv 50% by knorm", press: () => ({ method: "knorm", budget: { keepPercent: 50 } }) },
  { spec: "keep kv 25% by knorm", press: () => ({ method: "knorm", budget: { keepPercent: 25 } }) },
  {
    spec: "keep kv 50% by streaming(sinks: 2)",
    press: () => ({ method: "streaming", budget: { keepPercent: 50 }, sinks: 2 }),
  },
  {
    spec: "keep kv 50% by snapkv(window: 4, kernel: 3)",
    press: () => ({ method: "snapkv", budget: { keepPercent: 50 }, window: 4, kernel: 3 }),
  },
  {
    // Budgets per layer 10, 8, 6, 4 (N = 14) and 14, 10, 8, 4 (N = 18: halves round to even).
    spec: "keep kv 50% by pyramidkv(window: 4, kernel: 3, beta: 2)",
    press: () => ({ method: "pyramidkv", budget: { keepPercent: 50 }, window: 4, kernel: 3, beta: 2 }),
  },
  { spec: "keep kv 50% by observed", press: () => ({ method: "observed", budget: { keepPercent: 50 } }) },
  { spec: "keep kv 50% by tova", press: () => ({ method: "tova", budget: { keepPercent: 50 } }) },
  {
    spec: "keep kv 50% by h2o(recent: 2)",
    press: (n) => ({ method: "h2o", heavy: Math.trunc(n * 0.5) - 2, recent: 2 }),
  },
  {
    spec: "keep kv 50% by a2sf(forget: 0.9, recent: 2)",
    press: (n) => ({ method: "a2sf", total: Math.trunc(n * 0.5), forget: 0.9, recent: 2 }),
  },
  {
    spec: "keep kv 50% by expected-attn(sinks: 2, future: 16)",
    press: () => ({ method: "expected", budget: { keepPercent: 50 }, theta, sinks: 2, future: 16 }),
  },
  {
    // kvpress's defaults: 4 sinks, 512 future positions (past the 128-row rotary table: θ recovered from it).
    spec: "keep kv 25% by expected-attn",
    press: () => ({ method: "expected", budget: { keepPercent: 25 }, theta }),
  },
  {
    spec: "keep kv 50% by expected-attn(covariance: off, vnorm: off, sinks: 1, future: 3)",
    press: () => ({
      method: "expected",
      budget: { keepPercent: 50 },
      theta,
      sinks: 1,
      future: 3,
      covariance: false,
      vnorm: false,
    }),
  },
];

for (const { name: layout, model: decoder } of LAYOUTS)
  describe(`keep kv: prefill eviction per layer and KV head on the ${layout} (batch 1)`, () => {
    for (const c of CASES) {
      it(`${c.spec}: kept positions equal the reference's; ${STEPS} greedy tokens and their logits equal the evicting reference loop`, async () => {
        const model = compile(decoder, c.spec, { exposeIndices: true }).model;
        for (const prompt of PROMPTS) {
          const want = referenceGeneration(prompt, c.press(prompt.length), STEPS);
          const out = await runNode(model, prefillFeeds(single(prompt), "gqa", WIDE));
          for (let l = 0; l < WIDE.layers; l++) {
            const idx = out[`prunec.stage0.layer${l}.kv_indices`]!;
            expect(idx.dims.slice(0, 2)).toEqual([1, WIDE.kvHeads]);
            const perHead = rows(idx.data as BigInt64Array, [WIDE.kvHeads, idx.dims[2]!]);
            expect(perHead).toEqual(want.kept[l]);
            expect(out[`present.${l}.key`]!.dims).toEqual([1, WIDE.kvHeads, want.kept[l]![0]!.length, WIDE.headSize]);
          }
          const got = await withNode(model, (run) => generateGreedy(run, single(prompt), STEPS, WIDE));
          expect(got.tokens[0]).toEqual(want.tokens);
          got.steps.forEach((l, s) =>
            expect(maxAbsDiff(l, Float64Array.from(want.steps[s]!))).toBeLessThanOrEqual(TOL),
          );
        }
      });
    }

    it("keep kv 10% of 20 entries keeps 1, as kvpress's int(20·(1 − 0.9)) = int(1.9999999999999996) does, not 2", async () => {
      const prompt = [1, ...Array.from({ length: 19 }, (_, i) => 5 + i)];
      const model = compile(decoder, "keep kv 10% by knorm", { exposeIndices: true }).model;
      const want = referenceGeneration(prompt, { method: "knorm", budget: { keepPercent: 10 } }, 2);
      const out = await runNode(model, prefillFeeds(single(prompt), "gqa", WIDE));
      for (let l = 0; l < WIDE.layers; l++) {
        expect(out[`present.${l}.key`]!.dims[2]).toBe(1);
        const idx = out[`prunec.stage0.layer${l}.kv_indices`]!;
        expect(rows(idx.data as BigInt64Array, [WIDE.kvHeads, 1])).toEqual(want.kept[l]);
      }
    });

    it("keep kv 50% by random(seed: 7): every layer keeps the seeded hash's top half per KV head (the same set in every layer)", async () => {
      const model = compile(decoder, "keep kv 50% by random(seed: 7)", { exposeIndices: true }).model;
      for (const prompt of PROMPTS) {
        const n = prompt.length;
        const want = kvpressSelect(randomHashScores(WIDE.kvHeads, n, 7), keptCount(n, { keepPercent: 50 })).kept;
        const out = await runNode(model, prefillFeeds(single(prompt), "gqa", WIDE));
        for (let l = 0; l < WIDE.layers; l++) {
          const idx = out[`prunec.stage0.layer${l}.kv_indices`]!;
          expect(rows(idx.data as BigInt64Array, [WIDE.kvHeads, idx.dims[2]!])).toEqual(want);
        }
      }
    });

    it("keep kv 100% computes what the dense model computes (prefill and decode steps)", async () => {
      const model = compile(decoder, "keep kv 100% by knorm").model;
      for (const prompt of PROMPTS) {
        const dense = await withNode(decoder, (run) => generateGreedy(run, single(prompt), STEPS, WIDE));
        const kept = await withNode(model, (run) => generateGreedy(run, single(prompt), STEPS, WIDE));
        expect(kept.tokens).toEqual(dense.tokens);
        expect(maxAbsDiff(kept.prefill, dense.prefill)).toBeLessThanOrEqual(1e-5);
        kept.steps.forEach((l, s) => expect(maxAbsDiff(l, dense.steps[s]!)).toBeLessThanOrEqual(1e-5));
      }
    });

    it("a batch of 2 unpadded prompts: each example keeps and generates what it does alone", async () => {
      const prompts = [PROMPTS[0]!, PROMPTS[1]!.slice(0, PROMPTS[0]!.length)];
      const model = compile(decoder, "keep kv 50% by snapkv(window: 4, kernel: 3)", { exposeIndices: true }).model;
      const batch = promptBatch(prompts, "left");
      const out = await runNode(model, prefillFeeds(batch, "gqa", WIDE));
      const got = await withNode(model, (run) => generateGreedy(run, batch, STEPS, WIDE));
      prompts.forEach((prompt, b) => {
        const want = referenceGeneration(
          prompt,
          { method: "snapkv", budget: { keepPercent: 50 }, window: 4, kernel: 3 },
          STEPS,
        );
        for (let l = 0; l < WIDE.layers; l++) {
          const idx = out[`prunec.stage0.layer${l}.kv_indices`]!;
          const k = idx.dims[2]!;
          const all = idx.data as BigInt64Array;
          const perHead = rows(all.subarray(b * WIDE.kvHeads * k, (b + 1) * WIDE.kvHeads * k), [WIDE.kvHeads, k]);
          expect(perHead).toEqual(want.kept[l]);
        }
        expect(got.tokens[b]).toEqual(want.tokens);
      });
    });

    it("a left-padded batch of 3 (18, 14, 16 tokens): each example is scored as alone (pads never kept), keeps the batch's count int(18 · 0.5) = 9, and generates what it does alone with that count", async () => {
      const prompts = [PROMPTS[1]!, PROMPTS[0]!, [1, 33, 34, 35, 36, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 5]];
      const batch = promptBatch(prompts, "left");
      const n = batch.seq;
      const k = Math.trunc(n * 0.5);
      for (const c of PADDED_CASES) {
        const model = compile(decoder, c.spec, { exposeIndices: true }).model;
        const out = await runNode(model, prefillFeeds(batch, "gqa", WIDE));
        const got = await withNode(model, (run) => generateGreedy(run, batch, STEPS, WIDE));
        prompts.forEach((prompt, b) => {
          const pad = n - prompt.length;
          const want = referenceGeneration(prompt, c.press(k), STEPS);
          for (let l = 0; l < WIDE.layers; l++) {
            const idx = out[`prunec.stage0.layer${l}.kv_indices`]!;
            expect(idx.dims[2]).toBe(k);
            const all = idx.data as BigInt64Array;
            const perHead = rows(all.subarray(b * WIDE.kvHeads * k, (b + 1) * WIDE.kvHeads * k), [WIDE.kvHeads, k]);
            expect([c.spec, b, l, perHead]).toEqual([c.spec, b, l, want.kept[l]!.map((h) => h.map((j) => j + pad))]);
          }
          expectGeneration(c.spec, got, b, want);
        });
      }
    }, 240_000);

    it("--kv-state, a left-padded batch of 3: each example keeps its own int(n · 0.5) entries, exactly what it keeps alone (the batch's other slots are fillers, masked by the carried validity), and generates what it does alone (kept entries and validity: CPU and WASM)", async () => {
      const prompts = [PROMPTS[1]!, PROMPTS[0]!, [1, 33, 34, 35, 36, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 5]];
      const batch = promptBatch(prompts, "left");
      const k = Math.trunc(batch.seq * 0.5);
      const empty: Parameters<typeof runNode>[1] = {};
      for (let l = 0; l < WIDE.layers; l++)
        empty[`past_key_values.${l}.prunec_valid`] = { type: "float32", dims: [3, 0], data: new Float32Array(0) };
      // The first call's empty validity; later calls get the presents back (decodeSteps feeds every present.*).
      const withState = (model: Uint8Array) => (feeds: Parameters<typeof runNode>[1]) =>
        runNode(model, { ...empty, ...feeds });
      for (const c of PADDED_CASES) {
        const model = compile(decoder, c.spec, { exposeIndices: true, kvState: true }).model;
        const out = await withState(model)(prefillFeeds(batch, "gqa", WIDE));
        // onnxruntime-web's WASM backend keeps the same entries and validity at prefill.
        const wasm = await runWasm(model, { ...empty, ...prefillFeeds(batch, "gqa", WIDE) });
        for (const name of Object.keys(out).filter((o) => o.endsWith(".kv_indices") || o.endsWith(".prunec_valid")))
          expect([c.spec, name, Array.from(wasm[name]!.data as ArrayLike<number | bigint>)]).toEqual([
            c.spec,
            name,
            Array.from(out[name]!.data as ArrayLike<number | bigint>),
          ]);
        const got = await withNode(model, (run) => generateGreedy((f) => run({ ...empty, ...f }), batch, STEPS, WIDE));
        prompts.forEach((prompt, b) => {
          const pad = batch.seq - prompt.length;
          const own = Math.trunc(prompt.length * 0.5);
          const want = referenceGeneration(prompt, c.press(own), STEPS);
          const valid = Array.from((out["present.0.prunec_valid"]!.data as Float32Array).subarray(b * k, (b + 1) * k));
          expect(valid).toEqual([...new Array<number>(k - own).fill(0), ...new Array<number>(own).fill(1)]);
          for (let l = 0; l < WIDE.layers; l++) {
            const all = out[`prunec.stage0.layer${l}.kv_indices`]!.data as BigInt64Array;
            const perHead = rows(all.subarray(b * WIDE.kvHeads * k, (b + 1) * WIDE.kvHeads * k), [WIDE.kvHeads, k]);
            const fillers = new Array<number>(k - own).fill(-1);
            expect([c.spec, b, l, perHead]).toEqual([
              c.spec,
              b,
              l,
              want.kept[l]!.map((h) => [...fillers, ...h.map((j) => j + pad)]),
            ]);
          }
          expectGeneration(c.spec, got, b, want);
        });
      }
    }, 240_000);

    it("random(seed: 7) in a left-padded batch: each example's set is the hash of its own positions (as alone), with the batch's count", async () => {
      const prompts = [PROMPTS[1]!, PROMPTS[0]!];
      const batch = promptBatch(prompts, "left");
      const k = Math.trunc(batch.seq * 0.5);
      const model = compile(decoder, "keep kv 50% by random(seed: 7)", { exposeIndices: true }).model;
      const idx = (await runNode(model, prefillFeeds(batch, "gqa", WIDE)))["prunec.stage0.layer2.kv_indices"]!;
      prompts.forEach((prompt, b) => {
        const pad = batch.seq - prompt.length;
        const want = kvpressSelect(randomHashScores(WIDE.kvHeads, prompt.length, 7), k).kept;
        const all = idx.data as BigInt64Array;
        expect(rows(all.subarray(b * WIDE.kvHeads * k, (b + 1) * WIDE.kvHeads * k), [WIDE.kvHeads, k])).toEqual(
          want.map((h) => h.map((j) => j + pad)),
        );
      });
    });

    it("keep kv 25% of image: only the image's entries compete (each example keeps its text and, of its 16 image entries, the best int(16 · 0.25) = 4, or more up to the batch's count); batch 1 and a left-padded batch of 2", async () => {
      const prompts = [imagePrompt([3, 4, 5], [20, 21, 22, 23]), imagePrompt([6, 7, 8, 9, 10], [24, 25, 26])];
      for (const c of SET_CASES) {
        const spec = `tokens image = input image_mask\nkeep kv 25% of image by ${c.by}`;
        const model = compile(decoder, spec, { exposeIndices: true }).model;
        for (const group of [[0], [1], [0, 1]]) {
          const batch = promptBatch(
            group.map((i) => prompts[i]!.tokens),
            "left",
            group.map((i) => prompts[i]!.image),
          );
          const feeds = { ...prefillFeeds(batch, "gqa", WIDE), ...imageMaskFeed(batch) };
          const out = await runNode(model, feeds);
          const kept = out["prunec.stage0.layer0.kv_indices"]!.dims[2]!;
          // Each example: its text, and its image entries up to the batch's count (its own 4, or more).
          expect(kept).toBe(Math.max(...group.map((i) => prompts[i]!.tokens.length - 16 + 4)));
          const got = await withNode(model, (run) => generateGreedyWithImageMask(run, batch, STEPS, WIDE));
          group.forEach((i, b) => {
            const { tokens, image } = prompts[i]!;
            const pad = batch.seq - tokens.length;
            const dense = evictingGeneration(reference, tokens, { method: "knorm", budget: { keepPercent: 100 } }, 1);
            const want = dense.layers.map((x) =>
              c.scores(x).map((row) => {
                const text = row.map((_, j) => j).filter((j) => !image[j]);
                const best = row
                  .map((v, j) => [v, j] as const)
                  .filter(([, j]) => image[j])
                  .sort((a, z) => z[0] - a[0] || a[1] - z[1])
                  .slice(0, kept - text.length)
                  .map(([, j]) => j);
                return [...text, ...best].sort((a, z) => a - z);
              }),
            );
            for (let l = 0; l < WIDE.layers; l++) {
              const all = out[`prunec.stage0.layer${l}.kv_indices`]!.data as BigInt64Array;
              const perHead = rows(all.subarray(b * WIDE.kvHeads * kept, (b + 1) * WIDE.kvHeads * kept), [
                WIDE.kvHeads,
                kept,
              ]);
              expect([c.by, group, b, l, perHead]).toEqual([
                c.by,
                group,
                b,
                l,
                want[l]!.map((h) => h.map((j) => j + pad)),
              ]);
            }
            const gen = evictingGeneration(
              reference,
              tokens,
              { method: "knorm", budget: { keepPercent: 100 } },
              STEPS,
              want,
            );
            expect([c.by, group, b, got.tokens[b]]).toEqual([c.by, group, b, gen.tokens]);
          });
        }
      }
    }, 180_000); // 30 s alone on 2 cores: three criteria, each generating at batch 1 (twice) and 2

    it("in layers 1..2: only those layers' caches shrink", async () => {
      const model = compile(decoder, "in layers 1..2 keep kv 50% by knorm").model;
      const prompt = PROMPTS[0]!;
      const out = await runNode(model, prefillFeeds(single(prompt), "gqa", WIDE));
      const n = prompt.length;
      expect([0, 1, 2, 3].map((l) => out[`present.${l}.key`]!.dims[2])).toEqual([n, n / 2, n / 2, n]);
    });
  });

describe("expected-attn: where its pre-rotary queries and frequencies come from, and what it refuses", () => {
  it("behind GroupQueryAttention that rotates q/k itself (do_rotary=1, moved out by prunec): kept positions and 32 greedy tokens equal the reference's", async () => {
    const inside = buildDecoder({ attention: "gqa", rotary: "op" }, WIDE);
    const model = compile(inside, "keep kv 50% by expected-attn(sinks: 2, future: 64)", { exposeIndices: true }).model;
    const prompt = PROMPTS[1]!;
    const press: PressSpec = { method: "expected", budget: { keepPercent: 50 }, theta, sinks: 2, future: 64 };
    const want = referenceGeneration(prompt, press, STEPS);
    const out = await runNode(model, prefillFeeds(single(prompt), "gqa", WIDE));
    for (let l = 0; l < WIDE.layers; l++) {
      const idx = out[`prunec.stage0.layer${l}.kv_indices`]!;
      expect(rows(idx.data as BigInt64Array, [WIDE.kvHeads, idx.dims[2]!])).toEqual(want.kept[l]);
    }
    const got = await withNode(model, (run) => generateGreedy(run, single(prompt), STEPS, WIDE));
    expect(got.tokens[0]).toEqual(want.tokens);
  });

  it("a rotary table that is not cos/sin(p·θ) (every row × 1.25, YaRN's attention factor): the graph averages the table's own rows, a position past its last row reading that row; kept positions and 32 greedy tokens equal the reference with that rotary", async () => {
    const scaled: DecoderOptions = { ...WIDE, ropeScale: 1.25 };
    const model = buildDecoder({ attention: "gqa" }, scaled);
    const scaledReference = new ReferenceDecoder(weightsFromModel(model, scaled), scaled);
    // The table's row p (HF's rotary_emb returns cos·attention_scaling); rows stop at maxPositions − 1.
    const rotary = (p: number) => {
      const row = Math.min(p, scaled.maxPositions - 1);
      return { cos: theta.map((t) => 1.25 * Math.cos(row * t)), sin: theta.map((t) => 1.25 * Math.sin(row * t)) };
    };
    const prompt = PROMPTS[1]!;
    for (const future of [16, 120]) {
      const compiled = compile(model, `keep kv 50% by expected-attn(sinks: 2, future: ${future})`, {
        exposeIndices: true,
      }).model;
      const press: PressSpec = { method: "expected", budget: { keepPercent: 50 }, rotary, sinks: 2, future };
      const want = evictingGeneration(scaledReference, prompt, press, STEPS);
      const out = await runNode(compiled, prefillFeeds(single(prompt), "gqa", scaled));
      for (let l = 0; l < WIDE.layers; l++) {
        const idx = out[`prunec.stage0.layer${l}.kv_indices`]!;
        expect([future, l, rows(idx.data as BigInt64Array, [WIDE.kvHeads, idx.dims[2]!])]).toEqual([
          future,
          l,
          want.kept[l],
        ]);
      }
      const got = await withNode(compiled, (run) => generateGreedy(run, single(prompt), STEPS, scaled));
      expect(got.tokens[0]).toEqual(want.tokens);
    }
  });

  it("refuses, at the criterion's line:column: a stream stage above the layer; a switch that is not on/off", () => {
    const message = firstErrorLine;
    expect(
      message(decoder, "after layer 1 drop 50% by last-token-attn\nin layers 2..3 keep kv 50% by expected-attn"),
    ).toBe(
      "s.prune:2:31: error: expected-attn on layer 2's cache: expected attention rotates its statistics to the positions after the prompt; a stream stage above the layer leaves its cache shorter than the prompt",
    );
    expect(message(decoder, "keep kv 50% by expected-attn(covariance: maybe)")).toBe(
      "s.prune:1:16: error: expected-attn cannot evict layer 0's cache: covariance is 'on' or 'off', got 'maybe'",
    );
    // A scaled rotary (cos/sin × 1.25, YaRN's attention factor) is not cos/sin(p·θ): its own rows are read (next test).
    expect(
      message(buildDecoder({ attention: "gqa" }, { ...WIDE, ropeScale: 1.25 }), "keep kv 50% by expected-attn"),
    ).toBe("compiled");
  });
});

describe("keep kv … of SET: what the planner refuses, at the set's line:column", () => {
  const message = (spec: string): string => firstErrorLine(decoder, spec);
  const SETS = "tokens image = input image_mask\ntokens instruction = after image\n";
  it("streaming and pyramidkv cannot be restricted to a set; a set must come from a model input; no set on a cache a stream stage shortened", () => {
    expect(message(`${SETS}keep kv 25% of image by knorm`)).toBe("compiled");
    expect(message(`${SETS}keep kv 25% of image by streaming(sinks: 2)`)).toBe(
      "s.prune:3:16: error: 'of image' with streaming: StreamingLLM's scores depend on the count it keeps (sinks, then the most recent entries), not on the entries; restricted to a set they would describe no method",
    );
    expect(message(`${SETS}keep kv 25% of image by pyramidkv`)).toBe(
      "s.prune:3:16: error: 'of image' with pyramidkv: PyramidKV's per-layer budgets are fractions of the whole cache, not of a set",
    );
    expect(message(`${SETS}keep kv 25% of instruction by knorm`)).toBe(
      "s.prune:3:16: error: 'of instruction': prunec restricts KV-cache stages to sets given by a model input ('tokens instruction = input NAME'); sets defined as 'after ...' are not supported yet",
    );
    expect(
      message(
        `${SETS}after layer 1 drop 50% of image by last-token-attn\nin layers 2..3 keep kv 50% of image by knorm`,
      ),
    ).toBe(
      "s.prune:4:31: error: 'of image' on layer 2's cache: a stream stage above it keeps only some of the prompt's tokens there, and the set's mask marks the whole prompt",
    );
  });
});

describe("pyramidkv's per-layer budgets are int64 tables (no float64 kernels: WebGPU runs them)", () => {
  it("every layer's table equals kvpress's get_layer_budget (reference) for every N the model can hold, at 3 ratios and 2 windows", () => {
    for (const [percent, window, beta] of [
      [50, 4, 2],
      [25, 4, 20],
      [10, 8, 5],
      [75, 8, 20],
    ] as const) {
      const model = decodeModel(
        compile(decoder, `keep kv ${percent}% by pyramidkv(window: ${window}, kernel: 3, beta: ${beta})`).model,
      );
      const inits = new Map(model.graph!.initializer.map((t) => [t.name, t]));
      for (let l = 0; l < WIDE.layers; l++) {
        const table = inits.get(`prunec/stage0/layer${l}/kv_budget_table`)!;
        expect(Number(table.dims[0])).toBe(WIDE.maxPositions + 1);
        const got = readNumbers(table, WIDE.maxPositions + 1)!;
        const ratio = 1 - percent / 100;
        const want = got.map((_, n) => Math.max(1, pyramidLayerBudget(l, WIDE.layers, n, ratio, window, beta)));
        expect([percent, l, got]).toEqual([percent, l, want]);
      }
      // No float64 anywhere, subgraphs included: every budget is a table lookup.
      const doubles: string[] = [];
      const visit = (g: NonNullable<typeof model.graph>) => {
        for (const t of g.initializer) if (t.dataType === 11) doubles.push(t.name);
        for (const n of g.node)
          for (const a of n.attribute) {
            if (n.opType === "Cast" && a.name === "to" && Number(a.i) === 11) doubles.push(n.name);
            for (const sub of a.g ? [a.g, ...a.graphs] : a.graphs) visit(sub);
          }
      };
      visit(model.graph!);
      expect(doubles).toEqual([]);
    }
  });
});

/**
 * The same KV stages on onnxruntime-web's WASM backend (single thread, in Node: what a browser's
 * wasm provider runs): the kept positions per layer and KV head, and the greedy tokens generated
 * through one open WASM session, equal onnxruntime-node's CPU run and the float64 references.
 */
describe("keep kv on onnxruntime-web's WASM backend (batch 1): same kept positions and greedy tokens as CPU and the reference", () => {
  const WASM_CASES: { spec: string; press: (n: number) => PressSpec }[] = [
    { spec: "keep kv 50% by knorm", press: () => ({ method: "knorm", budget: { keepPercent: 50 } }) },
    {
      spec: "keep kv 50% by snapkv(window: 4, kernel: 3)",
      press: () => ({ method: "snapkv", budget: { keepPercent: 50 }, window: 4, kernel: 3 }),
    },
    {
      spec: "keep kv 50% by h2o(recent: 2)",
      press: (n) => ({ method: "h2o", heavy: Math.trunc(n * 0.5) - 2, recent: 2 }),
    },
  ];
  const keptPerLayer = (out: Awaited<ReturnType<typeof runNode>>) =>
    Array.from({ length: WIDE.layers }, (_, l) => {
      const idx = out[`prunec.stage0.layer${l}.kv_indices`]!;
      return rows(idx.data as BigInt64Array, [WIDE.kvHeads, idx.dims[2]!]);
    });
  for (const c of WASM_CASES) {
    it(`${c.spec}: WASM's kept positions, caches and ${STEPS} greedy tokens equal CPU's and the reference's (logits <= ${TOL})`, async () => {
      const model = compile(decoder, c.spec, { exposeIndices: true }).model;
      for (const prompt of PROMPTS) {
        const want = referenceGeneration(prompt, c.press(prompt.length), STEPS);
        const feeds = prefillFeeds(single(prompt), "gqa", WIDE);
        const cpuOut = await runNode(model, feeds);
        const wasmOut = await runWasm(model, feeds);
        expect(keptPerLayer(wasmOut)).toEqual(keptPerLayer(cpuOut));
        expect(keptPerLayer(wasmOut)).toEqual(want.kept);
        for (let l = 0; l < WIDE.layers; l++) {
          for (const kv of ["key", "value"]) {
            const name = `present.${l}.${kv}`;
            expect(wasmOut[name]!.dims).toEqual([1, WIDE.kvHeads, want.kept[l]![0]!.length, WIDE.headSize]);
            expect(
              maxAbsDiff(wasmOut[name]!.data as Float32Array, cpuOut[name]!.data as Float32Array),
            ).toBeLessThanOrEqual(TOL);
          }
        }
        const cpu = await withNode(model, (run) => generateGreedy(run, single(prompt), STEPS, WIDE));
        const wasm = await openDecoderSession(model, "wasm");
        try {
          const got = await generateGreedy((f) => wasm.run(f), single(prompt), STEPS, WIDE);
          expect(got.tokens).toEqual(cpu.tokens);
          expect(got.tokens[0]).toEqual(want.tokens);
          expect(maxAbsDiff(got.prefill, cpu.prefill)).toBeLessThanOrEqual(TOL);
          got.steps.forEach((l, s) => {
            expect(maxAbsDiff(l, cpu.steps[s]!)).toBeLessThanOrEqual(TOL);
            expect(maxAbsDiff(l, Float64Array.from(want.steps[s]!))).toBeLessThanOrEqual(TOL);
          });
        } finally {
          await wasm.release();
        }
      }
    });
  }
});
