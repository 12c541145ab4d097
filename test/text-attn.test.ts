/**
 * SparseVLM's `text-attn` on image tokens of the project's small decoder (test/support/decoder.ts):
 * raters chosen on the input embeddings (text after the image whose mean softmax similarity to the
 * image tokens is above the text mean), scored by the layer's attention from the raters to each
 * image token (mean over raters and heads). Kept sets are compared with test/reference/sparsevlm.ts
 * fed the dense model's probabilities and the embedding rows of the prompt's token ids.
 */
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import {
  buildDecoder,
  decoderWeights,
  imageMaskFeed,
  imagePrompt,
  prefillFeeds,
  promptBatch,
  DECODER,
  type PromptBatch,
} from "./support/decoder.js";
import { softmaxOutputs } from "./support/stage-tensors.js";
import { withOutputs, rows } from "./support/model-edit.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { keepCount, topKPositions } from "./reference/cls-attn.js";
import { sparsevlmRaters, textAttnScores } from "./reference/sparsevlm.js";

const plain = buildDecoder({ attention: "plain" });
const gqa = buildDecoder({ attention: "gqa" });
const weights = decoderWeights(DECODER);
const SPEC = "tokens image = input image_mask\nafter layer 1 drop 50% of image by text-attn";
// Different lengths (left padding at batch 3); the second has one instruction token (no rater
// passes the strict threshold: every text token rates).
const prompts = [
  imagePrompt([3, 4, 5], [20, 21, 22, 23, 40, 41]),
  imagePrompt([3], [24]),
  imagePrompt([6, 7, 8, 9, 10], [26, 27, 28, 29, 30, 31, 44]),
];

function feedsOf(p: PromptBatch, attention: "plain" | "gqa" = "plain"): Feeds {
  return { ...prefillFeeds(p, attention), ...imageMaskFeed(p) };
}

/** [h][q][k] of example b from a [B,H,N,N] tensor. */
function exampleProbs(data: Float32Array, dims: number[], b: number): number[][][] {
  const [, heads, n, m] = dims as [number, number, number, number];
  return Array.from({ length: heads }, (_, h) =>
    Array.from({ length: n }, (_, q) =>
      Array.from(data.subarray(((b * heads + h) * n + q) * m, ((b * heads + h) * n + q + 1) * m)),
    ),
  );
}

function embeddings(p: PromptBatch, b: number): number[][] {
  const d = DECODER.hidden;
  return Array.from({ length: p.seq }, (_, j) => {
    const id = Number(p.inputIds[b * p.seq + j]!);
    return Array.from(weights.embed.subarray(id * d, (id + 1) * d));
  });
}

/** Reference kept positions per example: every non-image token, and the image tokens the raters attend to most. */
function referenceKeep(
  _p: PromptBatch,
  probs: { data: unknown; dims: number[] },
  image: boolean[][],
  raterSets: number[][],
  percent = 50,
): number[][] {
  return image.map((isImage, b) => {
    const scores = textAttnScores(exampleProbs(probs.data as Float32Array, probs.dims, b), raterSets[b]!);
    const imagePositions = isImage.flatMap((v, j) => (v ? [j] : []));
    const drop = keepCount(percent, imagePositions.length);
    const kept = topKPositions(
      imagePositions.map((j) => scores[j]!),
      imagePositions.length - drop,
      0,
    ).map((i) => imagePositions[i]!);
    return [...isImage.keys()].filter((j) => !isImage[j] || kept.includes(j));
  });
}

async function keptOf(
  run: typeof runNode,
  model: Uint8Array,
  f: Feeds,
  name = "prunec.stage0.indices",
): Promise<number[][]> {
  const out = await run(model, f, [name]);
  return rows(out[name]!.data as BigInt64Array, out[name]!.dims).map((r) => r.filter((i) => i >= 0));
}

