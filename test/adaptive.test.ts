/**
 * Adaptive amounts (`keep mass P%`, `keep above X`): each example keeps its own count. In a batch
 * the rows are padded to the largest count and the padding is masked out of later attention, so
 * every example computes exactly its batch-1 result.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { parseDataset, batchInput } from "../src/data/prds.js";
import { withOutputs, unfoldProbs, rows } from "./support/model-edit.js";
import { clsScores, topKPositions } from "./reference/cls-attn.js";
import { massCount, aboveCount, flowcutCount } from "./reference/adaptive.js";
import { buildFusedVit, fusedVitFeeds } from "./support/fused-vit.js";

const digits = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
const sample = parseDataset(readFileSync(join(REPO_ROOT, "examples", "digits", "sample.prds")));
const feedsOf = (from: number, to: number): Feeds => {
  const x = batchInput(sample, from, to);
  return { pixel_values: { type: "float32", dims: x.dims, data: x.data } };
};
const probs = "/encoder/layers/encoder_layer_1/self_attention/Softmax_output_0";

/** Kept positions per example: the exposed row without its padding (-1). */
const keptOf = (out: Record<string, { data: unknown; dims: number[] }>) =>
  rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims).map((r) =>
    r.filter((i) => i >= 0),
  );

describe("adaptive amounts", () => {
  const cases: [string, (s: number[]) => number][] = [
    ["after layer 1 keep mass 60% by cls-attn", (s) => massCount(s, 60)],
    ["after layer 1 keep above 0.015 by cls-attn", (s) => aboveCount(s, 0.015)],
  ];
  for (const [spec, count] of cases) {
    it(`${spec}: each example keeps the reference's tokens, and at batch 3 computes its batch-1 result (CPU and WASM)`, async () => {
      const compiled = compile(digits, spec, { exposeIndices: true }).model;
      const f = feedsOf(0, 3);
      const p = (await runNode(withOutputs(digits, [probs]), f, [probs]))[probs]!;
      const expected = unfoldProbs(p.data as Float32Array, p.dims, 4).map((ex) => {
        const s = clsScores(ex, 1);
        return topKPositions(s, count(s), 1);
      });
      expect(new Set(expected.map((e) => e.length)).size).toBeGreaterThan(1); // the counts really differ
      for (const run of [runNode, runWasm]) {
        const batch = await run(compiled, f);
        expect(keptOf(batch)).toEqual(expected);
        expect(Array.from(batch["prunec.stage0.counts"]!.data as BigInt64Array, Number)).toEqual(
          expected.map((e) => e.length),
        );
        for (let i = 0; i < 3; i++) {
          const alone = await run(compiled, feedsOf(i, i + 1));
          expect(keptOf(alone)).toEqual([expected[i]]);
          const logits = batch["logits"]!.data as Float32Array;
          expect(
            maxAbsDiff(logits.subarray(i * 10, (i + 1) * 10), alone["logits"]!.data as Float32Array),
          ).toBeLessThanOrEqual(1e-5);
        }
      }
    });
  }

  it("with mask: the same kept tokens and outputs, static shapes", async () => {
    const f = feedsOf(0, 3);
    const gathered = await runNode(
      compile(digits, "after layer 1 keep mass 60% by cls-attn", { exposeIndices: true }).model,
      f,
    );
    const masked = await runNode(
      compile(digits, "after layer 1 keep mass 60% by cls-attn with mask", { exposeIndices: true }).model,
      f,
    );
    expect(keptOf(masked)).toEqual(keptOf(gathered));
    expect(
      maxAbsDiff(masked["logits"]!.data as Float32Array, gathered["logits"]!.data as Float32Array),
    ).toBeLessThanOrEqual(1e-5);
  });

  it("is rejected where it cannot apply", () => {
    expect(() => compile(digits, "after layer 1 drop mass 60% by cls-attn", { specName: "a.prune" })).toThrow(
      "a.prune:1:20: error: 'mass' keeps a number of tokens that depends on the input; write it with 'keep' ('keep mass 60%')",
    );
    expect(() =>
      compile(digits, "after layer 1 keep mass 60% by cls-attn\nafter layer 3 keep 50% by diversity", {
        specName: "a.prune",
      }),
    ).toThrow("diversity needs a static token count");
    expect(() =>
      compile(digits, "after layer 1 keep mass 60% by cls-attn\nafter layer 3 keep 50% by global-attn", {
        specName: "a.prune",
      }),
    ).toThrow(
      "a.prune:2:27: error: an earlier stage kept a number of tokens that depends on the input, so this one counts per example; global-attn reads all query tokens, which then include padding; use cls-attn, cls-attn-ensemble, flowcut or norm",
    );
    expect(() => compile(digits, "after layer 1 keep 50% by flowcut(adaptive: 1)", { specName: "a.prune" })).toThrow(
      "a.prune:1:20: error: flowcut(adaptive: 1) keeps a number of tokens that depends on the input: give its target as 'keep K tokens' (FlowCut prunes adaptively down to K)",
    );
  });

  it("a stage after an adaptive one counts per example: at batch 3 each example keeps what it keeps alone (CPU)", async () => {
    const compiled = compile(digits, "after layer 1 keep mass 60% by cls-attn\nafter layer 3 keep 50% by cls-attn", {
      exposeIndices: true,
    }).model;
    const batch = await runNode(compiled, feedsOf(0, 3));
    const original = (out: Record<string, { data: unknown; dims: number[] }>, b: number) => {
      const first = rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims)[b]!;
      const second = rows(out["prunec.stage1.indices"]!.data as BigInt64Array, out["prunec.stage1.indices"]!.dims)[b]!;
      return second.filter((i) => i >= 0).map((i) => first[i]!); // positions in the model's tokens
    };
    for (let i = 0; i < 3; i++) {
      const alone = await runNode(compiled, feedsOf(i, i + 1));
      expect(original(batch, i)).toEqual(original(alone, 0));
      expect(Number((batch["prunec.stage1.counts"]!.data as BigInt64Array)[i])).toBe(original(alone, 0).length);
      const logits = batch["logits"]!.data as Float32Array;
      expect(
        maxAbsDiff(logits.subarray(i * 10, (i + 1) * 10), alone["logits"]!.data as Float32Array),
      ).toBeLessThanOrEqual(1e-5);
    }
  });

  it("flowcut(adaptive: 1): FlowCut's entropy-based count per example, down to the target at the last stage", async () => {
    const spec =
      "after layer 1 keep 16 tokens by flowcut(adaptive: 1)\nafter layer 3 keep 16 tokens by flowcut(adaptive: 1)";
    const compiled = compile(digits, spec, { exposeIndices: true }).model;
    const f = feedsOf(0, 3);
    const p = (await runNode(withOutputs(digits, [probs]), f, [probs]))[probs]!;
    const expectedCounts = unfoldProbs(p.data as Float32Array, p.dims, 4).map(
      (ex) => 1 + flowcutCount(clsScores(ex, 1), 16, 2),
    );
    expect(new Set(expectedCounts).size).toBeGreaterThan(1);
    const out = await runNode(compiled, f);
    expect(Array.from(out["prunec.stage0.counts"]!.data as BigInt64Array, Number)).toEqual(expectedCounts);
    expect(Array.from(out["prunec.stage1.counts"]!.data as BigInt64Array, Number)).toEqual([17, 17, 17]);
    for (let i = 0; i < 3; i++) {
      const alone = await runNode(compiled, feedsOf(i, i + 1));
      const logits = out["logits"]!.data as Float32Array;
      expect(
        maxAbsDiff(logits.subarray(i * 10, (i + 1) * 10), alone["logits"]!.data as Float32Array),
      ).toBeLessThanOrEqual(1e-5);
    }
  });
});

