/**
 * The real graph-only exports (../shared/models/graph-only) run in onnxruntime-node on synthetic
 * weights, cut to their first two layers: dense outputs are finite, varied and of the expected
 * shape, and a compiled `after layer 0 keep 50% by norm` keeps exactly the tokens a TypeScript
 * reference picks from the dense residual stream, and layer 1 then runs on the kept tokens. This
 * is what shows that quantized layers (MatMulInteger, MatMulNBits) and fused attention are
 * analysed and pruned like float ones. The Qwen towers also feed every layer per-token side
 * tensors (rotary angles or position ids, a [tokens, tokens] mask) that the stage must gather.
 *
 * The full models end in a spatial merge (src/analysis/merge.ts); what compiling them does today
 * is recorded in the last suite.
 */
import { expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describeShared, sharedModel } from "./helpers/shared.js";
import { runNode, type Feeds, type OrtOutput } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { StringStringEntryProtoSchema, TensorProto_DataLocation } from "../src/onnx/gen/onnx_pb.js";
import { shallowCopy } from "../src/ir/copy.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import {
  residualOutput,
  shortenToLayers,
  truncateToLayers,
  writeSyntheticWeights,
} from "./support/synthetic-weights.js";
import { qwen2Feeds, qwen35Feeds, gemmaFeeds, withWeights as withSeededWeights } from "./support/graph-only-inputs.js";
import { normKeep } from "./reference/baselines.js";
import { globalAttnKeep, keepCount, topKPositions } from "./reference/cls-attn.js";
import { rows, unfoldProbs, withOutputs } from "./support/model-edit.js";
import { denseName } from "../passes/gather-tokens.js";

const SEED = 1;
const GRID = 8; // Qwen towers: an 8×8 patch grid (even sides, as their 2×2 merger needs)
const N = GRID * GRID;

interface Case {
  name: string;
  file: string;
  feeds: () => Feeds;
  /** Residual stream shape for `n` tokens. */
  stream: (n: number) => number[];
  tokens: number;
  /** Also run the dense 2-layer cut (the pruned run computes dense layer 0 anyway; Gemma skips it for time). */
  denseRun: boolean;
}

/** Every model is cut to this many layers; the stage acts after layer 0, so layer 1 runs on the kept tokens. */
const LAYERS = 2;

const qwen2: Case = {
  name: "qwen2-vl vision tower (torch export: Gemm, MatMul + Softmax attention)",
  file: "graph-only/qwen2-vl-2b-vision-tower-torchexport/model.onnx",
  feeds: () => qwen2Feeds([[GRID, GRID]], SEED), // one image: the mask masks nothing
  stream: (n) => [n, 1280],
  tokens: N,
  denseRun: true,
};

const qwen35: Case = {
  name: "qwen3.5 vision encoder (int8 MatMulInteger, MultiHeadAttention + RotaryEmbedding)",
  file: "graph-only/qwen3.5-0.8b-vlm-int8/vision_encoder_quantized.onnx",
  feeds: () => qwen35Feeds([[1, GRID, GRID]], SEED),
  stream: (n) => [n, 768],
  tokens: N,
  denseRun: true,
};

// Gemma's position embedding is a constant [1, 4096, 1152] added to the patch embeddings, so the
// input is fixed at 896×896 (64×64 patches of 14). Attention over 4096 tokens dominates the time,
// so it runs once: the pruned 2-layer model, with dense layer 0's output exposed.
const gemma: Case = {
  name: "gemma-3 SigLIP vision encoder (fp32, fused MultiHeadAttention)",
  file: "graph-only/gemma-3-4b-vlm/vision_encoder.onnx",
  feeds: () => gemmaFeeds(SEED),
  stream: (n) => [1, n, 1152],
  tokens: 4096,
  denseRun: false,
};
const gemmaQ: Case = {
  ...gemma,
  name: "gemma-3 SigLIP vision encoder (MatMulNBits, bits=8)",
  file: "graph-only/gemma-3-4b-vlm/vision_encoder_quantized.onnx",
};

/** The shared scratch-dir runner with this file's seed. */
const withWeights = <T>(
  source: Uint8Array,
  files: Record<string, Uint8Array>,
  fn: (path: (name: string) => string) => Promise<T>,
): Promise<T> => withSeededWeights(source, SEED, files, fn);

/** [N, D] or [1, N, D] float data as [1][N][D] (what the references take). */
function tokensOf(o: OrtOutput): number[][][] {
  const d = o.dims.at(-1)!;
  const n = o.dims.at(-2)!;
  const data = o.data as Float32Array;
  return [Array.from({ length: n }, (_, j) => Array.from(data.subarray(j * d, (j + 1) * d)))];
}

