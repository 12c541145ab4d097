/**
 * pagerank (AIM's weighted PageRank) end to end: the compiled model keeps exactly the tokens the
 * TypeScript reference picks from the dense model's own attention logits (the softmax inputs):
 * M = softmax(logits/τ), d = (1/N)·1 then d ← d·M `iterations` times, score = RMS over heads; at
 * batch 1 and 3, on onnxruntime-node CPU and WASM, and as the second stage of a schedule.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describeShared, REPO_ROOT } from "./helpers/shared.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { withOutputs, unfoldProbs } from "./support/model-edit.js";
import { clsAttnKeep, type Probs } from "./reference/cls-attn.js";
import { pagerankKeep } from "./reference/attention-scores.js";
import {
  expectKeptAsReference,
  rejection,
  tinyFeeds,
  digitsFeeds,
  kept,
  expectDenseLogits,
  vitTiModel,
  vitTiFeeds,
} from "./support/cases.js";

const probsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Softmax_output_0`;
const logitsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/MatMul_1_output_0`;

/** A per-head tensor [batch][h][q][k] of `model` (the dense or a once-pruned model). */
async function tensor(model: Uint8Array, feeds: Feeds, name: string, heads: number): Promise<Probs> {
  const out = (await runNode(withOutputs(model, [name]), feeds, [name]))[name]!;
  return unfoldProbs(out.data as Float32Array, out.dims, heads);
}

interface Case {
  layer: number;
  percent: number;
  iterations?: number;
  temperature?: number;
}

const specOf = (c: Case) =>
  `after layer ${c.layer} keep ${c.percent}% by pagerank` +
  (c.iterations !== undefined ? `(iterations: ${c.iterations}, temperature: ${c.temperature})` : "");

async function expectReference(model: Uint8Array, feeds: Feeds[], c: Case, heads: number) {
  await expectKeptAsReference(model, specOf(c), feeds, async (f) =>
    pagerankKeep(
      await tensor(model, f, logitsOf(c.layer), heads),
      c.percent,
      1,
      c.iterations ?? 5,
      c.temperature ?? 0.1,
    ),
  );
}

describe("pagerank on the built-in tiny ViT (4 layers, 2 heads)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
  const feeds = tinyFeeds();

  it("after layer 1 keep 50% (defaults: 5 iterations, τ 0.1): exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    await expectReference(model, feeds, { layer: 1, percent: 50 }, 2);
  });

  it("after layer 3 keep 25% with 1 iteration and τ 2: exact kept sets", async () => {
    await expectReference(model, feeds, { layer: 3, percent: 25, iterations: 1, temperature: 2 }, 2);
  });

  it("the iterations are unrolled: one column mean, then iterations − 1 MatMuls [B,H,1,N]·[B,H,N,N]", () => {
    for (const iterations of [1, 5]) {
      const added = compile(model, `after layer 1 keep 50% by pagerank(iterations: ${iterations})`).report.addedNodes;
      expect(added.filter((n) => n.includes("/power_step_")).length).toBe(iterations - 1);
      expect(added.filter((n) => n.includes("/transition_")).length).toBe(1);
    }
  });

  it("as the second stage after cls-attn: reads the once-pruned model's logits", async () => {
    const spec = "after layer 0 keep 50% by cls-attn\nafter layer 2 keep 25% by pagerank";
    const { model: pruned, report } = compile(model, spec, { exposeIndices: true });
    expect(report.stages.map((s) => [s.criterion, s.tokensIn, s.tokensOut])).toEqual([
      ["cls-attn", 65, 33],
      ["pagerank", 33, 9],
    ]);
    const once = compile(model, "after layer 0 keep 50% by cls-attn").model;
    for (const f of feeds) {
      const first = clsAttnKeep(await tensor(model, f, probsOf(0), 2), 50, 1);
      const second = pagerankKeep(await tensor(once, f, logitsOf(2), 2), 25, 1);
      expect(second[0]!.length).toBe(9);
      for (const run of [runNode, runWasm]) {
        expect(await kept(pruned, f, run, 0)).toEqual(first);
        expect(await kept(pruned, f, run, 1)).toEqual(second);
      }
    }
  });

  it("keep 100% gives outputs equal to the original's (≤ 1e-5)", async () => {
    await expectDenseLogits(model, compile(model, "after layer 1 keep 100% by pagerank").model, feeds[1]!);
  });

  const rejected: [string, string][] = [
    ["after layer 2 keep 50% by pagerank(iterations: 0)", "iterations must be at least 1, got 0"],
    ["after layer 2 keep 50% by pagerank(temperature: 0)", "temperature must be greater than 0, got 0"],
    [
      "after layer 2 keep 50% by pagerank(iterations: 3, temperature: -0.5)",
      "temperature must be greater than 0, got -0.5",
    ],
  ];
  it.each(rejected)("rejects %s, naming the value", (spec, why) => {
    expect(rejection(model, spec)).toBe(
      `s.prune:1:27: error: pagerank cannot run after layer 2: ${why}\n 1 | ${spec}\n   |                           ^~~~~~~~`,
    );
  });
});

describe("pagerank on the trained digits ViT (6 layers, 4 heads)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
  const feeds = digitsFeeds();
  it("after layer 2 keep 25% with 3 iterations and τ 0.5: exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    await expectReference(model, feeds, { layer: 2, percent: 25, iterations: 3, temperature: 0.5 }, 4);
  });
  it("after layer 5 keep 25% (defaults): exact kept sets", async () => {
    await expectReference(model, feeds, { layer: 5, percent: 25 }, 4);
  });
  it("keep 100% gives outputs equal to the original's (≤ 1e-5)", async () => {
    await expectDenseLogits(model, compile(model, "after layer 2 keep 100% by pagerank").model, feeds[1]!);
  });
});

describeShared("pagerank on the torchvision ViT-Ti (vit-ti16-cls-randinit)", () => {
  it("after layer 6 keep 25% (defaults): exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    const model = vitTiModel();
    const feeds = vitTiFeeds();
    await expectReference(model, feeds, { layer: 6, percent: 25 }, 3);
  });
});
