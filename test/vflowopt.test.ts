/**
 * `with recycle(grid: a)`, VFlowOpt's grid-group recycling, end to end: the compiled model, run in
 * onnxruntime-node (CPU) and onnxruntime-web (WASM), keeps exactly the positions the float64
 * reference (test/reference/vflowopt.ts, written from the authors' code) keeps, fed the dense
 * model's own CLS attention and residual stream, and its stage output holds the reference's rows:
 * each kept token's own row, and at each cell's representative the cell's score-weighted mean.
 * Batch 1 and a batch of 3 different images; a case where some cell has no dropped token, so the
 * counts differ per example and the batch pads (each example still computes its batch-1 result).
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, describeShared } from "./helpers/shared.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { withOutputs, unfoldProbs, rows, scaleInitializer } from "./support/model-edit.js";
import { clsScores, keepCount } from "./reference/cls-attn.js";
import { vflowoptRecycle, type VFlowOptResult } from "./reference/vflowopt.js";
import { digitsFeeds, firstErrorLine, vitTiFeeds, vitTiModel } from "./support/cases.js";
import { buildFusedVit } from "./support/fused-vit.js";

interface Model {
  bytes: Uint8Array;
  heads: number;
  width: number;
  prunable: number;
  feeds: Feeds[];
}

const probsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Softmax_output_0`;
const residualOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/Add_1_output_0`;

/** [B][N][D] of a float [B, N, D] output. */
function tokens(t: { data: unknown; dims: readonly number[] }): number[][][] {
  const [b, n, d] = t.dims as [number, number, number];
  const data = t.data as Float32Array;
  return Array.from({ length: b }, (_, i) =>
    Array.from({ length: n }, (_, r) => Array.from(data.subarray((i * n + r) * d, (i * n + r + 1) * d))),
  );
}

/** The reference on the dense model's CLS attention and stage input, one result per example. */
async function reference(
  m: Model,
  f: Feeds,
  layer: number,
  a: number,
  keep: number,
): Promise<{ refs: VFlowOptResult[]; stream: number[][][] }> {
  const names = [probsOf(layer), residualOf(layer)];
  const out = await runNode(withOutputs(m.bytes, names), f, names);
  const p = out[names[0]!]!;
  const scores = unfoldProbs(p.data as Float32Array, p.dims, m.heads).map((ex) => clsScores(ex, 1));
  const stream = tokens(out[names[1]!]!);
  return { refs: scores.map((s, e) => vflowoptRecycle(s, stream[e]!.slice(1), m.width, a, keep)), stream };
}

/** Compiles the stage, checks kept positions, counts and rows against the reference on every feed; returns the counts. */
async function expectVFlowOpt(
  m: Model,
  layer: number,
  percent: number,
  a: number,
  options: { ties?: boolean } = {},
): Promise<{ counts: number[][]; kept: number[][] }> {
  const spec = `after layer ${layer} keep ${percent}% by cls-attn with recycle(grid: ${a})`;
  const keep = keepCount(percent, m.prunable);
  const { model: pruned } = compile(m.bytes, spec, { exposeIndices: true });
  const tapped = withOutputs(pruned, [residualOf(layer)]);
  const names = ["prunec.stage0.indices", "prunec.stage0.counts", residualOf(layer)];
  const allCounts: number[][] = [];
  const allKept: number[][] = [];
  for (const f of m.feeds) {
    const { refs, stream } = await reference(m, f, layer, a, keep);
    // fp32 scores could only disagree with float64 ones near a flip (unless every score ties exactly).
    for (const r of options.ties ? [] : refs) {
      expect(r.margins.cut).toBeGreaterThan(1e-6);
      expect(r.margins.rep).toBeGreaterThan(1e-6);
    }
    for (const run of [runNode, runWasm]) {
      const out = await run(tapped, f, names);
      const idx = out[names[0]!]!;
      const padded = rows(idx.data as BigInt64Array, idx.dims);
      const counts = Array.from(out[names[1]!]!.data as BigInt64Array, Number);
      const stage = tokens(out[names[2]!]!);
      refs.forEach((ref, e) => {
        const expected = [0, ...ref.kept.map((j) => j + 1)];
        expect(padded[e]!.filter((i) => i >= 0)).toEqual(expected);
        expect(counts[e]).toBe(expected.length);
        // Rows follow the exposed positions (padding, −1, interleaved in position order): each
        // representative's row is its cell's mean, every other kept row the dense model's own.
        padded[e]!.forEach((p, r) => {
          if (p < 0) return;
          const want = (p > 0 ? ref.merged.get(p - 1) : undefined) ?? stream[e]![p]!;
          expect(maxAbsDiff(Float32Array.from(stage[e]![r]!), Float32Array.from(want))).toBeLessThanOrEqual(1e-4);
        });
        const represented = padded[e]!.filter((p) => p > 0 && ref.merged.has(p - 1)).length;
        expect(represented).toBe(ref.groups);
      });
      if (run === runNode) {
        allCounts.push(counts);
        allKept.push(...refs.map((r) => r.kept));
      }
    }
  }
  return { counts: allCounts, kept: allKept };
}

