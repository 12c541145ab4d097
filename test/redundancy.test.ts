/**
 * redundancy (Zero-TPrune's S-stage, passes/criteria/redundancy.ts) end to end: the compiled model
 * keeps exactly the tokens the float64 reference (test/reference/zero-tprune.ts) picks from the
 * dense (or once-pruned) model's own attention logits and keys: PageRank importance, the important
 * half B kept, A's tokens most key-similar to B dropped; at batch 1 and 3, on onnxruntime-node CPU
 * and WASM. Each case first checks that the float32 graph cannot flip a near-tie: the partition's
 * and the drop boundary's margins are above 1e-6 (relative for the importance).
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describeShared, REPO_ROOT } from "./helpers/shared.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { withOutputs, unfoldProbs, scaleInitializer } from "./support/model-edit.js";
import { headMeanKeysFromKt } from "./reference/tome.js";
import { redundancyStep, type RedundancyStep } from "./reference/zero-tprune.js";
import { pagerankKeep } from "./reference/attention-scores.js";
import { keepCount } from "./reference/cls-attn.js";
import { buildDecoder, prefillFeeds, promptBatch } from "./support/decoder.js";
import {
  rejection,
  tinyFeeds,
  digitsFeeds,
  kept,
  keptStages,
  expectDenseLogits,
  vitTiModel,
  vitTiFeeds,
} from "./support/cases.js";

const tiny = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
const digits = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));

/** What the reference reads of `model`'s layer: its softmax input (logits) and Q·Kᵀ's right input (Kᵀ). */
function layerTensors(model: Uint8Array, layer: number) {
  const info = analyzeTransformer(new Graph(decodeModel(model).graph!));
  const l = info.layers[layer]!;
  return {
    logits: l.core!.anchor.input[0]!,
    kt: l.core!.qk!.input[1]!,
    heads: l.heads!,
    prefix: info.cls.prefixTokens,
  };
}

interface Settings {
  iterations?: number;
  temperature?: number;
}

/** The reference step of every example of `feeds` at `layer` of `model`, dropping `dropped` prunable tokens. */
async function reference(
  model: Uint8Array,
  layer: number,
  feeds: Feeds,
  dropped: (np: number) => number,
  s: Settings = {},
): Promise<RedundancyStep[]> {
  const t = layerTensors(model, layer);
  const out = await runNode(withOutputs(model, [t.logits, t.kt]), feeds, [t.logits, t.kt]);
  const dims = out[t.logits]!.dims;
  // [B,H,N,N] (the decoder) read as [B·H,N,N] (torchvision's layout).
  const folded = dims.length === 4 ? [dims[0]! * dims[1]!, dims[2]!, dims[3]!] : dims;
  const logits = unfoldProbs(out[t.logits]!.data as Float32Array, folded, t.heads);
  const keys = headMeanKeysFromKt(out[t.kt]!.data as Float32Array, out[t.kt]!.dims, t.heads);
  return logits.map((l, b) => {
    const np = keys[b]!.length - t.prefix;
    return redundancyStep(l, keys[b]!, dropped(np), t.prefix, s.iterations, s.temperature);
  });
}

/**
 * fp32 cannot flip the reference's choices: the importance at the partition boundary differs by
 * more than 1e-5 relative (fp32 PageRank: ~1e-7), and s at the drop boundary by more than 1e-5
 * (a cosine of fp32 unit keys: ≲ 1e-6).
 */
function expectClearMargins(steps: RedundancyStep[]): void {
  for (const s of steps) {
    expect(s.partitionGap).toBeGreaterThan(1e-5);
    expect(s.dropGap).toBeGreaterThan(1e-5);
  }
}

const args = (s: Settings) =>
  s.iterations !== undefined ? `(iterations: ${s.iterations}, temperature: ${s.temperature})` : "";

/** `after layer L drop P% by redundancy` keeps the reference's positions at batch 1 and 3, CPU and WASM. */
async function expectDropAsReference(
  model: Uint8Array,
  layer: number,
  percent: number,
  feeds: Feeds[],
  s: Settings = {},
) {
  const spec = `after layer ${layer} drop ${percent}% by redundancy${args(s)}`;
  const pruned = compile(model, spec, { exposeIndices: true }).model;
  for (const f of feeds) {
    const steps = await reference(model, layer, f, (np) => keepCount(percent, np), s);
    expect(steps.length).toBe(f.pixel_values!.dims[0]);
    expectClearMargins(steps);
    const expected = steps.map((st) => st.kept);
    expect(await kept(pruned, f)).toEqual(expected);
    expect(await kept(pruned, f, runWasm)).toEqual(expected);
  }
}

describe("redundancy on the built-in tiny ViT (4 layers, 2 heads, 64 patches + CLS)", () => {
  const feeds = tinyFeeds();
  it("after layer 1 drop 20% (defaults): exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    await expectDropAsReference(tiny, 1, 20, feeds);
  });
  it("after layer 3 drop 50% (all of A) with 2 iterations and τ 0.5: exact kept sets", async () => {
    await expectDropAsReference(tiny, 3, 50, feeds, { iterations: 2, temperature: 0.5 });
  });
});

