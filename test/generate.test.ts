/**
 * The library's generation loop (src/generate.ts) against the plain loop the tests use
 * (test/support/decoder.ts generateGreedy: prefill, then each example's argmax, the mask one column
 * longer, the next dense position and every present fed back), on onnxruntime-node and
 * onnxruntime-web's WASM backend: the dense decoders it comes from and prunec's compiled KV stages
 * (an evicted cache shorter than the mask, `--kv-state`'s validity pair started empty from the
 * session's declared shape). Greedy tokens equal; every call's last logits rows equal.
 */
import * as ortNode from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { generate, type GenerateSession, type GenerateTensor, type TensorClass } from "../src/generate.js";
import { loadOrtWeb } from "../src/cli/runtime.js";
import { maxAbsDiff, withNode, type Feeds } from "./helpers/ort.js";
import {
  buildDecoder,
  DECODER,
  generateGreedy,
  imageMaskFeed,
  imagePrompt,
  promptBatch,
  type PromptBatch,
} from "./support/decoder.js";

const V = DECODER.vocab;
const STEPS = 12;
const gqa = buildDecoder({ attention: "gqa" });
const plainCache = buildDecoder({ attention: "plain-cache" });
const PROMPTS = [
  [1, 40, 41, 42, 43, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 4],
  [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 3, 7, 11],
  [1, 33, 34, 35, 36, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 5],
];
const batch = promptBatch(PROMPTS, "left");

interface Runtime {
  name: string;
  open(model: Uint8Array): Promise<GenerateSession<GenerateTensor>>;
  Tensor: TensorClass<GenerateTensor>;
}

const node: Runtime = {
  name: "onnxruntime-node",
  open: async (model) => (await ortNode.InferenceSession.create(model)) as unknown as GenerateSession<GenerateTensor>,
  Tensor: ortNode.Tensor as unknown as TensorClass<GenerateTensor>,
};

async function wasm(): Promise<Runtime> {
  const ort = await loadOrtWeb();
  return {
    name: "onnxruntime-web (wasm)",
    open: async (model) =>
      (await ort.InferenceSession.create(model, {
        executionProviders: ["wasm"],
      })) as unknown as GenerateSession<GenerateTensor>,
    Tensor: ort.Tensor as unknown as TensorClass<GenerateTensor>,
  };
}

/** input_ids and attention_mask of a prompt batch (what a user has), as `Tensor`s. */
function userFeeds(rt: Runtime, p: PromptBatch): Record<string, GenerateTensor> {
  return {
    input_ids: new rt.Tensor("int64", p.inputIds, [p.batch, p.seq]),
    attention_mask: new rt.Tensor("int64", p.attentionMask, [p.batch, p.seq]),
  };
}

/** The plain loop's last logits rows per call: [B·V] each. */
function lastRows(g: { prefill: Float32Array; steps: Float32Array[] }, p: PromptBatch): Float32Array[] {
  const prefill = new Float32Array(p.batch * V);
  for (let b = 0; b < p.batch; b++)
    prefill.set(g.prefill.subarray((b * p.seq + p.seq - 1) * V, (b * p.seq + p.seq) * V), b * V);
  return [prefill, ...g.steps];
}

