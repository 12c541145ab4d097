/**
 * hiprune end to end: the compiled model (TopK on g_deep + 2·mask) keeps exactly the tokens the
 * TypeScript reference (anchors by top-k, ±1/±w buffers, unique, registers by top-k on g_deep − mask,
 * sort: the original's steps) picks from the dense model's own probabilities; batch 1 and 3, CPU
 * and WASM, on the tiny ViT, the trained digits ViT and ViT-Ti; plus the plan's rejections.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describeShared, REPO_ROOT } from "./helpers/shared.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { decodeModel } from "../src/onnx/io.js";
import { withOutputs, unfoldProbs } from "./support/model-edit.js";
import { clsAttnKeep, globalScores, keepCount, type Probs } from "./reference/cls-attn.js";
import { anchorCountRef, anchorsAndBuffers, hipruneKeep, pythonRound } from "./reference/hiprune.js";
import { anchorCount } from "../passes/criteria/hiprune.js";
import { buildFusedVit, fusedVitFeeds, FUSED_VIT } from "./support/fused-vit.js";
import { unfuseMultiHeadAttention } from "./support/unfuse.js";
import { softmaxOutputs } from "./support/stage-tensors.js";
import {
  digitsFeeds,
  expectKeepsEveryToken,
  keptStages,
  rejection,
  tinyOneAndThree,
  thrown,
  vitTiModel,
  vitTiOneAndThree,
} from "./support/cases.js";

const probsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Softmax_output_0`;

/** Probabilities [B][H][Q][N] of `layers` of `model` on `feeds`, from one run. */
async function probsAt(model: Uint8Array, feeds: Feeds, layers: number[], heads: number): Promise<Map<number, Probs>> {
  const names = layers.map(probsOf);
  const out = await runNode(withOutputs(model, names), feeds, names);
  return new Map(
    layers.map((l) => [l, unfoldProbs(out[probsOf(l)]!.data as Float32Array, out[probsOf(l)]!.dims, heads)]),
  );
}

interface Case {
  layer: number;
  object: number;
  /** The amount as written (`50%`, `125 tokens`). */
  amount: string;
  keep: number;
  alpha?: number;
}

const specOf = (c: Case) =>
  `after layer ${c.layer} keep ${c.amount} by hiprune(object_layer: ${c.object}${c.alpha === undefined ? "" : `, alpha: ${c.alpha}`})`;

/** One input batch with the dense model's probabilities (of the layers the cases read) and the runners to check it on. */
interface Probe {
  feeds: Feeds;
  probs: Map<number, Probs>;
  runners: (typeof runNode)[];
}

/** The compiled kept sets equal the reference on every probe and runner; returns the references. */
async function expectReference(model: Uint8Array, c: Case, probes: Probe[]): Promise<number[][][]> {
  const pruned = compile(model, specOf(c), { exposeIndices: true }).model;
  const refs: number[][][] = [];
  for (const { feeds, probs, runners } of probes) {
    const expected = hipruneKeep(probs.get(c.object)!, probs.get(c.layer)!, c.keep, c.alpha ?? 0.1, 1);
    for (const run of runners) expect((await keptStages(pruned, feeds, run))[0]).toEqual(expected);
    refs.push(expected);
  }
  return refs;
}

describe("hiprune anchor count n_a = round(N'·alpha/5)", () => {
  it("rounds like Python's round (halves to even) on (N'·alpha)/5, not like int() or half-up", () => {
    const cases: [number, number, number][] = [
      [192, 0.1, 4], // 3.84 (the paper's budget): int() would give 3
      [240, 0.1, 5], // 4.8
      [25, 0.1, 0], // 0.5 → 0
      [75, 0.1, 2], // 1.5 → 2
      [125, 0.1, 2], // 2.5 → 2 (half-up would give 3)
      [65, 0.5, 6], // 6.5 → 6
      [3, 1, 1], // 0.6
    ];
    for (const [keep, alpha, nA] of cases) {
      expect(anchorCountRef(keep, alpha)).toBe(nA);
      expect(anchorCount(keep, alpha)).toBe(nA);
    }
    expect([0.5, 1.5, 2.5, 3.4999, 3.5].map(pythonRound)).toEqual([0, 2, 2, 3, 4]);
  });
});

