/**
 * TransPrune's criteria in the project's small LLaMA-style decoder (test/support/decoder.ts, plain
 * MatMul + Softmax attention, prefill without a cache): `iga` (the next layer's norm, q/k and
 * rotary cloned onto the stream, instruction queries), `ttv` (token transition variation of the
 * attention and MLP sub-blocks) and `transprune` (ttv + iga), each as `drop P% of image`. Kept sets
 * are compared exactly with test/reference/transprune.ts, fed the dense model's own intermediate
 * tensors (layer L+1's attention probabilities; layer L's sub-block inputs and outputs), at batch 1
 * and at a left-padded batch of 3, on onnxruntime-node (CPU) and onnxruntime-web (WASM); iga also
 * behind GroupQueryAttention (the KV-cache variant of the same weights) against the same reference.
 */
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import {
  buildDecoder,
  generateWithImageMask,
  imageMaskFeed,
  imagePrompt,
  promptBatch,
  prefillFeeds,
  type PromptBatch,
} from "./support/decoder.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { softmaxOutputs } from "./support/stage-tensors.js";
import { withOutputs, rows } from "./support/model-edit.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { keepCount, topKPositions } from "./reference/cls-attn.js";
import { addScores, igaImageScores, imagePositions, ttvImageScores, type SubBlock } from "./reference/transprune.js";

const plain = buildDecoder({ attention: "plain" });
const prompts = [
  imagePrompt([3, 4, 5], [20, 21, 22, 23]),
  imagePrompt([3], [24, 25]),
  imagePrompt([6, 7, 8, 9, 10], [26, 27, 28, 29, 30, 31]),
];
const SETS = "tokens image = input image_mask\ntokens instruction = after image";
const spec = (criterion: string, layer = 1) => `${SETS}\nafter layer ${layer} drop 50% of image by ${criterion}`;

function feedsOf(p: PromptBatch): Feeds {
  const mask = new Uint8Array(p.batch * p.seq);
  p.imageMask.forEach((row, b) => row.forEach((v, j) => (mask[b * p.seq + j] = v ? 1 : 0)));
  return { ...prefillFeeds(p, "plain"), image_mask: { type: "bool", dims: [p.batch, p.seq], data: mask } };
}

/** Layer l's sub-block tensors in the decoder: u = the norms' outputs, v = o_proj / down_proj outputs. */
const blockNames = (l: number) => [
  [`/model/layers.${l}/input_layernorm/output_0`, `/model/layers.${l}/attn/o_proj/MatMul/output_0`],
  [`/model/layers.${l}/post_attention_layernorm/output_0`, `/model/layers.${l}/mlp/down_proj/MatMul/output_0`],
];

type Scorer = (b: number, image: boolean[]) => number[];

/** The reference's scorers for `layer`, fed the dense model's tensors for prompt batch `p`. */
async function referenceScorers(
  p: PromptBatch,
  layer: number,
  ttvLayers: number[],
): Promise<{ iga: Scorer; ttv: Scorer }> {
  const nextProbs = softmaxOutputs(plain)[layer + 1]!;
  const names = [nextProbs, ...ttvLayers.flatMap((l) => blockNames(l).flat())];
  const out = await runNode(withOutputs(plain, names), prefillFeeds(p, "plain"), names);
  const probs = out[nextProbs]!;
  const blocks: SubBlock[] = ttvLayers.flatMap((l) =>
    blockNames(l).map(([u, v]) => ({
      u: out[u!]!.data as Float32Array,
      v: out[v!]!.data as Float32Array,
      dims: out[u!]!.dims,
    })),
  );
  return {
    iga: (b, image) => igaImageScores(probs.data as Float32Array, probs.dims, b, image),
    ttv: (b, image) => ttvImageScores(blocks, b, image),
  };
}

/** Every non-image token and the image tokens left after dropping round-half-up(50%) of the lowest-scored. */
function expectedKeep(p: PromptBatch, score: Scorer): number[][] {
  return p.imageMask.map((image, b) => {
    const positions = imagePositions(image);
    const kept = topKPositions(score(b, image), positions.length - keepCount(50, positions.length), 0).map(
      (i) => positions[i]!,
    );
    return [...Array(p.seq).keys()].filter((j) => !image[j] || kept.includes(j));
  });
}

