/**
 * Pruning inside a language model, first step (issue 7): FastV's `last-token-attn` on image tokens
 * of the project's small LLaMA-style decoder (test/support/decoder.ts, MatMul + Softmax attention,
 * prefill without a cache). `tokens image = input image_mask` adds a boolean input; `of image`
 * restricts the amount to each example's image tokens and keeps every other token. Kept tokens keep
 * their rotary positions and their rows/columns of the causal+padding mask (carried side tensors).
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { compile } from "../src/compile.js";
import {
  buildDecoder,
  imageMaskFeed,
  imagePrompt,
  promptBatch,
  prefillFeeds,
  DECODER,
  type PromptBatch,
} from "./support/decoder.js";
import { maskKeys } from "./support/dense-edits.js";
import { lastRowAttention, softmaxOutputs } from "./support/stage-tensors.js";
import { withOutputs, rows } from "./support/model-edit.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { keepCount, topKPositions } from "./reference/cls-attn.js";
import { pagerankScores } from "./reference/attention-scores.js";
import { decodeModel } from "../src/onnx/io.js";

const plain = buildDecoder({ attention: "plain" });
const SPEC = "tokens image = input image_mask\nafter layer 1 drop 50% of image by last-token-attn";
const prompts = [
  imagePrompt([3, 4, 5], [20, 21, 22, 23]),
  imagePrompt([3], [24, 25]),
  imagePrompt([6, 7, 8, 9, 10], [26, 27, 28, 29, 30, 31]),
];

const feedsOf = (p: PromptBatch): Feeds => ({ ...prefillFeeds(p, "plain"), ...imageMaskFeed(p) });

/** FastV on plain arrays: drop round-half-up(50%·16) image tokens with the lowest last-row attention (mean over heads). */
function fastvKeep(probs: Float32Array, dims: number[], image: boolean[][]): number[][] {
  const n = dims[2]!;
  return image.map((isImage, b) => {
    const imagePositions = isImage.flatMap((v, j) => (v ? [j] : []));
    const scores = imagePositions.map(lastRowAttention(probs, dims, b));
    const drop = keepCount(50, imagePositions.length);
    const keptImage = topKPositions(scores, imagePositions.length - drop, 0).map((i) => imagePositions[i]!);
    return [...Array(n).keys()].filter((j) => !isImage[j] || keptImage.includes(j));
  });
}

describe("FastV (last-token-attn of image) in a decoder", () => {
  const layer1 = softmaxOutputs(plain)[1]!;

  it("keeps every text token and the reference's image tokens, batch 1 and left-padded batch 3, CPU and WASM", async () => {
    const compiled = compile(plain, SPEC, { exposeIndices: true });
    expect(compiled.report.stages[0]!.tokensOut).toBe("0+others+drop(drop 50%) of image");
    for (const group of [[0], [0, 1, 2]]) {
      const p = promptBatch(
        group.map((i) => prompts[i]!.tokens),
        "left",
        group.map((i) => prompts[i]!.image),
      );
      const f = feedsOf(p);
      const probs = (await runNode(withOutputs(plain, [layer1]), f, [layer1]))[layer1]!;
      const expected = fastvKeep(probs.data as Float32Array, probs.dims, p.imageMask);
      for (const run of [runNode, runWasm]) {
        const out = await run(compiled.model, f, ["prunec.stage0.indices", "prunec.stage0.counts"]);
        const kept = rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims).map(
          (r) => r.filter((i) => i >= 0),
        );
        expect(kept).toEqual(expected);
        expect(Array.from(out["prunec.stage0.counts"]!.data as BigInt64Array, Number)).toEqual(
          expected.map((e) => e.length),
        );
      }
    }
  });

  it("the last token's logits equal the dense decoder's with the dropped image keys masked from layer 2 on (positions and mask carried)", async () => {
    const p = promptBatch([prompts[0]!.tokens], "left", [prompts[0]!.image]);
    const f = feedsOf(p);
    const out = await runNode(compile(plain, SPEC, { exposeIndices: true }).model, f, [
      "prunec.stage0.indices",
      "logits",
    ]);
    const kept = Array.from(out["prunec.stage0.indices"]!.data as BigInt64Array, Number);
    const masked = maskKeys(plain, 2, kept, p.seq);
    const reference = (await runNode(masked, prefillFeeds(p, "plain"), ["logits"]))["logits"]!;
    const dense = (await runNode(plain, prefillFeeds(p, "plain"), ["logits"]))["logits"]!;
    const v = DECODER.vocab;
    const last = (o: { data: unknown; dims: number[] }) =>
      (o.data as Float32Array).subarray((o.dims[1]! - 1) * v, o.dims[1]! * v);
    expect(out["logits"]!.dims).toEqual([1, kept.length, v]);
    expect(maxAbsDiff(last(out["logits"]!), last(reference))).toBeLessThanOrEqual(1e-4);
    expect(maxAbsDiff(last(dense), last(reference))).toBeGreaterThan(1e-3); // dropping the tokens matters
  });

  it("at batch 3 (left padding) each example's last logits equal its batch-1 result", async () => {
    const compiled = compile(plain, SPEC).model;
    const p3 = promptBatch(
      prompts.map((x) => x.tokens),
      "left",
      prompts.map((x) => x.image),
    );
    const batch = (await runNode(compiled, feedsOf(p3), ["logits"]))["logits"]!;
    const v = DECODER.vocab;
    const k = batch.dims[1]!;
    for (let i = 0; i < 3; i++) {
      const alone = (
        await runNode(compiled, feedsOf(promptBatch([prompts[i]!.tokens], "left", [prompts[i]!.image])), ["logits"])
      )["logits"]!;
      const a = (batch.data as Float32Array).subarray((i * k + k - 1) * v, (i * k + k) * v);
      const b = (alone.data as Float32Array).subarray((alone.dims[1]! - 1) * v, alone.dims[1]! * v);
      expect(maxAbsDiff(a, b)).toBeLessThanOrEqual(1e-4);
    }
  });

  it("needs its token set: a spec without 'tokens image' is rejected before writing", () => {
    expect(() => compile(plain, "after layer 1 drop 50% of image by last-token-attn", { specName: "f.prune" })).toThrow(
      "f.prune:1:27: error: token set 'image' is not defined; declare it with 'tokens image = input NAME' (a boolean model input marking its positions)",
    );
  });
});