describe("hiprune on the built-in tiny ViT (8×8 patches + CLS)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
  const [feeds1, feeds3] = tinyOneAndThree();
  let one: Probe;
  let three: Probe;
  beforeAll(async () => {
    one = { feeds: feeds1, probs: await probsAt(model, feeds1, [0, 1, 2, 3], 2), runners: [runNode, runWasm] };
    three = { feeds: feeds3, probs: await probsAt(model, feeds3, [0, 1, 2, 3], 2), runners: [runNode, runWasm] };
  });

  it("after layer 2 keep 50% with object layer 1, alpha 0.5 (3 anchors): exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    const [, refs3] = await expectReference(model, { layer: 2, object: 1, amount: "50%", keep: 32, alpha: 0.5 }, [
      one,
      three,
    ]);
    // The anchors matter: without them (global attention of layer 2 alone) other tokens are kept.
    expect(hipruneKeep(three.probs.get(1)!, three.probs.get(2)!, 32, 0.5, 1, 0)).not.toEqual(refs3);
  });

  it("object layer = the stage's layer: default alpha at 25 tokens (n_a = round(0.5) = 0, plain global attention), and 3 anchors at 32", async () => {
    const [refs1] = await expectReference(model, { layer: 1, object: 1, amount: "25 tokens", keep: 25 }, [one]);
    expect(hipruneKeep(one.probs.get(1)!, one.probs.get(1)!, 25, 0.1, 1, 1)).not.toEqual(refs1); // what half-up rounding would keep
    await expectReference(model, { layer: 3, object: 3, amount: "50%", keep: 32, alpha: 0.5 }, [
      { ...three, runners: [runNode] },
    ]);
  });

  it("tiny budgets: anchors and buffers beyond N' keep every anchor, then the best buffers (defined, not an error)", async () => {
    // alpha 1: n_a = round(0.6) = round(0.8) = 1, so up to 5 candidates for 3 or 4 slots.
    const candidates = (probs: Probs) =>
      probs.map((example) => anchorsAndBuffers(globalScores(example, 1), 1, 8).cand.length);
    expect(candidates(three.probs.get(0)!)).toEqual([5, 5, 5]); // every example overflows both budgets
    for (const keep of [3, 4]) {
      await expectReference(model, { layer: 3, object: 0, amount: `${keep} tokens`, keep, alpha: 1 }, [
        { ...one, runners: [runNode] },
        three,
      ]);
    }
  });

  it("second stage after cls-attn: object layer and grid (4×4) are those of the stage's own input tokens", async () => {
    const spec = "after layer 0 keep 25% by cls-attn\nafter layer 3 keep 50% by hiprune(object_layer: 1, alpha: 1)";
    const { model: pruned, report } = compile(model, spec, { exposeIndices: true });
    expect(report.stages.map((s) => [s.criterion, s.tokensIn, s.tokensOut])).toEqual([
      ["cls-attn", 65, 17],
      ["hiprune", 17, 9],
    ]);
    const once = compile(model, "after layer 0 keep 25% by cls-attn").model;
    for (const { feeds, probs } of [one, three]) {
      const p = await probsAt(once, feeds, [1, 3], 2);
      // N' = 8, n_a = round(1.6) = 2: up to 10 candidates, so this also exercises the overflow rule.
      const expected = [clsAttnKeep(probs.get(0)!, 25, 1), hipruneKeep(p.get(1)!, p.get(3)!, 8, 1, 1)];
      for (const run of [runNode, runWasm]) expect(await keptStages(pruned, feeds, run, 2)).toEqual(expected);
    }
  });

  it("keep 100% keeps every token and gives the dense logits (≤ 1e-5)", async () => {
    await expectKeepsEveryToken(model, "after layer 2 keep 100% by hiprune(object_layer: 0, alpha: 0.5)", feeds3, 65);
  });

  it("rejects an object layer before the previous stage, with the spec position and the layers", () => {
    const e = thrown(() =>
      compile(model, "after layer 1 keep 25% by cls-attn\nafter layer 3 keep 50% by hiprune(object_layer: 0)", {
        specName: "s.prune",
      }),
    );
    expect(e.kind).toBe("apply");
    expect(e.message).toBe(
      "s.prune:2:27: error: hiprune cannot run after layer 3: object_layer 0 is before layer 2, the first layer that sees this stage's input tokens (the previous stage prunes after layer 1); it must be in 2..3\n" +
        " 2 | after layer 3 keep 50% by hiprune(object_layer: 0)\n" +
        "   |                           ^~~~~~~",
    );
  });

  it("rejects an object layer after the stage, a missing object layer, alpha outside (0, 1] and a non-square grid", () => {
    const why = (spec: string) => rejection(model, spec).split("\n")[0];
    expect(why("after layer 1 keep 50% by hiprune(object_layer: 2)")).toBe(
      "s.prune:1:27: error: hiprune cannot run after layer 1: object_layer 2 comes after layer 1, whose output this stage prunes (later layers have not run yet); it must be in 0..1",
    );
    expect(why("after layer 1 keep 50% by hiprune(object_layer: 9)")).toBe(
      "s.prune:1:27: error: hiprune cannot run after layer 1: object_layer 9 is out of range: the model has 4 layers; it must be in 0..1",
    );
    expect(why("after layer 2 keep 50% by hiprune")).toBe(
      "s.prune:1:27: error: hiprune cannot run after layer 2: it needs the object_layer argument (the layer whose global attention picks the anchors, in 0..2), e.g. hiprune(object_layer: 0)",
    );
    expect(why("after layer 2 keep 50% by hiprune(object_layer: 1, alpha: 0)")).toBe(
      "s.prune:1:27: error: hiprune cannot run after layer 2: alpha 0 is not in (0, 1]: it is the fraction of the budget spent on anchors and their buffers (n_a = round(N'·alpha/5))",
    );
    expect(why("after layer 2 keep 50% by hiprune(object_layer: 1, alpha: 1.5)")).toContain(
      "alpha 1.5 is not in (0, 1]",
    );
    expect(why("after layer 0 keep 50% by cls-attn; after layer 2 keep 50% by hiprune(object_layer: 1)")).toBe(
      "s.prune:1:63: error: hiprune cannot run after layer 2: its 32 prunable input tokens do not form a square patch grid (the buffers are the anchors' ±1 and ±grid-width neighbours)",
    );
    // Negative object layers count from the end, like stage layers: -2 is layer 2.
    const nodes = (spec: string) => decodeModel(compile(model, spec).model).graph!.node;
    expect(nodes("after layer 3 keep 50% by hiprune(object_layer: -2)")).toEqual(
      nodes("after layer 3 keep 50% by hiprune(object_layer: 2)"),
    );
  });
});