describe("text-attn (SparseVLM) of image in a decoder", () => {
  const layer1 = softmaxOutputs(plain)[1]!;
  const compiled = compile(plain, SPEC, { exposeIndices: true });

  it("the reference picks strict raters where the instruction has several tokens, all text for a single one", () => {
    const p = promptBatch(
      prompts.map((x) => x.tokens),
      "left",
      prompts.map((x) => x.image),
    );
    const r = p.imageMask.map((image, b) => sparsevlmRaters(embeddings(p, b), image));
    expect(r.map((x) => x.fallback)).toEqual([false, true, false]);
    expect(r[0]!.raters.length).toBeLessThan(6);
    expect(r[1]!.raters).toEqual([p.seq - 1]);
  });

  it("keeps every text token and the reference's image tokens, batch 1 and left-padded batch 3, CPU and WASM", async () => {
    expect(compiled.report.stages[0]!.tokensOut).toBe("0+others+drop(drop 50%) of image");
    for (const group of [[0], [1], [0, 1, 2]]) {
      const p = promptBatch(
        group.map((i) => prompts[i]!.tokens),
        "left",
        group.map((i) => prompts[i]!.image),
      );
      const probs = (await runNode(withOutputs(plain, [layer1]), feedsOf(p), [layer1]))[layer1]!;
      const raters = p.imageMask.map((image, b) => sparsevlmRaters(embeddings(p, b), image).raters);
      const expected = referenceKeep(p, probs, p.imageMask, raters);
      for (const run of [runNode, runWasm]) expect(await keptOf(run, compiled.model, feedsOf(p))).toEqual(expected);
    }
  });

  it("the raters matter: scoring with every text token instead changes the kept set of the first prompt", async () => {
    const p = promptBatch([prompts[0]!.tokens], "left", [prompts[0]!.image]);
    const probs = (await runNode(withOutputs(plain, [layer1]), feedsOf(p), [layer1]))[layer1]!;
    const strict = referenceKeep(p, probs, p.imageMask, [sparsevlmRaters(embeddings(p, 0), p.imageMask[0]!).raters]);
    const allText = referenceKeep(p, probs, p.imageMask, [
      [...Array(p.seq).keys()].filter((j) => j > p.imageMask[0]!.lastIndexOf(true)),
    ]);
    expect(strict).not.toEqual(allText);
    expect(await keptOf(runNode, compiled.model, feedsOf(p))).toEqual(strict);
  });

  it("two stages (layers 1 and 2): the second scores the kept tokens with the same raters; batch 3 equals batch 1 per example", async () => {
    const spec = `${SPEC}\nafter layer 2 drop 50% of image by text-attn`;
    const model = compile(plain, spec, { exposeIndices: true }).model;
    const p = promptBatch([prompts[0]!.tokens], "left", [prompts[0]!.image]);
    // Reference for stage 1 from the compiled model's own layer-2 probabilities over the kept tokens.
    const layer2 = softmaxOutputs(model).filter((n) => !n.startsWith("prunec/"))[2]!;
    const out = await runNode(withOutputs(model, [layer2]), feedsOf(p), [
      layer2,
      "prunec.stage0.indices",
      "prunec.stage1.indices",
    ]);
    const kept0 = Array.from(out["prunec.stage0.indices"]!.data as BigInt64Array, Number);
    const image1 = kept0.map((j) => p.imageMask[0]![j]!);
    const raters1 = sparsevlmRaters(embeddings(p, 0), p.imageMask[0]!).raters.map((r) => kept0.indexOf(r));
    expect(raters1.every((r) => r >= 0)).toBe(true);
    const expected1 = referenceKeep(p, out[layer2]!, [image1], [raters1]);
    expect([Array.from(out["prunec.stage1.indices"]!.data as BigInt64Array, Number)]).toEqual(expected1);

    // The second example marks only 10 image tokens: stage 0 keeps fewer of them, so the batch
    // pads it (repeating dropped image tokens, masked out of layer 2's keys).
    const images = prompts.map((x, i) => (i === 1 ? x.image.map((v, j) => v && j < 2 + 10) : x.image));
    const p3 = promptBatch(
      prompts.map((x) => x.tokens),
      "left",
      images,
    );
    const out3 = await runNode(model, feedsOf(p3), ["prunec.stage0.indices", "prunec.stage1.indices"]);
    const raw = (name: string, o: typeof out3) => rows(o[name]!.data as BigInt64Array, o[name]!.dims);
    // Dense positions each example keeps after both stages (stage 1 indexes stage 0's output, padding -1).
    const composed = (o: typeof out3) => {
      const s0 = raw("prunec.stage0.indices", o);
      return raw("prunec.stage1.indices", o).map((r, b) => r.filter((k) => k >= 0).map((k) => s0[b]![k]!));
    };
    expect(new Set(raw("prunec.stage0.indices", out3).map((r) => r.filter((j) => j >= 0).length)).size).toBeGreaterThan(
      1,
    );
    const both = composed(out3);
    for (let i = 0; i < 3; i++) {
      const alone = promptBatch([prompts[i]!.tokens], "left", [images[i]!]);
      const a = composed(await runNode(model, feedsOf(alone), ["prunec.stage0.indices", "prunec.stage1.indices"]))[0]!;
      expect(both[i]!.every((j) => j >= 0)).toBe(true);
      expect(both[i]!.filter((j) => j >= p3.offsets[i]!).map((j) => j - p3.offsets[i]!)).toEqual(a);
    }
  });

  it("behind GroupQueryAttention (recomputed probabilities): the same kept sets, batch 1 and left-padded batch 3", async () => {
    const model = compile(gqa, SPEC, { exposeIndices: true }).model;
    for (const group of [[0], [0, 1, 2]]) {
      const p = promptBatch(
        group.map((i) => prompts[i]!.tokens),
        "left",
        group.map((i) => prompts[i]!.image),
      );
      const probs = (await runNode(withOutputs(plain, [layer1]), feedsOf(p), [layer1]))[layer1]!;
      const raters = p.imageMask.map((image, b) => sparsevlmRaters(embeddings(p, b), image).raters);
      const expected = referenceKeep(p, probs, p.imageMask, raters);
      for (const run of [runNode, runWasm]) expect(await keptOf(run, model, feedsOf(p, "gqa"))).toEqual(expected);
    }
  });

  it("needs its token set: a spec without 'tokens image' is rejected before writing", () => {
    expect(() => compile(plain, "after layer 1 drop 50% of image by text-attn", { specName: "f.prune" })).toThrow(
      "f.prune:1:27: error: token set 'image' is not defined",
    );
  });

  it("needs 'of image': a stage over all tokens is rejected", () => {
    expect(() =>
      compile(plain, "tokens image = input image_mask\nafter layer 1 drop 50% by text-attn", { specName: "f.prune" }),
    ).toThrow("use it as 'drop P% of image by text-attn'");
  });
});
