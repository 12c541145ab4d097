/**
 * `with restore` (issue 17): a stage's dropped tokens come back at the last layer's output with the
 * hidden state they had when dropped (DToP, methods.md §30), so the per-patch model of
 * examples/digit-masks keeps its [batch, 64, 2] output.
 *
 * The reference is DToP's canvas written as an edit of the DENSE model (`canvasReference`): the
 * dropped tokens' keys are masked from the stage's next layer on, and the final norm reads, per
 * token, the residual leaving the layer where it was dropped (or the last layer's, for a token every
 * stage kept). It shares no code with the scatter prunec emits; the kept sets come from the
 * compiled model's exposed positions (their exactness against cls-attn's reference is tested in
 * test/cls-attn.test.ts).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { batchInput, parseDataset } from "../src/data/prds.js";
import { maxAbsDiff, runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { canvasReference } from "./support/dense-edits.js";
import { rows } from "./support/model-edit.js";
import { firstErrorLine } from "./support/cases.js";
import { withOutputs } from "./support/model-edit.js";
import { headMeanKeysFromKt, nextSequence, tomeStep, type TomeStep } from "./reference/tome.js";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";

const DIR = join(import.meta.dirname, "..", "examples", "digit-masks");
const model = new Uint8Array(readFileSync(join(DIR, "model.onnx")));
const sample = parseDataset(readFileSync(join(DIR, "sample.prds")), "sample.prds");
const TOKENS = 65; // CLS + 8×8 patches
const TOL = 1e-5;
const BATCH = 4;

const feedsOf = (from: number, to: number): Feeds => {
  const x = batchInput(sample, from, to);
  return { pixel_values: { type: "float32", dims: x.dims, data: x.data } };
};
const logitsOf = (out: Awaited<ReturnType<typeof runNode>>) => out["logits"]!.data as Float32Array;

/** Each stage's surviving dense positions per example, from the exposed positions (composed stage by stage). */
function survivors(out: Awaited<ReturnType<typeof runNode>>, stages: number, b: number): number[][] {
  const result: number[][] = [];
  let dense = Array.from({ length: TOKENS }, (_, j) => j);
  for (let s = 0; s < stages; s++) {
    const t = out[`prunec.stage${s}.indices`]!;
    dense = rows(t.data as BigInt64Array, t.dims)
      [b]!.filter((j) => j >= 0)
      .map((j) => dense[j]!);
    result.push([...dense]);
  }
  return result;
}