describe("hiprune on the trained digits ViT (8×8 patches + CLS, 6 layers, 4 heads)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
  it("after layer 4 keep 25% with object layer 2, alpha 0.5: exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    const probes: Probe[] = [];
    for (const feeds of digitsFeeds())
      probes.push({ feeds, probs: await probsAt(model, feeds, [2, 4], 4), runners: [runNode, runWasm] });
    await expectReference(model, { layer: 4, object: 2, amount: "25%", keep: 16, alpha: 0.5 }, probes);
  });
});

describeShared("hiprune on the torchvision ViT-Ti (14×14 patches + CLS)", () => {
  let model: Uint8Array;
  let one: Probe;
  let three: Probe;
  beforeAll(async () => {
    model = vitTiModel();
    const [f1, f3] = vitTiOneAndThree();
    const layers = [2, 3, 4, 6, 8, 10];
    one = { feeds: f1, probs: await probsAt(model, f1, layers, 3), runners: [runNode] };
    three = { feeds: f3, probs: await probsAt(model, f3, layers, 3), runners: [runNode, runWasm] };
  });
  it("after layer 6 keep 33.3% (65 tokens) with object layer 2, alpha 0.5 (n_a = round(6.5) = 6): batch 1 and 3, CPU (and WASM at batch 3)", async () => {
    expect(keepCount(33.3, 196)).toBe(65);
    await expectReference(model, { layer: 6, object: 2, amount: "33.3%", keep: 65, alpha: 0.5 }, [one, three]);
  });
  it("after layer 8 keep 125 tokens with object layer 3, default alpha (n_a = round(2.5) = 2, not 3)", async () => {
    const [refs1, refs3] = await expectReference(model, { layer: 8, object: 3, amount: "125 tokens", keep: 125 }, [
      one,
      { ...three, runners: [runNode] },
    ]);
    expect(hipruneKeep(one.probs.get(3)!, one.probs.get(8)!, 125, 0.1, 1, 3)).not.toEqual(refs1);
    expect(refs3).toHaveLength(3);
  });
  it("after layer 10 keep 25% (49 tokens) with object layer 4, alpha 1 (10 anchors, up to 50 candidates)", async () => {
    await expectReference(model, { layer: 10, object: 4, amount: "25%", keep: 49, alpha: 1 }, [
      one,
      { ...three, runners: [runNode] },
    ]);
  });
  it("second stage after cls-attn keeping 64 tokens (an 8×8 grid of its input)", async () => {
    const spec =
      "after layer 1 keep 64 tokens by cls-attn\nafter layer 5 keep 50% by hiprune(object_layer: 3, alpha: 0.5)";
    const pruned = compile(model, spec, { exposeIndices: true }).model;
    const once = compile(model, "after layer 1 keep 64 tokens by cls-attn").model;
    for (const { feeds } of [one, three]) {
      const p = await probsAt(once, feeds, [3, 5], 3);
      expect((await keptStages(pruned, feeds, runNode, 2))[1]).toEqual(hipruneKeep(p.get(3)!, p.get(5)!, 32, 0.5, 1));
    }
  });
});