async function keptSets(model: Uint8Array, p: PromptBatch, run: typeof runNode): Promise<number[][]> {
  const out = await run(model, feedsOf(p), ["prunec.stage0.indices"]);
  return rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims).map((r) =>
    r.filter((i) => i >= 0),
  );
}

const batches = () =>
  [[0], [0, 1, 2]].map((group) =>
    promptBatch(
      group.map((i) => prompts[i]!.tokens),
      "left",
      group.map((i) => prompts[i]!.image),
    ),
  );

describe("TransPrune criteria in a decoder: exact kept sets vs the reference (batch 1 and left-padded batch 3, CPU and WASM)", () => {
  const cases: {
    criterion: string;
    layer: number;
    ttvLayers: number[];
    score: (s: { iga: Scorer; ttv: Scorer }) => Scorer;
  }[] = [
    { criterion: "iga", layer: 1, ttvLayers: [], score: (s) => s.iga },
    { criterion: "iga", layer: 2, ttvLayers: [], score: (s) => s.iga },
    { criterion: "ttv", layer: 1, ttvLayers: [1], score: (s) => s.ttv },
    { criterion: "ttv(layers: 0..2)", layer: 2, ttvLayers: [0, 1, 2], score: (s) => s.ttv },
    {
      criterion: "transprune(layers: 0..1)",
      layer: 1,
      ttvLayers: [0, 1],
      score: (s) => (b, image) => addScores(s.ttv(b, image), s.iga(b, image)),
    },
  ];
  for (const c of cases) {
    it(`after layer ${c.layer} drop 50% of image by ${c.criterion}`, async () => {
      const model = compile(plain, spec(c.criterion, c.layer), { exposeIndices: true }).model;
      for (const p of batches()) {
        const expected = expectedKeep(p, c.score(await referenceScorers(p, c.layer, c.ttvLayers)));
        for (const run of [runNode, runWasm]) expect(await keptSets(model, p, run)).toEqual(expected);
      }
    });
  }

  it("behind GroupQueryAttention (KV-cache decoder, rotary outside the op): iga keeps the plain reference's sets at prefill, and decode steps run", async () => {
    const gqa = buildDecoder({ attention: "gqa" });
    const model = compile(gqa, spec("iga", 1), { exposeIndices: true }).model;
    for (const p of batches()) {
      const expected = expectedKeep(p, (await referenceScorers(p, 1, [])).iga);
      for (const run of [runNode, runWasm]) {
        const out = await run(model, { ...prefillFeeds(p, "gqa"), ...imageMaskFeed(p) }, ["prunec.stage0.indices"]);
        expect(
          rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims).map((r) =>
            r.filter((i) => i >= 0),
          ),
        ).toEqual(expected);
      }
    }
    const gen = await generateWithImageMask(model, "cpu", batches()[1]!, 3);
    expect(gen.presentLengths).toEqual([28, 28, 20, 20]); // layers after the stage cache the kept tokens
  });

  it("two stages (ttv, then transprune on the sets the first left): every text token kept, 12 then 6 image tokens, CPU = WASM", async () => {
    const model = compile(
      plain,
      `${SETS}\nafter layer 0 drop 25% of image by ttv\nafter layer 1 drop 50% of image by transprune(layers: 1..1)`,
      { exposeIndices: true },
    ).model;
    const p = batches()[1]!;
    const names = ["prunec.stage0.indices", "prunec.stage1.indices"];
    const results = [];
    for (const run of [runNode, runWasm]) {
      const out = await run(model, feedsOf(p), names);
      const [first, second] = names.map((n) => rows(out[n]!.data as BigInt64Array, out[n]!.dims));
      // Stage 1 numbers its rows as stage 0's output: map them back to prompt positions.
      const dense = second!.map((r, b) => r.filter((i) => i >= 0).map((i) => first![b]![i]!));
      dense.forEach((kept, b) => {
        const image = p.imageMask[b]!;
        expect(kept.filter((j) => !image[j])).toEqual([...Array(p.seq).keys()].filter((j) => !image[j]));
        expect(kept.filter((j) => image[j]).length).toBe(6);
        expect(first![b]!.filter((j) => j >= 0 && image[j]).length).toBe(12);
      });
      results.push(dense);
    }
    expect(results[1]).toEqual(results[0]);
  });

  it("ttv without 'of image' ranks every token (batch 1, CPU and WASM)", async () => {
    const model = compile(plain, "after layer 1 keep 50% by ttv", { exposeIndices: true }).model;
    const p = batches()[0]!;
    const all = p.imageMask[0]!.map(() => true);
    const scores = (await referenceScorers(p, 1, [1])).ttv(0, all);
    const expected = topKPositions(scores, keepCount(50, p.seq), 0);
    for (const run of [runNode, runWasm]) {
      const out = await run(model, prefillFeeds(p, "plain"), ["prunec.stage0.indices"]);
      expect(Array.from(out["prunec.stage0.indices"]!.data as BigInt64Array, Number)).toEqual(expected);
    }
  });

  it("the scores differ between the criteria (the test's kept sets are not all the same)", async () => {
    const p = batches()[1]!;
    const s = await referenceScorers(p, 1, [1]);
    const a = expectedKeep(p, s.iga);
    const t = expectedKeep(p, s.ttv);
    expect(a).not.toEqual(t);
  });
});

