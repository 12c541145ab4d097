/**
 * `merge ... by similarity` (ToMe, passes/merge-stage.ts) against the plain-array reference
 * (test/reference/tome.ts), which reads the dense model's keys and residual stream: the surviving
 * positions exactly, the size-weighted means ≤ 1e-5, on CPU and WASM, batch 1, 2 and 3; the sizes
 * carried to a second merge; proportional attention; fused MultiHeadAttention vs its unfused twin;
 * and the exact errors of what merging does not support.
 *
 * Ties: the reference breaks them like the graph (first maximum for a token's partner, lower A
 * position at the r-th edge), but fp32 vs float64 could still flip a near-tie, so each case first
 * checks that the inputs have none: the r-th and (r+1)-th edges, and every merged token's best and
 * second-best partner, differ by more than 1e-5, well above the fp32 error of a cosine of unit
 * vectors (D = 24: ≲ 3e-6). The digits' blank background patches have near-identical keys, so at
 * most layers some partner margins there are ~1e-6; the cases below are ones without.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, itShared, sharedModel } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { withOutputs, rows } from "./support/model-edit.js";
import { buildFusedVit, fusedVitFeeds, FUSED_VIT } from "./support/fused-vit.js";
import { unfuseMultiHeadAttention } from "./support/unfuse.js";
import { truncateToLayers } from "./support/synthetic-weights.js";
import { tomeStep, nextSequence, headMeanKeysFromKt, tokensOf, type TomeStep } from "./reference/tome.js";
import { compile } from "../src/compile.js";
import { parseDataset, batchInput } from "../src/data/prds.js";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { sizesName } from "../passes/merge-stage.js";
import { denseName } from "../passes/gather-tokens.js";

const tiny = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
const digits = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
const tinyIn = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
const tinyFeeds: Feeds = { pixel_values: { type: "float32", dims: tinyIn.shape, data: tinyIn.data } };
const digitSet = parseDataset(readFileSync(join(REPO_ROOT, "examples", "digits", "sample.prds")));
const digitFeeds = (batch: number): Feeds => {
  const x = batchInput(digitSet, 0, batch);
  return { pixel_values: { type: "float32", dims: x.dims, data: x.data } };
};

/** What the tests read of a model: per layer, the residual leaving it, its keys (Kᵀ) and its softmax. */
function layerNames(bytes: Uint8Array) {
  const info = analyzeTransformer(new Graph(decodeModel(bytes).graph!));
  return info.layers.map((l) => ({
    residual: l.residual!.output,
    keys: l.core!.qk?.input[1] ?? "",
    heads: l.heads!,
    softmax: l.core!.anchor.name,
    logits: l.core!.anchor.input[0]!,
  }));
}

const f32 = (o: { data: unknown }) => o.data as Float32Array;
const flat = (steps: TomeStep[]) => steps.flatMap((s) => s.merged.flat());

/** The reference step of every example, from the keys and residual the model computes at `layer` (sizes: 1, or given). */
async function referenceAt(
  model: Uint8Array,
  layer: number,
  feeds: Feeds,
  r: number,
  sizes?: number[][],
  names = layerNames(model)[layer]!,
  residual = names.residual,
): Promise<TomeStep[]> {
  const out = await runNode(withOutputs(model, [names.keys, residual]), feeds, [names.keys, residual]);
  const keys = headMeanKeysFromKt(f32(out[names.keys]!), out[names.keys]!.dims, names.heads);
  const x = tokensOf(f32(out[residual]!), out[residual]!.dims);
  const prefix = analyzeTransformer(new Graph(decodeModel(model).graph!)).cls.prefixTokens;
  return keys.map((k, b) => tomeStep(k, x[b]!, sizes?.[b] ?? k.map(() => 1), r, prefix));
}

function expectNoNearTies(steps: TomeStep[]): void {
  for (const s of steps) {
    expect(s.boundaryGap).toBeGreaterThan(1e-5);
    expect(s.partnerGap).toBeGreaterThan(1e-5);
  }
}

