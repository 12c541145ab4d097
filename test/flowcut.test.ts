/**
 * flowcut end to end: the compiled model keeps exactly the tokens the TypeScript reference (the
 * original's compute_score and running average, on plain arrays) picks from the dense model's own
 * probabilities and values of layers firstLayer..L; batch 1 and 3, CPU and WASM, on the tiny ViT,
 * the trained digits ViT and ViT-Ti; a second stage after cls-attn; and the plan's rejections.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describeShared, sharedModel, REPO_ROOT } from "./helpers/shared.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { withOutputs, unfoldProbs } from "./support/model-edit.js";
import { clsAttnKeep, type Probs } from "./reference/cls-attn.js";
import { flowcutKeep, type Values } from "./reference/flowcut.js";
import { decodeModel } from "../src/onnx/io.js";
import { buildFusedVit, fusedVitFeeds, FUSED_VIT } from "./support/fused-vit.js";
import { unfuseMultiHeadAttention } from "./support/unfuse.js";
import { softmaxOutputs } from "./support/stage-tensors.js";
import {
  digitsFeeds,
  expectKeepsEveryToken,
  keptStages,
  rejection,
  tinyOneAndThree,
  vitTiModel,
  vitTiOneAndThree,
} from "./support/cases.js";

const probsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Softmax_output_0`;
/** torchvision's per-head values [B·H, N, D]: the right input of the MatMul that consumes the softmax. */
const valuesOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Transpose_2_output_0`;

type Maps = Map<number, { probs: Probs; values: Values }>;

/** Probabilities and values of `layers` of `model` on `feeds`, from one run. */
async function mapsAt(model: Uint8Array, feeds: Feeds, layers: number[], heads: number): Promise<Maps> {
  const names = layers.flatMap((l) => [probsOf(l), valuesOf(l)]);
  const out = await runNode(withOutputs(model, names), feeds, names);
  const unfold = (name: string) => unfoldProbs(out[name]!.data as Float32Array, out[name]!.dims, heads);
  return new Map(layers.map((l) => [l, { probs: unfold(probsOf(l)), values: unfold(valuesOf(l)) }]));
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** The reference over layers from..to of `maps`. */
const reference = (maps: Maps, from: number, to: number, percent: number) =>
  flowcutKeep(
    range(from, to).map((l) => maps.get(l)!),
    percent,
    1,
  );

/** One input batch, the dense model's maps, and the runners to check it on. */
interface Probe {
  feeds: Feeds;
  maps: Maps;
  runners: (typeof runNode)[];
}

/** `after layer L keep P% by flowcut` keeps the reference's tokens (layers 0..L) on every probe and runner. */
async function expectReference(
  model: Uint8Array,
  layer: number,
  percent: number,
  probes: Probe[],
): Promise<number[][][]> {
  const pruned = compile(model, `after layer ${layer} keep ${percent}% by flowcut`, { exposeIndices: true }).model;
  const refs: number[][][] = [];
  for (const { feeds, maps, runners } of probes) {
    const expected = reference(maps, 0, layer, percent);
    for (const run of runners) expect((await keptStages(pruned, feeds, run))[0]).toEqual(expected);
    refs.push(expected);
  }
  return refs;
}

describe("flowcut on the built-in tiny ViT (64 patches + CLS, 4 layers, 2 heads)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
  const [feeds1, feeds3] = tinyOneAndThree();
  let one: Probe;
  let three: Probe;
  beforeAll(async () => {
    one = { feeds: feeds1, maps: await mapsAt(model, feeds1, [0, 1, 2, 3], 2), runners: [runNode, runWasm] };
    three = { feeds: feeds3, maps: await mapsAt(model, feeds3, [0, 1, 2, 3], 2), runners: [runNode, runWasm] };
  });

  it("after layer 2 keep 25%: running average of layers 0..2, exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    const [refs1, refs3] = await expectReference(model, 2, 25, [one, three]);
    // The average matters: layer 2's score alone, or the plain mean of the layers, keeps other tokens.
    expect(reference(one.maps, 2, 2, 25)).not.toEqual(refs1);
    expect(reference(three.maps, 2, 2, 25)).not.toEqual(refs3);
  });

  it("after layer 0 keep 50%: a single layer (c = s)", async () => {
    await expectReference(model, 0, 50, [one, three]);
  });

  it("second stage after cls-attn: averages layers 1..3 of the once-pruned model, numbered as its own input tokens", async () => {
    const { model: pruned, report } = compile(
      model,
      "after layer 0 keep 50% by cls-attn\nafter layer 3 keep 25% by flowcut",
      { exposeIndices: true },
    );
    expect(report.stages.map((s) => [s.criterion, s.tokensIn, s.tokensOut])).toEqual([
      ["cls-attn", 65, 33],
      ["flowcut", 33, 9],
    ]);
    const once = compile(model, "after layer 0 keep 50% by cls-attn").model;
    for (const { feeds, maps } of [one, three]) {
      const m = await mapsAt(once, feeds, [1, 2, 3], 2);
      const expected = [clsAttnKeep(maps.get(0)!.probs, 50, 1), reference(m, 1, 3, 25)];
      for (const run of [runNode, runWasm]) expect(await keptStages(pruned, feeds, run, 2)).toEqual(expected);
      expect(reference(m, 2, 3, 25)).not.toEqual(expected[1]); // layer 1 is in the average
    }
  });

  it("keep 100% keeps every token and gives the dense logits (≤ 1e-5)", async () => {
    await expectKeepsEveryToken(model, "after layer 2 keep 100% by flowcut", feeds3, 65);
  });
});

describe("flowcut on the trained digits ViT (64 patches + CLS, 6 layers, 4 heads)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
  it("after layer 3 keep 25% (layers 0..3): exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    const probes: Probe[] = [];
    for (const feeds of digitsFeeds())
      probes.push({ feeds, maps: await mapsAt(model, feeds, [0, 1, 2, 3], 4), runners: [runNode, runWasm] });
    await expectReference(model, 3, 25, probes);
  });
});

describeShared("flowcut on the torchvision ViT-Ti (196 patches + CLS, 3 heads)", () => {
  let model: Uint8Array;
  let feeds: [Feeds, Feeds];
  beforeAll(() => {
    model = vitTiModel();
    feeds = vitTiOneAndThree();
  });
  it("after layer 3 keep 25% (layers 0..3): batch 1 and 3 on CPU, batch 3 on WASM", async () => {
    const [f1, f3] = feeds;
    const probes: Probe[] = [
      { feeds: f1, maps: await mapsAt(model, f1, [0, 1, 2, 3], 3), runners: [runNode] },
      { feeds: f3, maps: await mapsAt(model, f3, [0, 1, 2, 3], 3), runners: [runNode, runWasm] },
    ];
    await expectReference(model, 3, 25, probes);
  });
  it("second stage after cls-attn at layer 1: layers 2..5 of the once-pruned model", async () => {
    const pruned = compile(model, "after layer 1 keep 50% by cls-attn\nafter layer 5 keep 33.3% by flowcut", {
      exposeIndices: true,
    }).model;
    const once = compile(model, "after layer 1 keep 50% by cls-attn").model;
    for (const f of feeds) {
      const m = await mapsAt(once, f, [2, 3, 4, 5], 3);
      expect((await keptStages(pruned, f, runNode, 2))[1]).toEqual(reference(m, 2, 5, 33.3));
    }
  });
  it("a model without CLS (gemma-3 SigLIP) is rejected with the model fact", () => {
    const bytes = readFileSync(sharedModel("graph-only/gemma-3-4b-vlm/vision_encoder.onnx"));
    expect(rejection(bytes, "after layer 3 keep 50% by flowcut", "g.prune")).toBe(
      "g.prune:1:27: error: flowcut cannot run after layer 3: the model has no CLS token (no learned token is concatenated in front of the patch tokens); use a criterion that does not need one\n 1 | after layer 3 keep 50% by flowcut\n   |                           ^~~~~~~",
    );
  });
});

describe("flowcut behind fused MultiHeadAttention (36 patches + CLS, recomputed probabilities)", () => {
  /** [B,H,N,X] → nested [B][H][N][X]. */
  const unfold4 = (t: { data: unknown; dims: number[] }) => {
    const [b, h, n, m] = t.dims as [number, number, number, number];
    return unfoldProbs(t.data as Float32Array, [b * h, n, m], h);
  };

  it.each([false, true])(
    "q|k|v bias %s: the fused model keeps the unfused twin's tokens and the reference's (batch 1 and 3, CPU and WASM)",
    async (qkvBias) => {
      const fused = buildFusedVit({ ...FUSED_VIT, qkvBias });
      const twin = unfuseMultiHeadAttention(fused, FUSED_VIT.hidden / FUSED_VIT.heads);
      const spec = "after layer 2 keep 25% by flowcut";
      const ofFused = compile(fused, spec, { exposeIndices: true }).model;
      const ofTwin = compile(twin, spec, { exposeIndices: true }).model;
      // The twin's probabilities and the values they multiply (the P·V MatMul's right input, [B,H,N,D]).
      const g = decodeModel(twin).graph!;
      const softmax = softmaxOutputs(twin);
      const vals = softmax.map((p) => g.node.find((n) => n.opType === "MatMul" && n.input[0] === p)!.input[1]!);
      const names = [...softmax, ...vals];
      for (const batch of [1, 3]) {
        const f = fusedVitFeeds(batch);
        const out = await runNode(withOutputs(twin, names), f, names);
        const maps = [0, 1, 2].map((l) => ({ probs: unfold4(out[softmax[l]!]!), values: unfold4(out[vals[l]!]!) }));
        const expected = flowcutKeep(maps, 25, 1);
        expect((await keptStages(ofTwin, f))[0]).toEqual(expected);
        for (const run of [runNode, runWasm]) expect((await keptStages(ofFused, f, run))[0]).toEqual(expected);
      }
    },
  );
});
