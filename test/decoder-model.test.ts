/**
 * The test decoder (test/support/decoder.ts): its two attention variants compute the same model,
 * equal to the TypeScript reference (test/reference/decoder.ts), on onnxruntime-node's CPU EP and
 * onnxruntime-web's WASM backend; greedy generation through the GroupQueryAttention KV cache
 * matches the reference token for token; a left-padded batch gives every example its batch-1
 * logits and tokens; and prunec's analysis finds the layers, attention and residual stream.
 */
import { describe, expect, it } from "vitest";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { runNode, runWasm, maxAbsDiff, type Feeds, type Outputs } from "./helpers/ort.js";
import {
  buildDecoder,
  decoderWeights,
  generateGreedy,
  imagePrompt,
  openDecoderSession,
  prefillFeeds,
  promptBatch,
  DECODER,
  IMAGE_TOKENS,
  IMAGE_TOKEN_START,
  type Backend,
  type BuildOptions,
  type DecoderWeights,
  type PromptBatch,
} from "./support/decoder.js";
import { ReferenceDecoder, weightsFromModel } from "./reference/decoder.js";

const TOL = 1e-4;
const STEPS = 16;
const V = DECODER.vocab;

const plain = buildDecoder({ attention: "plain" });
const gqa = buildDecoder({ attention: "gqa" });
const reference = new ReferenceDecoder(weightsFromModel(gqa, DECODER), DECODER);

/** Three prompts of different lengths, each with its 16-token image span. */
const PROMPTS = [
  imagePrompt([5, 6, 7], [9, 10, 11, 12]),
  imagePrompt([20], [30, 31]),
  imagePrompt([3, 4, 5, 6, 7, 8, 9], [40, 41, 42, 43, 44, 45]),
];
const expected = PROMPTS.map((p) => reference.generate(p.tokens, STEPS));

const runners: Record<Backend, (model: Uint8Array, feeds: Feeds) => Promise<Outputs>> = {
  cpu: (m, f) => runNode(m, f, ["logits"]),
  wasm: (m, f) => runWasm(m, f, ["logits"]),
};

function flat(rows: readonly Float64Array[]): Float64Array {
  const out = new Float64Array(rows.length * V);
  rows.forEach((r, i) => out.set(r, i * V));
  return out;
}

/** Example b's logits at its real positions, [length, vocab], out of a [batch, seq, vocab] tensor. */
function realRows(logits: Float32Array, p: PromptBatch, b: number): Float32Array {
  const start = (b * p.seq + p.offsets[b]!) * V;
  return logits.subarray(start, start + p.lengths[b]! * V);
}

async function prefill(
  model: Uint8Array,
  attention: BuildOptions["attention"],
  p: PromptBatch,
  backend: Backend,
): Promise<Float32Array> {
  const out = await runners[backend](model, prefillFeeds(p, attention));
  expect(out["logits"]!.dims).toEqual([p.batch, p.seq, V]);
  return out["logits"]!.data as Float32Array;
}

async function generate(model: Uint8Array, p: PromptBatch, backend: Backend) {
  const session = await openDecoderSession(model, backend);
  try {
    return await generateGreedy((f) => session.run(f), p, STEPS);
  } finally {
    await session.release();
  }
}