/** Compile `spec` and run it exposing `tensors` and every stage's indices. */
async function runCompiled(model: Uint8Array, spec: string, feeds: Feeds, tensors: string[], run = runNode) {
  const compiled = compile(model, spec, { exposeIndices: true });
  const indices = compiled.report.stages.map((_, i) => `prunec.stage${i}.indices`);
  const out = await run(withOutputs(compiled.model, tensors), feeds, [...indices, ...tensors]);
  return { out, kept: indices.map((t) => rows(out[t]!.data as BigInt64Array, out[t]!.dims)), report: compiled.report };
}

describe("merge by similarity: one stage against the ToMe reference", () => {
  const cases = [
    {
      title: "tiny-vit, batch 2",
      model: tiny,
      feeds: tinyFeeds,
      layer: 1,
      spec: "after layer 1 merge 25% by similarity",
      r: 16,
    },
    {
      title: "digits, batch 1",
      model: digits,
      feeds: digitFeeds(1),
      layer: 2,
      spec: "after layer 2 merge 40% by similarity",
      r: 26,
    },
    {
      title: "digits, batch 3",
      model: digits,
      feeds: digitFeeds(3),
      layer: 0,
      spec: "after layer 0 merge 40% by similarity",
      r: 26,
    },
    {
      title: "digits, batch 3, the most ToMe merges (32 tokens)",
      model: digits,
      feeds: digitFeeds(3),
      layer: 0,
      spec: "after layer 0 merge 32 tokens by similarity",
      r: 32,
    },
  ];
  for (const c of cases) {
    it(`${c.title}: '${c.spec}': surviving positions exact, size-weighted means ≤ 1e-5, sizes exact (CPU and WASM)`, async () => {
      const names = layerNames(c.model)[c.layer]!;
      const expected = await referenceAt(c.model, c.layer, c.feeds, c.r);
      expectNoNearTies(expected);
      for (const s of expected) {
        expect(s.positions.length).toBe(65 - c.r);
        expect(s.positions[0]).toBe(0); // CLS never merges
        expect([...s.tomeOrder].sort((p, q) => p - q)).toEqual(s.positions); // ToMe's order is a permutation of ours
      }
      for (const run of [runNode, runWasm]) {
        const { out, kept, report } = await runCompiled(c.model, c.spec, c.feeds, [names.residual, sizesName(0)], run);
        expect(report.stages[0]).toMatchObject({ criterion: "similarity", tokensIn: 65, tokensOut: 65 - c.r });
        expect(kept[0]).toEqual(expected.map((s) => s.positions));
        expect(out[names.residual]!.dims).toEqual([expected.length, 65 - c.r, c.model === tiny ? 48 : 96]);
        expect(maxAbsDiff(f32(out[names.residual]!), flat(expected))).toBeLessThanOrEqual(1e-5);
        expect(Array.from(f32(out[sizesName(0)]!))).toEqual(expected.flatMap((s) => s.sizes));
      }
    });
  }

  it("the merged stream is not the dense rows: merged tokens average several", async () => {
    const names = layerNames(tiny)[1]!;
    const [step] = await referenceAt(tiny, 1, tinyFeeds, 16);
    expect(step!.sizes.some((s) => s > 1)).toBe(true);
    expect(step!.sizes.reduce((a, b) => a + b, 0)).toBe(65);
    const dense = tokensOf(
      f32((await runNode(withOutputs(tiny, [names.residual]), tinyFeeds, [names.residual]))[names.residual]!),
      [2, 65, 48],
    )[0]!;
    const at = step!.sizes.findIndex((s) => s > 1);
    expect(maxAbsDiff(step!.merged[at]!, dense[step!.positions[at]!]!)).toBeGreaterThan(1e-3);
  });
});

