/**
 * Decode-time KV eviction (`during decode keep kv C tokens by h2o | a2sf`, passes/kv-decode-stage.ts)
 * on the project's test decoder, GroupQueryAttention and plain-attention layouts: at every call
 * (the prefill and 63 decode steps) each layer and KV head keeps exactly the entries the float64
 * reference written from the authors' code keeps (test/reference/kv-decode.ts), the carried scores
 * equal the reference's, and the 64 greedy tokens and their logits equal the reference loop's.
 * A left-padded batch of 3 keeps, per example, what the example keeps alone. onnxruntime-web's WASM
 * backend generates the same. The cache never holds more than C entries.
 */
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { maxAbsDiff, type Feeds, type Outputs } from "./helpers/ort.js";
import {
  buildDecoder,
  DECODER,
  generateGreedy,
  openDecoderSession,
  promptBatch,
  type Backend,
  type DecoderOptions,
  type PromptBatch,
} from "./support/decoder.js";
import { ReferenceDecoder, weightsFromModel } from "./reference/decoder.js";
import { decodeEvictingGeneration, type DecodeEviction, type PrefillPress } from "./reference/kv-decode.js";
import { keptCount, knormScores, kvpressSelect, snapkvScores } from "./reference/kv-presses.js";
import { spattenCascadeGeneration } from "./reference/spatten-kv.js";
import { keepCount, topKPositions } from "./reference/cls-attn.js";
import { rows } from "./support/model-edit.js";
import { firstErrorLine } from "./support/cases.js";

const STEPS = 64;
const TOL = 1e-4;
const WIDE: DecoderOptions = { ...DECODER, headSize: 16 };
const LAYOUTS = [
  { name: "GQA decoder", model: buildDecoder({ attention: "gqa" }, WIDE) },
  { name: "plain-attention decoder (Concat cache)", model: buildDecoder({ attention: "plain-cache" }, WIDE) },
] as const;
const reference = new ReferenceDecoder(weightsFromModel(LAYOUTS[0].model, WIDE), WIDE);
const PROMPTS: number[][] = [
  [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 3, 7, 11],
  [1, 40, 41, 42, 43, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 4],
];
const CASES: { spec: string; press: DecodeEviction }[] = [
  { spec: "during decode keep kv 10 tokens by h2o(recent: 2)", press: { method: "h2o", budget: 10, recent: 2 } },
  {
    spec: "during decode keep kv 12 tokens by a2sf(forget: 0.9, recent: 3)",
    press: { method: "a2sf", budget: 12, recent: 3, forget: 0.9 },
  },
  {
    spec: "during decode keep kv 9 tokens by streaming(sinks: 3)",
    press: { method: "streaming", budget: 9, sinks: 3 },
  },
];

/**
 * Runs every call of a greedy generation on one open session, recording each call's outputs; the
 * first call gets empty score pasts (`scores`: the stage carries them; StreamingLLM's does not).
 */
async function recorded(
  model: Uint8Array,
  p: PromptBatch,
  backend: Backend = "cpu",
  /** Per-layer score pairs (h2o, a2sf), none (streaming), or one shared pair (SpAtten's cascade, stage 0). */
  scores: boolean | "cascade" = true,
  /** Layers with a score pair when not every layer has one. */
  scoredLayers?: readonly number[],
  /** Other first-call feeds (a stage's `--kv-state` validity past). */
  first: Feeds = {},
) {
  const session = await openDecoderSession(model, backend);
  const calls: Outputs[] = [];
  const empty: Feeds = { ...first };
  for (let l = 0; scores === true && l < WIDE.layers; l++)
    empty[`past_key_values.${l}.prunec_score`] = {
      type: "float32",
      dims: [p.batch, WIDE.kvHeads, 0],
      data: new Float32Array(0),
    };
  for (const l of scoredLayers ?? [])
    empty[`past_key_values.${l}.prunec_score`] = {
      type: "float32",
      dims: [p.batch, WIDE.kvHeads, 0],
      data: new Float32Array(0),
    };
  if (scores === "cascade")
    empty["past_key_values.stage0.prunec_score"] = { type: "float32", dims: [p.batch, 0], data: new Float32Array(0) };
  try {
    const gen = await generateGreedy(
      async (f) => {
        const out = await session.run({ ...(calls.length ? {} : empty), ...f });
        calls.push(out);
        return out;
      },
      p,
      STEPS,
      WIDE,
    );
    return { ...gen, calls };
  } finally {
    await session.release();
  }
}