/** Finite everywhere, and tokens differ (a degenerate run gives equal token norms). */
function expectLive(o: OrtOutput, shape: number[]): void {
  expect(o.dims).toEqual(shape);
  const data = o.data as Float32Array;
  expect(data.every(Number.isFinite)).toBe(true);
  const norms = tokensOf(o)[0]!.map((t) => Math.hypot(...t));
  const mean = norms.reduce((a, b) => a + b, 0) / norms.length;
  expect(mean).toBeGreaterThan(0);
  expect(Math.max(...norms) - Math.min(...norms)).toBeGreaterThan(1e-3 * mean);
}

async function checkNorm(c: Case): Promise<void> {
  const full = readFileSync(sharedModel(c.file));
  const r0 = residualOutput(full, 0);
  const last = residualOutput(full, LAYERS - 1);
  const cut = truncateToLayers(full, LAYERS);
  // The stage renames the dense producer's output to denseName(r0): expose it for the reference.
  const pruned = withOutputs(compile(cut, "after layer 0 keep 50% by norm", { exposeIndices: true }).model, [
    denseName(r0),
  ]);
  await withWeights(cut, { "dense.onnx": cut, "pruned.onnx": pruned }, async (path) => {
    if (c.denseRun) expectLive((await runNode(path("dense.onnx"), c.feeds()))[last]!, c.stream(c.tokens));
    const p = await runNode(path("pruned.onnx"), c.feeds(), ["prunec.stage0.indices", denseName(r0), last]);
    const layer0 = p[denseName(r0)]!;
    expectLive(layer0, c.stream(c.tokens));
    const idx = p["prunec.stage0.indices"]!;
    expect(rows(idx.data as BigInt64Array, idx.dims)).toEqual(normKeep(tokensOf(layer0), 50, 0));
    expectLive(p[last]!, c.stream(keepCount(50, c.tokens)));
  });
}