/** Each example of the batch of 3 alone gives the logits it gives in the batch (its padding is masked). */
async function expectBatchEqualsAlone(m: Model, spec: string): Promise<void> {
  const { model: pruned } = compile(m.bytes, spec);
  const three = m.feeds[1]!;
  const x = three.pixel_values!;
  const per = x.data.length / 3;
  const batch = (await runNode(pruned, three, ["logits"])).logits!.data as Float32Array;
  const classes = batch.length / 3;
  for (let i = 0; i < 3; i++) {
    const one: Feeds = {
      pixel_values: {
        ...x,
        dims: [1, ...x.dims.slice(1)],
        data: (x.data as Float32Array).slice(i * per, (i + 1) * per),
      },
    };
    const alone = (await runNode(pruned, one, ["logits"])).logits!.data as Float32Array;
    expect(maxAbsDiff(alone, batch.subarray(i * classes, (i + 1) * classes))).toBeLessThanOrEqual(1e-5);
  }
}

const digits: Model = {
  bytes: readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx")),
  heads: 4,
  width: 8,
  prunable: 64,
  feeds: digitsFeeds(), // example 0 alone; examples 1..3
};

describe("with recycle(grid: a) on the trained digits ViT (8×8 patches + CLS)", () => {
  it("a = 2.5, keep 25% after layer 2: K − m = 16 − 10 best, one token per cell (9 cells), CPU and WASM, batch 1 and 3", async () => {
    const { counts } = await expectVFlowOpt(digits, 2, 25, 2.5);
    expect(counts.flat().every((c) => c <= 1 + 15)).toBe(true);
  });

  it("a = 4, keep 90% after layer 2: cells with no dropped token keep nothing extra, so the counts differ per example", async () => {
    const { counts } = await expectVFlowOpt(digits, 2, 90, 4);
    expect(new Set(counts.flat()).size).toBeGreaterThan(1);
    await expectBatchEqualsAlone(digits, "after layer 2 keep 90% by cls-attn with recycle(grid: 4)");
  });

  it("every score tied (layer 2's ln_1 zeroed: uniform attention): TopK keeps the lower positions, each cell's representative is its highest dropped position", async () => {
    let bytes = scaleInitializer(digits.bytes, "encoder.layers.encoder_layer_2.ln_1.weight", 0);
    bytes = scaleInitializer(bytes, "encoder.layers.encoder_layer_2.ln_1.bias", 0);
    const { kept } = await expectVFlowOpt({ ...digits, bytes }, 2, 50, 4, { ties: true });
    // K = 32, m = 4: positions 0..27 by TopK; dropped 28..63 fill cells (0,1), (1,0), (1,1) of 4×4.
    const expected = [...Array(28).keys(), 31, 59, 63];
    for (const k of kept) expect(k).toEqual(expected);
  });

  it("the report bounds the count: 1 + K − m + min(cells, dropped)", () => {
    const { report } = compile(digits.bytes, "after layer 2 keep 25% by cls-attn with recycle(grid: 2.5)");
    expect(report.stages[0]).toMatchObject({ tokensIn: 65, tokensOut: "1+grid(≤15)" });
  });

  it("a later stage counts per example after it", async () => {
    const spec = "after layer 1 keep 90% by cls-attn with recycle(grid: 4)\nafter layer 3 keep 50% by cls-attn";
    const { report } = compile(digits.bytes, spec);
    expect(report.stages[1]).toMatchObject({ tokensOut: "1+keep(keep 50%)" });
    await expectBatchEqualsAlone(digits, spec);
  });
});