describe("per-example counts behind fused attention with a carried attention_bias", () => {
  it("keep mass 60% on the fused ViT: at batch 3 each example keeps and computes what it does alone", async () => {
    const fused = buildFusedVit();
    const compiled = compile(fused, "after layer 0 keep mass 60% by cls-attn", { exposeIndices: true }).model;
    const batch = await runNode(compiled, fusedVitFeeds(3));
    expect(new Set(Array.from(batch["prunec.stage0.counts"]!.data as BigInt64Array)).size).toBeGreaterThan(1); // the counts differ
    const all = fusedVitFeeds(3).patches!;
    const per = all.data.length / 3;
    for (let i = 0; i < 3; i++) {
      const one = {
        patches: {
          ...all,
          dims: [1, ...all.dims.slice(1)],
          data: (all.data as Float32Array).slice(i * per, (i + 1) * per),
        },
      };
      const alone = await runNode(compiled, one);
      expect(keptOf(batch)[i]).toEqual(keptOf(alone)[0]);
      const logits = batch["logits"]!.data as Float32Array;
      const classes = alone["logits"]!.dims[1]!;
      expect(
        maxAbsDiff(logits.subarray(i * classes, (i + 1) * classes), alone["logits"]!.data as Float32Array),
      ).toBeLessThanOrEqual(1e-5);
    }
  });
});