describe("test decoder: builder and prompt layout", () => {
  it("is deterministic, and both variants hold the same weights", () => {
    // Compared as bytes (element-wise toEqual on typed arrays is slow).
    const bytes = (w: DecoderWeights): Buffer[] =>
      [w.embed, ...w.layers.flatMap((l) => Object.values(l)), w.norm, w.lmHead].map((a) =>
        Buffer.from(a.buffer, a.byteOffset, a.byteLength),
      );
    expect(Buffer.compare(buildDecoder({ attention: "gqa" }), gqa)).toBe(0);
    expect(Buffer.compare(buildDecoder({ attention: "plain" }), plain)).toBe(0);
    const same = (a: Buffer[], b: Buffer[]): boolean => a.length === b.length && a.every((x, i) => x.equals(b[i]!));
    expect(same(bytes(weightsFromModel(plain, DECODER)), bytes(weightsFromModel(gqa, DECODER)))).toBe(true);
    expect(same(bytes(weightsFromModel(gqa, DECODER)), bytes(decoderWeights(DECODER)))).toBe(true);
  });

  it("image prompts: [bos, system, 16 image ids, instruction], image mask padded with the batch", () => {
    const { tokens, image } = PROMPTS[0]!;
    expect(tokens).toHaveLength(1 + 3 + IMAGE_TOKENS + 4);
    expect(tokens.slice(4, 4 + IMAGE_TOKENS)).toEqual(
      Array.from({ length: IMAGE_TOKENS }, (_, i) => IMAGE_TOKEN_START + i),
    );
    expect(image.map((m, i) => m === (i >= 4 && i < 4 + IMAGE_TOKENS)).every(Boolean)).toBe(true);
    const batch = promptBatch(
      PROMPTS.map((p) => p.tokens),
      "left",
      PROMPTS.map((p) => p.image),
    );
    expect(batch.seq).toBe(PROMPTS[2]!.tokens.length);
    PROMPTS.forEach((p, b) => {
      const row = batch.imageMask[b]!;
      expect(row.slice(0, batch.offsets[b]!).some(Boolean)).toBe(false);
      expect(row.slice(batch.offsets[b]!)).toEqual(p.image);
      // Without explicit masks the reserved id range marks the same positions.
      expect(
        promptBatch(
          PROMPTS.map((q) => q.tokens),
          "left",
        ).imageMask[b],
      ).toEqual(row);
    });
  });
});

describe("test decoder: plain and GroupQueryAttention variants vs the TypeScript reference", () => {
  for (const backend of ["cpu", "wasm"] as const) {
    it(`${backend}: batch-1 prefill logits, plain = gqa = reference (≤ ${TOL})`, async () => {
      for (const [i, p] of PROMPTS.entries()) {
        const batch = promptBatch([p.tokens]);
        const a = await prefill(plain, "plain", batch, backend);
        const b = await prefill(gqa, "gqa", batch, backend);
        const want = flat(expected[i]!.prefill);
        expect(maxAbsDiff(a, b)).toBeLessThanOrEqual(TOL);
        expect(maxAbsDiff(a, want)).toBeLessThanOrEqual(TOL);
        expect(maxAbsDiff(b, want)).toBeLessThanOrEqual(TOL);
      }
    });

    it(`${backend}: greedy generation of ${STEPS} tokens through the KV cache equals the reference`, async () => {
      for (const [i, p] of PROMPTS.entries()) {
        const got = await generate(gqa, promptBatch([p.tokens]), backend);
        expect(got.tokens[0]).toEqual(expected[i]!.tokens);
        got.steps.forEach((logits, s) => expect(maxAbsDiff(logits, expected[i]!.steps[s]!)).toBeLessThanOrEqual(TOL));
      }
    });

    it(`${backend}: batch 3, left padding: each example gets its batch-1 logits and tokens`, async () => {
      const batch = promptBatch(
        PROMPTS.map((p) => p.tokens),
        "left",
      );
      expect(new Set(batch.lengths).size).toBe(3);
      const plainLogits = await prefill(plain, "plain", batch, backend);
      const got = await generate(gqa, batch, backend);
      PROMPTS.forEach((_, b) => {
        const want = flat(expected[b]!.prefill);
        expect(maxAbsDiff(realRows(plainLogits, batch, b), want)).toBeLessThanOrEqual(TOL);
        expect(maxAbsDiff(realRows(got.prefill, batch, b), want)).toBeLessThanOrEqual(TOL);
        expect(got.tokens[b]).toEqual(expected[b]!.tokens);
        got.steps.forEach((logits, s) =>
          expect(maxAbsDiff(logits.subarray(b * V, (b + 1) * V), expected[b]!.steps[s]!)).toBeLessThanOrEqual(TOL),
        );
      });
    });
  }

  // The seqlens_k layouts (see test/support/decoder.ts): seqlens_k = total − 1 with the padding
  // as attention_bias handles both sides; ReduceSum(mask) − 1 without a bias assumes right padding.
  const layouts: { seqlensK: "total" | "reduce-sum"; side: "left" | "right"; exact: boolean }[] = [
    { seqlensK: "total", side: "right", exact: true },
    { seqlensK: "reduce-sum", side: "right", exact: true },
    { seqlensK: "reduce-sum", side: "left", exact: false },
  ];
  for (const c of layouts) {
    it(`cpu: seqlens_k ${c.seqlensK}, ${c.side} padding: ${c.exact ? "exact" : "wrong (the kernel assumes right padding)"}`, async () => {
      const batch = promptBatch(
        PROMPTS.map((p) => p.tokens),
        c.side,
      );
      const got = await generate(buildDecoder({ attention: "gqa", seqlensK: c.seqlensK }), batch, "cpu");
      const worst = Math.max(
        ...PROMPTS.map((_, b) => maxAbsDiff(realRows(got.prefill, batch, b), flat(expected[b]!.prefill))),
      );
      if (c.exact) {
        expect(worst).toBeLessThanOrEqual(TOL);
        PROMPTS.forEach((_, b) => expect(got.tokens[b]).toEqual(expected[b]!.tokens));
      } else {
        expect(worst).toBeGreaterThan(0.1);
      }
    });
  }

  it("cpu: tied embeddings (LM head = embeddingᵀ through a Transpose) match the reference", async () => {
    const o = { ...DECODER, tiedEmbeddings: true };
    const model = buildDecoder({ attention: "gqa" }, o);
    const ref = new ReferenceDecoder(weightsFromModel(model, o), o);
    const tokens = PROMPTS[0]!.tokens;
    const out = await runNode(model, prefillFeeds(promptBatch([tokens]), "gqa", o), ["logits"]);
    expect(
      maxAbsDiff(out["logits"]!.data as Float32Array, flat(ref.forward(tokens, ref.newCache()))),
    ).toBeLessThanOrEqual(TOL);
  });
});