/**
 * Without `of image`: LazyLLM's prefill selection (methods.md §28) on a plain LLM. Every token
 * competes by the last row's mean attention, and the last token (the one the next is generated
 * from) is always kept, as LazyLLM's `imp[last] = +inf` keeps it; the drop count is prunec's
 * (round half up of 50% of the N positions, padding included).
 */
describe("last-token-attn without a set (LazyLLM's prefill selection): the last token is always kept", () => {
  const LAZY = "after layer 1 drop 50% by last-token-attn";
  const layer1 = softmaxOutputs(plain)[1]!;

  function lazyKeep(probs: Float32Array, dims: number[]): number[][] {
    const [batch, heads, n] = dims as [number, number, number, number];
    return Array.from({ length: batch }, (_, b) => {
      const scores = Array.from({ length: n - 1 }, (_, j) => {
        let s = 0;
        for (let h = 0; h < heads; h++) s += probs[((b * heads + h) * n + (n - 1)) * n + j]!;
        return s / heads;
      });
      const keep = n - keepCount(50, n);
      return [...topKPositions(scores, keep - 1, 0), n - 1].sort((a, z) => a - z);
    });
  }

  it("after layer 1 drop 50% by last-token-attn: the last token and the best of the others, batch 1 and left-padded batch 3, CPU and WASM", async () => {
    const compiled = compile(plain, LAZY, { exposeIndices: true });
    for (const group of [[0], [0, 1, 2]]) {
      const p = promptBatch(
        group.map((i) => prompts[i]!.tokens),
        "left",
      );
      const f = prefillFeeds(p, "plain");
      const probs = (await runNode(withOutputs(plain, [layer1]), f, [layer1]))[layer1]!;
      const expected = lazyKeep(probs.data as Float32Array, probs.dims);
      for (const run of [runNode, runWasm]) {
        const out = await run(compiled.model, f, ["prunec.stage0.indices"]);
        expect(rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims)).toEqual(
          expected,
        );
      }
    }
  });

  it("the last token's logits equal the dense decoder's with the dropped keys masked from layer 2 on", async () => {
    const p = promptBatch([prompts[2]!.tokens], "left");
    const f = prefillFeeds(p, "plain");
    const out = await runNode(compile(plain, LAZY, { exposeIndices: true }).model, f, [
      "prunec.stage0.indices",
      "logits",
    ]);
    const kept = Array.from(out["prunec.stage0.indices"]!.data as BigInt64Array, Number);
    expect(kept.at(-1)).toBe(p.seq - 1);
    const reference = (await runNode(maskKeys(plain, 2, kept, p.seq), f, ["logits"]))["logits"]!;
    const v = DECODER.vocab;
    const last = (o: { data: unknown; dims: number[] }) =>
      (o.data as Float32Array).subarray((o.dims[1]! - 1) * v, o.dims[1]! * v);
    expect(maxAbsDiff(last(out["logits"]!), last(reference))).toBeLessThanOrEqual(1e-4);
  });

  it("'mass' and 'above' need a set with it: the raised last token is not an attention mass", () => {
    expect(() => compile(plain, "after layer 1 keep mass 90% by last-token-attn", { specName: "l.prune" })).toThrow(
      "l.prune:1:20: error: 'mass' with last-token-attn needs 'of SET': without a set the last token is raised above every other (it is always kept), so the scores are no longer an attention mass",
    );
  });
});

describe("dropping a whole token set (ToDRE stage 2)", () => {
  it("after layer 2 drop 100% of image keeps exactly the text tokens", async () => {
    const compiled = compile(
      plain,
      "tokens image = input image_mask\nafter layer 2 drop 100% of image by last-token-attn",
      { exposeIndices: true },
    ).model;
    const p = promptBatch(
      prompts.map((x) => x.tokens),
      "left",
      prompts.map((x) => x.image),
    );
    const out = await runNode(compiled, feedsOf(p), ["prunec.stage0.indices"]);
    const kept = rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims).map(
      (r) => r.filter((i) => i >= 0),
    );
    expect(kept).toEqual(p.imageMask.map((row) => row.flatMap((isImage, j) => (isImage ? [] : [j]))));
  });
});

