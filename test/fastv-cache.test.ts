/**
 * FastV with a KV cache ("prune once at prefill"): `tokens image = input image_mask` +
 * `after layer 1 drop 50% of image by last-token-attn` compiled into the merged GroupQueryAttention
 * decoder (test/support/decoder.ts). Prefill runs layers 0–1 on every token, scores the image tokens
 * with layer 1's attention of the last prompt token (mean over heads), drops the 8 lowest of 16 and
 * runs layers 2–3 on the kept tokens; their caches (present.2/3.*) hold only the kept tokens, at
 * their original rotary positions. Decode steps feed each layer's present back as its past, whatever
 * its length, with the caller's dense attention mask and position ids.
 *
 * The float64 reference (`generatePruned`, test/reference/decoder.ts) is checked on its own first:
 * at 0% it is the dense reference; its kept set and prefill logits are those of prunec's compiled
 * PLAIN decoder (an independent implementation, no cache); its decode steps are the dense plain
 * decoder's on prompt + generated tokens with the dropped image keys masked from layer 2 on (what a
 * pruned cache means). The generation harness (`generateGreedyWithImageMask`) is checked on the
 * dense gqa model with an (unused) image_mask input. Then end to end on the compiled gqa model.
 */
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { shallowCopy } from "../src/ir/copy.js";
import { valueInfo } from "../src/ir/value-info.js";
import { runNode, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import {
  buildDecoder,
  generateGreedyWithImageMask,
  openDecoderSession,
  generateWithImageMask,
  imageMaskFeed,
  imagePrompt,
  prefillFeeds,
  promptBatch,
  DECODER,
  IMAGE_TOKENS,
  type Backend,
  type PromptBatch,
} from "./support/decoder.js";
import { maskKeys } from "./support/dense-edits.js";
import { rows } from "./support/model-edit.js";
import { ReferenceDecoder, generatePruned, weightsFromModel, type FastvOptions } from "./reference/decoder.js";

const TOL = 1e-4;
const STEPS = 16;
const V = DECODER.vocab;
const SPEC = "tokens image = input image_mask\nafter layer 1 drop 50% of image by last-token-attn";
const FASTV: FastvOptions = { afterLayer: 1, dropPercent: 50 };
const DROPPED = 8; // round-half-up(50% · 16)

const plain = buildDecoder({ attention: "plain" });
const gqa = buildDecoder({ attention: "gqa" });
const weights = weightsFromModel(gqa, DECODER);
const reference = new ReferenceDecoder(weights, DECODER);

/** Three prompts of different lengths, each with its 16-token image span (as test/decoder-model.test.ts). */
const PROMPTS = [
  imagePrompt([5, 6, 7], [9, 10, 11, 12]),
  imagePrompt([20], [30, 31]),
  imagePrompt([3, 4, 5, 6, 7, 8, 9], [40, 41, 42, 43, 44, 45]),
];
const pruned = PROMPTS.map((p) => reference.generatePruned(p.tokens, p.image, FASTV, STEPS));
const dense = PROMPTS.map((p) => reference.generate(p.tokens, STEPS));

const single = (i: number): PromptBatch => promptBatch([PROMPTS[i]!.tokens], "left", [PROMPTS[i]!.image]);
const plainFeeds = (p: PromptBatch): Feeds => ({ ...prefillFeeds(p, "plain"), ...imageMaskFeed(p) });

/** Row `row` of [batch, rows, vocab] logits, example `b`. */
function logitsRow(data: Float32Array, dims: readonly number[], b: number, row: number): Float32Array {
  const n = dims[1]!;
  return data.subarray((b * n + row) * V, (b * n + row + 1) * V);
}

describe("FastV reference with a KV cache, on its own", () => {
  it("at 0% it is the dense reference: same kept set (all), caches, logits and tokens", () => {
    PROMPTS.forEach((p, i) => {
      const zero = generatePruned(weights, p.tokens, p.image, { afterLayer: 1, dropPercent: 0 }, STEPS);
      const n = p.tokens.length;
      expect(zero.kept).toEqual([...Array(n).keys()]);
      expect(zero.cacheLengths).toEqual(Array(DECODER.layers).fill(n));
      expect(zero.tokens).toEqual(dense[i]!.tokens);
      expect(maxAbsDiff(zero.prefillLast, dense[i]!.prefill.at(-1)!)).toBeLessThanOrEqual(1e-9);
      expect(zero.steps).toHaveLength(STEPS - 1);
      zero.steps.forEach((l, s) => expect(maxAbsDiff(l, dense[i]!.steps[s]!)).toBeLessThanOrEqual(1e-9));
    });
  });

  it("at 50%: every text token and 8 of 16 image tokens kept, layers 2–3 cache only those, and pruning changes the logits", () => {
    PROMPTS.forEach((p, i) => {
      const r = pruned[i]!;
      const n = p.tokens.length;
      expect(r.kept).toHaveLength(n - DROPPED);
      expect(p.image.every((isImage, j) => isImage || r.kept.includes(j))).toBe(true);
      expect(r.kept.filter((j) => p.image[j])).toHaveLength(IMAGE_TOKENS - DROPPED);
      expect(r.cacheLengths).toEqual([n, n, n - DROPPED, n - DROPPED]);
      // The kept image tokens are the best-scoring ones (scores in image order).
      const imagePositions = p.image.flatMap((isImage, j) => (isImage ? [j] : []));
      const keptScores = r.imageScores.filter((_, k) => r.kept.includes(imagePositions[k]!));
      const droppedScores = r.imageScores.filter((_, k) => !r.kept.includes(imagePositions[k]!));
      expect(droppedScores).toHaveLength(DROPPED);
      expect(Math.min(...keptScores)).toBeGreaterThanOrEqual(Math.max(...droppedScores));
      expect(maxAbsDiff(r.prefillLast, dense[i]!.prefill.at(-1)!)).toBeGreaterThan(1e-3);
      expect(r.tokens).toHaveLength(STEPS);
    });
  });

  it("kept set and prefill last logits = prunec's compiled PLAIN decoder (batch 1, CPU, ≤ 1e-4)", async () => {
    const compiled = compile(plain, SPEC, { exposeIndices: true }).model;
    for (const [i, r] of pruned.entries()) {
      const p = single(i);
      const out = await runNode(compiled, plainFeeds(p), ["prunec.stage0.indices", "logits"]);
      const kept = rows(
        out["prunec.stage0.indices"]!.data as BigInt64Array,
        out["prunec.stage0.indices"]!.dims,
      )[0]!.filter((j) => j >= 0);
      expect(kept).toEqual(r.kept);
      const logits = out["logits"]!;
      expect(logits.dims).toEqual([1, r.kept.length, V]);
      expect(
        maxAbsDiff(logitsRow(logits.data as Float32Array, logits.dims, 0, r.kept.length - 1), r.prefillLast),
      ).toBeLessThanOrEqual(TOL);
    }
  });

  it("decode steps = the dense plain decoder on prompt + generated tokens with the dropped image keys masked from layer 2 on (CPU, ≤ 1e-4)", async () => {
    for (const [i, r] of pruned.entries()) {
      const prompt = PROMPTS[i]!.tokens;
      const n = prompt.length;
      // The last generated token is never fed back: the sequence is the prompt and the first STEPS − 1 tokens.
      const seq = [...prompt, ...r.tokens.slice(0, STEPS - 1)];
      const visible = [...r.kept, ...Array.from({ length: STEPS - 1 }, (_, s) => n + s)];
      const p = promptBatch([seq]);
      const masked = (
        await runNode(maskKeys(plain, FASTV.afterLayer + 1, visible, seq.length), prefillFeeds(p, "plain"), ["logits"])
      )["logits"]!;
      const data = masked.data as Float32Array;
      expect(maxAbsDiff(logitsRow(data, masked.dims, 0, n - 1), r.prefillLast)).toBeLessThanOrEqual(TOL);
      r.steps.forEach((l, s) => expect(maxAbsDiff(logitsRow(data, masked.dims, 0, n + s), l)).toBeLessThanOrEqual(TOL));
    }
  });
});

/** The dense gqa model with an extra bool input `image_mask` [batch, sequence] that nothing reads. */
function withUnusedImageMask(model: Uint8Array): Uint8Array {
  const m = decodeModel(model);
  const g = m.graph!;
  return encodeModel(
    shallowCopy(m, {
      graph: shallowCopy(g, { input: [...g.input, valueInfo("image_mask", 9, ["batch_size", "sequence_length"])] }),
    }),
  );
}

describe("generateGreedyWithImageMask (the harness) on the dense gqa decoder", () => {
  const model = withUnusedImageMask(gqa);
  it("cpu: batch 1 and left-padded batch 3 give the dense reference's tokens and logits", async () => {
    for (const group of [[0], [1], [2], [0, 1, 2]]) {
      const p = promptBatch(
        group.map((i) => PROMPTS[i]!.tokens),
        "left",
        group.map((i) => PROMPTS[i]!.image),
      );
      const got = await generateWithImageMask(model, "cpu", p, STEPS);
      expect(got.presentLengths).toEqual(Array(DECODER.layers).fill(p.seq));
      group.forEach((i, b) => {
        expect(got.lastRows[b]).toBe(p.seq - 1);
        expect(
          maxAbsDiff(logitsRow(got.prefill, [p.batch, p.seq], b, p.seq - 1), dense[i]!.prefill.at(-1)!),
        ).toBeLessThanOrEqual(TOL);
        expect(got.tokens[b]).toEqual(dense[i]!.tokens);
        got.steps.forEach((l, s) =>
          expect(maxAbsDiff(l.subarray(b * V, (b + 1) * V), dense[i]!.steps[s]!)).toBeLessThanOrEqual(TOL),
        );
      });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// End to end on the compiled gqa decoder (prunec's GroupQueryAttention recompute and the per-layer
// seqlens_k / total_sequence_length / attention_bias rewrite of the pruned layers).

const compiledGqa = compile(gqa, SPEC, { exposeIndices: true }).model;
const e2e = (name: string, fn: (model: Uint8Array) => Promise<void>): void => {
  it(name, () => fn(compiledGqa));
};

describe("FastV compiled into the GroupQueryAttention decoder with a KV cache", () => {
  e2e(
    "cpu: prefill: kept set = the reference's, last logits ≤ 1e-4, present lengths N for layers 0–1 and the kept count for 2–3",
    async (model) => {
      for (const [i, r] of pruned.entries()) {
        const p = single(i);
        const got = await generateWithImageMask(model, "cpu", p, 1);
        const idx = got.prefillOutputs["prunec.stage0.indices"]!;
        expect(rows(idx.data as BigInt64Array, idx.dims)[0]!.filter((j) => j >= 0)).toEqual(r.kept);
        const logits = got.prefillOutputs["logits"]!;
        expect(maxAbsDiff(logitsRow(got.prefill, logits.dims, 0, got.lastRows[0]!), r.prefillLast)).toBeLessThanOrEqual(
          TOL,
        );
        for (let l = 0; l < DECODER.layers; l++) {
          const want = l <= FASTV.afterLayer ? p.seq : r.kept.length;
          for (const kv of ["key", "value"])
            expect(got.prefillOutputs[`present.${l}.${kv}`]!.dims).toEqual([
              1,
              DECODER.kvHeads,
              want,
              DECODER.headSize,
            ]);
        }
      }
    },
  );

  for (const backend of ["cpu", "wasm"] as Backend[]) {
    e2e(
      `${backend}: greedy generation of ${STEPS} tokens, batch 1, equals the pruned reference token for token (step logits ≤ 1e-4)`,
      async (model) => {
        for (const [i, r] of pruned.entries()) {
          const got = await generateWithImageMask(model, backend, single(i), STEPS);
          expect(got.tokens[0]).toEqual(r.tokens);
          got.steps.forEach((l, s) => expect(maxAbsDiff(l, r.steps[s]!)).toBeLessThanOrEqual(TOL));
        }
      },
    );
  }

  e2e(`cpu: left-padded batch 3 gives each example its batch-1 tokens (step logits ≤ 1e-4)`, async (model) => {
    const p = promptBatch(
      PROMPTS.map((x) => x.tokens),
      "left",
      PROMPTS.map((x) => x.image),
    );
    expect(new Set(p.lengths).size).toBe(3);
    const got = await generateWithImageMask(model, "cpu", p, STEPS);
    const idx = got.prefillOutputs["prunec.stage0.indices"]!;
    const kept = rows(idx.data as BigInt64Array, idx.dims).map((row) => row.filter((j) => j >= 0));
    pruned.forEach((r, b) => {
      // Example b's kept set is the batch-1 one shifted by its left padding (pads are not image tokens: kept).
      const offset = p.offsets[b]!;
      expect(kept[b]).toEqual([...Array(offset).keys(), ...r.kept.map((j) => j + offset)]);
      expect(
        maxAbsDiff(logitsRow(got.prefill, got.prefillOutputs["logits"]!.dims, b, got.lastRows[b]!), r.prefillLast),
      ).toBeLessThanOrEqual(TOL);
      expect(got.tokens[b]).toEqual(r.tokens);
      got.steps.forEach((l, s) =>
        expect(maxAbsDiff(l.subarray(b * V, (b + 1) * V), r.steps[s]!)).toBeLessThanOrEqual(TOL),
      );
    });
    expect(got.presentLengths.slice(0, FASTV.afterLayer + 1)).toEqual([p.seq, p.seq]);
    expect(got.presentLengths.slice(FASTV.afterLayer + 1)).toEqual(
      [1, 1].map(() => Math.max(...kept.map((k) => k.length))),
    );
  });
});

/**
 * Counts that differ per example on a cached decoder: FastV drops 50% of each example's image
 * tokens, and the three prompts mark 16, 8 and 4 of their image-span tokens as image, so they drop
 * 8, 4 and 2 and the batch pads the first two. The padding (extra tokens after the kept ones, masked
 * as keys) stays in the later layers' caches, and the host's mask cannot say where. With --kv-state
 * the stage carries each cache slot's validity (`past_key_values.stage0.prunec_valid` →
 * `present.stage0.prunec_valid`) and masks the padding at every call: every example then generates
 * exactly what it does alone. Without it, decode steps attend to the padding (documented).
 */
/** Greedy generation (CPU) feeding the first call an empty validity past for each of `stages` --kv-state stages. */
async function generateWithState(model: Uint8Array, p: PromptBatch, stages: number) {
  const session = await openDecoderSession(model, "cpu");
  const empty: Feeds = {};
  for (let stage = 0; stage < stages; stage++)
    empty[`past_key_values.stage${stage}.prunec_valid`] = {
      type: "float32",
      dims: [p.batch, 0],
      data: new Float32Array(0),
    };
  let first = true;
  try {
    return await generateGreedyWithImageMask(
      async (f) => {
        const out = await session.run({ ...(first ? empty : {}), ...f });
        first = false;
        return out;
      },
      p,
      STEPS,
    );
  } finally {
    await session.release();
  }
}

describe("per-example counts on a cached decoder: --kv-state keeps the padding masked at decode steps", () => {
  const UNEVEN = [16, 8, 4].map((images, i) => {
    const p = PROMPTS[i]!;
    let seen = 0;
    return { tokens: p.tokens, image: p.image.map((v) => v && seen++ < images) };
  });
  const batch = promptBatch(
    UNEVEN.map((x) => x.tokens),
    "left",
    UNEVEN.map((x) => x.image),
  );
  const alone = UNEVEN.map((x) => reference.generatePruned(x.tokens, x.image, FASTV, STEPS));
  const generate = (kvState: boolean) =>
    generateWithState(compile(gqa, SPEC, { exposeIndices: true, kvState }).model, batch, kvState ? 1 : 0);
  const stepError = (got: Awaited<ReturnType<typeof generate>>, b: number) =>
    Math.max(...got.steps.map((l, s) => maxAbsDiff(l.subarray(b * V, (b + 1) * V), alone[b]!.steps[s]!)));

  it("with --kv-state, a left-padded batch of 3 dropping 8, 4 and 2 image tokens: each example's kept set, tokens and step logits equal its batch-1 reference", async () => {
    const got = await generate(true);
    const idx = got.prefillOutputs["prunec.stage0.indices"]!;
    const kept = rows(idx.data as BigInt64Array, idx.dims).map((row) => row.filter((j) => j >= 0));
    alone.forEach((r, b) => {
      const offset = batch.offsets[b]!;
      // Pads are not image tokens: kept, then the example's own kept set.
      expect(kept[b]).toEqual([...Array(offset).keys(), ...r.kept.map((j) => j + offset)]);
      expect([b, got.tokens[b]]).toEqual([b, r.tokens]);
      expect(stepError(got, b)).toBeLessThanOrEqual(TOL);
    });
  });

  /**
   * Two per-example stages (after layers 0 and 1): each pads anew, and its padding is masked down
   * to the next stage only. Without --kv-state the batch runs (it once failed at the first decode
   * step: the first stage's padding bias reached layer 3); with it every example keeps, generates
   * and scores what its batch-1 run does.
   */
  it("two per-example stages: the batch runs without --kv-state, and with it each example equals its own batch-1 run", async () => {
    const spec =
      "tokens image = input image_mask\nafter layer 0 drop 50% of image by last-token-attn\nafter layer 1 drop 50% of image by last-token-attn";
    const run = (kvState: boolean, p: PromptBatch) =>
      generateWithState(compile(gqa, spec, { kvState }).model, p, kvState ? 2 : 0);
    expect((await run(false, batch)).tokens).toHaveLength(3);
    const got = await run(true, batch);
    for (const [b, x] of UNEVEN.entries()) {
      const alone = await run(true, promptBatch([x.tokens], "left", [x.image]));
      expect([b, got.tokens[b]]).toEqual([b, alone.tokens[0]]);
      const error = Math.max(
        ...got.steps.map((l, s) => maxAbsDiff(l.subarray(b * V, (b + 1) * V), alone.steps[s]!.subarray(0, V))),
      );
      expect(error).toBeLessThanOrEqual(TOL);
    }
  });

  it("without --kv-state the padded examples' decode steps attend to their padding (the default lowering, documented)", async () => {
    const got = await generate(false);
    expect(stepError(got, 2)).toBeLessThanOrEqual(TOL); // the largest count: not padded
    expect(Math.max(stepError(got, 0), stepError(got, 1))).toBeGreaterThan(1e-3);
  });
});