describe("merge by similarity: sizes carried to a second merge", () => {
  it("tiny-vit batch 2: the second stage weighs by the first stage's sizes (positions exact, means ≤ 1e-5, CPU and WASM)", async () => {
    const spec = "after layer 0 merge 25% by similarity\nafter layer 2 merge 10 tokens by similarity";
    const names = layerNames(tiny);
    const first = await referenceAt(tiny, 0, tinyFeeds, 16);
    expectNoNearTies(first);
    const exposed = [
      names[0]!.residual,
      names[2]!.keys,
      denseName(names[2]!.residual),
      names[2]!.residual,
      sizesName(0),
      sizesName(1),
    ];
    for (const run of [runNode, runWasm]) {
      const { out, kept } = await runCompiled(tiny, spec, tinyFeeds, exposed, run);
      expect(kept[0]).toEqual(first.map((s) => s.positions));
      expect(maxAbsDiff(f32(out[names[0]!.residual]!), flat(first))).toBeLessThanOrEqual(1e-5);
      expect(Array.from(f32(out[sizesName(0)]!))).toEqual(first.flatMap((s) => s.sizes));
      // Stage 2's reference: the keys and stream layer 2 computes on the 49 merged tokens, and stage 1's sizes.
      const keys = headMeanKeysFromKt(f32(out[names[2]!.keys]!), out[names[2]!.keys]!.dims, names[2]!.heads);
      const x = tokensOf(f32(out[denseName(names[2]!.residual)]!), out[denseName(names[2]!.residual)]!.dims);
      // ToMe splits its own order [unmerged A, B] of stage 1's output, not position order.
      const second = keys.map((k, b) => tomeStep(k, x[b]!, first[b]!.sizes, 10, 1, nextSequence(first[b]!)));
      expectNoNearTies(second);
      // Position order would have paired other tokens: the test sees the difference.
      const positional = keys.map((k, b) => tomeStep(k, x[b]!, first[b]!.sizes, 10, 1));
      expect(positional.map((s) => s.positions)).not.toEqual(second.map((s) => s.positions));
      expect(kept[1]).toEqual(second.map((s) => s.positions));
      expect(out[names[2]!.residual]!.dims).toEqual([2, 39, 48]);
      expect(maxAbsDiff(f32(out[names[2]!.residual]!), flat(second))).toBeLessThanOrEqual(1e-5);
      expect(Array.from(f32(out[sizesName(1)]!))).toEqual(second.flatMap((s) => s.sizes));
      expect(second.every((s) => s.sizes.reduce((a, b) => a + b, 0) === 65)).toBe(true);
      // Weighing by 1 instead would give other means: the check above sees the sizes.
      const unweighted = keys.map((k, b) =>
        tomeStep(
          k,
          x[b]!,
          k.map(() => 1),
          10,
          1,
        ),
      );
      expect(maxAbsDiff(f32(out[names[2]!.residual]!), flat(unweighted))).toBeGreaterThan(1e-3);
    }
  });
});

/**
 * AIM (LaVi-Lab/AIM, llava/model/token_merge.py): the merge is `scatter_reduce(..., "mean")` with
 * include_self, an unweighted mean of the destination and its sources. It equals ToMe's on the
 * first merge (every size is 1); on a second merge it counts each token once whatever its size.
 */
describe("merge by similarity(weighted: 0): AIM's unweighted mean", () => {
  it("tiny-vit batch 2, two merges: the second's means count each token once (≤ 1e-5), sizes still sum, positions as ToMe's; CPU and WASM", async () => {
    const spec =
      "after layer 0 merge 25% by similarity(weighted: 0)\nafter layer 2 merge 10 tokens by similarity(weighted: 0)";
    const names = layerNames(tiny);
    const first = await referenceAt(tiny, 0, tinyFeeds, 16);
    expectNoNearTies(first);
    const exposed = [
      names[0]!.residual,
      names[2]!.keys,
      denseName(names[2]!.residual),
      names[2]!.residual,
      sizesName(1),
    ];
    for (const run of [runNode, runWasm]) {
      const { out, kept } = await runCompiled(tiny, spec, tinyFeeds, exposed, run);
      expect(kept[0]).toEqual(first.map((s) => s.positions));
      expect(maxAbsDiff(f32(out[names[0]!.residual]!), flat(first))).toBeLessThanOrEqual(1e-5);
      const keys = headMeanKeysFromKt(f32(out[names[2]!.keys]!), out[names[2]!.keys]!.dims, names[2]!.heads);
      const x = tokensOf(f32(out[denseName(names[2]!.residual)]!), out[denseName(names[2]!.residual)]!.dims);
      const aim = keys.map((k, b) => tomeStep(k, x[b]!, first[b]!.sizes, 10, 1, nextSequence(first[b]!), false));
      const tome = keys.map((k, b) => tomeStep(k, x[b]!, first[b]!.sizes, 10, 1, nextSequence(first[b]!)));
      expectNoNearTies(aim);
      expect(kept[1]).toEqual(aim.map((s) => s.positions));
      expect(maxAbsDiff(f32(out[names[2]!.residual]!), flat(aim))).toBeLessThanOrEqual(1e-5);
      expect(Array.from(f32(out[sizesName(1)]!))).toEqual(aim.flatMap((s) => s.sizes));
      // ToMe's size-weighted means differ here: the test sees the option.
      expect(maxAbsDiff(flat(aim), flat(tome))).toBeGreaterThan(1e-3);
    }
  });

  it("weighted takes 0 or 1", () => {
    expect(() => compile(tiny, "after layer 0 merge 25% by similarity(weighted: 2)", { specName: "m.prune" })).toThrow(
      "m.prune:1:49: error: argument 'weighted' of 'similarity' must be 0 or 1, got 2",
    );
  });
});