describe("generate(): the library's greedy loop equals the plain loop", () => {
  const cases: { what: string; model: () => Uint8Array; first?: Feeds }[] = [
    { what: "the dense GroupQueryAttention decoder", model: () => gqa },
    { what: "the dense plain-attention decoder (Concat caches)", model: () => plainCache },
    {
      what: "'keep kv 50% by snapkv(window: 4, kernel: 3)' compiled (caches shorter than the mask)",
      model: () => compile(gqa, "keep kv 50% by snapkv(window: 4, kernel: 3)").model,
    },
    {
      what: "'during decode keep kv 10 tokens by a2sf(forget: 0.9, recent: 2)' (the score pairs started empty from the declared shape)",
      model: () => compile(gqa, "during decode keep kv 10 tokens by a2sf(forget: 0.9, recent: 2)").model,
      first: Object.fromEntries(
        Array.from({ length: DECODER.layers }, (_, l) => [
          `past_key_values.${l}.prunec_score`,
          { type: "float32", dims: [3, DECODER.kvHeads, 0], data: new Float32Array(0) },
        ]),
      ) as Feeds,
    },
    {
      what: "'during decode keep kv 10 tokens by spatten' (SpAtten's one score pair for the stage, started empty from the declared shape)",
      model: () => compile(gqa, "during decode keep kv 10 tokens by spatten").model,
      first: {
        "past_key_values.stage0.prunec_score": { type: "float32", dims: [3, 0], data: new Float32Array(0) },
      } as Feeds,
    },
    {
      what: "'keep kv 50% by knorm' with --kv-state (validity pairs started empty from the declared shape)",
      model: () => compile(plainCache, "keep kv 50% by knorm", { kvState: true }).model,
      first: Object.fromEntries(
        Array.from({ length: DECODER.layers }, (_, l) => [
          `past_key_values.${l}.prunec_valid`,
          { type: "float32", dims: [3, 0], data: new Float32Array(0) },
        ]),
      ) as Feeds,
    },
  ];
  for (const c of cases)
    it(`${c.what}, a left-padded batch of 3: ${STEPS} greedy tokens and every call's logits, on onnxruntime-node and WASM`, async () => {
      const model = c.model();
      const want = await withNode(model, (run) =>
        generateGreedy((f) => run({ ...(c.first ?? {}), ...f }), batch, STEPS),
      );
      const wantRows = lastRows(want, batch);
      for (const rt of [node, await wasm()]) {
        const got = await generate(await rt.open(model), userFeeds(rt, batch), {
          Tensor: rt.Tensor,
          maxNewTokens: STEPS,
          keepLogits: true,
        });
        expect([rt.name, got.tokens]).toEqual([rt.name, want.tokens]);
        expect(got.calls).toBe(STEPS);
        got.logits!.forEach((l, s) =>
          expect(maxAbsDiff(l, wantRows[s]!), `${rt.name} call ${s}`).toBeLessThanOrEqual(1e-4),
        );
      }
    });

  it("stops an example at its EOS token (kept); the others run on", async () => {
    const want = await withNode(gqa, (run) => generateGreedy(run, batch, STEPS));
    // Example 0's third token as EOS: it stops there; the others run on until they produce it or the budget ends.
    const eos = want.tokens[0]![2]!;
    const got = await generate(await node.open(gqa), userFeeds(node, batch), {
      Tensor: node.Tensor,
      maxNewTokens: STEPS,
      eosTokenId: eos,
    });
    got.tokens.forEach((t, b) => {
      const stop = want.tokens[b]!.indexOf(eos);
      expect(t).toEqual(stop < 0 ? want.tokens[b] : want.tokens[b]!.slice(0, stop + 1));
    });
    expect(got.tokens[0]).toHaveLength(3);
  });

  it("refuses what it cannot feed: an input it does not know at a decode step (names it), a right-padded batch", async () => {
    const spec = "tokens image = input image_mask\nkeep kv 50% of image by knorm";
    const model = compile(gqa, spec).model;
    const p = promptBatch([imagePrompt([3, 4], [20, 21]).tokens], "left", [imagePrompt([3, 4], [20, 21]).image]);
    const mask = imageMaskFeed(p)["image_mask"]!;
    const feeds = { ...userFeeds(node, p), image_mask: new node.Tensor("bool", mask.data as Uint8Array, mask.dims) };
    await expect(generate(await node.open(model), feeds, { Tensor: node.Tensor, maxNewTokens: 3 })).rejects.toThrow(
      "generate: no value for the session's input 'image_mask' at decode step 1 (pass it with options.stepFeeds)",
    );
    const ok = await generate(await node.open(model), feeds, {
      Tensor: node.Tensor,
      maxNewTokens: 3,
      stepFeeds: () => ({ image_mask: new node.Tensor("bool", new Uint8Array(1), [1, 1]) }),
    });
    expect(ok.tokens[0]).toHaveLength(3);
    const right = promptBatch(PROMPTS, "right");
    await expect(
      generate(await node.open(gqa), userFeeds(node, right), { Tensor: node.Tensor, maxNewTokens: 2 }),
    ).rejects.toThrow("generate: example 1's last token is padding; left-pad the batch (the last position is read)");
  });
});
