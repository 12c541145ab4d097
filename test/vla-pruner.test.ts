/**
 * VLA-Pruner across frames (`after layer 1 keep 25% of image by vla-pruner(action_layer: 4) across
 * frames`, passes/criteria/vla-pruner.ts) on the synthetic Llama-like decoder (6 layers, eager
 * attention), a control step per call: [bos, 16 image slots, 4 instruction tokens, 3 action
 * placeholder rows], the image slots' ids changing a little from step to step (a moving scene),
 * batch 1 and a batch of 3 different sequences (one with 12 image tokens: its own count, padded),
 * looped with the library's `runFrames` on onnxruntime-node and onnxruntime-web's WASM backend:
 * - the first `window` calls keep every token (warm-up);
 * - later calls keep exactly the float64 reference's positions (test/reference/vla-pruner.ts,
 *   written from the authors' code), fed the call's own layer-1 attention, layer-0 embeddings and
 *   the reference's own history (built from each call's layer-4 attention of the action rows);
 * - the state after every call equals the reference's history (≤ 1e-5);
 * - refusals with their texts.
 */
import * as ortNode from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { runFrames, type GenerateSession, type GenerateTensor, type TensorClass } from "../src/generate.js";
import { loadOrtWeb } from "../src/cli/runtime.js";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { mulberry32 } from "../src/random.js";
import { withOutputs } from "./support/model-edit.js";
import { firstErrorLine } from "./support/cases.js";
import { buildDecoder, DECODER } from "./support/decoder.js";
import { currentScore, importance, keepCount, temporalGuide, vlaSelect } from "./reference/vla-pruner.js";

const OPTIONS = { ...DECODER, layers: 6 };
const model = buildDecoder({ attention: "plain" }, OPTIONS);
const SPEC = (amount: string, args = "action_layer: 4") => `tokens image = input image_mask
tokens action = input action_mask
after layer 1 keep ${amount} of image by vla-pruner(${args}) across frames`;
const N = 24; // bos, 16 image slots, 4 instruction, 3 action rows
const ACTION = new Set([21, 22, 23]);
const WINDOW = 3;
const GAMMA = 0.8;
const PRESENT = "present.stage0.prunec_frame";
const INDICES = "prunec.stage0.indices";

const info = analyzeTransformer(new Graph(decodeModel(model).graph!));
/** `keep 25% of image`: round-half-up(25% of each example's image tokens). */
const QUARTER = { text: "25%", k: (n: number) => keepCount(n, 25) };
const probsOf = (l: number) => info.layers[l]!.core!.probs!;
const EMBEDDINGS = info.layers[0]!.residual!.input;
const TAPS = [probsOf(1), probsOf(4), EMBEDDINGS];

/** One example's sequence of control steps: ids [N] and image mask [N] per step. */
interface Step {
  ids: number[];
  image: boolean[];
}