describe("with restore on the per-patch digits model (DToP's canvas)", () => {
  const CASES = [
    { spec: "after layer 2 keep 25% by cls-attn with restore", layers: [2] },
    {
      spec: "after layer 1 keep 50% by cls-attn with restore\nafter layer 3 keep 50% by cls-attn with restore",
      layers: [1, 3],
    },
    // A per-example count: the batch pads to its largest count; padding rows come back as dropped.
    { spec: "after layer 2 keep mass 60% by cls-attn with restore", layers: [2] },
    // Restored at an intermediate layer: layers 4 and 5 compute every token again.
    { spec: "after layer 1 keep 25% by cls-attn with restore(layer: 3)", layers: [1], at: [3] },
    // Nested points: the later stage's tokens come back first (layer 3), the earlier's at layer 4.
    {
      spec: "after layer 1 keep 50% by cls-attn with restore(layer: -2)\nafter layer 2 keep 50% by cls-attn with restore(layer: 3)",
      layers: [1, 2],
      at: [4, 3],
    },
    // The padding bias of a per-example count ends at the restore point, where its rows are real again.
    { spec: "after layer 1 keep mass 60% by cls-attn with restore(layer: 2)", layers: [1], at: [2] },
  ];
  for (const c of CASES)
    it(`'${c.spec.replace("\n", "; ")}': every example of a batch of ${BATCH} equals its canvas reference (≤ ${TOL}); WASM equals CPU`, async () => {
      const compiled = compile(model, c.spec, { exposeIndices: true }).model;
      const names = ["logits", ...c.layers.map((_, s) => `prunec.stage${s}.indices`)];
      const got = await runNode(compiled, feedsOf(0, BATCH), names);
      expect(got["logits"]!.dims).toEqual([BATCH, 64, 2]);
      const dense = logitsOf(await runNode(model, feedsOf(0, BATCH), ["logits"]));
      const per = 64 * 2;
      const counts: number[] = [];
      for (let b = 0; b < BATCH; b++) {
        const kept = survivors(got, c.layers.length, b);
        counts.push(kept.at(-1)!.length);
        const reference = canvasReference(
          model,
          c.layers.map((layer, s) => ({ layer, kept: kept[s]!, ...(c.at ? { at: c.at[s]! } : {}) })),
          TOKENS,
        );
        const want = logitsOf(await runNode(reference, feedsOf(b, b + 1), ["logits"]));
        const mine = logitsOf(got).subarray(b * per, (b + 1) * per);
        expect([b, maxAbsDiff(mine, want) <= TOL]).toEqual([b, true]);
        // Restoring is not the dense model: the dropped tokens carry earlier features.
        expect(maxAbsDiff(mine, dense.subarray(b * per, (b + 1) * per))).toBeGreaterThan(1e-3);
      }
      if (c.spec.includes("mass")) expect(new Set(counts).size).toBeGreaterThan(1); // the batch was padded
      const wasm = await runWasm(compiled, feedsOf(0, BATCH), ["logits"]);
      expect(maxAbsDiff(logitsOf(wasm), logitsOf(got))).toBeLessThanOrEqual(TOL);
    });

  it("the report counts every token again after the restore points", () => {
    const { report } = compile(
      model,
      "after layer 1 keep 50% by cls-attn with restore(layer: 4)\nafter layer 2 keep 50% by cls-attn with restore(layer: 3)",
    );
    expect(report.tokensPerLayer.map((r) => r.pruned)).toEqual([65, 65, 33, 17, 33, 65]);
  });

  it("an output tapping a layer at or after the restore point is whole", async () => {
    const layers = analyzeTransformer(new Graph(decodeModel(model).graph!)).layers;
    const taps = [3, 4].map((l) => layers[l]!.residual!.output);
    const compiled = compile(
      withOutputs(model, taps),
      "after layer 1 keep 25% by cls-attn with restore(layer: 3)",
    ).model;
    const got = await runNode(compiled, feedsOf(0, BATCH), taps);
    for (const t of taps) expect(got[t]!.dims.slice(0, 2)).toEqual([BATCH, TOKENS]);
  });

  it("keep-all with restore equals the dense model (≤ 1e-5)", async () => {
    const compiled = compile(model, "after layer 2 keep 100% by cls-attn with restore").model;
    const got = logitsOf(await runNode(compiled, feedsOf(0, BATCH), ["logits"]));
    const dense = logitsOf(await runNode(model, feedsOf(0, BATCH), ["logits"]));
    expect(maxAbsDiff(got, dense)).toBeLessThanOrEqual(1e-5);
  });

  it("without restore the output shrinks to the kept patches (the interface change restore undoes)", async () => {
    const plain = compile(model, "after layer 2 keep 25% by cls-attn").model;
    expect((await runNode(plain, feedsOf(0, BATCH), ["logits"]))["logits"]!.dims).toEqual([BATCH, 16, 2]);
  });

  it("refuses what it cannot restore, at the option or the stage", () => {
    expect(firstErrorLine(model, "after layer 5 keep 25% by cls-attn with restore")).toBe(
      "s.prune:1:41: error: 'with restore' on a stage after the last layer changes nothing: its dropped tokens come back at once",
    );
    expect(firstErrorLine(model, "after layer 2 keep 25% by cls-attn with restore, mask")).toBe(
      "s.prune:1:41: error: 'with restore' puts dropped tokens back, but a masked stage removes nothing",
    );
    expect(firstErrorLine(model, "after layer 2 keep 25% by cls-attn with recycle, restore")).toBe(
      "s.prune:1:41: error: 'with restore' and 'with recycle' cannot be combined: the recycled token stands for no input position to restore it to",
    );
    expect(
      firstErrorLine(model, "after layer 1 keep 50% by cls-attn with restore\nafter layer 3 keep 50% by cls-attn"),
    ).toBe(
      "s.prune:2:1: error: the stage after layer 1 (line 1) restores its dropped tokens at the last layer's output, so every later stage must too: add 'with restore' here",
    );
    // A head tapping an intermediate layer (here a graph output of layer 3's stream) would stay pruned.
    const r3 = analyzeTransformer(new Graph(decodeModel(model).graph!)).layers[3]!.residual!.output;
    expect(() =>
      compile(withOutputs(model, [r3]), "after layer 2 keep 25% by cls-attn with restore", { specName: "r.prune" }),
    ).toThrow(
      `r.prune:1:1: error: 'with restore' puts the dropped tokens back at the last layer's output, but output '${r3}' reads the stream before that point and would keep 17 of its 65 rows; restore at or before the layer it reads ('with restore(layer: N)')`,
    );
    expect(firstErrorLine(model, "after layer 2 keep 25% by cls-attn with restore(layer: 2)")).toBe(
      "s.prune:1:41: error: 'with restore(layer: 2)' must name a layer after the stage's (2): the dropped tokens come back at that layer's output",
    );
    expect(firstErrorLine(model, "after layer 2 keep 25% by cls-attn with restore(layer: 6)")).toBe(
      "s.prune:1:41: error: 'with restore(layer: …)' names layer 6, but the model has layers 0 to 5",
    );
    expect(
      firstErrorLine(
        model,
        "after layer 1 keep 50% by cls-attn with restore(layer: 3)\nafter layer 2 keep 50% by cls-attn with restore(layer: 4)",
      ),
    ).toBe(
      "s.prune:2:41: error: this stage restores at layer 4's output, after the stage on line 1 restores at layer 3's output: a later stage's tokens must come back first, at or before that layer",
    );
    expect(
      firstErrorLine(
        model,
        "after layer 1 keep 50% by cls-attn with restore(layer: 3)\nafter layer 3 keep 50% by cls-attn",
      ),
    ).toBe(
      "s.prune:2:1: error: the stage after layer 1 (line 1) restores its dropped tokens at layer 3's output, so every later stage must too: add 'with restore' here",
    );
    expect(firstErrorLine(model, "after layer 2 keep 25% by cls-attn with restore(lyr: 4)")).toBe(
      "s.prune:1:49: error: unknown argument 'lyr' for option 'restore' (it takes: layer)",
    );
    expect(firstErrorLine(model, "after layer 5 merge 25% by similarity with restore")).toBe(
      "s.prune:1:44: error: 'with restore' on a stage after the last layer changes nothing: its dropped tokens come back at once",
    );
  });
});

