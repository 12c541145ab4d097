/**
 * `across frames` with EVS (`after layer L keep P% by evs across frames`, passes/frames.ts,
 * passes/criteria/evs.ts) on the trained digits ViT run once per frame: videos of 4 frames made
 * from the sample images (shifted by a patch, a block painted in, shifted by 3 px), batch 1 and a
 * batch of 3 different videos, looped with the library's `runFrames` (empty past first, every
 * present fed back) on onnxruntime-node and onnxruntime-web's WASM backend:
 * - every call keeps exactly the positions of the float64 reference written from vLLM's evs.py
 *   (test/reference/evs.ts `evsCall`) fed the dense model's own stage-input rows: every token at
 *   the first call, then the K most dissimilar to the previous frame (margins screened);
 * - the state after each call is the dense model's stage input for that frame (≤ 1e-5);
 * - the past matters (a different past, an empty past), keep 100% equals dense (≤ 1e-5);
 * - refusals with their texts; vLLM's one-call budget over the same video is not the per-call one.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as ortNode from "onnxruntime-node";
import { beforeAll, describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { runFrames, type GenerateSession, type GenerateTensor, type TensorClass } from "../src/generate.js";
import { loadOrtWeb } from "../src/cli/runtime.js";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { parseDataset } from "../src/data/prds.js";
import { REPO_ROOT } from "./helpers/shared.js";
import { maxAbsDiff, runNode } from "./helpers/ort.js";
import { withOutputs, rows } from "./support/model-edit.js";
import { firstErrorLine } from "./support/cases.js";
import { truncateToLayers } from "./support/synthetic-weights.js";
import { buildDecoder } from "./support/decoder.js";
import { callScores, evsCall, evsRetentionMask, retainedTokensCount } from "./reference/evs.js";
import { batchAt, video } from "./support/frames.js";

const model = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
const SIDE = 64;
const TOKENS = 65; // CLS + 8×8 patches
const HIDDEN = 96;
const PAST = "past_key_values.stage0.prunec_frame";
const PRESENT = "present.stage0.prunec_frame";
const INDICES = "prunec.stage0.indices";

/** The residual stream leaving layer `layer` in the dense model (what the stage compares). */
function streamOf(layer: number): string {
  const info = analyzeTransformer(new Graph(decodeModel(model).graph!));
  return info.layers[layer]!.residual!.output;
}

/** [B, N, D] float32 as per-example rows. */
function examples(data: Float32Array, batch: number): number[][][] {
  return Array.from({ length: batch }, (_, b) =>
    Array.from({ length: TOKENS }, (_, n) =>
      Array.from(data.subarray((b * TOKENS + n) * HIDDEN, (b * TOKENS + n + 1) * HIDDEN)),
    ),
  );
}

interface Runtime {
  name: string;
  open(model: Uint8Array): Promise<GenerateSession<GenerateTensor> & { release?(): Promise<void> }>;
  Tensor: TensorClass<GenerateTensor>;
}

const node: Runtime = {
  name: "onnxruntime-node",
  open: async (m) => (await ortNode.InferenceSession.create(m)) as unknown as GenerateSession<GenerateTensor>,
  Tensor: ortNode.Tensor as unknown as TensorClass<GenerateTensor>,
};

async function wasm(): Promise<Runtime> {
  const ort = await loadOrtWeb();
  return {
    name: "onnxruntime-web (wasm)",
    open: async (m) =>
      (await ort.InferenceSession.create(m, {
        executionProviders: ["wasm"],
      })) as unknown as GenerateSession<GenerateTensor>,
    Tensor: ort.Tensor as unknown as TensorClass<GenerateTensor>,
  };
}

/** Every frame of `videos` through `compiled` with runFrames: per call, the kept positions and the present state. */
async function loop(rt: Runtime, compiled: Uint8Array, videos: Float32Array[][], outputs = [INDICES, PRESENT]) {
  const session = await rt.open(compiled);
  try {
    const frames = videos[0]!.map((_, t) => {
      const x = batchAt(videos, t);
      return { pixel_values: new rt.Tensor("float32", x.data, x.dims) };
    });
    return (await runFrames(session, frames, { Tensor: rt.Tensor, outputs })).outputs;
  } finally {
    await session.release?.();
  }
}

let videos1: Float32Array[][];
let videos3: Float32Array[][];
beforeAll(() => {
  const set = parseDataset(readFileSync(join(REPO_ROOT, "examples", "digits", "sample.prds")));
  const image = (i: number) =>
    Float32Array.from(set.pixels.subarray(i * SIDE * SIDE, (i + 1) * SIDE * SIDE), (p) => p / 255);
  videos1 = [video(image(0), 0)];
  videos3 = [1, 2, 3].map((i) => video(image(i), i));
});

