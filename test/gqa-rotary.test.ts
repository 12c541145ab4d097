/**
 * GroupQueryAttention that rotates q/k itself (do_rotary=1, cos/sin caches as inputs 7–8) and
 * sliding-window attention (local_window_size), as transformers.js exports Gemma-3's decoder.
 *
 * prunec moves the rotation out of the op (passes/explicit-rotary.ts) so kept tokens keep their
 * positions below a stage. Checked here: the rewrite alone changes nothing (prefill and decode,
 * batch 1 and left-padded batch 3); FastV compiled into the do_rotary=1 decoder keeps the float64
 * reference's set and generates its 16 tokens (CPU and WASM); and with a sliding window of 6 slots
 * (prompts of 24–29 tokens) the recompute applies the window as the kernel does.
 */
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { explicitRotary } from "../passes/explicit-rotary.js";
import { maxAbsDiff, withNode } from "./helpers/ort.js";
import {
  buildDecoder,
  generateGreedy,
  generateWithImageMask,
  imagePrompt,
  promptBatch,
  DECODER,
  type Backend,
  type DecoderOptions,
  type PromptBatch,
} from "./support/decoder.js";
import { rows } from "./support/model-edit.js";
import { buildFusedVit } from "./support/fused-vit.js";
import { ReferenceDecoder, weightsFromModel, type FastvOptions } from "./reference/decoder.js";

const TOL = 1e-4;
const STEPS = 16;
const SPEC = "tokens image = input image_mask\nafter layer 1 drop 50% of image by last-token-attn";
const FASTV: FastvOptions = { afterLayer: 1, dropPercent: 50 };
/** The op's own rotary needs head_size % 16 = 0 (onnxruntime), so these builds use 16. */
const WIDE: DecoderOptions = { ...DECODER, headSize: 16 };
const WINDOWED: DecoderOptions = { ...WIDE, localWindow: 6 };

const outside = buildDecoder({ attention: "gqa" }, WIDE);
const inOp = buildDecoder({ attention: "gqa", rotary: "op" }, WIDE);
const windowed = buildDecoder({ attention: "gqa", rotary: "op" }, WINDOWED);
const PROMPTS = [
  imagePrompt([5, 6, 7], [9, 10, 11, 12]),
  imagePrompt([20], [30, 31]),
  imagePrompt([3, 4, 5, 6, 7, 8, 9], [40, 41, 42, 43, 44, 45]),
];
const single = (i: number): PromptBatch => promptBatch([PROMPTS[i]!.tokens], "left", [PROMPTS[i]!.image]);

function rewritten(model: Uint8Array): Uint8Array {
  const m = decodeModel(model);
  const info = analyzeTransformer(new Graph(m.graph!), "decoder");
  const { graph } = explicitRotary(m.graph!, info, 0, 17, "decoder");
  return encodeModel(shallowCopy(m, { graph }));
}

