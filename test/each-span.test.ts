/**
 * `of each SET` (issue 17; CATP gives each image of a multi-image prompt its own budget, methods.md
 * §33, which has no code: the rule here is prunec's `of SET` applied to each contiguous span of the
 * set on its own). FastV's scores (last prompt row's attention at layer 1, mean over heads) on the
 * plain test decoder with two images of different sizes in one prompt: each image drops
 * round-half-up(50%·its size) of its own tokens, the lowest-scoring (ties to the lower position),
 * every text token is kept. The reference is written per span on plain arrays; batch 1 and a
 * left-padded batch of 3, CPU and WASM; the last logits equal the dense decoder with the dropped
 * keys masked (and differ from a whole-set budget).
 */
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import {
  buildDecoder,
  imageMaskFeed,
  promptBatch,
  prefillFeeds,
  DECODER,
  type PromptBatch,
} from "./support/decoder.js";
import { maskKeys } from "./support/dense-edits.js";
import { lastRowAttention, softmaxOutputs } from "./support/stage-tensors.js";
import { withOutputs, rows } from "./support/model-edit.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { topKPositions } from "./reference/cls-attn.js";
import { firstErrorLine } from "./support/cases.js";

const plain = buildDecoder({ attention: "plain" });
const SETS = "tokens image = input image_mask\n";
const SPEC = `${SETS}after layer 1 drop 50% of each image by last-token-attn`;

/** [bos, text…, image A (a ids), text…, image B (b ids), text…] with its image mask. */
function twoImages(a: number, bCount: number, text: number[][]): { tokens: number[]; image: boolean[] } {
  const tokens = [1, ...text[0]!];
  const image = tokens.map(() => false);
  const add = (ids: number[], isImage: boolean) => {
    tokens.push(...ids);
    image.push(...ids.map(() => isImage));
  };
  add(
    Array.from({ length: a }, (_, i) => 40 + i),
    true,
  );
  add(text[1]!, false);
  add(
    Array.from({ length: bCount }, (_, i) => 50 + i),
    true,
  );
  add(text[2]!, false);
  return { tokens, image };
}
const prompts = [
  twoImages(6, 9, [[3, 4], [5], [20, 21, 22]]),
  twoImages(3, 5, [[3], [6, 7], [23, 24]]),
  twoImages(7, 4, [[8, 9, 10], [11], [25, 26, 27, 28]]),
];

const feedsOf = (p: PromptBatch): Feeds => ({ ...prefillFeeds(p, "plain"), ...imageMaskFeed(p) });

/** Maximal runs of true. */
function spans(mask: readonly boolean[]): number[][] {
  const out: number[][] = [];
  mask.forEach((v, j) => {
    if (!v) return;
    if (j > 0 && mask[j - 1]) out.at(-1)!.push(j);
    else out.push([j]);
  });
  return out;
}

/** Per span: drop round-half-up(P%·size) of its tokens by the last row's mean attention; text kept. */
function keptPerSpan(probs: Float32Array, dims: number[], image: boolean[][], percent: number): number[][] {
  const n = dims[2]!;
  return image.map((isImage, b) => {
    const score = lastRowAttention(probs, dims, b);
    const kept = new Set<number>();
    for (const span of spans(isImage)) {
      const drop = Math.floor((2 * percent * span.length + 100) / 200); // round half up
      for (const i of topKPositions(span.map(score), span.length - drop, 0)) kept.add(span[i]!);
    }
    return [...Array(n).keys()].filter((j) => !isImage[j] || kept.has(j));
  });
}

describe("of each image: one budget per image span (FastV scores)", () => {
  const layer1 = softmaxOutputs(plain)[1]!;

  it("each image drops half of its own tokens; batch 1 and a left-padded batch of 3, CPU and WASM", async () => {
    const compiled = compile(plain, SPEC, { exposeIndices: true });
    expect(compiled.report.stages[0]!.tokensOut).toBe("0+others+drop(drop 50%) of each image");
    for (const group of [[0], [0, 1, 2]]) {
      const p = promptBatch(
        group.map((i) => prompts[i]!.tokens),
        "left",
        group.map((i) => prompts[i]!.image),
      );
      const f = feedsOf(p);
      const probs = (await runNode(withOutputs(plain, [layer1]), f, [layer1]))[layer1]!;
      const expected = keptPerSpan(probs.data as Float32Array, probs.dims, p.imageMask, 50);
      // A whole-set budget keeps other tokens (the test sees the per-span rule).
      const whole = keptPerSpan(
        probs.data as Float32Array,
        probs.dims,
        p.imageMask.map((row) => {
          const merged = [...row];
          const all = row.flatMap((v, j) => (v ? [j] : []));
          for (let j = all[0]!; j <= all.at(-1)!; j++) merged[j] = true;
          return merged;
        }),
        50,
      );
      expect(whole).not.toEqual(expected);
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

  it("keep 2 tokens of each image keeps min(2, size) per span; the last logits equal the dense decoder with the other image keys masked", async () => {
    const spec = `${SETS}after layer 1 keep 2 tokens of each image by last-token-attn`;
    const p = promptBatch([prompts[1]!.tokens], "left", [prompts[1]!.image]);
    const f = feedsOf(p);
    const out = await runNode(compile(plain, spec, { exposeIndices: true }).model, f, [
      "prunec.stage0.indices",
      "logits",
    ]);
    const kept = Array.from(out["prunec.stage0.indices"]!.data as BigInt64Array, Number);
    const image = p.imageMask[0]!;
    expect(spans(image).map((s) => s.filter((j) => kept.includes(j)).length)).toEqual([2, 2]);
    const reference = (await runNode(maskKeys(plain, 2, kept, p.seq), prefillFeeds(p, "plain"), ["logits"]))["logits"]!;
    const v = DECODER.vocab;
    const last = (o: { data: unknown; dims: number[] }) =>
      (o.data as Float32Array).subarray((o.dims[1]! - 1) * v, o.dims[1]! * v);
    expect(maxAbsDiff(last(out["logits"]!), last(reference))).toBeLessThanOrEqual(1e-4);
  });

  it("refuses 'mass' / 'above' per span and 'of each' on the KV cache", () => {
    expect(firstErrorLine(plain, `${SETS}after layer 1 keep mass 50% of each image by last-token-attn`)).toBe(
      "s.prune:2:20: error: 'of each image' gives each span of the set its own share or count: write 'keep P%' or 'keep K tokens', not 'mass'",
    );
    expect(firstErrorLine(buildDecoder({ attention: "gqa" }), `${SETS}keep kv 50% of each image by knorm`)).toBe(
      "s.prune:2:21: error: 'of each image' on the KV cache is not supported yet: write 'of image' (one budget for the set)",
    );
  });
});