describe("merge by similarity: a second merge splits ToMe's order, with a distillation token (DeiT, prefix 2)", () => {
  const deit = readFileSync(join(REPO_ROOT, "test", "fixtures", "exports", "deit-two-tokens.onnx"));
  const x = readNpy(join(REPO_ROOT, "test", "fixtures", "exports", "input-32x32.npy"));
  const feeds: Feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
  it("stage 2 pairs the tokens of [unm[0], dst[0], unm[1:], dst[1:]] (tome/merge.py), not of position order; batch 2, CPU and WASM", async () => {
    const names = layerNames(deit);
    const first = (await referenceAt(deit, 0, feeds, 4)).map((s) => s);
    const spec = "after layer 0 merge 4 tokens by similarity\nafter layer 1 merge 3 tokens by similarity";
    const exposed = [names[1]!.keys, denseName(names[1]!.residual), names[1]!.residual];
    for (const run of [runNode, runWasm]) {
      const { out, kept } = await runCompiled(deit, spec, feeds, exposed, run);
      const keys = headMeanKeysFromKt(f32(out[names[1]!.keys]!), out[names[1]!.keys]!.dims, names[1]!.heads);
      const xs = tokensOf(f32(out[denseName(names[1]!.residual)]!), out[denseName(names[1]!.residual)]!.dims);
      const reference = (k: number[][], b: number) =>
        tomeStep(k, xs[b]!, first[b]!.sizes, 3, 2, nextSequence(first[b]!));
      const second = keys.map(reference);
      expectNoNearTies(second);
      expect(kept[1]).toEqual(second.map((s) => s.positions));
      expect(maxAbsDiff(f32(out[names[1]!.residual]!), flat(second))).toBeLessThanOrEqual(1e-5);
      // CLS and the distillation token never merge.
      for (const k of kept[1]!) expect(k.slice(0, 2)).toEqual([0, 1]);
    }
  });
});

describe("merge by similarity: without a class token ToMe keeps its unmerged A tokens in edge order (meanpool-nocls, prefix 0)", () => {
  const model = readFileSync(join(REPO_ROOT, "test", "fixtures", "exports", "meanpool-nocls.onnx"));
  const x = readNpy(join(REPO_ROOT, "test", "fixtures", "exports", "input-32x32.npy"));
  const feeds: Feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
  it("two merges: the second splits ToMe's [unm (best edge first), dst] sequence; batch 2, CPU and WASM", async () => {
    const names = layerNames(model);
    const spec = "after layer 0 merge 4 tokens by similarity\nafter layer 1 merge 3 tokens by similarity";
    const first = await referenceAt(model, 0, feeds, 4);
    expectNoNearTies(first);
    // The unmerged A tokens (all but the 8 B tokens at the end) are not in position order here.
    expect(first.some((s) => s.tomeOrder.slice(0, -8).some((p, i, unm) => i > 0 && p < unm[i - 1]!))).toBe(true);
    const exposed = [names[1]!.keys, denseName(names[1]!.residual), names[1]!.residual];
    for (const run of [runNode, runWasm]) {
      const { out, kept } = await runCompiled(model, spec, feeds, exposed, run);
      expect(kept[0]).toEqual(first.map((s) => s.positions));
      const keys = headMeanKeysFromKt(f32(out[names[1]!.keys]!), out[names[1]!.keys]!.dims, names[1]!.heads);
      const xs = tokensOf(f32(out[denseName(names[1]!.residual)]!), out[denseName(names[1]!.residual)]!.dims);
      const second = keys.map((k, b) => tomeStep(k, xs[b]!, first[b]!.sizes, 3, 0, nextSequence(first[b]!)));
      expectNoNearTies(second);
      expect(kept[1]).toEqual(second.map((s) => s.positions));
      expect(maxAbsDiff(f32(out[names[1]!.residual]!), flat(second))).toBeLessThanOrEqual(1e-5);
    }
  });
});