describe("GroupQueryAttention with rotary inside the op (do_rotary=1)", () => {
  it("the test decoder built that way equals the one rotating outside the op (batch 1, prefill and 16 steps)", async () => {
    for (const i of PROMPTS.keys()) {
      const a = await withNode(outside, (run) => generateGreedy(run, single(i), STEPS, WIDE));
      const b = await withNode(inOp, (run) => generateGreedy(run, single(i), STEPS, WIDE));
      expect(b.tokens).toEqual(a.tokens);
      expect(maxAbsDiff(b.prefill, a.prefill)).toBeLessThanOrEqual(1e-5);
      b.steps.forEach((l, s) => expect(maxAbsDiff(l, a.steps[s]!)).toBeLessThanOrEqual(1e-5));
    }
  });

  it("with a 6-slot window the kernel computes the float64 reference's w-slot window (prefill rows and 16 steps)", async () => {
    const reference = new ReferenceDecoder(weightsFromModel(windowed, WINDOWED), WINDOWED);
    for (const i of PROMPTS.keys()) {
      const got = await withNode(windowed, (run) => generateGreedy(run, single(i), STEPS, WINDOWED));
      const want = reference.generate(PROMPTS[i]!.tokens, STEPS);
      expect(got.tokens[0]).toEqual(want.tokens);
      want.prefill.forEach((row, r) =>
        expect(maxAbsDiff(got.prefill.subarray(r * WINDOWED.vocab, (r + 1) * WINDOWED.vocab), row)).toBeLessThanOrEqual(
          TOL,
        ),
      );
      got.steps.forEach((l, s) => expect(maxAbsDiff(l, want.steps[s]!)).toBeLessThanOrEqual(TOL));
    }
  });

  it("explicit-rotary alone changes nothing: prefill and decode, batch 1 and left-padded batch 3, with and without a window", async () => {
    const batch = promptBatch(
      PROMPTS.map((p) => p.tokens),
      "left",
    );
    for (const [model, o] of [
      [inOp, WIDE],
      [windowed, WINDOWED],
    ] as const) {
      const nodes = decodeModel(rewritten(model)).graph!.node;
      const gqa = nodes.filter((n) => n.opType === "GroupQueryAttention");
      expect(gqa.every((n) => n.attribute.find((a) => a.name === "do_rotary")!.i === 0n)).toBe(true);
      expect(nodes.filter((n) => n.opType === "RotaryEmbedding").map((n) => n.name)).toEqual(
        [0, 1, 2, 3].flatMap((l) => [
          `prunec/rotary/layer${l}/query/RotaryEmbedding`,
          `prunec/rotary/layer${l}/key/RotaryEmbedding`,
        ]),
      );
      for (const p of [single(0), batch]) {
        const want = await withNode(model, (run) => generateGreedy(run, p, 6, o));
        const got = await withNode(rewritten(model), (run) => generateGreedy(run, p, 6, o));
        expect(got.tokens).toEqual(want.tokens);
        expect(maxAbsDiff(got.prefill, want.prefill)).toBeLessThanOrEqual(1e-5);
        got.steps.forEach((l, s) => expect(maxAbsDiff(l, want.steps[s]!)).toBeLessThanOrEqual(1e-5));
      }
    }
  });

  const cases = [
    { name: "do_rotary=1", model: inOp, o: WIDE },
    { name: "do_rotary=1 and a 6-slot sliding window", model: windowed, o: WINDOWED },
  ];
  for (const c of cases) {
    const reference = new ReferenceDecoder(weightsFromModel(c.model, c.o), c.o);
    const pruned = PROMPTS.map((p) => reference.generatePruned(p.tokens, p.image, FASTV, STEPS));
    for (const backend of ["cpu", "wasm"] as Backend[]) {
      it(`${backend}, ${c.name}: FastV keeps the reference's tokens (original positions) and generates its ${STEPS} tokens`, async () => {
        const model = compile(c.model, SPEC, { exposeIndices: true }).model;
        for (const [i, r] of pruned.entries()) {
          const got = await generateWithImageMask(model, backend, single(i), STEPS, c.o);
          const idx = got.prefillOutputs["prunec.stage0.indices"]!;
          expect(rows(idx.data as BigInt64Array, idx.dims)[0]).toEqual(r.kept);
          expect(got.presentLengths).toEqual([
            PROMPTS[i]!.tokens.length,
            PROMPTS[i]!.tokens.length,
            r.kept.length,
            r.kept.length,
          ]);
          expect(got.tokens[0]).toEqual(r.tokens);
          got.steps.forEach((l, s) => expect(maxAbsDiff(l, r.steps[s]!)).toBeLessThanOrEqual(TOL));
        }
      });
    }
  }

  it("the window matters here: without it the windowed reference keeps a different set", () => {
    const a = new ReferenceDecoder(weightsFromModel(windowed, WINDOWED), WINDOWED);
    const b = new ReferenceDecoder(weightsFromModel(windowed, WINDOWED), WIDE);
    const differs = PROMPTS.some(
      (p) =>
        a.generatePruned(p.tokens, p.image, FASTV, 1).kept.join() !==
        b.generatePruned(p.tokens, p.image, FASTV, 1).kept.join(),
    );
    expect(differs).toBe(true);
  });
});

describe("'with renumber' (TransPrune's and SparseVLM's reference numbering)", () => {
  const RENUMBER = "tokens image = input image_mask\nafter layer 1 drop 50% of image by last-token-attn with renumber";
  const cases = [
    { name: "rotary outside the op (position_ids carried)", model: outside, o: WIDE, attention: "gqa" },
    { name: "rotary inside the op (the op's positions carried)", model: inOp, o: WIDE, attention: "gqa" },
  ];
  for (const c of cases) {
    it(`${c.name}: the kept tokens take positions 0..K'−1; the 16 tokens equal the renumbering reference, not the position-keeping one`, async () => {
      const reference = new ReferenceDecoder(weightsFromModel(c.model, c.o), c.o);
      const model = compile(c.model, RENUMBER, { exposeIndices: true }).model;
      let differs = false;
      for (const [i, p] of PROMPTS.entries()) {
        const want = reference.generatePruned(p.tokens, p.image, { ...FASTV, renumber: true }, STEPS);
        const keeping = reference.generatePruned(p.tokens, p.image, FASTV, STEPS);
        const got = await generateWithImageMask(model, "cpu", single(i), STEPS, c.o);
        expect(
          rows(
            got.prefillOutputs["prunec.stage0.indices"]!.data as BigInt64Array,
            got.prefillOutputs["prunec.stage0.indices"]!.dims,
          )[0],
        ).toEqual(want.kept);
        expect(got.tokens[0]).toEqual(want.tokens);
        got.steps.forEach((l, s) => expect(maxAbsDiff(l, want.steps[s]!)).toBeLessThanOrEqual(TOL));
        differs ||= maxAbsDiff(want.prefillLast, keeping.prefillLast) > 1e-3;
      }
      expect(differs).toBe(true);
    });
  }

  it("rejected with a mask (nothing moves), and where no positions are read below (a ViT whose only side tensor is an attention bias)", () => {
    expect(() =>
      compile(outside, RENUMBER.replace("with renumber", "with renumber, mask"), { specName: "r.prune" }),
    ).toThrow(
      "r.prune:2:57: error: 'with renumber' renumbers the kept tokens, but a masked stage keeps every token where it is",
    );
    expect(() => compile(buildFusedVit(), "after layer 1 keep 50% by cls-attn with renumber")).toThrow(
      "'with renumber' after layer 1: the layers below read no per-token positions (position ids or rotary tables) to renumber",
    );
  });
});
