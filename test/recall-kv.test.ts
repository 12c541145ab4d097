/**
 * KV-cache stages on the trained recall decoder (examples/recall: plain MatMul-Softmax attention
 * over Concat(past, k) caches, as torch exports HF decoders): on held-out test prompts, the kept
 * positions of every layer and KV head equal the float64 references written from the authors' code
 * (test/reference/kv-presses.ts), and 32 greedy tokens with the compiled model equal a float64 loop
 * over the model's own weights that prefills densely, evicts with the reference press and decodes
 * over the kept cache, token for token. `keep kv 100%` generates what the dense model generates.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { maxAbsDiff, runNode, withNode } from "./helpers/ort.js";
import { generateGreedy, prefillFeeds, promptBatch, rotaryFrequencies } from "./support/decoder.js";
import { ReferenceDecoder, weightsByNodeNames } from "./reference/decoder.js";
import { evictingGeneration } from "./reference/kv-generation.js";
import { knormScores, type PressSpec } from "./reference/kv-presses.js";
import { rows } from "./support/model-edit.js";
import { RECALL, RECALL_MODEL, readRecall } from "./support/recall.js";

const MODEL = new Uint8Array(readFileSync(RECALL_MODEL));
const STEPS = 32;
const TOL = 1e-3;

const reference = new ReferenceDecoder(weightsByNodeNames(MODEL, RECALL), RECALL);
const PROMPTS: number[][] = readRecall("test.jsonl")
  .slice(0, 3)
  .map((e) => e.prompt);
/** The sample prompts (contexts of 192..256 tokens): left-padded batches of different lengths. */
const SAMPLES: number[][] = readRecall("sample.jsonl").map((e) => e.prompt);

const CASES: { spec: string; press: (n: number) => PressSpec }[] = [
  {
    spec: "keep kv 25% by streaming(sinks: 4)",
    press: () => ({ method: "streaming", budget: { keepPercent: 25 }, sinks: 4 }),
  },
  {
    spec: "keep kv 25% by snapkv(window: 8, kernel: 5)",
    press: () => ({ method: "snapkv", budget: { keepPercent: 25 }, window: 8, kernel: 5 }),
  },
  { spec: "keep kv 25% by observed", press: () => ({ method: "observed", budget: { keepPercent: 25 } }) },
  { spec: "keep kv 25% by tova", press: () => ({ method: "tova", budget: { keepPercent: 25 } }) },
  {
    spec: "keep kv 25% by h2o(recent: 8)",
    press: (n) => ({ method: "h2o", heavy: Math.trunc(n * 0.25) - 8, recent: 8 }),
  },
  {
    spec: "keep kv 10% by a2sf(forget: 0.9, recent: 8)",
    press: (n) => ({ method: "a2sf", total: Math.trunc(n * 0.1), forget: 0.9, recent: 8 }),
  },
  {
    // kvpress's defaults (4 sinks, 512 future positions); θ recovered from the model's own full-width table.
    spec: "keep kv 25% by expected-attn",
    press: () => ({ method: "expected", budget: { keepPercent: 25 }, theta: rotaryFrequencies(RECALL) }),
  },
];