/** The reference's kept positions (prefix 1 in front) and each call's dense stage input, per example. */
async function reference(videos: Float32Array[][], layer: number, keep: number) {
  const probe = withOutputs(model, [streamOf(layer)]);
  const kept: number[][][] = [];
  const states: Float32Array[] = [];
  let previous: number[][][] | undefined;
  for (let t = 0; t < videos[0]!.length; t++) {
    const out = (await runNode(probe, { pixel_values: batchAt(videos, t) }, [streamOf(layer)]))[streamOf(layer)]!;
    const rowsNow = examples(out.data as Float32Array, videos.length);
    kept.push(rowsNow.map((e, b) => [0, ...evsCall(previous?.[b]?.slice(1), e.slice(1), keep).map((c) => c + 1)]));
    // Selection margins: the K-th and (K+1)-th dissimilarities differ by more than 1e-5, 100× float32's
    // rounding of 1 − cos (the sensor noise is there for that: without it an unchanged patch's
    // dissimilarity is ~1e-6, and the smallest margin was 4e-7).
    if (previous)
      for (const [b, e] of rowsNow.entries()) {
        const s = callScores(previous[b]!.slice(1), e.slice(1)).sort((x, y) => y - x);
        expect(s[keep - 1]! - s[keep]!, `frame ${t}, example ${b}: selection margin`).toBeGreaterThan(1e-5);
      }
    states.push(out.data as Float32Array);
    previous = rowsNow;
  }
  return { kept, states };
}

const CASES: { layer: number; percent: number; keep: number }[] = [
  { layer: 0, percent: 25, keep: 16 },
  { layer: 2, percent: 50, keep: 32 },
];

