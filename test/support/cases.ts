/** Shared test inputs and helpers for the criterion suites: standard feeds, kept indices, error capture. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "../helpers/shared.js";
import { readNpy } from "../helpers/npy.js";
import { runNode, type Feeds } from "../helpers/ort.js";
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

/** Stage `stage`'s exposed kept positions, one row per example. */
export async function kept(pruned: Uint8Array, feeds: Feeds, run = runNode, stage = 0): Promise<number[][]> {
  const name = `prunec.stage${stage}.indices`;
  const out = (await run(pruned, feeds, [name]))[name]!;
  return rows(out.data as BigInt64Array, out.dims);
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

/** Digits sample images: example 0 alone, and examples 1..3. */
export function digitsFeeds(): Feeds[] {
  const set = parseDataset(readFileSync(join(REPO_ROOT, "examples", "digits", "sample.prds")));
  return [batchInput(set, 0, 1), batchInput(set, 1, 4)].map((x) => ({ pixel_values: { type: "float32", dims: x.dims, data: x.data } }));
}