/** Kept slots of example b at one call: [kvHead][K']. */
function keptSlots(out: Outputs, l: number, b: number): number[][] {
  const t = out[`prunec.stage0.layer${l}.kv_indices`]!;
  const [, h, k] = t.dims as [number, number, number];
  return rows((t.data as BigInt64Array).subarray(b * h * k, (b + 1) * h * k), [h, k]);
}

for (const { name, model: dense } of LAYOUTS)
  describe(`during decode: eviction at every call on the ${name}`, () => {
    for (const c of CASES)
      it(`'${c.spec}', batch 1: kept slots and carried scores at each of ${STEPS} calls, the tokens and logits equal the reference loop's; the cache stays at ${c.press.budget}`, async () => {
        const model = compile(dense, c.spec, { exposeIndices: true }).model;
        for (const prompt of PROMPTS) {
          const want = decodeEvictingGeneration(reference, prompt, c.press, STEPS);
          const carried = c.press.method !== "streaming";
          const got = await recorded(model, promptBatch([prompt], "left"), "cpu", carried);
          expect(got.tokens[0]).toEqual(want.tokens);
          got.steps.forEach((l, s) =>
            expect(maxAbsDiff(l, Float64Array.from(want.steps[s]!))).toBeLessThanOrEqual(TOL),
          );
          got.calls.forEach((out, call) => {
            for (let l = 0; l < WIDE.layers; l++) {
              expect([call, l, keptSlots(out, l, 0)]).toEqual([call, l, want.keptSlots[call]![l]]);
              const score = out[`present.${l}.prunec_score`];
              expect(score === undefined).toBe(!carried);
              if (score) {
                expect(score.dims).toEqual([1, WIDE.kvHeads, want.scores[call]![l]![0]!.length]);
                expect(maxAbsDiff(score.data as Float32Array, want.scores[call]![l]!.flat())).toBeLessThanOrEqual(TOL);
              }
              expect(out[`present.${l}.key`]!.dims[2]).toBe(Math.min(c.press.budget, prompt.length + call));
            }
          });
        }
      });

    for (const c of CASES.slice(1))
      it(`'${c.spec}', a left-padded batch of 3 (18, 14 and 8 tokens; the 8-token one has fewer entries than the budget and keeps pads as fillers until it fills): each example keeps the positions and generates the tokens it does alone`, async () => {
        const model = compile(dense, c.spec, { exposeIndices: true }).model;
        const prompts = [PROMPTS[1]!, PROMPTS[0]!, [1, 33, 34, 35, 36, 9, 10, 11]];
        const p = promptBatch(prompts, "left");
        const got = await recorded(model, p, "cpu", c.press.method !== "streaming");
        prompts.forEach((prompt, b) => {
          const want = decodeEvictingGeneration(reference, prompt, c.press, STEPS);
          expect([b, got.tokens[b]]).toEqual([b, want.tokens]);
          const pad = p.seq - prompt.length;
          // Each slot's original position (−1 for a pad), carried from call to call as the model keeps them.
          let positions = Array.from({ length: WIDE.layers }, () =>
            Array.from({ length: WIDE.kvHeads }, () =>
              Array.from({ length: p.seq }, (_, j) => (j < pad ? -1 : j - pad)),
            ),
          );
          got.calls.forEach((out, call) => {
            if (call > 0) positions = positions.map((l) => l.map((g) => [...g, prompt.length + call - 1]));
            positions = positions.map((l, li) => keptSlots(out, li, b).map((slots, g) => slots.map((j) => l[g]![j]!)));
            const real = positions.map((l) => l.map((g) => g.filter((x) => x >= 0)));
            expect([b, call, real]).toEqual([b, call, want.keptPositions[call]]);
          });
        });
      });
  });