describe("redundancy on the trained digits ViT (6 layers, 4 heads)", () => {
  const feeds = digitsFeeds();
  it("after layer 5 drop 25% (defaults): exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    await expectDropAsReference(digits, 5, 25, feeds);
  });
  it("after layer 0 drop 40% with 3 iterations and τ 0.5: exact kept sets", async () => {
    await expectDropAsReference(digits, 0, 40, feeds, { iterations: 3, temperature: 0.5 });
  });
});

describeShared("redundancy on the torchvision ViT-Ti (vit-ti16-cls-randinit)", () => {
  it("after layer 6 drop 25% (defaults): exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    await expectDropAsReference(vitTiModel(), 6, 25, vitTiFeeds());
  });
});

describe("redundancy: the partition", () => {
  const feeds = tinyFeeds();

  it("B is pagerank's keep 50% (⌈Np/2⌉ by the independent pagerank reference) and is never dropped, though some B token is more key-similar to another B token than a dropped A token is to B", async () => {
    const t = layerTensors(tiny, 1);
    const pruned = compile(tiny, "after layer 1 drop 50% by redundancy", { exposeIndices: true }).model;
    for (const f of feeds) {
      const out = await runNode(withOutputs(tiny, [t.logits, t.kt]), f, [t.logits, t.kt]);
      const logits = unfoldProbs(out[t.logits]!.data as Float32Array, out[t.logits]!.dims, t.heads);
      const keys = headMeanKeysFromKt(out[t.kt]!.data as Float32Array, out[t.kt]!.dims, t.heads);
      const important = pagerankKeep(logits, 50, t.prefix);
      const got = await kept(pruned, f);
      expect(got).toEqual(important); // drop 50% of 64 drops all of A: exactly B is kept
      // A criterion ranking every token by its redundancy (no partition) would drop a B token here.
      const steps = logits.map((l, b) => redundancyStep(l, keys[b]!, 32, t.prefix));
      for (const [b, s] of steps.entries()) {
        expect(s.important).toEqual(important[b]!.slice(t.prefix));
        const unit = keys[b]!.map((k) => {
          const n = Math.hypot(...k);
          return k.map((x) => x / n);
        });
        const nearestOtherB = (i: number) =>
          Math.max(
            ...s.important.filter((j) => j !== i).map((j) => unit[i]!.reduce((a, x, c) => a + x * unit[j]![c]!, 0)),
          );
        const leastDropped = Math.min(...s.similarity.values());
        expect(s.important.some((i) => nearestOtherB(i) > leastDropped)).toBe(true);
      }
    }
  });

  it("ties (CPU): with the position embedding zeroed and a flat image every patch is the same, so B is the lower half by position and A's higher positions go first", async () => {
    const flat = scaleInitializer(tiny, "encoder.pos_embedding", 0);
    const dims = feeds[0]!.pixel_values!.dims;
    const f: Feeds = {
      pixel_values: { type: "float32", dims, data: new Float32Array(dims.reduce((a, d) => a * d, 1)).fill(0.3) },
    };
    const pruned = compile(flat, "after layer 1 drop 20% by redundancy", { exposeIndices: true }).model;
    // 64 patches: B = 1..32, A = 33..64 all equally similar; drop 13 = positions 52..64.
    const expected = [[...Array(52).keys()]];
    expect((await reference(flat, 1, f, () => 13)).map((s) => s.kept)).toEqual(expected);
    // onnxruntime-node's CPU kernels compute identical rows identically; WASM's do not (its s of
    // identical keys differs in the last bits by row), so float ties are checked on the CPU only.
    expect(await kept(pruned, f)).toEqual(expected);
  });
});

describe("redundancy in a schedule", () => {
  const feeds = tinyFeeds();

  it("after layer 1 keep 70% by pagerank, then after layer 3 drop 10% by redundancy: the second stage reads the once-pruned model (45 prunable tokens, B = 23)", async () => {
    const spec = "after layer 1 keep 70% by pagerank\nafter layer 3 drop 10% by redundancy";
    const { model: pruned, report } = compile(tiny, spec, { exposeIndices: true });
    expect(report.stages.map((s) => [s.criterion, s.tokensIn, s.tokensOut])).toEqual([
      ["pagerank", 65, 46],
      ["redundancy", 46, 41],
    ]);
    const once = compile(tiny, "after layer 1 keep 70% by pagerank").model;
    for (const f of feeds) {
      const t = layerTensors(tiny, 1);
      const out = await runNode(withOutputs(tiny, [t.logits]), f, [t.logits]);
      const first = pagerankKeep(unfoldProbs(out[t.logits]!.data as Float32Array, out[t.logits]!.dims, t.heads), 70, 1);
      const steps = await reference(once, 3, f, (np) => keepCount(10, np));
      expectClearMargins(steps);
      for (const s of steps) expect(s.important.length).toBe(23);
      for (const run of [runNode, runWasm])
        expect(await keptStages(pruned, f, run, 2)).toEqual([first, steps.map((s) => s.kept)]);
    }
  });

  it("two stages at one layer (the paper's I-stage then S-stage) are refused: stages must be in layer order", () => {
    const spec = "after layer 3 keep 70% by pagerank\nafter layer 3 drop 10% by redundancy";
    expect(rejection(tiny, spec).split("\n")[0]).toBe(
      "s.prune:2:13: error: stages must be in layer order: layer 3 comes after a stage at layer 3",
    );
  });

  it("keep 100% gives outputs equal to the original's (≤ 1e-5)", async () => {
    await expectDenseLogits(tiny, compile(tiny, "after layer 1 keep 100% by redundancy").model, feeds[1]!);
  });
});