describe("test decoder: prunec's transformer analysis", () => {
  for (const [attention, model] of [
    ["plain", plain],
    ["gqa", gqa],
  ] as const) {
    it(`${attention}: 4 layers, attention, heads, residual stream`, () => {
      const info = analyzeTransformer(new Graph(decodeModel(model).graph!), `decoder-${attention}`);
      expect(info.layers).toHaveLength(DECODER.layers);
      expect(info).toMatchObject({
        hidden: DECODER.hidden,
        tokenAxis: 1,
        batchAxis: 0,
        tokens: "sequence_length",
        cls: { present: false },
      });
      info.layers.forEach((layer, l) => {
        expect(layer.index).toBe(l);
        expect(layer.name).toBe(`/model/layers.${l}`);
        expect(layer.kind).toBe(attention === "gqa" ? "GroupQueryAttention" : "matmul-softmax");
        expect(layer.core?.kind).toBe(layer.kind);
        expect(layer.heads).toBe(DECODER.heads);
        expect(layer.headSize).toBe(DECODER.headSize);
        expect(layer.residual).toBeDefined();
        expect(layer.residual!.norm.node.name).toBe(`/model/layers.${l}/input_layernorm/LayerNorm`);
        expect(layer.residual!.mid).toBe(`/model/layers.${l}/Add_1/output_0`);
        expect(layer.residual!.output).toBe(`/model/layers.${l}/Add_2/output_0`);
        if (l > 0) expect(layer.residual!.input).toBe(info.layers[l - 1]!.residual!.output);
        if (attention === "gqa") {
          expect(layer.core!.kvHeads).toBe(DECODER.kvHeads);
          expect(layer.rotary).toBe(true);
        } else {
          expect(layer.probsLayout).toBe("batch,heads,q,k");
        }
      });
      expect(info.layers[0]!.residual!.input).toBe("/model/embed_tokens/Gather/output_0");
    });
  }
});