/**
 * A prefill stage composed with the decode-time one on the same layers: the press picks, at the
 * prefill, which prompt entries compete for the decode budget (the reference: the press's kvpress
 * selection, then the decode rule over those entries, its recent window their last ones).
 */
const COMPOSED: { spec: string; press: DecodeEviction; prefill: PrefillPress; why: string }[] = [
  {
    // int(N/2) = 7 or 9 entries stay, under the budget: the cache grows to 12, then H2O evicts.
    spec: "keep kv 50% by snapkv(window: 4)\nduring decode keep kv 12 tokens by h2o(recent: 2)",
    press: { method: "h2o", budget: 12, recent: 2 },
    prefill: (_l, probs, keys) =>
      kvpressSelect(snapkvScores(probs, keys.length, 4), keptCount(probs[0]!.length, { keepPercent: 50 })).kept,
    why: "the press keeps fewer than the budget",
  },
  {
    // int(0.75·N) = 10 or 13 entries stay: the 18-token prompt's 13 are over the budget of 10, so
    // A2SF evicts among the press's entries at the prefill already, forcing their last 3.
    spec: "keep kv 75% by knorm\nduring decode keep kv 10 tokens by a2sf(forget: 0.9, recent: 3)",
    press: { method: "a2sf", budget: 10, recent: 3, forget: 0.9 },
    prefill: (_l, _probs, keys) =>
      kvpressSelect(knormScores(keys), keptCount(keys[0]!.length, { keepPercent: 75 })).kept,
    why: "the press keeps more than the budget for the longer prompt",
  },
];

for (const { name, model: dense } of LAYOUTS)
  describe(`during decode composed with a prefill stage on the ${name}`, () => {
    for (const c of COMPOSED)
      it(`'${c.spec.replace("\n", "; ")}' (${c.why}), batch 1: kept slots at each of ${STEPS} calls, tokens and logits equal the reference's`, async () => {
        const model = compile(dense, c.spec, { exposeIndices: true }).model;
        for (const prompt of PROMPTS) {
          const want = decodeEvictingGeneration(reference, prompt, c.press, STEPS, { prefillPress: c.prefill });
          const got = await recorded(model, promptBatch([prompt], "left"));
          expect(got.tokens[0]).toEqual(want.tokens);
          got.steps.forEach((l, s) =>
            expect(maxAbsDiff(l, Float64Array.from(want.steps[s]!))).toBeLessThanOrEqual(TOL),
          );
          got.calls.forEach((out, call) => {
            for (let l = 0; l < WIDE.layers; l++) {
              const slots = out[`prunec.stage1.layer${l}.kv_indices`]!;
              const [, h, k] = slots.dims as [number, number, number];
              expect([call, l, rows(slots.data as BigInt64Array, [h, k])]).toEqual([call, l, want.keptSlots[call]![l]]);
              const score = out[`present.${l}.prunec_score`]!;
              expect(maxAbsDiff(score.data as Float32Array, want.scores[call]![l]!.flat())).toBeLessThanOrEqual(TOL);
            }
          });
          // The composed press changed what stays (the test could fail): the decode rule alone keeps other entries.
          const alone = decodeEvictingGeneration(reference, prompt, c.press, 2);
          expect(alone.keptPositions[0]).not.toEqual(want.keptPositions[0]);
        }
      });
  });