describe("with recycle(grid: a): refusals", () => {
  const refused = (spec: string) => firstErrorLine(digits.bytes, spec);
  it("says what does not fit", () => {
    expect(refused("after layer 2 keep 25% by cls-attn with recycle(grid: 0)")).toBe(
      "s.prune:1:41: error: 'with recycle(grid: 0)' needs a cell size above 0 (in patches)",
    );
    expect(refused("after layer 2 keep 25% by cls-attn with recycle(grid: 2)")).toBe(
      "s.prune:1:41: error: 'with recycle(grid: 2)' drops ⌊64/2²⌋ = 16 more of the lowest-scored tokens beyond the stage's own, but the stage keeps only 16: keep more or use a larger cell",
    );
    expect(
      refused("after layer 1 keep 50% by cls-attn\nafter layer 2 keep 50% by cls-attn with recycle(grid: 4)"),
    ).toBe(
      "s.prune:2:41: error: 'with recycle(grid: 4)' groups tokens by their place in the patch grid, but an earlier stage already pruned it (33 of 65 tokens enter this stage)",
    );
    expect(refused("after layer 2 keep mass 80% by cls-attn with recycle(grid: 4)")).toBe(
      "s.prune:1:46: error: 'mass' keeps a number of tokens that depends on the input, so it needs a stage that ranks single tokens by score (without 'with recycle')",
    );
    expect(refused("after layer 2 keep 25% by cls-attn with recycle(grid: 4), mask")).toBe(
      "s.prune:1:41: error: 'with mask' and 'with recycle' cannot be combined: a masked stage removes nothing to recycle",
    );
    expect(refused("after layer 2 keep 25% by cls-attn with recycle(grid: 4), restore")).toBe(
      "s.prune:1:41: error: 'with restore' and 'with recycle' cannot be combined: the recycled token stands for no input position to restore it to",
    );
    expect(refused("after layer 2 keep 25% by cls-attn with recycle(grid: 4), renumber")).toBe(
      "s.prune:1:41: error: 'with recycle' and 'with renumber' cannot be combined: the recycled token has no position to renumber",
    );
    // Patches projected by a MatMul from a [batch, patches, inputs] input: no grid to prove.
    expect(firstErrorLine(buildFusedVit(), "after layer 0 keep 50% by cls-attn with recycle(grid: 2)")).toBe(
      "s.prune:1:41: error: 'with recycle(grid: 2)' groups tokens by their place in the patch grid, which prunec could not prove: the patches '/embeddings/patch/MatMul/output_0' are not the transpose (0, 2, 1) of a [batch, hidden, patches] tensor ('/embeddings/patch/MatMul' (MatMul))",
    );
    expect(refused("after layer 2 keep 25% by hiprune(object_layer: 0) with recycle(grid: 4)")).toBe(
      "s.prune:1:57: error: 'with recycle(grid: 4)' keeps a number of tokens that depends on the input, but hiprune sizes its selection from the stage's budget, which must be one static count",
    );
    expect(refused("after layer 2 keep 25% by spatial-rows with recycle(grid: 4)")).toBe(
      "s.prune:1:45: error: 'with recycle' needs a stage that ranks single tokens by score, but spatial-rows keeps whole grid rows",
    );
    expect(
      refused(
        "after layer 2 keep 25% by cls-attn with recycle(grid: 4)\nafter layer 3 keep 50% by cls-attn with recycle(grid: 4)",
      ),
    ).toBe(
      "s.prune:2:41: error: an earlier stage kept a number of tokens that depends on the input, so this one counts per example, so it needs a stage that ranks single tokens by score (without 'with recycle')",
    );
  });
});

describe("with recycle without a grid is unchanged", () => {
  it("one appended token, the count static", () => {
    const { report } = compile(digits.bytes, "after layer 2 keep 25% by cls-attn with recycle");
    expect(report.stages[0]).toMatchObject({ tokensIn: 65, tokensOut: 18 });
  });
});

describeShared("with recycle(grid: a) on ViT-Ti (14×14 patches + CLS, random weights)", () => {
  it("a = 4.5, keep 25% after layer 3: the reference's set and rows at batch 1 and 3, CPU and WASM", async () => {
    const m: Model = { bytes: vitTiModel(), heads: 3, width: 14, prunable: 196, feeds: vitTiFeeds() };
    await expectVFlowOpt(m, 3, 25, 4.5);
  });

  it("the authors' a = 17.39 (their 10% config) on a 14×14 grid: m = 0 and one cell, so K + 1 kept", async () => {
    const m: Model = { bytes: vitTiModel(), heads: 3, width: 14, prunable: 196, feeds: vitTiFeeds() };
    const { counts } = await expectVFlowOpt(m, 3, 10, 17.39);
    expect(counts.flat().every((c) => c === 1 + 20 + 1)).toBe(true);
  });
});