describe("across frames: EVS on the digits ViT, one call per frame", () => {
  for (const { layer, percent, keep } of CASES) {
    const spec = `after layer ${layer} keep ${percent}% by evs across frames`;
    it(`${spec}: every call keeps the reference's positions and leaves the dense stage input, batch 1 and 3, CPU and WASM`, async () => {
      const { model: compiled, report } = compile(model, spec, { exposeIndices: true });
      expect(report.stages[0]).toMatchObject({
        tokensIn: TOKENS,
        tokensOut: `${1 + keep} (${TOKENS} at the first frame)`,
      });
      for (const videos of [videos1, videos3]) {
        const ref = await reference(videos, layer, keep);
        for (const rt of [node, await wasm()]) {
          const calls = await loop(rt, compiled, videos);
          expect(calls.length).toBe(4);
          for (const [t, out] of calls.entries()) {
            const idx = out[INDICES]!;
            expect(idx.dims, `${rt.name}, frame ${t}`).toEqual([videos.length, t === 0 ? TOKENS : 1 + keep]);
            expect(rows(idx.data as BigInt64Array, [...idx.dims]), `${rt.name}, frame ${t}`).toEqual(ref.kept[t]);
            const state = out[PRESENT]!;
            expect(state.dims).toEqual([videos.length, TOKENS, HIDDEN]);
            expect(maxAbsDiff(state.data as Float32Array, ref.states[t]!)).toBeLessThanOrEqual(1e-5);
          }
        }
      }
    });
  }

  it("declares the state pair: float [batch, prunec_stage0_frame_past, 96] in, [batch, 65, 96] out", () => {
    const g = decodeModel(compile(model, "after layer 0 keep 25% by evs across frames").model).graph!;
    const dims = (v: (typeof g.input)[number] | undefined) => {
      const t = v?.type?.value;
      return t?.case === "tensorType"
        ? [
            t.value.elemType,
            ...t.value.shape!.dim.map((d) => (d.value.case === "dimValue" ? Number(d.value.value) : d.value.value)),
          ]
        : [];
    };
    expect(dims(g.input.find((i) => i.name === PAST))).toEqual([1, "batch_size", "prunec_stage0_frame_past", HIDDEN]);
    expect(dims(g.output.find((o) => o.name === PRESENT))).toEqual([1, "batch_size", TOKENS, HIDDEN]);
  });

  it("the past decides: an empty past keeps every token, another frame's state keeps other tokens", async () => {
    const { model: compiled } = compile(model, "after layer 0 keep 25% by evs across frames", { exposeIndices: true });
    const [first, , third] = await loop(node, compiled, videos1);
    const x2 = batchAt(videos1, 2);
    const run = async (past: { dims: number[]; data: Float32Array }) =>
      rows(
        (await runNode(compiled, { pixel_values: x2, [PAST]: { type: "float32", ...past } }, [INDICES]))[INDICES]!
          .data as BigInt64Array,
        [1, past.dims[1] === 0 ? TOKENS : 17],
      );
    expect(await run({ dims: [1, 0, HIDDEN], data: new Float32Array(0) })).toEqual([[...Array(TOKENS).keys()]]);
    const fromFirst = await run({ dims: [1, TOKENS, HIDDEN], data: first![PRESENT]!.data as Float32Array });
    expect(fromFirst[0]).toHaveLength(17);
    expect(fromFirst).not.toEqual(rows(third![INDICES]!.data as BigInt64Array, [...third![INDICES]!.dims]));
  });

  it("keep 100% equals the dense model at every call (≤ 1e-5)", async () => {
    const { model: compiled } = compile(model, "after layer 2 keep 100% by evs across frames");
    const calls = await loop(node, compiled, videos3, ["logits"]);
    for (const [t, out] of calls.entries()) {
      const dense = (await runNode(model, { pixel_values: batchAt(videos3, t) }, ["logits"])).logits!;
      expect(maxAbsDiff(out.logits!.data as Float32Array, dense.data as Float32Array)).toBeLessThanOrEqual(1e-5);
    }
  });

  it("differs from vLLM's one-call budget: 25% of a 4-frame video there keeps the first frame only", async () => {
    // vLLM's form over the whole video: max(tpf, int(T·tpf·(1 − q))) = max(64, 64) tokens, all frame 0's.
    const probe = withOutputs(model, [streamOf(0)]);
    const frames: number[][][] = [];
    for (let t = 0; t < 4; t++) {
      const out = (await runNode(probe, { pixel_values: batchAt(videos1, t) }, [streamOf(0)]))[streamOf(0)]!;
      frames.push(examples(out.data as Float32Array, 1)[0]!.slice(1));
    }
    expect(retainedTokensCount(64, 4, 0.75)).toBe(64);
    const mask = evsRetentionMask(frames, 0.75);
    expect(mask.slice(0, 64).every(Boolean) && !mask.slice(64).some(Boolean)).toBe(true);
    // Per call (per-frame budget): 64 + 3 × 16 tokens over the same video.
    const { model: compiled } = compile(model, "after layer 0 keep 25% by evs across frames", { exposeIndices: true });
    const calls = await loop(node, compiled, videos1, [INDICES]);
    expect(calls.map((c) => c[INDICES]!.dims[1]! - 1)).toEqual([64, 16, 16, 16]);
  });

  it("refuses what it cannot carry, with the reason", () => {
    const refusals: [string, string][] = [
      [
        "after layer 0 keep 25% by evs",
        "s.prune:1:27: error: evs needs 'across frames': evs compares each token with the same token of the previous frame, which only a state carried from call to call holds (write '... by evs across frames')",
      ],
      [
        "after layer 0 keep 25% by cls-attn across frames",
        "s.prune:1:27: error: 'across frames' needs a criterion that reads the previous call, and cls-attn carries nothing from one call to the next (criteria that do: evs, vla-pruner)",
      ],
      [
        "after layer 0 keep 50% by cls-attn\nafter layer 2 keep 25% by evs across frames",
        "s.prune:2:31: error: 'across frames' compares each token with the same position in the previous call, so the stage must see every token: the stage after layer 0 (line 1) drops tokens before it",
      ],
      [
        "after layer 0 keep mass 50% by evs across frames",
        "s.prune:1:20: error: 'across frames' keeps one count for the whole batch (every token at the first call), but this stage's count differs per example ('mass')",
      ],
      [
        "after layer 0 keep 25% by evs with restore across frames",
        "s.prune:1:36: error: 'across frames' takes no 'with' options yet (the first call keeps every token, which 'restore' is not written for)",
      ],
      [
        "after layer 0 merge 25% by similarity across frames",
        "s.prune:1:28: error: 'across frames' needs a criterion that reads the previous call, and similarity carries nothing from one call to the next (criteria that do: evs, vla-pruner)",
      ],
    ];
    for (const [spec, message] of refusals) expect(firstErrorLine(model, spec)).toBe(message);
    // The same model with its last layer's stream as an output (an encoder output), and a cached decoder.
    expect(firstErrorLine(truncateToLayers(model, 6), "after encoder keep 50% by evs across frames")).toBe(
      "s.prune:1:31: error: 'across frames' after the encoder is not supported yet: write 'after layer L' (the stage's input rows are compared)",
    );
    expect(firstErrorLine(buildDecoder({ attention: "gqa" }), "after layer 1 keep 50% by evs across frames")).toBe(
      "s.prune:1:31: error: 'across frames' runs the model once per frame, but layer 0 keeps a KV cache, so this model's calls are decode steps of one sequence, not frames",
    );
  });
});