describe("AIM's weighted PageRank inside the decoder", () => {
  it("after layer 1 drop 50% of image by pagerank: the reference's image tokens (causal logits, batch 1, CPU and WASM)", async () => {
    const compiled = compile(plain, "tokens image = input image_mask\nafter layer 1 drop 50% of image by pagerank", {
      exposeIndices: true,
    }).model;
    const p = promptBatch([prompts[2]!.tokens], "left", [prompts[2]!.image]);
    const logitsName = decodeModel(plain).graph!.node.find((n) => n.output[0] === softmaxOutputs(plain)[1])!.input[0]!;
    const l = (await runNode(withOutputs(plain, [logitsName]), feedsOf(p), [logitsName]))[logitsName]!;
    const [, heads, n] = l.dims as [number, number, number, number];
    const perHead = Array.from({ length: heads }, (_, h) =>
      Array.from({ length: n }, (_, q) =>
        Array.from((l.data as Float32Array).subarray((h * n + q) * n, (h * n + q + 1) * n)),
      ),
    );
    const scores = pagerankScores(perHead, 5, 0.1, 0);
    const image = p.imageMask[0]!.flatMap((v, j) => (v ? [j] : []));
    const keptImage = topKPositions(
      image.map((j) => scores[j]!),
      image.length - keepCount(50, image.length),
      0,
    ).map((i) => image[i]!);
    const expected = [...Array(n).keys()].filter((j) => !p.imageMask[0]![j] || keptImage.includes(j));
    for (const run of [runNode, runWasm]) {
      const out = await run(compiled, feedsOf(p), ["prunec.stage0.indices"]);
      expect(Array.from(out["prunec.stage0.indices"]!.data as BigInt64Array, Number)).toEqual(expected);
    }
  });
});

describe("AIM's weighted PageRank inside the decoder, left-padded batch", () => {
  it("each example keeps its batch-1 set (padding query rows, all keys masked, have no transitions), CPU and WASM", async () => {
    const compiled = compile(plain, "tokens image = input image_mask\nafter layer 1 drop 50% of image by pagerank", {
      exposeIndices: true,
    }).model;
    const batch = promptBatch(
      prompts.map((x) => x.tokens),
      "left",
      prompts.map((x) => x.image),
    );
    for (const run of [runNode, runWasm]) {
      const out = await run(compiled, feedsOf(batch), ["prunec.stage0.indices"]);
      const kept = rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims).map(
        (r) => r.filter((i) => i >= 0),
      );
      for (const [b, prompt] of prompts.entries()) {
        const one = await run(compiled, feedsOf(promptBatch([prompt.tokens], "left", [prompt.image])), [
          "prunec.stage0.indices",
        ]);
        const offset = batch.offsets[b]!;
        expect(kept[b]).toEqual([
          ...Array(offset).keys(),
          ...Array.from(one["prunec.stage0.indices"]!.data as BigInt64Array, (j) => Number(j) + offset),
        ]);
      }
    }
  });
});

describe("token sets follow the kept tokens", () => {
  it("an 'of image' stage after a stage on all tokens reads the image mask at the kept positions", async () => {
    const spec =
      "tokens image = input image_mask\nafter layer 0 keep 75% by norm\nafter layer 2 drop 50% of image by last-token-attn";
    const compiled = compile(plain, spec, { exposeIndices: true }).model;
    const p = promptBatch(
      prompts.map((x) => x.tokens),
      "left",
      prompts.map((x) => x.image),
    );
    const out = await runNode(compiled, feedsOf(p), ["prunec.stage0.indices", "prunec.stage1.indices"]);
    const first = rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims);
    const second = rows(out["prunec.stage1.indices"]!.data as BigInt64Array, out["prunec.stage1.indices"]!.dims);
    p.imageMask.forEach((isImage, b) => {
      const survivors = first[b]!;
      const kept = second[b]!.filter((i) => i >= 0).map((i) => survivors[i]!);
      // Every surviving text token stays; half (round-half-up) of the surviving image tokens go.
      expect(kept.filter((j) => !isImage[j])).toEqual(survivors.filter((j) => !isImage[j]));
      const images = survivors.filter((j) => isImage[j]).length;
      expect(kept.filter((j) => isImage[j])).toHaveLength(images - keepCount(50, images));
    });
  });

  it("'of image' after a merge stage is rejected", () => {
    const tiny = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
    expect(() =>
      compile(
        tiny,
        "tokens image = input image_mask\nafter layer 0 merge 25% by similarity\nafter layer 2 drop 50% of image by norm",
        { specName: "s.prune" },
      ),
    ).toThrow(
      "s.prune:3:27: error: 'of image' after a merge stage is not supported: merged tokens belong to no single set",
    );
  });
});
