/**
 * Image folders (issue 18, "data people have"): `prunec eval MODEL --data DIR` and `prunec pack DIR`
 * read <DIR>/<class>/<image>.png|jpg as torchvision's ImageFolder does, preprocessed for the model
 * (its input size; flags; a transformers preprocessor_config.json; id2label in config.json).
 *
 * The yardstick: the digits sample set written out as PNG files at the model's size must read back
 * to the same pixels and labels, so eval on the folder equals eval on the .prds file.
 */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import sharp from "sharp";
import { REPO_ROOT } from "./helpers/shared.js";
import { batchInput, parseDataset, type Dataset } from "../src/data/prds.js";
import { readImageFolder, type Preprocess } from "../src/cli/image-folder.js";
import { preprocessFor } from "../src/cli/preprocess.js";
import type { PrunecError } from "../src/errors.js";

const DIGITS = join(REPO_ROOT, "examples", "digits");
const MODEL = join(DIGITS, "model.onnx");
const SAMPLE = join(DIGITS, "sample.prds");
const run = (...args: string[]) =>
  spawnSync(process.execPath, [join(REPO_ROOT, "bin", "prunec.js"), ...args], { encoding: "utf8" });
const sample = parseDataset(readFileSync(SAMPLE), "sample.prds");
const PLANE = 64 * 64;

let dir: string;
/** Writes each example of `d` as <root>/<label name>/<i>.<ext> (every class folder made, empty or not). */
async function writeFolder(root: string, d: Dataset, ext: "png" | "jpg", scale = 1): Promise<void> {
  const names = d.header.labels!;
  for (const n of names) mkdirSync(join(root, n), { recursive: true });
  const { height, width } = d.header;
  for (let i = 0; i < d.header.n; i++) {
    const raw = sharp(Buffer.from(d.pixels.subarray(i * PLANE, (i + 1) * PLANE)), {
      raw: { width, height, channels: 1 },
    }).resize(width * scale, height * scale, { kernel: "nearest" });
    const file = join(root, names[d.labels[i]!]!, `${String(i).padStart(3, "0")}.${ext}`);
    await (ext === "png" ? raw.png() : raw.jpeg({ quality: 95 })).toFile(file);
  }
}
const errorOf = (f: () => unknown): [number | undefined, string] => {
  try {
    f();
  } catch (e) {
    return [(e as PrunecError).exitCode, (e as Error).message];
  }
  return [undefined, ""];
};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "prunec-folder-"));
  await writeFolder(join(dir, "png"), sample, "png");
  await writeFolder(join(dir, "jpg"), sample, "jpg");
  await writeFolder(join(dir, "big"), sample, "png", 2);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const GREY: Preprocess = { height: 64, width: 64, channels: 1, resize: { kind: "fill" }, kernel: "linear" };

