/**
 * crops(count) end to end (HoloV, methods.md §9; docs/crops.md): the compiled model, run in
 * onnxruntime-node (CPU) and onnxruntime-web (WASM), keeps exactly the set of tokens the float64
 * TypeScript reference (test/reference/holov.ts, written from obananas/HoloV's code) keeps, fed the
 * dense model's own CLS attention and residual stream, at batch 1 and in a batch of 3, on the
 * trained digits ViT (64 patches + CLS, 4 heads) and the random-weight ViT-Ti (196 + CLS, 3 heads).
 *
 * Each example keeps its own count (a crop's budget beyond its size is lost), so the exposed rows
 * are padded with −1 to the batch's largest count and `prunec.stage0.counts` says how many are real.
 *
 * Which input exercises which rule (each is asserted: the rule's wrong alternative, run through
 * the same reference, keeps another set on that input, so the compiled model could not match both):
 * - overflow (a chunk's surplus is lost): digits, layer 1, crops(count: 16), keep 25% (K = 16):
 *   sample 1 allocates 8 to a 4-token chunk and keeps 12 of its 16; and keep 100% with count 16;
 * - remainder (+1 to the heaviest chunks): every case below (K − Σ⌊w·K⌋ > 0 in each);
 * - uneven chunks (the first N mod count are one longer): digits count 10 (7,7,7,7,6,…), ViT-Ti
 *   count 16 (13,13,13,13,12,…);
 * - one-token chunks (score = the raw attention): digits count 40 (24 chunks of 2, 16 of 1).
 * Overflow and the remainder also change the result in the uneven cases (asserted there too).
 *
 * fp32 and float64 can only disagree near a flip, so every case also checks the reference's
 * margins (w·K's distance to an integer, the weight gap at the remainder's cut, the attention gap
 * at each partial chunk's cut) are clear of fp32 rounding.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, describeShared } from "./helpers/shared.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { withOutputs, unfoldProbs, rows } from "./support/model-edit.js";
import { clsScores } from "./reference/cls-attn.js";
import { budgetOf, holovChunkSizes, holovKeep, HOLOV_RULES, type HoloV, type Rules } from "./reference/holov.js";
import { digitsFeeds, expectKeepsEveryToken, rejection, vitTiFeeds, vitTiModel } from "./support/cases.js";
import { chunkSizes } from "../passes/criteria/crops.js";

type Rule = "overflow" | "remainder" | "uneven";

/** The same reference with one rule replaced by its wrong alternative. */
const WRONG: Record<Rule, Partial<Rules>> = {
  overflow: { surplus: "refill" },
  remainder: { remainder: "none" },
  uneven: { longer: "last" },
};

interface Model {
  bytes: Uint8Array;
  heads: number;
  prunable: number;
  feeds: Feeds[];
}

const probsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Softmax_output_0`;
const residualOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/Add_1_output_0`;

/** The dense model's CLS attention (mean over heads, prunable keys) and residual stream leaving `layer`. */
async function denseInputs(
  m: Model,
  f: Feeds,
  layer: number,
): Promise<{ attention: number[][]; stream: number[][][] }> {
  const names = [probsOf(layer), residualOf(layer)];
  const out = await runNode(withOutputs(m.bytes, names), f, names);
  const p = out[names[0]!]!;
  const r = out[names[1]!]!;
  const attention = unfoldProbs(p.data as Float32Array, p.dims, m.heads).map((ex) => clsScores(ex, 1));
  const [b, n, d] = r.dims as [number, number, number];
  const data = r.data as Float32Array;
  const stream = Array.from({ length: b }, (_, i) =>
    Array.from({ length: n }, (_, t) => Array.from(data.subarray((i * n + t) * d, (i * n + t + 1) * d))),
  );
  return { attention, stream };
}

/** Decisions within fp32 rounding of a flip (see the header). */
function nearFlips(runs: HoloV[], budget: number): string[] {
  return runs.flatMap((r, e) => [
    ...(r.margins.floor < budget * 1e-5 ? [`example ${e}: w·K ${r.margins.floor} from an integer`] : []),
    ...(r.margins.remainder < 1e-6 ? [`example ${e}: remainder cut by ${r.margins.remainder}`] : []),
    ...(r.margins.inChunk < 1e-8 ? [`example ${e}: in-chunk cut by ${r.margins.inChunk}`] : []),
  ]);
}

/** Exposed kept positions without the −1 padding, and the exposed counts. */
async function keptAndCounts(pruned: Uint8Array, f: Feeds, run = runNode) {
  const out = await run(pruned, f, ["prunec.stage0.indices", "prunec.stage0.counts"]);
  const idx = out["prunec.stage0.indices"]!;
  const padded = rows(idx.data as BigInt64Array, idx.dims);
  return {
    padded,
    kept: padded.map((r) => r.filter((i) => i >= 0)),
    counts: Array.from(out["prunec.stage0.counts"]!.data as BigInt64Array, Number),
  };
}