/**
 * `merge … with restore`: tomesd's unmerge (tomesd/merge.py, methods.md §29): every merged token
 * takes its destination's output, an unmerged token its own. The head is per token, so patch p's
 * restored logits are the plain merged model's logits at the row of the token p landed in. Where p
 * landed comes from the ToMe reference (test/reference/tome.ts, `landing`) on the keys the model
 * computes; a second merge splits ToMe's order (`nextSequence`), so its landing is composed.
 */
describe("merge with restore (tomesd's unmerge) on the per-patch digits model", () => {
  const f32 = (o: { data: unknown }) => o.data as Float32Array;
  const layerInfo = (bytes: Uint8Array) =>
    analyzeTransformer(new Graph(decodeModel(bytes).graph!)).layers.map((l) => ({
      keys: l.core!.qk!.input[1]!,
      residual: l.residual!.output,
      heads: l.heads!,
    }));
  const CASES = [
    { spec: "after layer 2 merge 25% by similarity", layers: [2], r: [16] },
    {
      spec: "after layer 1 merge 25% by similarity\nafter layer 3 merge 12 tokens by similarity",
      layers: [1, 3],
      r: [16, 12],
    },
  ];
  // Unmerged at an intermediate layer: layer 3's output is U·(the merged model's layer-3 rows), and
  // layers 4 and 5 compute every token (ToMe's proportional bias stops at the point).
  for (const criterion of ["similarity", "similarity(proportional: 1)"])
    it(`'after layer 1 merge 25% by ${criterion} with restore(layer: 3)': layer 3's output rows = the merged model's at the row each token landed in, batch 3`, async () => {
      const batch = 3;
      const spec = `after layer 1 merge 25% by ${criterion}`;
      const dense = layerInfo(model);
      const tap = dense[3]!.residual;
      const restored = compile(withOutputs(model, [tap]), `${spec} with restore(layer: 3)`).model;
      const plainCompiled = compile(withOutputs(model, [tap]), spec, { exposeIndices: true }).model;
      const keysName = layerInfo(plainCompiled)[1]!.keys;
      const feeds = feedsOf(0, batch);
      const plain = await runNode(withOutputs(plainCompiled, [keysName]), feeds, [
        tap,
        keysName,
        "prunec.stage0.indices",
      ]);
      const got = await runNode(restored, feeds, [tap, "logits"]);
      expect(got[tap]!.dims.slice(0, 2)).toEqual([batch, TOKENS]);
      expect(got["logits"]!.dims).toEqual([batch, 64, 2]);
      const width = got[tap]!.dims[2]!;
      const rowsOut = plain[tap]!.dims[1]!;
      const kt = plain[keysName]!;
      for (let b = 0; b < batch; b++) {
        const keys = headMeanKeysFromKt(f32(kt), kt.dims, dense[1]!.heads)[b]!;
        const step = tomeStep(
          keys,
          keys,
          keys.map(() => 1),
          16,
          1,
          undefined,
        );
        const rowOf = new Map(step.positions.map((q, i) => [q, i]));
        const want = Float32Array.from({ length: TOKENS * width }, (_, k) => {
          const row = rowOf.get(step.landing[Math.floor(k / width)]!)!;
          return f32(plain[tap]!)[(b * rowsOut + row) * width + (k % width)]!;
        });
        const mine = f32(got[tap]!).subarray(b * TOKENS * width, (b + 1) * TOKENS * width);
        expect([b, maxAbsDiff(mine, want) <= TOL]).toEqual([b, true]);
      }
    });

  for (const c of CASES)
    it(`'${c.spec.replace("\n", "; ")}' with restore: patch p's logits = the merged model's at the token p landed in (ToMe reference), batch 3; WASM equals CPU`, async () => {
      const batch = 3;
      const restoreSpec = c.spec.replace(/by similarity/g, "by similarity with restore");
      const restored = compile(model, restoreSpec).model;
      const plainCompiled = compile(model, c.spec, { exposeIndices: true }).model;
      const names = layerInfo(plainCompiled);
      const exposed = c.layers.flatMap((l) => [names[l]!.keys]);
      const feeds = feedsOf(0, batch);
      const plain = await runNode(withOutputs(plainCompiled, exposed), feeds, [
        "logits",
        ...exposed,
        ...c.layers.map((_, s) => `prunec.stage${s}.indices`),
      ]);
      const got = await runNode(restored, feeds, ["logits"]);
      expect(got["logits"]!.dims).toEqual([batch, 64, 2]);
      const rowsOut = plain["logits"]!.dims[1]! + 1; // + CLS, which the head drops
      const prefix = 1;
      for (let b = 0; b < batch; b++) {
        // Stage by stage: the reference's landing, in each stage's input numbering.
        let at = Array.from({ length: TOKENS }, (_, p) => p); // dense position → current row
        let sequence: number[] | undefined;
        let previous: TomeStep | undefined;
        for (const [s, layer] of c.layers.entries()) {
          const kt = plain[names[layer]!.keys]!;
          const keys = headMeanKeysFromKt(f32(kt), kt.dims, names[layer]!.heads)[b]!;
          const step = tomeStep(
            keys,
            keys,
            keys.map(() => 1),
            c.r[s]!,
            prefix,
            sequence,
          );
          const exposedRows = rows(
            plain[`prunec.stage${s}.indices`]!.data as BigInt64Array,
            plain[`prunec.stage${s}.indices`]!.dims,
          )[b]!;
          expect([b, s, step.positions]).toEqual([b, s, exposedRows]);
          const rowOf = new Map(step.positions.map((q, i) => [q, i]));
          at = at.map((row) => rowOf.get(step.landing[row]!)!);
          previous = step;
          sequence = nextSequence(previous);
        }
        const want = Float32Array.from({ length: 64 * 2 }, (_, k) => {
          const p = Math.floor(k / 2) + 1; // patch → token
          const row = at[p]! - 1; // the head's rows drop CLS
          return f32(plain["logits"]!)[(b * (rowsOut - 1) + row) * 2 + (k % 2)]!;
        });
        const mine = f32(got["logits"]!).subarray(b * 128, (b + 1) * 128);
        expect([b, maxAbsDiff(mine, want) <= TOL]).toEqual([b, true]);
        // Merged patches share their destination's logits: the unmerge is not the identity.
        expect(new Set(at.slice(1)).size).toBeLessThan(64);
      }
      const wasm = await runWasm(restored, feeds, ["logits"]);
      expect(maxAbsDiff(logitsOf(wasm), logitsOf(got))).toBeLessThanOrEqual(TOL);
    });
});