describe("merge by similarity(proportional: 1): log(size) on the later layers' attention logits", () => {
  /** softmax input − plain logits of `layer`, [B·H,N,N] → checks it is log(size_j) of example b on every row. */
  function expectLogSizeBias(
    biased: Float32Array,
    plain: Float32Array,
    dims: number[],
    heads: number,
    sizes: number[][],
  ): void {
    const [bh, q, n] = dims as [number, number, number];
    let worst = 0;
    for (let i = 0; i < bh; i++)
      for (let row = 0; row < q; row++)
        for (let j = 0; j < n; j++) {
          const at = (i * q + row) * n + j;
          worst = Math.max(worst, Math.abs(biased[at]! - plain[at]! - Math.log(sizes[Math.floor(i / heads)]![j]!)));
        }
    expect(worst).toBeLessThanOrEqual(1e-5);
  }

  it("tiny-vit: every later layer gets log(size) of its own tokens; a second merge replaces it; a later keep stage gathers it", async () => {
    const names = layerNames(tiny);
    const biasedInput = (model: Uint8Array, layer: number) =>
      decodeModel(model).graph!.node.find((x) => x.name === names[layer]!.softmax)!.input[0]!;
    // One merge: layers 2 and 3 see log(size) of the 49 merged tokens; the merge itself is the plain one.
    const one = compile(tiny, "after layer 1 merge 25% by similarity(proportional: 1)").model;
    const plainMerge = await runCompiled(tiny, "after layer 1 merge 25% by similarity", tinyFeeds, [
      names[1]!.residual,
    ]);
    const seen = [
      names[1]!.residual,
      sizesName(0),
      names[2]!.logits,
      biasedInput(one, 2),
      names[3]!.logits,
      biasedInput(one, 3),
    ];
    const out = await runNode(withOutputs(one, seen), tinyFeeds, seen);
    expect(maxAbsDiff(f32(out[names[1]!.residual]!), f32(plainMerge.out[names[1]!.residual]!))).toBe(0);
    const sizes = [0, 1].map((b) => Array.from(f32(out[sizesName(0)]!).subarray(b * 49, (b + 1) * 49)));
    for (const l of [2, 3])
      expectLogSizeBias(
        f32(out[biasedInput(one, l)]!),
        f32(out[names[l]!.logits]!),
        out[names[l]!.logits]!.dims,
        2,
        sizes,
      );

    // Two merges: layer 3 sees the second stage's sizes (39 tokens), not the first's.
    const two = compile(
      tiny,
      "after layer 0 merge 25% by similarity(proportional: 1)\nafter layer 2 merge 10 tokens by similarity(proportional: 1)",
    ).model;
    const seen2 = [
      sizesName(0),
      sizesName(1),
      names[1]!.logits,
      biasedInput(two, 1),
      names[3]!.logits,
      biasedInput(two, 3),
    ];
    const out2 = await runNode(withOutputs(two, seen2), tinyFeeds, seen2);
    const per = (t: string, k: number) => [0, 1].map((b) => Array.from(f32(out2[t]!).subarray(b * k, (b + 1) * k)));
    expectLogSizeBias(
      f32(out2[biasedInput(two, 1)]!),
      f32(out2[names[1]!.logits]!),
      out2[names[1]!.logits]!.dims,
      2,
      per(sizesName(0), 49),
    );
    expectLogSizeBias(
      f32(out2[biasedInput(two, 3)]!),
      f32(out2[names[3]!.logits]!),
      out2[names[3]!.logits]!.dims,
      2,
      per(sizesName(1), 39),
    );

    // A keep stage after a proportional merge carries the bias with the kept tokens.
    const keep = compile(
      tiny,
      "after layer 0 merge 25% by similarity(proportional: 1)\nafter layer 2 keep 50% by cls-attn",
      { exposeIndices: true },
    ).model;
    const seen3 = [sizesName(0), "prunec.stage1.indices", names[3]!.logits, biasedInput(keep, 3)];
    const out3 = await runNode(withOutputs(keep, seen3.slice(0, 1).concat(seen3.slice(2))), tinyFeeds, seen3);
    const kept = rows(out3["prunec.stage1.indices"]!.data as BigInt64Array, out3["prunec.stage1.indices"]!.dims);
    const sizes0 = [0, 1].map((b) => Array.from(f32(out3[sizesName(0)]!).subarray(b * 49, (b + 1) * 49)));
    expect(kept[0]!.length).toBe(25);
    expectLogSizeBias(
      f32(out3[biasedInput(keep, 3)]!),
      f32(out3[names[3]!.logits]!),
      out3[names[3]!.logits]!.dims,
      2,
      kept.map((k, b) => k.map((j) => sizes0[b]![j]!)),
    );
  });
});