describeShared("synthetic-weights helpers on the qwen3.5 int8 export", () => {
  const full = () => readFileSync(sharedModel(qwen35.file));
  const externalOf = (bytes: Uint8Array) =>
    new Map(
      decodeModel(bytes)
        .graph!.initializer.filter((t) => t.externalData.length)
        .map((t) => [t.name, t.externalData.map((e) => [e.key, e.value])]),
    );

  it("truncateToLayers: one output, nothing past layer 0, external_data entries exactly as recorded", () => {
    const cut = truncateToLayers(full(), 1);
    const graph = decodeModel(cut).graph!;
    expect(graph.output.map((o) => o.name)).toEqual([residualOutput(full(), 0)]);
    expect(graph.node.filter((n) => /layers\.1\/|merger/.test(n.name))).toEqual([]);
    const before = externalOf(full());
    const after = externalOf(cut);
    expect(after.size).toBeGreaterThan(0);
    expect(after.size).toBeLessThan(before.size);
    for (const [name, entries] of after) expect(entries).toEqual(before.get(name));
    expect([...after.keys()]).toContain("model.layers.0.attn.qkv.MatMul.weight_quantized");
  });

  it("writeSyntheticWeights: a sparse file with the recorded ranges; integer tensors that may be shapes are refused", () => {
    const cut = truncateToLayers(full(), 1);
    const dir = mkdtempSync(join(tmpdir(), "prunec-graph-only-"));
    try {
      writeSyntheticWeights(cut, dir, SEED);
      const ranges = [...externalOf(cut).values()].map((e) => new Map(e as [string, string][]));
      const end = Math.max(...ranges.map((r) => Number(r.get("offset")) + Number(r.get("length"))));
      const file = statSync(join(dir, "vision_encoder_quantized.onnx_data"));
      expect(file.size).toBe(end);
      expect(file.blocks * 512).toBeLessThan(file.size); // the ranges of dropped tensors stay holes

      // Turn a Reshape's int64 shape constant into external data: its value cannot be invented.
      const model = decodeModel(cut);
      const graph = model.graph!;
      const shapeConst = "/model/constants/INT64/[0, 3, 12, 64]";
      const initializer = graph.initializer.map((t) =>
        t.name !== shapeConst
          ? t
          : shallowCopy(t, {
              rawData: new Uint8Array(0),
              dataLocation: TensorProto_DataLocation.EXTERNAL,
              externalData: [
                ["location", "shape.bin"],
                ["offset", "0"],
                ["length", "32"],
              ].map(([key, value]) => create(StringStringEntryProtoSchema, { key, value })),
            }),
      );
      const edited = encodeModel(shallowCopy(model, { graph: shallowCopy(graph, { initializer }) }));
      expect(() => writeSyntheticWeights(edited, dir, SEED)).toThrow(
        /refusing to guess its value; used by Reshape\[1\]/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describeShared("graph-only exports on synthetic weights: dense runs and norm pruning", () => {
  for (const c of [qwen2, qwen35, gemma, gemmaQ]) {
    it(`${c.name}: dense is finite and varied; norm keeps the reference tokens`, () => checkNorm(c), 120_000);
  }

  it("qwen2-vl: global-attn keeps the tokens the reference picks from the dense layer-0 probabilities", async () => {
    const full = readFileSync(sharedModel(qwen2.file));
    const layer0 = analyzeTransformer(new Graph(decodeModel(full).graph!)).layers[0]!;
    const probs = layer0.core!.probs!;
    expect(layer0.probsLayout).toBe("heads,q,k");
    const cut = truncateToLayers(full, LAYERS);
    const dense = truncateToLayers(full, 1, [probs]);
    const pruned = compile(cut, "after layer 0 keep 50% by global-attn", { exposeIndices: true }).model;
    await withWeights(cut, { "dense.onnx": dense, "pruned.onnx": pruned }, async (path) => {
      const d = await runNode(path("dense.onnx"), qwen2.feeds());
      const p = d[probs]!;
      expect(p.dims).toEqual([16, N, N]);
      const expected = globalAttnKeep(unfoldProbs(p.data as Float32Array, p.dims, 16), 50, 0);
      expect(expected).not.toEqual(normKeep(tokensOf(d[residualOutput(full, 0)]!), 50, 0)); // another criterion, another set
      const last = residualOutput(full, LAYERS - 1);
      const out = await runNode(path("pruned.onnx"), qwen2.feeds(), ["prunec.stage0.indices", last]);
      const idx = out["prunec.stage0.indices"]!;
      expect(rows(idx.data as BigInt64Array, idx.dims)).toEqual(expected);
      expectLive(out[last]!, qwen2.stream(keepCount(50, N)));
    });
  });
});

describeShared("graph-only exports: compiling the full models (a spatial merge after the encoder)", () => {
  // Inside the encoder, the Qwen folds keep whole 4-token merge groups (the count is in groups);
  // Gemma's pooling needs every token, so only `after encoder` applies there.
  const cases: [string, number | string, number | string][] = [
    [qwen2.file, "hw", "4*keep(50%,hw/4)"],
    [qwen35.file, "num_patches", "4*keep(50%,num_patches/4)"],
  ];
  for (const [file, tokensIn, tokensOut] of cases) {
    it(`${file}: after layer 0 keep 50% by norm keeps whole merge groups`, () => {
      const { report } = compile(readFileSync(sharedModel(file)), "after layer 0 keep 50% by norm", {
        exposeIndices: true,
      });
      expect(report.stages.map((s) => [s.tokensIn, s.tokensOut])).toEqual([[tokensIn, tokensOut]]);
    });
  }
  for (const file of [gemma.file, gemmaQ.file]) {
    it(`${file}: after encoder keep 25% keeps 64 of 256 pooled tokens`, () => {
      const { report } = compile(readFileSync(sharedModel(file)), "after encoder keep 25% by norm");
      expect(report.stages.map((s) => [s.layer, s.tokensIn, s.tokensOut])).toEqual([[26, 256, 64]]);
    });
  }

  // Run what follows the encoder on layer 0 alone (shortenToLayers), pruned after layer 0.
  it("qwen3.5, inside the encoder: whole 2×2 merge groups are kept (group score = mean token score), and the merged rows equal the dense ones", async () => {
    const short = shortenToLayers(readFileSync(sharedModel(qwen35.file)), 1);
    const r0 = residualOutput(short, 0);
    const compiled = compile(short, "after layer 0 keep 50% by norm", { exposeIndices: true });
    expect(compiled.report.stages[0]!.tokensOut).toBe("4*keep(50%,num_patches/4)");
    const pruned = withOutputs(compiled.model, [denseName(r0)]);
    await withWeights(short, { "dense.onnx": short, "pruned.onnx": pruned }, async (path) => {
      const dense = (await runNode(path("dense.onnx"), qwen35.feeds())).image_features!;
      const out = await runNode(path("pruned.onnx"), qwen35.feeds());
      const kept = rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims)[0]!;
      // Tokens 4w..4w+3 are window w (the processor orders patches window by window).
      const windows = mergedKeep(tokensOf(out[denseName(r0)]!)[0]!, foldMembers(N, 4), 50);
      expect(kept).toEqual(windows.flatMap((w) => [4 * w, 4 * w + 1, 4 * w + 2, 4 * w + 3]));
      // The stage is after the last layer kept here, so the merger's rows are the dense rows of the
      // kept windows, up to int8 noise: the merger's DynamicQuantizeLinear takes one scale from the
      // whole tensor, which pruning changes. A whole window from elsewhere would differ by far more.
      expect(out.image_features!.dims).toEqual([windows.length, 1024]);
      const scale = Math.max(...Array.from(dense.data as Float32Array, Math.abs));
      expect(maxRowDiff(out.image_features!, dense, windows)).toBeLessThanOrEqual(0.05 * scale);
      const shifted = windows.map((w) => (w + 1) % (N / 4));
      expect(maxRowDiff(out.image_features!, dense, shifted)).toBeGreaterThan(0.2 * scale);
    });
  }, 120_000);

  it("gemma-3, inside the encoder: rejected, because the 64×64 pooling needs every token", () => {
    const short = shortenToLayers(readFileSync(sharedModel(gemma.file)), 1);
    expect(() => compile(short, "after layer 0 keep 50% by norm", { specName: "g.prune" })).toThrow(
      "g.prune:1:13: error: the encoder output is pooled over the 64×64 token grid (node '/model/multimodal_projector/AveragePool'), which needs every token; prune 'after encoder' instead (it keeps whole pooled tokens)",
    );
  });

  it("after encoder: qwen3.5 keeps whole merged tokens (fold of 4) and gemma-3 whole pooled tokens (4×4 windows); the kept rows equal the dense output's", async () => {
    for (const [c, members, per] of [
      [qwen35, foldMembers(N, 4), "fold"],
      [gemma, poolWindows(64, 4), "pool"],
    ] as const) {
      const short = shortenToLayers(readFileSync(sharedModel(c.file)), 1);
      const r0 = residualOutput(short, 0);
      const compiled = compile(short, "after encoder keep 25% by norm", { exposeIndices: true });
      const pruned = withOutputs(compiled.model, [r0]);
      await withWeights(short, { "dense.onnx": short, "pruned.onnx": pruned }, async (path) => {
        const dense = (await runNode(path("dense.onnx"), c.feeds())).image_features!;
        const out = await runNode(path("pruned.onnx"), c.feeds());
        const expected = mergedKeep(tokensOf(out[r0]!)[0]!, members, 25);
        const kept = rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims)[0]!;
        expect(kept, per).toEqual(expected);
        expect(out.image_features!.dims.at(-2)).toBe(expected.length);
        expect(maxRowDiff(out.image_features!, dense, expected), per).toBeLessThanOrEqual(1e-5);
      });
    }
  }, 60_000);
});

/** Groups of `size` consecutive tokens. */
function foldMembers(n: number, size: number): number[][] {
  return Array.from({ length: n / size }, (_, g) => Array.from({ length: size }, (_, i) => g * size + i));
}

/** k×k windows of a g×g raster grid, windows in raster order. */
function poolWindows(g: number, k: number): number[][] {
  const out: number[][] = [];
  for (let r = 0; r < g / k; r++)
    for (let c = 0; c < g / k; c++) {
      const w: number[] = [];
      for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) w.push((r * k + i) * g + c * k + j);
      out.push(w);
    }
  return out;
}

/** Reference: L2 norm per token, mean per group, top groups (ties to the lower index), ascending. */
function mergedKeep(tokens: number[][], members: number[][], percent: number): number[] {
  const norms = tokens.map((t) => Math.hypot(...t));
  const scores = members.map((m) => m.reduce((s, t) => s + norms[t]!, 0) / m.length);
  return topKPositions(scores, keepCount(percent, scores.length), 0);
}

/** Largest difference between the pruned output's rows and the dense output's rows `keptRows`. */
function maxRowDiff(pruned: OrtOutput, dense: OrtOutput, keptRows: number[]): number {
  const d = dense.dims.at(-1)!;
  const a = pruned.data as Float32Array;
  const b = dense.data as Float32Array;
  let max = 0;
  keptRows.forEach((r, i) => {
    for (let j = 0; j < d; j++) max = Math.max(max, Math.abs(a[i * d + j]! - b[r * d + j]!));
  });
  return max;
}