describe("redundancy refuses amounts that could reach the important half", () => {
  const first = (spec: string) => rejection(tiny, spec).split("\n")[0];
  const rule = "redundancy drops only tokens of the less important half (Zero-TPrune's S-stage partition)";
  it("drop 60% of 64: at most 32", () => {
    expect(rejection(tiny, "after layer 2 drop 60% by redundancy")).toBe(
      `s.prune:1:20: error: ${rule}: it may drop at most 32 of the 64 prunable tokens after layer 2, and this stage would drop 38\n 1 | after layer 2 drop 60% by redundancy\n   |                    ^~~`,
    );
  });
  it("keep 31 tokens of 64, and drop 50% of 33 (17 > ⌊33/2⌋ = 16)", () => {
    expect(first("after layer 2 keep 31 tokens by redundancy")).toBe(
      `s.prune:1:20: error: ${rule}: it may drop at most 32 of the 64 prunable tokens after layer 2, and this stage would drop 33`,
    );
    expect(first("after layer 0 keep 33 tokens by cls-attn\nafter layer 2 drop 50% by redundancy")).toBe(
      `s.prune:2:20: error: ${rule}: it may drop at most 16 of the 33 prunable tokens after layer 2, and this stage would drop 17`,
    );
  });
  it("drop 32 tokens and keep 50% (= ⌈Np/2⌉) are allowed", () => {
    for (const spec of ["after layer 2 drop 32 tokens by redundancy", "after layer 2 keep 50% by redundancy"])
      expect(compile(tiny, spec).report.stages[0]!.tokensOut).toBe(33);
  });
  it("counts that differ per example, and a stage after 'with mask'", () => {
    expect(first("after layer 2 keep mass 80% by redundancy")).toBe(
      `s.prune:1:20: error: 'mass' keeps a number of tokens that depends on the input, and ${rule}: it may drop at most half of the prunable tokens, which needs one count known before the run`,
    );
    expect(first("after layer 0 keep 80% by cls-attn with mask\nafter layer 2 drop 10% by redundancy with mask")).toBe(
      "s.prune:2:27: error: redundancy after a 'with mask' stage is not supported: its partition would count the masked tokens, which are still in the stream",
    );
  });
  it("pagerank's own argument checks", () => {
    expect(first("after layer 2 drop 10% by redundancy(iterations: 0)")).toBe(
      "s.prune:1:27: error: redundancy cannot run after layer 2: iterations must be at least 1, got 0",
    );
  });
});

describe("redundancy with a token count known only at run time (the plain decoder, causal logits, no prefix)", () => {
  const plain = buildDecoder({ attention: "plain" });
  const prompts = [
    [1, 5, 9, 14, 3, 22, 7, 30, 11, 2, 18, 25, 4],
    [1, 8, 8, 40, 12, 6, 33, 2, 19, 27, 5, 10, 44],
    [1, 31, 17, 3, 3, 3, 21, 9, 14, 36, 28, 6, 13],
  ];
  it("after layer 1 drop 25%: exact kept sets at batch 1 and 3 (unpadded), CPU and WASM", async () => {
    const feeds = [promptBatch(prompts.slice(0, 1)), promptBatch(prompts)].map((p) => prefillFeeds(p, "plain"));
    const { model: pruned, report } = compile(plain, "after layer 1 drop 25% by redundancy", { exposeIndices: true });
    expect(typeof report.stages[0]!.tokensIn).toBe("string");
    for (const f of feeds) {
      const steps = await reference(plain, 1, f, (np) => keepCount(25, np));
      expectClearMargins(steps);
      for (const run of [runNode, runWasm]) expect(await kept(pruned, f, run)).toEqual(steps.map((s) => s.kept));
    }
  });
  it("drop 50% is refused: of an odd count it drops more than half", () => {
    expect(rejection(plain, "after layer 1 drop 50% by redundancy").split("\n")[0]).toBe(
      "s.prune:1:20: error: redundancy drops only tokens of the less important half (Zero-TPrune's S-stage partition): it may drop at most half of the prunable tokens, and this model's token count (sequence_length) is known only at run time; write 'drop P%' with P below 50 or 'keep P%' with P at least 50, which hold for every count",
    );
  });
});