describe("merge by similarity behind fused MultiHeadAttention", () => {
  const fused = buildFusedVit();
  const twin = unfuseMultiHeadAttention(fused, FUSED_VIT.hidden / FUSED_VIT.heads);

  it("keys from the op's key input (+ its bias): the same positions and merged stream as the unfused twin and the reference (≤ 1e-5), batch 1 and 3, CPU and WASM", async () => {
    const spec = "after layer 1 merge 12 tokens by similarity";
    const residual = layerNames(twin)[1]!.residual;
    expect(layerNames(fused)[1]!.residual).toBe(residual);
    for (const batch of [1, 3]) {
      const f = fusedVitFeeds(batch);
      const expected = await referenceAt(twin, 1, f, 12);
      expectNoNearTies(expected);
      const ofTwin = await runCompiled(twin, spec, f, [residual, "logits"]);
      expect(ofTwin.kept[0]).toEqual(expected.map((s) => s.positions));
      expect(maxAbsDiff(f32(ofTwin.out[residual]!), flat(expected))).toBeLessThanOrEqual(1e-5);
      for (const run of [runNode, runWasm]) {
        const ofFused = await runCompiled(fused, spec, f, [residual, "logits"], run);
        expect(ofFused.kept[0]).toEqual(ofTwin.kept[0]);
        expect(maxAbsDiff(f32(ofFused.out[residual]!), f32(ofTwin.out[residual]!))).toBeLessThanOrEqual(1e-5);
        // The attention_bias of the later layers follows the surviving positions in both.
        expect(maxAbsDiff(f32(ofFused.out["logits"]!), f32(ofTwin.out["logits"]!))).toBeLessThanOrEqual(1e-5);
      }
    }
  });

  it("proportional attention on MultiHeadAttention (attention_bias) equals the twin's (Softmax input)", async () => {
    const spec = "after layer 0 merge 12 tokens by similarity(proportional: 1)";
    const f = fusedVitFeeds(2);
    const a = await runCompiled(fused, spec, f, ["logits"]);
    const b = await runCompiled(twin, spec, f, ["logits"]);
    const plain = await runCompiled(twin, "after layer 0 merge 12 tokens by similarity", f, ["logits"]);
    expect(a.kept).toEqual(b.kept);
    expect(maxAbsDiff(f32(a.out["logits"]!), f32(b.out["logits"]!))).toBeLessThanOrEqual(1e-5);
    expect(maxAbsDiff(f32(b.out["logits"]!), f32(plain.out["logits"]!))).toBeGreaterThan(1e-4);
  });
});