describe("keep kv on the trained recall decoder (plain attention, Concat caches; 258-token test prompts)", () => {
  for (const c of CASES) {
    it(`${c.spec}: kept positions equal the reference's; ${STEPS} greedy tokens equal the evicting reference loop`, async () => {
      const model = compile(MODEL, c.spec, { exposeIndices: true }).model;
      for (const prompt of PROMPTS.slice(0, 2)) {
        const want = evictingGeneration(reference, prompt, c.press(prompt.length), STEPS);
        const single = promptBatch([prompt], "left");
        const out = await runNode(model, prefillFeeds(single, "plain-cache", RECALL));
        for (let l = 0; l < RECALL.layers; l++) {
          const idx = out[`prunec.stage0.layer${l}.kv_indices`]!;
          expect(rows(idx.data as BigInt64Array, [RECALL.kvHeads, idx.dims[2]!])).toEqual(want.kept[l]);
        }
        const got = await withNode(model, (r) => generateGreedy(r, single, STEPS, RECALL));
        expect(got.tokens[0]).toEqual(want.tokens);
        got.steps.forEach((l, s) => expect(maxAbsDiff(l, Float64Array.from(want.steps[s]!))).toBeLessThanOrEqual(TOL));
      }
    });
  }

  it(`keep kv 25% by knorm: each head keeps the ${"`"}int(N/4)${"`"} shortest keys up to float32 ties; ${STEPS} greedy tokens equal the reference loop over that set`, async () => {
    // Rotary preserves a key's norm, so in layer 0 every repeat of a token id has the same key
    // norm: those ties are broken by rounding (onnxruntime's float32 ReduceL2 here, the model's
    // dtype in kvpress), so the set is checked as a top-K up to a 1e-6 relative margin.
    const model = compile(MODEL, "keep kv 25% by knorm", { exposeIndices: true }).model;
    for (const prompt of PROMPTS) {
      const single = promptBatch([prompt], "left");
      const out = await runNode(model, prefillFeeds(single, "plain-cache", RECALL));
      const dense = evictingGeneration(reference, prompt, { method: "knorm", budget: { keepPercent: 25 } }, 1);
      const got = Array.from({ length: RECALL.layers }, (_, l) => {
        const idx = out[`prunec.stage0.layer${l}.kv_indices`]!;
        return rows(idx.data as BigInt64Array, [RECALL.kvHeads, idx.dims[2]!]);
      });
      got.forEach((perHead, l) => {
        const scores = knormScores(dense.layers[l]!.k);
        perHead.forEach((kept, g) => {
          expect(kept.length).toBe(Math.trunc(prompt.length * 0.25));
          const s = scores[g]!;
          const keptSet = new Set(kept);
          const weakestKept = Math.min(...kept.map((j) => s[j]!));
          const bestEvicted = Math.max(...s.filter((_, j) => !keptSet.has(j)));
          expect(bestEvicted - weakestKept).toBeLessThanOrEqual(1e-6 * Math.abs(weakestKept));
        });
      });
      const want = evictingGeneration(reference, prompt, { method: "knorm", budget: { keepPercent: 25 } }, STEPS, got);
      const gen = await withNode(model, (r) => generateGreedy(r, single, STEPS, RECALL));
      expect(gen.tokens[0]).toEqual(want.tokens);
      gen.steps.forEach((l, s) => expect(maxAbsDiff(l, Float64Array.from(want.steps[s]!))).toBeLessThanOrEqual(TOL));
    }
  });

  it("--kv-state, the same batch: each example keeps exactly what it keeps alone (its own int(n/4)), and generates the same 32 tokens", async () => {
    const prompts = SAMPLES.slice(0, 3);
    const batch = promptBatch(prompts, "left");
    const k = Math.trunc(batch.seq * 0.25);
    const empty: Parameters<typeof runNode>[1] = {};
    for (let l = 0; l < RECALL.layers; l++)
      empty[`past_key_values.${l}.prunec_valid`] = { type: "float32", dims: [3, 0], data: new Float32Array(0) };
    const model = compile(MODEL, "keep kv 25% by h2o(recent: 8)", { exposeIndices: true, kvState: true }).model;

    const out = await runNode(model, { ...empty, ...prefillFeeds(batch, "plain-cache", RECALL) });
    const got = await withNode(model, (r) => generateGreedy((f) => r({ ...empty, ...f }), batch, STEPS, RECALL));
    prompts.forEach((prompt, b) => {
      const pad = batch.seq - prompt.length;
      const own = Math.trunc(prompt.length * 0.25);
      const want = evictingGeneration(reference, prompt, { method: "h2o", heavy: own - 8, recent: 8 }, STEPS);
      for (let l = 0; l < RECALL.layers; l++) {
        const all = out[`prunec.stage0.layer${l}.kv_indices`]!.data as BigInt64Array;
        const perHead = rows(all.subarray(b * RECALL.kvHeads * k, (b + 1) * RECALL.kvHeads * k), [RECALL.kvHeads, k]);
        const fillers = new Array<number>(k - own).fill(-1);
        expect([b, l, perHead]).toEqual([b, l, want.kept[l]!.map((h) => [...fillers, ...h.map((j) => j + pad)])]);
      }
      expect(got.tokens[b]).toEqual(want.tokens);
    });
  });

  it("a left-padded batch of 3 sample prompts (contexts of different lengths): each example keeps what it keeps alone with the batch's count, and generates the same 32 tokens", async () => {
    const prompts = SAMPLES.slice(0, 3);
    expect(new Set(prompts.map((p) => p.length)).size).toBe(3);
    const batch = promptBatch(prompts, "left");
    const k = Math.trunc(batch.seq * 0.25);
    const V = RECALL.vocab;
    for (const c of [
      { spec: "keep kv 25% by h2o(recent: 8)", press: (): PressSpec => ({ method: "h2o", heavy: k - 8, recent: 8 }) },
      {
        spec: "keep kv 25% by snapkv(window: 8, kernel: 5)",
        press: (): PressSpec => ({ method: "snapkv", budget: { keep: k }, window: 8, kernel: 5 }),
      },
    ]) {
      const model = compile(MODEL, c.spec, { exposeIndices: true }).model;
      const out = await runNode(model, prefillFeeds(batch, "plain-cache", RECALL));
      const got = await withNode(model, (r) => generateGreedy(r, batch, STEPS, RECALL));
      prompts.forEach((prompt, b) => {
        const pad = batch.seq - prompt.length;
        const want = evictingGeneration(reference, prompt, c.press(), STEPS);
        for (let l = 0; l < RECALL.layers; l++) {
          const all = out[`prunec.stage0.layer${l}.kv_indices`]!.data as BigInt64Array;
          const perHead = rows(all.subarray(b * RECALL.kvHeads * k, (b + 1) * RECALL.kvHeads * k), [RECALL.kvHeads, k]);
          expect([c.spec, b, l, perHead]).toEqual([c.spec, b, l, want.kept[l]!.map((h) => h.map((j) => j + pad))]);
        }
        expect(got.tokens[b]).toEqual(want.tokens);
        got.steps.forEach((logits, s) =>
          expect(
            maxAbsDiff(logits.subarray(b * V, (b + 1) * V), Float64Array.from(want.steps[s]!)),
          ).toBeLessThanOrEqual(TOL),
        );
      });
    }
  });

  it(`keep kv 100% by snapkv generates what the dense model generates (${STEPS} tokens, logits <= 1e-5)`, async () => {
    const model = compile(MODEL, "keep kv 100% by snapkv(window: 8)").model;
    const single = promptBatch([PROMPTS[0]!], "left");
    const dense = await withNode(MODEL, (r) => generateGreedy(r, single, STEPS, RECALL));
    const kept = await withNode(model, (r) => generateGreedy(r, single, STEPS, RECALL));
    expect(kept.tokens).toEqual(dense.tokens);
    expect(maxAbsDiff(kept.prefill, dense.prefill)).toBeLessThanOrEqual(1e-5);
    kept.steps.forEach((l, s) => expect(maxAbsDiff(l, dense.steps[s]!)).toBeLessThanOrEqual(1e-5));
  });
});
