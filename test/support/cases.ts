/** Shared test inputs and helpers for the criterion suites: standard feeds, kept indices, error capture, dense-equivalence checks. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { expect } from "vitest";
import { REPO_ROOT, sharedModel } from "../helpers/shared.js";
import { readNpy } from "../helpers/npy.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "../helpers/ort.js";
import { compile } from "../../src/compile.js";
import { parseDataset, batchInput } from "../../src/data/prds.js";
import { PrunecError } from "../../src/errors.js";
import { rows } from "./model-edit.js";

/** The PrunecError `f` throws (fails the test when it throws nothing or something else). */
export function thrown(f: () => unknown): PrunecError {
  try {
    f();
  } catch (e) {
    if (e instanceof PrunecError) return e;
    throw e;
  }
  throw new Error("expected a PrunecError");
}

/** The message of the PrunecError compiling `spec` for `model` throws (the spec named `specName`). */
export function rejection(model: Uint8Array, spec: string, specName = "s.prune"): string {
  return thrown(() => compile(model, spec, { specName })).message;
}

/** The first line of the PrunecError compiling `spec` for `model` throws (the diagnostic, without the source excerpt), or "compiled". */
export function firstErrorLine(model: Uint8Array, spec: string, specName = "s.prune"): string {
  try {
    compile(model, spec, { specName });
  } catch (e) {
    if (e instanceof PrunecError) return e.message.split("\n")[0]!;
    throw e;
  }
  return "compiled";
}

/** Stage `stage`'s exposed kept positions, one row per example. */
export async function kept(pruned: Uint8Array, feeds: Feeds, run = runNode, stage = 0): Promise<number[][]> {
  const name = `prunec.stage${stage}.indices`;
  const out = (await run(pruned, feeds, [name]))[name]!;
  return rows(out.data as BigInt64Array, out.dims);
}

/**
 * `spec` (one stage) compiled with exposed indices keeps, on every feed, the positions `reference`
 * gives for it (one row per example of the feed's batch), on onnxruntime-node CPU and WASM.
 */
export async function expectKeptAsReference(
  model: Uint8Array,
  spec: string,
  feeds: Feeds[],
  reference: (f: Feeds) => Promise<number[][]>,
): Promise<void> {
  const pruned = compile(model, spec, { exposeIndices: true }).model;
  for (const f of feeds) {
    const expected = await reference(f);
    expect(expected.length).toBe(f.pixel_values!.dims[0]);
    expect(await kept(pruned, f)).toEqual(expected);
    expect(await kept(pruned, f, runWasm)).toEqual(expected);
  }
}

/** Kept positions of stages 0..stages−1 (`prunec.stage<N>.indices`), from one run. */
export async function keptStages(pruned: Uint8Array, feeds: Feeds, run = runNode, stages = 1): Promise<number[][][]> {
  const names = Array.from({ length: stages }, (_, i) => `prunec.stage${i}.indices`);
  const out = await run(pruned, feeds, names);
  return names.map((n) => rows(out[n]!.data as BigInt64Array, out[n]!.dims));
}

/** `pruned` gives `dense`'s logits on `feeds` (≤ 1e-5): what keep 100% must do. */
export async function expectDenseLogits(dense: Uint8Array, pruned: Uint8Array, feeds: Feeds): Promise<void> {
  const want = await runNode(dense, feeds, ["logits"]);
  const got = await runNode(pruned, feeds, ["logits"]);
  expect(maxAbsDiff(want.logits!.data as Float32Array, got.logits!.data as Float32Array)).toBeLessThanOrEqual(1e-5);
}

/**
 * `spec` (a keep 100% stage) compiled with exposed indices keeps all `tokens` tokens of every
 * example of `feeds` (a batch of 3) and gives the dense logits (≤ 1e-5).
 */