/**
 * `after layer L keep P% by crops(count: C)` keeps, on every feed, CPU and WASM, the reference's set;
 * each rule in `exercises` changes the reference's result on some feed. Returns the reference runs.
 */
async function expectHoloV(
  m: Model,
  layer: number,
  count: number,
  percent: number,
  exercises: Rule[],
): Promise<HoloV[]> {
  const spec = `after layer ${layer} keep ${percent}% by crops(count: ${count})`;
  const budget = budgetOf(percent, m.prunable);
  const { model: pruned, report } = compile(m.bytes, spec, { exposeIndices: true });
  expect(report.stages[0]).toMatchObject({ tokensIn: m.prunable + 1, tokensOut: `1+crops(≤${budget})` });
  const all: HoloV[] = [];
  const changedBy = new Set<Rule>();
  for (const f of m.feeds) {
    const { attention, stream } = await denseInputs(m, f, layer);
    const ref = holovKeep(attention, stream, count, budget, 1);
    expect(ref.kept.length).toBe(f.pixel_values!.dims[0]);
    expect(nearFlips(ref.runs, budget)).toEqual([]);
    for (const rule of exercises)
      if (
        JSON.stringify(holovKeep(attention, stream, count, budget, 1, { ...HOLOV_RULES, ...WRONG[rule] }).kept) !==
        JSON.stringify(ref.kept)
      )
        changedBy.add(rule);
    for (const run of [runNode, runWasm]) {
      const got = await keptAndCounts(pruned, f, run);
      expect(got.kept).toEqual(ref.kept);
      expect(got.counts).toEqual(ref.kept.map((k) => k.length));
      // Padding fills each row up to the batch's largest count, after the kept tokens.
      const width = Math.max(...got.counts);
      for (const r of got.padded) expect(r.length).toBe(width);
    }
    all.push(...ref.runs);
  }
  expect([...changedBy].sort()).toEqual([...exercises].sort());
  return all;
}

describe("crops: chunk sizes as HoloV cuts them", () => {
  it("the first N mod count chunks are one token longer (llava/model/utils.py:33–43), in the compiler and the reference", () => {
    for (const [n, count] of [
      [64, 16],
      [64, 10],
      [64, 40],
      [196, 16],
      [576, 16],
      [7, 7],
    ] as const) {
      const sizes = chunkSizes(n, count);
      expect(sizes).toEqual(holovChunkSizes(n, count));
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(n);
    }
    expect(chunkSizes(64, 10)).toEqual([7, 7, 7, 7, 6, 6, 6, 6, 6, 6]);
    expect(chunkSizes(196, 16)).toEqual([13, 13, 13, 13, ...Array<number>(12).fill(12)]);
  });
});