describe("reading an image folder", () => {
  it("PNGs at the model's size read back to the set's exact pixels and labels (class folders in sorted order)", async () => {
    const d = await readImageFolder(join(dir, "png"), GREY);
    // Files sort by class folder, then name: the sample's order by label, stable.
    const order = [...sample.labels.keys()].sort((a, b) => sample.labels[a]! - sample.labels[b]! || a - b);
    expect(Array.from(d.labels)).toEqual(order.map((i) => sample.labels[i]!));
    for (const [k, i] of order.entries())
      expect(Uint8Array.from(d.pixels.subarray(k * PLANE, (k + 1) * PLANE))).toEqual(
        Uint8Array.from(sample.pixels.subarray(i * PLANE, (i + 1) * PLANE)),
      );
    expect([d.header.classes, d.header.labels]).toEqual([10, sample.header.labels]);
  });

  it("images at twice the size are resized to the model's (nearest gives the pixels back exactly)", async () => {
    const d = await readImageFolder(join(dir, "big"), { ...GREY, kernel: "nearest" });
    const png = await readImageFolder(join(dir, "png"), GREY);
    expect(d.pixels).toEqual(png.pixels);
  });

  it("normalisation from a preprocessor config: (pixel/255 − mean)/std reaches the model's input", () => {
    const cfg = join(dir, "preprocessor_config.json");
    writeFileSync(
      cfg,
      JSON.stringify({
        do_resize: true,
        size: { height: 64, width: 64 },
        resample: 0,
        image_mean: [0.5],
        image_std: [0.25],
      }),
    );
    const { preprocess } = preprocessFor(readFileSync(MODEL), MODEL, { preprocessor: cfg });
    expect(preprocess).toEqual({ ...GREY, kernel: "nearest", mean: [0.5], std: [0.25] });
    const d: Dataset = { ...sample, header: { ...sample.header, mean: [0.5], std: [0.25] } };
    const x = batchInput(d, 0, 1).data;
    expect(x[100]).toBeCloseTo((sample.pixels[100]! / 255 - 0.5) / 0.25, 6);
  });

  it("refuses what does not fit, exit 2 naming what was expected and found", () => {
    const model = readFileSync(MODEL);
    expect(errorOf(() => preprocessFor(model, MODEL, { size: "32x48" }))).toEqual([
      2,
      `${MODEL}: input 'pixel_values' expects [batch_size, 1, 64, 64], but the preprocessing gives [batch, 1, 32, 48]`,
    ]);
    expect(errorOf(() => preprocessFor(model, MODEL, { mean: "0.5,0.5,0.5", std: "1,1,1" }))).toEqual([
      2,
      "the mean has 3 values, but the model's images have 1 channels",
    ]);
    expect(errorOf(() => preprocessFor(model, MODEL, { size: "big" }))).toEqual([
      2,
      "--size must be HxW or N, got 'big'",
    ]);
  });

  it("a folder without class subfolders, or without images: exit 2", async () => {
    const empty = mkdtempSync(join(dir, "empty-"));
    await expect(readImageFolder(empty, GREY)).rejects.toThrow(
      `${empty}: expected one subfolder per class (the ImageFolder convention: ${empty}/<class>/<image>.png), found none`,
    );
    mkdirSync(join(empty, "cat"));
    writeFileSync(join(empty, "cat", "notes.txt"), "not an image");
    await expect(readImageFolder(empty, GREY)).rejects.toThrow(
      `${empty}: no .png, .jpg or .jpeg image in its 1 class folders`,
    );
  });

  it("folders named after the model's id2label take the model's ids, in any order", async () => {
    const root = mkdtempSync(join(dir, "named-"));
    const names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
    await writeFolder(root, { ...sample, header: { ...sample.header, labels: names } }, "png");
    const d = await readImageFolder(root, GREY, undefined, names);
    // Folders are read in sorted name order ("eight", "five", …), each image keeping its model id.
    const want = [...names]
      .sort()
      .flatMap((folder) => [...sample.labels].filter((l) => names[l] === folder).map(() => names.indexOf(folder)));
    expect(Array.from(d.labels)).toEqual(want);
    expect(Array.from(d.labels)).not.toEqual([...d.labels].sort()); // not the sorted-index numbering
    await expect(readImageFolder(root, GREY, undefined, names.slice(0, 9).concat("ten"))).rejects.toThrow(
      `${root}: folder 'nine' names no class of the model`,
    );
  });
});

describe("the CLI on image folders", () => {
  it("eval on the PNG folder equals eval on the .prds set; JPEG (quality 95) within one example", () => {
    const want = JSON.parse(run("eval", MODEL, "--data", SAMPLE, "--json").stdout) as { correct: number; n: number };
    const png = run("eval", MODEL, "--data", join(dir, "png"), "--json");
    expect(png.status).toBe(0);
    expect(JSON.parse(png.stdout)).toMatchObject({ correct: want.correct, n: want.n });
    const jpg = JSON.parse(run("eval", MODEL, "--data", join(dir, "jpg"), "--json").stdout) as { correct: number };
    expect(Math.abs(jpg.correct - want.correct)).toBeLessThanOrEqual(1);
  });

  it("pack writes a .prds equal to the folder's pixels, which eval reads back", () => {
    const out = join(dir, "packed.prds");
    const r = run("pack", join(dir, "png"), "--model", MODEL, "-o", out);
    expect([r.status, r.stderr.trim()]).toEqual([
      0,
      `wrote ${out}: 8 images of 10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), [1, 64, 64]`,
    ]);
    const packed = parseDataset(readFileSync(out), out);
    expect([packed.header.n, packed.pixels.length]).toEqual([8, 8 * PLANE]);
    const again = run("eval", MODEL, "--data", out, "--json");
    expect(again.status).toBe(0);
  });

  it("a preprocessor_config.json beside the model is used; a wrong size in it is exit 2 naming both shapes", () => {
    const m = join(dir, "with-config");
    mkdirSync(m, { recursive: true });
    copyFileSync(MODEL, join(m, "model.onnx"));
    writeFileSync(join(m, "preprocessor_config.json"), JSON.stringify({ size: { height: 224, width: 224 } }));
    const r = run("eval", join(m, "model.onnx"), "--data", join(dir, "png"));
    expect([r.status, r.stderr.trim()]).toEqual([
      2,
      `prunec: error: ${join(m, "model.onnx")}: input 'pixel_values' expects [batch_size, 1, 64, 64], but the preprocessing (${join(m, "preprocessor_config.json")}) gives [batch, 1, 224, 224]`,
    ]);
  });
});
