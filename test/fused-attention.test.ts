/**
 * Attention criteria behind fused com.microsoft.MultiHeadAttention: prunec recomputes the rows it
 * needs from the op's q and k in fp32. The proof is an unfused twin of the same model (each MHA
 * replaced by its definition in plain ops, test/support/unfuse.ts), which computes what the fused
 * kernel does and materializes the probabilities: on the fused model the stage's scores equal the
 * twin's (≤ 1e-5) and the kept sets are identical, and both equal the TypeScript reference.
 */
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { PrunecError } from "../src/errors.js";
import { valueInfo } from "../src/ir/value-info.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { buildFusedVit, FUSED_VIT } from "./support/fused-vit.js";
import { unfuseMultiHeadAttention } from "./support/unfuse.js";
import { withOutputs, unfoldProbs, rows } from "./support/model-edit.js";
import { stageScoresName, softmaxOutputs } from "./support/stage-tensors.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { clsAttnKeep, globalAttnKeep, type Probs } from "./reference/cls-attn.js";

const fused = buildFusedVit();
const twin = unfuseMultiHeadAttention(fused, FUSED_VIT.hidden / FUSED_VIT.heads);

function feeds(batch: number): Feeds {
  const size = FUSED_VIT.patches * FUSED_VIT.inputs;
  const data = new Float32Array(batch * size);
  for (let b = 0; b < batch; b++)
    for (let i = 0; i < size; i++) data[b * size + i] = Math.sin(i * 0.37 + b * 1.9) * (1.5 - 0.3 * b);
  return { patches: { type: "float32", dims: [batch, FUSED_VIT.patches, FUSED_VIT.inputs], data } };
}

async function probsOfLayer(model: Uint8Array, layer: number, f: Feeds): Promise<Probs> {
  const name = softmaxOutputs(model)[layer]!;
  const p = (await runNode(withOutputs(model, [name]), f, [name]))[name]!;
  const [b, h, n, m] = p.dims as [number, number, number, number];
  return unfoldProbs(p.data as Float32Array, [b * h, n, m], h);
}

/** Compile `spec` on a model; run it exposing stage 0's scores and indices. */
async function runStage(model: Uint8Array, spec: string, f: Feeds, run = runNode) {
  const compiled = compile(model, spec, { exposeIndices: true }).model;
  const scores = stageScoresName(compiled, 0);
  const out = await run(withOutputs(compiled, [scores]), f, [scores, "prunec.stage0.indices", "logits"]);
  const idx = out["prunec.stage0.indices"]!;
  return {
    scores: out[scores]!.data as Float32Array,
    kept: rows(idx.data as BigInt64Array, idx.dims),
    logits: out["logits"]!.data as Float32Array,
  };
}