for (const { name, model: dense } of LAYOUTS)
  describe(`during decode by spatten (SpAtten's cascade) on the ${name}`, () => {
    it(`'during decode keep kv 10 tokens by spatten', batch 1: at each of ${STEPS} calls every layer and KV head keeps the reference's one set, with its scores; tokens and logits equal the reference's`, async () => {
      const model = compile(dense, "during decode keep kv 10 tokens by spatten", { exposeIndices: true }).model;
      for (const prompt of PROMPTS) {
        const want = spattenCascadeGeneration(reference, prompt, 10, STEPS);
        const got = await recorded(model, promptBatch([prompt], "left"), "cpu", "cascade");
        expect(got.tokens[0]).toEqual(want.tokens);
        got.steps.forEach((l, s) => expect(maxAbsDiff(l, Float64Array.from(want.steps[s]!))).toBeLessThanOrEqual(TOL));
        got.calls.forEach((out, call) => {
          for (let l = 0; l < WIDE.layers; l++)
            expect([call, l, keptSlots(out, l, 0)]).toEqual([
              call,
              l,
              new Array(WIDE.kvHeads).fill(want.keptSlots[call]),
            ]);
          const score = out["present.stage0.prunec_score"]!;
          expect(score.dims).toEqual([1, want.scores[call]!.length]);
          expect(maxAbsDiff(score.data as Float32Array, want.scores[call]!)).toBeLessThanOrEqual(TOL);
        });
        // One set for all layers differs from what each layer would keep by its own H2O score.
        const perLayer = decodeEvictingGeneration(reference, prompt, { method: "h2o", budget: 10, recent: 0 }, 2);
        expect(
          perLayer.keptSlots[0]!.some((layer) => JSON.stringify(layer[0]) !== JSON.stringify(want.keptSlots[0])),
        ).toBe(true);
      }
    });

    it("a left-padded batch of 3 (18, 14 and 8 tokens): each example keeps the positions and generates the tokens it does alone", async () => {
      const model = compile(dense, "during decode keep kv 10 tokens by spatten", { exposeIndices: true }).model;
      const prompts = [PROMPTS[1]!, PROMPTS[0]!, [1, 33, 34, 35, 36, 9, 10, 11]];
      const p = promptBatch(prompts, "left");
      const got = await recorded(model, p, "cpu", "cascade");
      prompts.forEach((prompt, b) => {
        const want = spattenCascadeGeneration(reference, prompt, 10, STEPS);
        expect([b, got.tokens[b]]).toEqual([b, want.tokens]);
        const pad = p.seq - prompt.length;
        let positions = Array.from({ length: p.seq }, (_, j) => (j < pad ? -1 : j - pad));
        got.calls.forEach((out, call) => {
          if (call > 0) positions = [...positions, prompt.length + call - 1];
          const slots = keptSlots(out, 0, b)[0]!;
          positions = slots.map((j) => positions[j]!);
          expect([b, call, positions.filter((x) => x >= 0)]).toEqual([b, call, want.keptPositions[call]]);
        });
      });
    });
  });

/**
 * Below a stream stage (LazyLLM's prefill selection, `after layer 1 keep 50% by last-token-attn`:
 * layers 2–3 hold only the kept prompt tokens): the decode-time stage evicts those caches, its pads
 * marked by its carried scores rather than the host's mask. The reference runs the prefill layer
 * by layer, keeping after layer 1 what last-token-attn keeps (the last token raised above all,
 * round-half-up(N/2) tokens, ties to the lower position), then evicts layers 2–3 as alone.
 */