describe("TransPrune criteria: rejections", () => {
  const gqa = buildDecoder({ attention: "gqa" });
  it("iga at the last layer has no next layer", () => {
    expect(() => compile(plain, spec("iga", 3), { specName: "f.prune" })).toThrow(
      "f.prune:3:36: error: iga cannot run after layer 3: iga reads the next layer's attention (layer 4), but layer 3 is the model's last; use a stage at an earlier layer",
    );
  });
  it("iga before a GroupQueryAttention that applies rotary inside without cos/sin caches", () => {
    const m = decodeModel(gqa);
    const node = m.graph!.node.find((n) => n.name === "/model/layers.2/attn/GroupQueryAttention")!;
    node.attribute.find((a) => a.name === "do_rotary")!.i = 1n;
    expect(() => compile(encodeModel(m), spec("iga", 1), { specName: "f.prune" })).toThrow(
      "f.prune:3:36: error: iga cannot run after layer 1: iga clones the next layer's norm, q/k path and rotary, but layer 2's fused com.microsoft.GroupQueryAttention (node '/model/layers.2/attn/GroupQueryAttention') rotates q/k (do_rotary=1) without cos/sin caches",
    );
  });
  it("iga and transprune need 'of image'", () => {
    for (const c of ["iga", "transprune"]) {
      expect(() => compile(plain, `${SETS}\nafter layer 1 drop 50% by ${c}`, { specName: "f.prune" })).toThrow(
        `${c} after layer 1 scores image tokens: use it as 'drop P% of image by ${c}'`,
      );
    }
  });
  it("ttv's layer range must lie within the layers that saw the stage's tokens", () => {
    expect(() => compile(plain, spec("ttv(layers: 0..2)", 1), { specName: "f.prune" })).toThrow(
      "ttv cannot run after layer 1: layers 0..2 ends at layer 2, which has not run when this stage selects after layer 1; the range must lie within 0..1",
    );
  });
  it("the image and instruction sets must be declared", () => {
    expect(() => compile(plain, "after layer 1 drop 50% by transprune", { specName: "f.prune" })).toThrow(
      "f.prune:1:27: error: transprune needs the token set 'image', which this spec does not declare; add 'tokens image = input image_mask'",
    );
    expect(() =>
      compile(plain, "tokens image = input image_mask\nafter layer 1 drop 50% of image by iga", {
        specName: "f.prune",
      }),
    ).toThrow(
      "f.prune:2:36: error: iga needs the token set 'instruction', which this spec does not declare; add 'tokens instruction = after image'",
    );
  });
});