export async function expectKeepsEveryToken(
  model: Uint8Array,
  spec: string,
  feeds: Feeds,
  tokens: number,
): Promise<void> {
  const { model: pruned } = compile(model, spec, { exposeIndices: true });
  const out = await runNode(pruned, feeds, ["prunec.stage0.indices", "logits"]);
  const dense = await runNode(model, feeds, ["logits"]);
  expect(rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims)).toEqual(
    [0, 1, 2].map(() => [...Array(tokens).keys()]),
  );
  expect(maxAbsDiff(out.logits!.data as Float32Array, dense.logits!.data as Float32Array)).toBeLessThanOrEqual(1e-5);
}

/** The tiny ViT's reference input (2 examples): example 0 alone, and both plus a variation of the first. */
export function tinyFeeds(): Feeds[] {
  const x = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
  const data = x.data as Float32Array;
  const per = data.length / x.shape[0]!;
  const three = new Float32Array(per * 3);
  three.set(data.subarray(0, 2 * per));
  for (let i = 0; i < per; i++) three[2 * per + i] = data[i]! * 0.5 + Math.sin(i * 0.01);
  const dims = (b: number) => [b, ...x.shape.slice(1)];
  return [
    { pixel_values: { type: "float32", dims: dims(1), data: data.slice(0, per) } },
    { pixel_values: { type: "float32", dims: dims(3), data: three } },
  ];
}

/** The tiny ViT's reference image (example 0) alone, and as a batch of 3 with `oneAndThree`'s variations. */
export function tinyOneAndThree(): [Feeds, Feeds] {
  const x = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
  return oneAndThree(x.data as Float32Array, x.shape);
}

/** Digits sample images: example 0 alone, and examples 1..3. */
export function digitsFeeds(): Feeds[] {
  const set = parseDataset(readFileSync(join(REPO_ROOT, "examples", "digits", "sample.prds")));
  return [batchInput(set, 0, 1), batchInput(set, 1, 4)].map((x) => ({
    pixel_values: { type: "float32", dims: x.dims, data: x.data },
  }));
}

/** The shared torchvision ViT-Ti (random init, CLS, 196 patches, 3 heads): its directory under the shared models. */
const VIT_TI = "synthetic/vit-ti16-cls-randinit";

/** The shared ViT-Ti model's bytes (call inside a describeShared/itShared body). */
export function vitTiModel(): Uint8Array {
  return readFileSync(sharedModel(`${VIT_TI}/model.onnx`));
}

/** The shared ViT-Ti's reference image alone, and a batch of 3: it scaled by 1, 0.6, 0.2 plus 0, 0.1, 0.2 × a sine. */
export function vitTiFeeds(): Feeds[] {
  const x = readNpy(sharedModel(`${VIT_TI}/ref_in.npy`)).data as Float32Array;
  const three = new Float32Array(x.length * 3);
  for (let b = 0; b < 3; b++)
    for (let i = 0; i < x.length; i++) three[b * x.length + i] = x[i]! * (1 - 0.4 * b) + 0.1 * b * Math.sin(i * 0.01);
  return [
    { pixel_values: { type: "float32", dims: [1, 3, 224, 224], data: x } },
    { pixel_values: { type: "float32", dims: [3, 3, 224, 224], data: three } },
  ];
}

/** One image of `x` (NCHW) and a batch of 3: it and two deterministic variations. */
export function oneAndThree(x: Float32Array, dims: number[]): [Feeds, Feeds] {
  const per = dims.slice(1).reduce((a, b) => a * b, 1);
  const one = x.subarray(0, per);
  const three = new Float32Array(per * 3);
  three.set(one, 0);
  for (let i = 0; i < per; i++) {
    three[per + i] = one[i]! * 0.5 + Math.sin(i * 0.001);
    three[2 * per + i] = -one[i]! + Math.cos(i * 0.0007) * 0.3;
  }
  const feed = (data: Float32Array, b: number): Feeds => ({
    pixel_values: { type: "float32", dims: [b, ...dims.slice(1)], data },
  });
  return [feed(one, 1), feed(three, 3)];
}

/** The shared ViT-Ti's reference image alone, and as a batch of 3 with `oneAndThree`'s variations. */
export function vitTiOneAndThree(): [Feeds, Feeds] {
  const x = readNpy(sharedModel(`${VIT_TI}/ref_in.npy`));
  return oneAndThree(x.data as Float32Array, x.shape);
}