const LAZY = "after layer 1 keep 50% by last-token-attn";
const BELOW = `${LAZY}\nin layers 2..3 during decode keep kv 8 tokens by h2o(recent: 2)`;
const lazyKeep = (probs: Float64Array): number[] => {
  const scores = Array.from(probs);
  scores[scores.length - 1] = Math.max(...scores) + 1;
  return topKPositions(scores, keepCount(50, scores.length), 0);
};
describe("during decode below a stream stage (GQA decoder)", () => {
  it(`'${BELOW.replace("\n", "; ")}', batch 1: layers 2–3 keep the reference's slots and scores at each of ${STEPS} calls; tokens and logits equal it`, async () => {
    const model = compile(LAYOUTS[0].model, BELOW, { exposeIndices: true }).model;
    const press: DecodeEviction = { method: "h2o", budget: 8, recent: 2 };
    for (const prompt of PROMPTS) {
      const context = { stream: { afterLayer: 1, keep: lazyKeep }, layers: [2, 3] };
      const want = decodeEvictingGeneration(reference, prompt, press, STEPS, context);
      const got = await recorded(model, promptBatch([prompt], "left"), "cpu", false, [2, 3]);
      expect(got.tokens[0]).toEqual(want.tokens);
      got.steps.forEach((l, s) => expect(maxAbsDiff(l, Float64Array.from(want.steps[s]!))).toBeLessThanOrEqual(TOL));
      got.calls.forEach((out, call) => {
        for (const l of [2, 3]) {
          const slots = out[`prunec.stage1.layer${l}.kv_indices`]!;
          const [, h, k] = slots.dims as [number, number, number];
          expect([call, l, rows(slots.data as BigInt64Array, [h, k])]).toEqual([call, l, want.keptSlots[call]![l]]);
          const score = out[`present.${l}.prunec_score`]!;
          expect(maxAbsDiff(score.data as Float32Array, want.scores[call]![l]!.flat())).toBeLessThanOrEqual(TOL);
        }
      });
      // The stream stage shortened layers 2–3 (the test could fail): the dense prompt would give other slots.
      const dense = decodeEvictingGeneration(reference, prompt, press, 2, { layers: [2, 3] });
      expect(dense.keptPositions[0]![2]).not.toEqual(want.keptPositions[0]![2]);
    }
  });

  /**
   * A left-padded batch of 18, 14 and 8 tokens: the stage keeps round-half-up(18/2) = 9 rows per
   * example (the batch's count) and never a pad over a real token, so the first two keep 9 of their
   * own tokens and the third all 8 and one pad. Each example then generates what it generates alone
   * keeping min(9, its length) tokens, with and without the decode-time stage below: the layers
   * below find their pads in the host mask's last columns (passes/host-mask.ts).
   */
  const PADDED = [PROMPTS[1]!, PROMPTS[0]!, [1, 33, 34, 35, 36, 9, 10, 11]];
  const kept = keepCount(50, 18);
  const capped =
    (n: number) =>
    (probs: Float64Array): number[] => {
      const scores = Array.from(probs);
      scores[scores.length - 1] = Math.max(...scores) + 1;
      return topKPositions(scores, Math.min(n, scores.length), 0);
    };
  for (const [spec, layers] of [
    [LAZY, []],
    [BELOW, [2, 3]],
  ] as const)
    it(`'${spec.replace("\n", "; ")}', a left-padded batch of 3: each example keeps, generates and scores what it does alone (${STEPS} calls; WASM: the same tokens)`, async () => {
      const model = compile(LAYOUTS[0].model, spec, { exposeIndices: true }).model;
      const p = promptBatch(PADDED, "left");
      const got = await recorded(model, p, "cpu", false, layers);
      // onnxruntime-web's WASM backend generates the same tokens.
      expect((await recorded(model, p, "wasm", false, layers)).tokens).toEqual(got.tokens);
      const press: DecodeEviction = { method: "h2o", budget: 8, recent: 2 };
      const indices = got.calls[0]!["prunec.stage0.indices"]!;
      const keptRows = rows(indices.data as BigInt64Array, indices.dims);
      PADDED.forEach((prompt, b) => {
        let alone: number[] = [];
        const keep = (probs: Float64Array) => {
          alone = capped(kept)(probs);
          return alone;
        };
        const want = decodeEvictingGeneration(reference, prompt, press, STEPS, {
          stream: { afterLayer: 1, keep },
          layers,
        });
        // The kept rows: the example's own (as alone), after as many pads as its length falls short of 9.
        const offset = p.offsets[b]!;
        const own = keptRows[b]!.filter((j) => j >= offset).map((j) => j - offset);
        expect([b, own]).toEqual([b, [...alone].sort((x, y) => x - y)]);
        expect(keptRows[b]!.length - own.length).toBe(Math.max(0, kept - prompt.length));
        expect([b, got.tokens[b]]).toEqual([b, want.tokens]);
        const error = Math.max(
          ...got.steps.map((l, s) =>
            maxAbsDiff(l.subarray(b * WIDE.vocab, (b + 1) * WIDE.vocab), Float64Array.from(want.steps[s]!)),
          ),
        );
        expect(error).toBeLessThanOrEqual(TOL);
      });
    });
});