describe("merge by similarity: what it rejects, with exact messages", () => {
  const firstLine = (model: Uint8Array, spec: string): string => {
    try {
      compile(model, spec, { specName: "s.prune" });
    } catch (e) {
      return (e as Error).message.split("\n")[0]!;
    }
    return "compiled";
  };
  const cases: [string, string][] = [
    [
      "after layer 1 merge 0.5% by similarity",
      "s.prune:1:21: error: this stage would merge 0.5% of 64 prunable tokens = 0 after layer 1; it must merge between 1 and 32 (each merged token joins a partner in the other half of the bipartite matching: at most ⌊(65 − 1)/2⌋)",
    ],
    [
      "after layer 1 merge 60% by similarity",
      "s.prune:1:21: error: this stage would merge 60% of 64 prunable tokens = 38 after layer 1; it must merge between 1 and 32 (each merged token joins a partner in the other half of the bipartite matching: at most ⌊(65 − 1)/2⌋)",
    ],
    [
      "after layer 1 merge 33 tokens by similarity",
      "s.prune:1:21: error: this stage would merge 33 tokens after layer 1; it must merge between 1 and 32 (each merged token joins a partner in the other half of the bipartite matching: at most ⌊(65 − 1)/2⌋)",
    ],
    [
      "after layer 1 keep 50% by similarity",
      "s.prune:1:15: error: similarity pairs tokens to merge them (ToMe); it does not rank tokens to keep: write 'merge P% by similarity' (P% of the prunable tokens merge into their most similar partners)",
    ],
    [
      "after layer 1 drop 10 tokens by similarity",
      "s.prune:1:15: error: similarity pairs tokens to merge them (ToMe); it does not rank tokens to drop: write 'merge P% by similarity' (P% of the prunable tokens merge into their most similar partners)",
    ],
    [
      "after layer 1 merge 25% by cls-attn",
      "s.prune:1:28: error: 'merge' pairs tokens by key similarity (ToMe); use 'by similarity' (cls-attn ranks tokens for 'keep' and 'drop')",
    ],
    [
      "after layer 1 merge 25% by similarity with mask",
      "s.prune:1:44: error: 'with mask' does not apply to 'merge': a merge stage keeps no dropped tokens to mask",
    ],
    [
      "after encoder merge 25% by similarity",
      "s.prune:1:1: error: 'merge' after the encoder is not supported yet; merge after a layer ('after layer L merge P% by similarity')",
    ],
    [
      "after layer 1 merge mass 90% by similarity",
      "s.prune:1:21: error: 'mass' amounts are not supported with 'merge'; use a percentage or a token count",
    ],
    [
      "after layer 1 merge 25% by similarity(proportional: 2)",
      "s.prune:1:53: error: argument 'proportional' of 'similarity' must be 0 or 1, got 2",
    ],
    [
      "after layer 0 merge 10% by similarity\nafter layer 1 keep 50% by cls-attn\nafter layer 2 merge 10% by similarity",
      "s.prune:3:15: error: a 'keep' stage (line 2) between two 'merge' stages is not supported yet: the token sizes this merge weighs by are not carried through it",
    ],
    [
      "after layer 0 merge 10% by similarity(proportional: 1)\nafter layer 2 merge 10% by similarity",
      "s.prune:2:28: error: every 'merge' stage of a spec must use the same proportional attention: the merge stage on line 1 has proportional: 1, this one 0",
    ],
    [
      "after layer 1 merge 25% by similarity\nafter layer 1 merge 10% by similarity",
      "s.prune:2:13: error: stages must be in layer order: layer 1 comes after a stage at layer 1",
    ],
  ];
  for (const [spec, message] of cases) {
    it(`${spec.replace(/\n/g, "; ")}`, () => {
      expect(firstLine(tiny, spec)).toBe(message);
    });
  }

  itShared("a symbolic token count (Qwen2-VL's tower cut before its merger: hw tokens)", () => {
    const cut = truncateToLayers(
      readFileSync(sharedModel("graph-only/qwen2-vl-2b-vision-tower-torchexport/model.onnx")),
      2,
    );
    expect(firstLine(cut, "after layer 0 merge 25% by similarity")).toBe(
      "s.prune:1:15: error: 'merge' needs a static token count (the matching splits the tokens into two fixed halves); the model has hw tokens",
    );
  });
});