/** `steps` control steps: 16 distinct image ids (12 for `fewer`), three slots redrawn per step. */
function sequence(seed: number, steps: number, fewer = false): Step[] {
  const rand = mulberry32(seed);
  const slots = Array.from({ length: 16 }, (_, i) => 3 + ((i * 11 + seed * 7) % 61));
  const out: Step[] = [];
  for (let t = 0; t < steps; t++) {
    if (t > 0)
      for (let r = 0; r < 3; r++) {
        const free = [...Array(61).keys()].map((i) => i + 3).filter((id) => !slots.includes(id));
        slots[Math.floor(rand() * 16)] = free[Math.floor(rand() * free.length)]!;
      }
    // With `fewer`, the last 4 slots are text tokens (same length, a smaller image).
    const image = Array.from({ length: N }, (_, i) => i >= 1 && i < (fewer ? 13 : 17));
    out.push({ ids: [1, ...slots, 10, 11, 12, 13, 20, 21, 22], image: [...image] });
  }
  return out;
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

/** Every step of `seqs` (one per example) through `compiled` with runFrames: the outputs asked for, per call. */
async function loop(rt: Runtime, compiled: Uint8Array, seqs: Step[][], outputs: string[]) {
  const session = await rt.open(compiled);
  const batch = seqs.length;
  const ints = (f: (b: number, i: number) => number) =>
    new rt.Tensor(
      "int64",
      BigInt64Array.from({ length: batch * N }, (_, x) => BigInt(f(Math.floor(x / N), x % N))),
      [batch, N],
    );
  const bools = (f: (b: number, i: number) => boolean) =>
    new rt.Tensor(
      "bool",
      Uint8Array.from({ length: batch * N }, (_, x) => (f(Math.floor(x / N), x % N) ? 1 : 0)),
      [batch, N],
    );
  try {
    const frames = seqs[0]!.map((_, t) => ({
      input_ids: ints((b, i) => seqs[b]![t]!.ids[i]!),
      attention_mask: ints(() => 1),
      position_ids: ints((_b, i) => i),
      image_mask: bools((b, i) => seqs[b]![t]!.image[i]!),
      action_mask: bools((_b, i) => ACTION.has(i)),
    }));
    return (await runFrames(session, frames, { Tensor: rt.Tensor, outputs })).outputs;
  } finally {
    await session.release?.();
  }
}

/** probs [B,H,R,C] → example b's [H][R][C]. */
function heads(t: GenerateTensor, b: number): number[][][] {
  const [, h, r, c] = t.dims as number[];
  const data = t.data as Float32Array;
  return Array.from({ length: h! }, (_, i) =>
    Array.from({ length: r! }, (_, q) =>
      Array.from(data.subarray(((b * h! + i) * r! + q) * c!, ((b * h! + i) * r! + q + 1) * c!)),
    ),
  );
}

interface Checked {
  pruned: number;
  filtered: number;
  unfiltered: number;
}

/** Runs `seqs` and checks every call against the reference; returns how often each branch ran. */
async function check(
  rt: Runtime,
  seqs: Step[][],
  amount: { text: string; k(images: number): number },
  window = WINDOW,
): Promise<Checked> {
  const args = `action_layer: 4${window === WINDOW ? "" : `, window: ${window}`}`;
  const { model: compiled } = compile(model, SPEC(amount.text, args), { exposeIndices: true });
  const outs = await loop(rt, withOutputs(compiled, TAPS), seqs, [INDICES, PRESENT, ...TAPS]);
  const batch = seqs.length;
  const hist: number[][][] = seqs.map(() => []); // per example, oldest first, over dense positions
  const seen: Checked = { pruned: 0, filtered: 0, unfiltered: 0 };
  outs.forEach((out, t) => {
    const idx = out[INDICES]!;
    const width = idx.dims[1] as number;
    const emb = out[EMBEDDINGS]!.data as Float32Array;
    const hidden = OPTIONS.hidden;
    for (let b = 0; b < batch; b++) {
      const step = seqs[b]![t]!;
      const kept = Array.from((idx.data as BigInt64Array).subarray(b * width, (b + 1) * width), Number);
      const image = [...step.image.keys()].filter((i) => step.image[i]);
      let expected: number[];
      if (hist[b]!.length < window) {
        expected = [...Array(N).keys()];
      } else {
        const c = currentScore(heads(out[probsOf(1)]!, b), image);
        const g = temporalGuide(
          hist[b]!.map((v) => image.map((p) => v[p]!)),
          GAMMA,
        );
        const x = image.map((p) => Array.from(emb.subarray((b * N + p) * hidden, (b * N + p + 1) * hidden)));
        const d = vlaSelect(c, g, x, amount.k(image.length));
        const keptImage = new Set(d.kept.map((i) => image[i]!));
        expected = [...Array(N).keys()].filter((p) => !step.image[p] || keptImage.has(p));
        seen.pruned++;
        if (d.filtered) seen.filtered++;
        else seen.unfiltered++;
      }
      expect(
        kept.filter((p) => p >= 0),
        `${rt.name} call ${t} example ${b}`,
      ).toEqual(expected);
      // Padding (a smaller count than the batch's largest) is exposed as −1.
      expect(kept.filter((p) => p < 0).length).toBe(width - expected.length);
      // The reference's history: this call's v appended, at most WINDOW kept.
      hist[b]!.push(importance(heads(out[probsOf(4)]!, b), kept, ACTION, step.image));
      if (hist[b]!.length > window) hist[b]!.shift();
      const state = out[PRESENT]!;
      const [, rows, cols] = state.dims as number[];
      expect([rows, cols]).toEqual([hist[b]!.length, N]);
      const data = state.data as Float32Array;
      let worst = 0;
      hist[b]!.forEach((v, r) =>
        v.forEach((x, p) => (worst = Math.max(worst, Math.abs(x - data[(b * rows! + r) * N + p]!)))),
      );
      expect(worst, `${rt.name} state at call ${t} example ${b}`).toBeLessThanOrEqual(1e-5);
    }
  });
  return seen;
}

describe("vla-pruner across frames (synthetic decoder, 6 control steps)", () => {
  const one = [sequence(1, 6)];
  const three = [sequence(2, 6), sequence(3, 6, true), sequence(4, 6)];

  for (const [label, runtime] of [
    ["onnxruntime-node", async () => node],
    ["WASM", wasm],
  ] as const) {
    it(`${label}: keeps every token while the history fills, then the reference's positions; the state is its history (batch 1 and 3)`, async () => {
      const rt = await runtime();
      const a = await check(rt, one, QUARTER);
      const b = await check(rt, three, QUARTER);
      expect(a.pruned).toBe(3);
      expect(b.pruned).toBe(9);
      // |U| > k at every pruned step here: the diversity filter picked every kept image token.
      expect([a.filtered, b.filtered]).toEqual([3, 9]);
    });
  }

  it("keeps U itself where the two top-k sets agree (|U| = k; U holds TopK(c, k), so never fewer)", async () => {
    const all = { text: "100%", k: (n: number) => keepCount(n, 100) };
    const seen = await check(node, [sequence(5, 6), sequence(6, 6, true), sequence(7, 6)], all);
    expect(seen.unfiltered).toBe(seen.pruned);
  });

  it("keep K tokens of image with window 1: k = 1 (the filter's Loop runs no step) and k = 3, batch 3", async () => {
    const seqs = [sequence(8, 5), sequence(9, 5, true), sequence(10, 5)];
    for (const k of [1, 3]) {
      const seen = await check(node, seqs, { text: `${k} tokens`, k: (n) => Math.min(n, k) }, 1);
      expect(seen.pruned).toBe(12);
    }
  });

  it("refuses what it cannot run, with the reason", () => {
    const refusals: [string, string][] = [
      [
        "tokens image = input image_mask\ntokens action = input action_mask\nafter layer 1 keep 25% by vla-pruner(action_layer: 4) across frames",
        "s.prune:3:20: error: 'across frames' with vla-pruner needs 'of SET' with 'keep P%' or 'keep K tokens' (one budget per example over one set): it keeps every member while its history fills (the first `window` calls), then k = the amount's count",
      ],
      [
        "tokens image = input image_mask\ntokens action = input action_mask\nafter layer 1 keep 25% of image by vla-pruner(action_layer: 4)",
        "s.prune:3:36: error: vla-pruner needs 'across frames': vla-pruner weighs the action rows' attention of earlier control steps, which only a state carried from call to call holds (write '... by vla-pruner across frames')",
      ],
      [
        SPEC("25%", "action_layer: 1"),
        "s.prune:3:36: error: vla-pruner cannot run after layer 1: action_layer: 1 must be a layer below the stage (after layer 1) and at most 5: the action rows' attention is read after the stage's pruning",
      ],
      [
        SPEC("mass 50%"),
        "s.prune:3:20: error: 'across frames' with vla-pruner needs 'of SET' with 'keep P%' or 'keep K tokens' (one budget per example over one set): it keeps every member while its history fills (the first `window` calls), then k = the amount's count",
      ],
      [
        "tokens image = input image_mask\nafter layer 1 keep 25% of image by vla-pruner(action_layer: 4) across frames",
        "s.prune:2:36: error: vla-pruner needs the token set 'action', which this spec does not declare; add 'tokens action = input action_mask'",
      ],
      [
        `${SPEC("25%")}\nafter layer 3 keep 50% by norm`,
        "s.prune:4:13: error: a stage after layer 3 would change the rows that vla-pruner (line 3) reads at layer 4 for its next state; put it after layer 4 or later",
      ],
    ];
    for (const [spec, message] of refusals) expect(firstErrorLine(model, spec)).toBe(message);
    expect(firstErrorLine(model, `${SPEC("25%")}\nafter layer 4 keep 50% by norm`)).toBe("compiled");
    expect(firstErrorLine(buildDecoder({ attention: "gqa" }, OPTIONS), SPEC("25%"))).toBe(
      "s.prune:3:64: error: 'across frames' runs the model once per frame, but layer 0 keeps a KV cache, so this model's calls are decode steps of one sequence, not frames",
    );
  });
});