/**
 * A per-example count without a set (`keep above 22 by norm`: 8, 11 and 5 tokens when the three
 * prompts run alone; the first drops its last token) on the cached GQA decoder, in the left-padded
 * batch of 18, 14 and 8 tokens, with --kv-state: the host's pads rank below every real token (never
 * counted above the threshold); each example's padding up to the largest count goes first, so its
 * last row stays its last kept token, which the next token is read from; the layers below mask
 * both paddings at every call. Each example keeps, generates and scores what it does alone.
 */
describe("a per-example count without a set on a cached decoder, left-padded", () => {
  it("'after layer 1 keep above 22 by norm' with --kv-state: each example of the batch of 3 equals its batch-1 run", async () => {
    const model = compile(LAYOUTS[0].model, "after layer 1 keep above 22 by norm", {
      exposeIndices: true,
      kvState: true,
    }).model;
    const valid = (batch: number): Feeds => ({
      "past_key_values.stage0.prunec_valid": { type: "float32", dims: [batch, 0], data: new Float32Array(0) },
    });
    const padded = [PROMPTS[1]!, PROMPTS[0]!, [1, 33, 34, 35, 36, 9, 10, 11]];
    const p = promptBatch(padded, "left");
    const got = await recorded(model, p, "cpu", false, [], valid(3));
    const keptRows = (out: Outputs) => {
      const t = out["prunec.stage0.indices"]!;
      return rows(t.data as BigInt64Array, t.dims);
    };
    const batchRows = keptRows(got.calls[0]!);
    const counts: number[] = [];
    for (const [b, prompt] of padded.entries()) {
      const alone = await recorded(model, promptBatch([prompt], "left"), "cpu", false, [], valid(1));
      const own = keptRows(alone.calls[0]!)[0]!.filter((j) => j >= 0);
      counts.push(own.length);
      const offset = p.offsets[b]!;
      expect([b, batchRows[b]!.filter((j) => j >= 0).map((j) => j - offset)]).toEqual([b, own]);
      expect([b, got.tokens[b]]).toEqual([b, alone.tokens[0]]);
      const error = Math.max(
        ...got.steps.map((l, s) =>
          maxAbsDiff(l.subarray(b * WIDE.vocab, (b + 1) * WIDE.vocab), alone.steps[s]!.subarray(0, WIDE.vocab)),
        ),
      );
      expect(error).toBeLessThanOrEqual(TOL);
    }
    expect(counts).toEqual([8, 11, 5]); // per example: the batch pads two of them, the last with host pads
  });

  it("refuses a selection without scores above a cache, and a prefill eviction below per-example padding", () => {
    const set = "tokens image = input image_mask\n";
    // A prefill eviction below a stage that pads per example would drop that padding's mask
    // (measured before this refusal: the batch's prefill logits moved by 2.6 at 'keep kv 100%').
    expect(
      firstErrorLine(
        LAYOUTS[0].model,
        `${set}after layer 0 drop 50% of image by last-token-attn\nin layer 2 keep kv 50% by knorm`,
      ),
    ).toBe(
      "s.prune:3:1: error: 'keep kv' on layer 2's cache: a stream stage above leaves masked, padding or merged rows in the cache, and the eviction's rewrite of the layer's attention would drop their mask; not supported yet",
    );
    expect(firstErrorLine(LAYOUTS[0].model, "after layer 1 keep 50% by diversity")).toBe(
      "s.prune:1:27: error: diversity selects tokens without scores, and above a KV cache a stage without 'of SET' must rank the host's left padding below every real token (the cached layers below then read their pads from the host mask's last columns)",
    );
  });
});

describe("during decode on onnxruntime-web's WASM backend", () => {
  it("the same kept slots at every call and the same 64 tokens as onnxruntime-node (GQA decoder, a2sf; batch 1 and the left-padded batch of 3)", async () => {
    const model = compile(LAYOUTS[0].model, CASES[1]!.spec, { exposeIndices: true }).model;
    for (const prompts of [[PROMPTS[1]!], [PROMPTS[1]!, PROMPTS[0]!, [1, 33, 34, 35, 36, 9, 10, 11]]]) {
      const p = promptBatch(prompts, "left");
      const cpu = await recorded(model, p, "cpu");
      const wasm = await recorded(model, p, "wasm");
      expect(wasm.tokens).toEqual(cpu.tokens);
      wasm.calls.forEach((out, call) => {
        for (let l = 0; l < WIDE.layers; l++)
          for (let b = 0; b < p.batch; b++)
            expect([call, l, b, keptSlots(out, l, b)]).toEqual([call, l, b, keptSlots(cpu.calls[call]!, l, b)]);
      });
    }
  });
});