describe("hiprune behind fused MultiHeadAttention (6×6 patches + CLS, recomputed probabilities)", () => {
  const fused = buildFusedVit();
  const twin = unfuseMultiHeadAttention(fused, FUSED_VIT.hidden / FUSED_VIT.heads);
  it("after layer 2 keep 50% with object layer 1, alpha 0.5: the fused model keeps the unfused twin's tokens and the reference's (batch 1 and 3, CPU and WASM)", async () => {
    const spec = "after layer 2 keep 50% by hiprune(object_layer: 1, alpha: 0.5)";
    const ofFused = compile(fused, spec, { exposeIndices: true }).model;
    const ofTwin = compile(twin, spec, { exposeIndices: true }).model;
    const softmax = softmaxOutputs(twin);
    for (const batch of [1, 3]) {
      const f = fusedVitFeeds(batch);
      const out = await runNode(withOutputs(twin, [softmax[1]!, softmax[2]!]), f, [softmax[1]!, softmax[2]!]);
      const unfold = (name: string): Probs => {
        const [b, h, n, m] = out[name]!.dims as [number, number, number, number];
        return unfoldProbs(out[name]!.data as Float32Array, [b * h, n, m], h);
      };
      const expected = hipruneKeep(unfold(softmax[1]!), unfold(softmax[2]!), 18, 0.5, 1);
      expect((await keptStages(ofTwin, f))[0]).toEqual(expected);
      for (const run of [runNode, runWasm]) expect((await keptStages(ofFused, f, run))[0]).toEqual(expected);
    }
  });
});