describe("crops on the trained digits ViT (64 patches + CLS, 4 heads)", () => {
  const digits: Model = {
    bytes: readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx")),
    heads: 4,
    prunable: 64,
    feeds: digitsFeeds(), // example 0 alone; examples 1..3
  };

  it("count 16 (4-token chunks), keep 25%: HoloV's kept set at batch 1 and 3, CPU and WASM; a full chunk's surplus is lost", async () => {
    const runs = await expectHoloV(digits, 1, 16, 25, ["overflow", "remainder"]);
    // Sample 1 (the first of the batch of 3): 8 of the 16 go to a 4-token chunk, so it keeps 12 (4+4+4).
    expect(runs[1]!.alloc).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 4, 4]);
    expect(runs[1]!.kept.length).toBe(12);
  });

  it("count 10 (chunks of 7,7,7,7,6,…,6), keep 25%: the uneven split gives the extra tokens to the first chunks", async () => {
    await expectHoloV(digits, 1, 10, 25, ["uneven", "remainder", "overflow"]);
  });

  it("count 40 (24 chunks of 2, 16 of 1), keep 25%: one-token chunks score their raw attention", async () => {
    const runs = await expectHoloV(digits, 1, 40, 25, ["uneven", "remainder", "overflow"]);
    expect(runs[0]!.sizes.filter((s) => s === 1)).toHaveLength(16);
  });

  it("at batch 3 each example keeps and computes what it does alone (its padding is masked below)", async () => {
    const { model: pruned } = compile(digits.bytes, "after layer 1 keep 25% by crops(count: 16)", {
      exposeIndices: true,
    });
    const three = digits.feeds[1]!;
    const batch = await runNode(pruned, three, ["prunec.stage0.indices", "prunec.stage0.counts", "logits"]);
    const counts = Array.from(batch["prunec.stage0.counts"]!.data as BigInt64Array, Number);
    expect(new Set(counts).size).toBeGreaterThan(1); // the counts really differ: some rows are padding
    const x = three.pixel_values!;
    const per = x.data.length / 3;
    const rowsOf = rows(batch["prunec.stage0.indices"]!.data as BigInt64Array, batch["prunec.stage0.indices"]!.dims);
    for (let i = 0; i < 3; i++) {
      const one: Feeds = {
        pixel_values: {
          ...x,
          dims: [1, ...x.dims.slice(1)],
          data: (x.data as Float32Array).slice(i * per, (i + 1) * per),
        },
      };
      const alone = await runNode(pruned, one, ["prunec.stage0.indices", "logits"]);
      expect(Array.from(alone["prunec.stage0.indices"]!.data as BigInt64Array, Number)).toEqual(
        rowsOf[i]!.filter((p) => p >= 0),
      );
      const logits = batch.logits!.data as Float32Array;
      expect(maxAbsDiff(logits.subarray(i * 10, (i + 1) * 10), alone.logits!.data as Float32Array)).toBeLessThanOrEqual(
        1e-5,
      );
    }
  });

  it("with mask: the same kept tokens and logits as the gathered stage", async () => {
    const f = digits.feeds[1]!;
    const gathered = await runNode(
      compile(digits.bytes, "after layer 1 keep 25% by crops(count: 16)", { exposeIndices: true }).model,
      f,
    );
    const masked = await runNode(
      compile(digits.bytes, "after layer 1 keep 25% by crops(count: 16) with mask", { exposeIndices: true }).model,
      f,
    );
    const real = (o: typeof masked) =>
      rows(o["prunec.stage0.indices"]!.data as BigInt64Array, o["prunec.stage0.indices"]!.dims).map((r) =>
        r.filter((i) => i >= 0),
      );
    expect(real(masked)).toEqual(real(gathered));
    expect(maxAbsDiff(masked.logits!.data as Float32Array, gathered.logits!.data as Float32Array)).toBeLessThanOrEqual(
      1e-5,
    );
  });

  it("keep 100% with one chunk keeps every token and equals the dense model (≤ 1e-5)", async () => {
    await expectKeepsEveryToken(digits.bytes, "after layer 1 keep 100% by crops(count: 1)", digits.feeds[1]!, 65);
  });

  it("keep 100% with 16 chunks keeps what HoloV keeps: heavy chunks lose their surplus, so not every token", async () => {
    const runs = await expectHoloV(digits, 1, 16, 100, ["overflow"]);
    expect(runs.every((r) => r.kept.length < 64)).toBe(true);
  });

  it("refuses what it cannot compile, with the reason", () => {
    const refused = (spec: string) => rejection(digits.bytes, spec).split("\n")[0];
    expect(refused("after layer 1 keep 25% by crops(count: 65)")).toBe(
      "s.prune:1:27: error: crops cannot run after layer 1: count 65 is more than the 64 prunable tokens entering the stage: every chunk needs at least one token (crops(count: 64) makes one chunk per token)",
    );
    expect(refused("after layer 1 keep 50% by cls-attn\nafter layer 3 keep 8 tokens by crops(count: 33)")).toBe(
      "s.prune:2:32: error: crops cannot run after layer 3: count 33 is more than the 32 prunable tokens entering the stage: every chunk needs at least one token (crops(count: 32) makes one chunk per token)",
    );
    expect(refused("after layer 1 keep 25% by crops(count: 0)")).toBe(
      "s.prune:1:27: error: crops cannot run after layer 1: count 0 is not a positive integer: it is the number of chunks",
    );
    expect(refused("after layer 1 keep mass 60% by cls-attn\nafter layer 3 keep 50% by crops")).toBe(
      "s.prune:2:27: error: crops cannot run after layer 3: the token count is symbolic (1+mass(60%)); crops needs a static one (its chunks are cut at compile time)",
    );
    expect(refused("after layer 1 keep 25% by crops\nafter layer 3 keep 50% by crops")).toBe(
      "s.prune:2:27: error: crops cannot run after layer 3: the token count is symbolic (1+crops(≤16)); crops needs a static one (its chunks are cut at compile time)",
    );
    expect(refused("after layer 1 keep 25% by crops with recycle")).toBe(
      "s.prune:1:38: error: crops keeps a number of tokens that depends on the input (a crop's budget beyond its size is lost, as in HoloV), so it needs a stage that ranks single tokens by score (without 'with recycle')",
    );
    expect(refused("after layer 1 keep 50% by cls-attn with mask\nafter layer 3 keep 50% by crops with mask")).toBe(
      "s.prune:2:27: error: crops after a 'with mask' stage is not supported: it would cut its chunks over every token in the stream, the masked ones included",
    );
  });
});

describeShared("crops on the random-weight ViT-Ti (196 patches + CLS, 3 heads)", () => {
  const vit = (): Model => ({ bytes: vitTiModel(), heads: 3, prunable: 196, feeds: vitTiFeeds() });

  it("count 16 (chunks of 13,13,13,13,12,…), keep 25% after layer 2: HoloV's kept set at batch 1 and 3, CPU and WASM", async () => {
    await expectHoloV(vit(), 2, 16, 25, ["uneven", "remainder"]);
  });

  it("count 14 (14-token chunks), keep 12.5% after layer 5: HoloV's kept set at batch 1 and 3, CPU and WASM", async () => {
    await expectHoloV(vit(), 5, 14, 12.5, ["remainder"]);
  });
});