describe("during decode: what the planner refuses, at the line:column", () => {
  const message = (spec: string): string => firstErrorLine(LAYOUTS[0].model, spec);
  it("a press without a decode form, a percentage, a drop, recent over the budget, a second stage on the layer, a stream stage above", () => {
    expect(message("during decode keep kv 8 tokens by snapkv")).toBe(
      "s.prune:1:35: error: snapkv scores the cache once, at the prefill; 'during decode' takes a press with a rule for every call: h2o, a2sf or streaming",
    );
    expect(message("during decode keep kv 50% by h2o")).toBe(
      "s.prune:1:23: error: a decode-time budget is a number of entries each KV head keeps: write 'during decode keep kv K tokens'",
    );
    expect(message("during decode drop kv 8 tokens by h2o")).toBe(
      "s.prune:1:23: error: a decode-time budget is a number of entries each KV head keeps: write 'during decode keep kv K tokens'",
    );
    expect(message("during decode keep kv 8 tokens by a2sf(recent: 9)")).toBe(
      "s.prune:1:35: error: recent (9) is more than the budget (8): the recent entries alone would not fit",
    );
    expect(
      message(
        "in layer 1 during decode keep kv 8 tokens by h2o\nin layers 0..1 during decode keep kv 9 tokens by a2sf(recent: 2)",
      ),
    ).toBe(
      "s.prune:2:1: error: layer 1's cache already has a KV stage (line 1); a layer takes one 'during decode' stage",
    );
    expect(message("keep kv 50% by knorm\nin layer 1 during decode keep kv 8 tokens by streaming(sinks: 2)")).toBe(
      "s.prune:2:1: error: layer 1's cache already has a KV stage (line 1); streaming keeps positions, not scores; only h2o and a2sf compose with a prefill stage",
    );
    expect(message("keep kv 50% by pyramidkv\nin layer 1 during decode keep kv 8 tokens by h2o")).toBe(
      "s.prune:2:1: error: layer 1's cache already has a KV stage (line 1); pyramidkv spreads its own budget over the layers, which does not compose with 'during decode' yet",
    );
    expect(message("keep kv 50% by knorm\nin layer 1 during decode keep kv 8 tokens by h2o")).toBe("compiled");
    expect(message("keep kv 50% by spatten")).toBe(
      "s.prune:1:16: error: spatten: its KV form keeps one set of entries for all its layers at every call, with the scores carried between calls: write 'during decode keep kv K tokens by spatten'",
    );
    expect(message("keep kv 50% by knorm\nduring decode keep kv 8 tokens by spatten")).toBe(
      "s.prune:2:15: error: layer 0's cache already has a KV stage (line 1); spatten keeps one set for all its layers; only h2o and a2sf compose with a prefill stage",
    );
    expect(message("after layer 0 keep 50% by last-token-attn\nin layer 2 during decode keep kv 8 tokens by h2o")).toBe(
      "compiled",
    );
    expect(
      message(
        "after layer 0 keep 50% by last-token-attn\nin layer 2 during decode keep kv 8 tokens by streaming(sinks: 2)",
      ),
    ).toBe(
      "s.prune:2:12: error: 'during decode' on layer 2's cache: streaming reads positions or one set for all layers, which a stream stage above makes differ per layer; below stream stages only h2o and a2sf evict while decoding",
    );
    expect(
      message(
        "tokens image = input image_mask\nafter layer 0 drop 50% of image by last-token-attn\nin layer 2 during decode keep kv 8 tokens by h2o",
      ),
    ).toBe(
      "s.prune:3:12: error: 'during decode' on layer 2's cache: a stream stage above leaves masked, padding or merged rows in the cache; decode-time eviction below it is not supported yet",
    );
  });
});