describe("fused MultiHeadAttention: recomputed attention equals an unfused twin's", () => {
  it("the twin computes what the fused kernel does (outputs ≤ 1e-5)", async () => {
    const f = feeds(3);
    const a = (await runNode(fused, f, ["logits"]))["logits"]!;
    const b = (await runNode(twin, f, ["logits"]))["logits"]!;
    expect(maxAbsDiff(a.data as Float32Array, b.data as Float32Array)).toBeLessThanOrEqual(1e-5);
  });

  const cases: {
    spec: string;
    layer: number;
    percent: number;
    reference: (p: Probs, percent: number, prefix: number) => number[][];
  }[] = [
    { spec: "after layer 1 keep 25% by cls-attn", layer: 1, percent: 25, reference: clsAttnKeep },
    { spec: "after layer 0 keep 50% by global-attn", layer: 0, percent: 50, reference: globalAttnKeep },
    { spec: "after layer 2 keep 12.5% by cls-attn", layer: 2, percent: 12.5, reference: clsAttnKeep },
  ];
  for (const c of cases) {
    it(`${c.spec}: scores ≤ 1e-5 and identical kept sets at batch 1 and 3, CPU and WASM`, async () => {
      for (const batch of [1, 3]) {
        const f = feeds(batch);
        const expected = c.reference(await probsOfLayer(twin, c.layer, f), c.percent, 1);
        const ofTwin = await runStage(twin, c.spec, f);
        for (const run of [runNode, runWasm]) {
          const ofFused = await runStage(fused, c.spec, f, run);
          expect(maxAbsDiff(ofFused.scores, ofTwin.scores)).toBeLessThanOrEqual(1e-5);
          expect(ofFused.kept).toEqual(ofTwin.kept);
          expect(ofFused.kept).toEqual(expected);
          expect(maxAbsDiff(ofFused.logits, ofTwin.logits)).toBeLessThanOrEqual(1e-5);
        }
      }
    });
  }

  // The other attention criteria read the same recomputed maps (logits, probabilities, values);
  // their own references are checked in their suites, on unfused models.
  const others = [
    "after layer 2 keep 25% by cls-attn-ensemble(layers: 0..2)",
    "after layer 2 keep 50% by hiprune(object_layer: 1, alpha: 0.5)",
    "after layer 1 keep 25% by fopru",
    "after layer 1 keep 50% by spatial-rows",
    "after layer 2 keep 25% by pagerank",
    "after layer 2 keep 25% by flowcut",
  ];
  for (const spec of others) {
    it(`${spec}: the fused model's scores equal the twin's (≤ 1e-5), same kept sets (batch 3, CPU and WASM)`, async () => {
      const f = feeds(3);
      const ofTwin = await runStage(twin, spec, f);
      for (const run of [runNode, runWasm]) {
        const ofFused = await runStage(fused, spec, f, run);
        expect(maxAbsDiff(ofFused.scores, ofTwin.scores)).toBeLessThanOrEqual(1e-5);
        expect(ofFused.kept).toEqual(ofTwin.kept);
      }
    });
  }

  it("two stages behind fused attention compose like on the twin", async () => {
    const spec = "after layer 0 keep 50% by cls-attn\nafter layer 1 keep 50% by global-attn";
    const f = feeds(3);
    const names = ["prunec.stage0.indices", "prunec.stage1.indices", "logits"];
    const a = await runNode(compile(fused, spec, { exposeIndices: true }).model, f, names);
    const b = await runNode(compile(twin, spec, { exposeIndices: true }).model, f, names);
    expect(a["prunec.stage1.indices"]!.dims).toEqual([3, 10]);
    for (const n of names.slice(0, 2)) expect(a[n]!.data).toEqual(b[n]!.data);
    expect(maxAbsDiff(a["logits"]!.data as Float32Array, b["logits"]!.data as Float32Array)).toBeLessThanOrEqual(1e-5);
  });

  it("keep 100% behind fused attention leaves the outputs equal (≤ 1e-5)", async () => {
    const f = feeds(3);
    const dense = (await runNode(fused, f, ["logits"]))["logits"]!.data as Float32Array;
    const all = (await runNode(compile(fused, "after layer 1 keep 100% by cls-attn").model, f, ["logits"]))["logits"]!
      .data as Float32Array;
    expect(maxAbsDiff(dense, all)).toBeLessThanOrEqual(1e-5);
  });

  it("a fused op prunec cannot recompute is rejected with the layer and node named", () => {
    // A key_padding_mask input (MHA input 4) is not applied by the recompute.
    const masked = withMhaInput(fused, 4, "patches_mask");
    expect(() => compile(masked, "after layer 1 keep 50% by global-attn")).toThrow(PrunecError);
    expect(() => compile(masked, "after layer 1 keep 50% by global-attn")).toThrow(
      "global-attn cannot run after layer 1: layer 1's fused com.microsoft.MultiHeadAttention (node '/encoder/layers.1/attn/mha') has a key_padding_mask input, which prunec's recompute does not apply",
    );
  });
});

/** The model with input slot `slot` of every MHA node set to `name`, declared as an int32 [batch, tokens] graph input. */
function withMhaInput(bytes: Uint8Array, slot: number, name: string): Uint8Array {
  const model = decodeModel(bytes);
  for (const n of model.graph!.node) if (n.opType === "MultiHeadAttention") n.input[slot] = name;
  model.graph!.input.push(valueInfo(name, 6, ["batch", "tokens"]));
  return encodeModel(model);
}

describe("per-token side tensors follow the kept tokens", () => {
  it("the layers below a stage see the kept tokens' attention_bias rows and columns: the pruned model equals the dense one with the dropped keys masked", async () => {
    // Below the stage, kept tokens attend only to kept tokens, with their own biases. The dense model
    // does the same when dropped keys get a -1e9 bias in the layers below (CLS reads no dropped query).
    const f = feeds(1);
    const compiled = compile(fused, "after layer 0 keep 25% by global-attn", { exposeIndices: true }).model;
    const out = await runNode(compiled, f, ["prunec.stage0.indices", "logits"]);
    const kept = new Set(Array.from(out["prunec.stage0.indices"]!.data as BigInt64Array, Number));
    expect(kept.size).toBe(10);
    const masked = decodeModel(fused);
    const n = FUSED_VIT.patches + 1;
    for (const t of masked.graph!.initializer) {
      const layer = /^\/encoder\/layers\.(\d+)\.attn\.attention_bias$/.exec(t.name);
      if (!layer || Number(layer[1]) === 0) continue;
      const values = new Float32Array(t.rawData.slice().buffer);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (!kept.has(j)) values[i * n + j] = -1e9;
      t.rawData = new Uint8Array(values.buffer);
    }
    const reference = (await runNode(encodeModel(masked), f, ["logits"]))["logits"]!.data as Float32Array;
    const dense = (await runNode(fused, f, ["logits"]))["logits"]!.data as Float32Array;
    expect(maxAbsDiff(out["logits"]!.data as Float32Array, reference)).toBeLessThanOrEqual(1e-5);
    expect(maxAbsDiff(dense, reference)).toBeGreaterThan(1e-2); // the masking matters, so the check can fail
  });
});
