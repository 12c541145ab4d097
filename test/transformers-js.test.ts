/**
 * The transformers.js path (docs/transformers-js.md): a transformers.js model folder compiled with
 * `prunec DIR SPEC -o OUTDIR` loads and runs in @huggingface/transformers (Node, local files only,
 * no hub), and runs the same model as a single-file `prunec model.onnx SPEC -o x.onnx` run by
 * onnxruntime-node on the same pixel tensor.
 *
 * (a) ViT image classifier: the shipped digits ViT (1 channel, 64×64, pixel/255, no normalisation)
 *     as a ViTForImageClassification folder. ViTImageProcessor converts to RGB unless
 *     `do_convert_rgb: false`; with it, a grayscale PNG stays one channel (sharp reads it so), so the
 *     1-channel model runs as trained.
 * (b) A vision encoder: the per-token-output fixture (a torchvision ViT exported with
 *     last_hidden_state, CLS row first) as onnx/vision_encoder.onnx, loaded with AutoModel
 *     (`model_type: vit` → ViTModel) and `model_file_name: 'vision_encoder'`; `after encoder` shrinks
 *     last_hidden_state from 17 to 9 rows.
 *
 * CLI tests: they spawn bin/prunec.js, which runs dist/ (`npm run build` first).
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PNG } from "pngjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AutoModel,
  AutoModelForImageClassification,
  AutoProcessor,
  env,
  pipeline,
  RawImage,
} from "@huggingface/transformers";
import { batchInput, parseDataset } from "../src/data/prds.js";
import { decodeModel } from "../src/onnx/io.js";
import { REPO_ROOT } from "./helpers/shared.js";
import { maxAbsDiff, runNode } from "./helpers/ort.js";

const BIN = join(REPO_ROOT, "bin", "prunec.js");
const DIGITS = join(REPO_ROOT, "examples", "digits");
const ENCODER = join(REPO_ROOT, "test", "fixtures", "exports", "per-token-output.onnx");

let root: string;

function prunec(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function writeJson(path: string, value: unknown): void {
  writeFileSync(path, `${JSON.stringify(value, null, 2)}\n`);
}

/** An 8-bit PNG of `channels` (1: grayscale, 3: RGB) from HWC bytes. */
function png(path: string, width: number, height: number, channels: 1 | 3, hwc: Uint8Array): void {
  const p = new PNG({
    width,
    height,
    colorType: channels === 1 ? 0 : 2,
    inputColorType: channels === 1 ? 0 : 2,
    inputHasAlpha: false,
    bitDepth: 8,
  });
  p.data = Buffer.from(hwc);
  writeFileSync(
    path,
    PNG.sync.write(p, {
      colorType: channels === 1 ? 0 : 2,
      inputColorType: channels === 1 ? 0 : 2,
      inputHasAlpha: false,
      bitDepth: 8,
    }),
  );
}

const argmax = (xs: ArrayLike<number>) => {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
};

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "prunec-tjs-"));
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = `${root}/`;
  env.useFSCache = false;
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

describe("transformers.js: ViT image classifier folder (digits)", () => {
  const set = parseDataset(readFileSync(join(DIGITS, "sample.prds")));
  const labels = set.header.labels!;
  const spec = "after layer 1 keep 25% by cls-attn\n";

  function buildFolder(): string {
    const dir = join(root, "digits-vit");
    mkdirSync(join(dir, "onnx"), { recursive: true });
    copyFileSync(join(DIGITS, "model.onnx"), join(dir, "onnx", "model.onnx"));
    writeJson(join(dir, "config.json"), {
      model_type: "vit",
      architectures: ["ViTForImageClassification"],
      num_channels: 1,
      image_size: 64,
      patch_size: 8,
      hidden_size: 96,
      num_hidden_layers: 6,
      num_attention_heads: 4,
      intermediate_size: 384,
      id2label: Object.fromEntries(labels.map((l, i) => [String(i), l])),
      label2id: Object.fromEntries(labels.map((l, i) => [l, i])),
    });
    // What the model was trained on (examples/digits/TRAINING.md, sample.prds 'input'): pixel/255,
    // no normalisation, 64×64, one channel. do_convert_rgb false keeps a grayscale image grayscale.
    writeJson(join(dir, "preprocessor_config.json"), {
      image_processor_type: "ViTImageProcessor",
      do_resize: true,
      size: { height: 64, width: 64 },
      resample: 2,
      do_rescale: true,
      rescale_factor: 1 / 255,
      do_normalize: false,
      do_convert_rgb: false,
    });
    return dir;
  }

  it("the pruned folder's logits equal onnxruntime's run of the single-file compile; labels are their top-1", async () => {
    const dir = buildFolder();
    const specPath = join(root, "digits.prune");
    writeFileSync(specPath, spec);
    const r = prunec(dir, specPath, "-o", join(root, "digits-vit-pruned"));
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(
      /^wrote .*digits-vit-pruned \(onnx\/model\.onnx compiled; 2 other files of .* copied\)\n {2}stage 0: after layer 1 by cls-attn, 65 → 17 tokens/,
    );
    expect(readdirSync(join(root, "digits-vit-pruned")).sort()).toEqual([
      "config.json",
      "onnx",
      "preprocessor_config.json",
    ]);
    const single = join(root, "digits-single.onnx");
    expect(prunec(join(dir, "onnx", "model.onnx"), specPath, "-o", single).status).toBe(0);
    // The compiled file in the folder is the single-file compile's output, metadata included.
    expect(
      Buffer.compare(readFileSync(join(root, "digits-vit-pruned", "onnx", "model.onnx")), readFileSync(single)),
    ).toBe(0);
    const meta = new Map(decodeModel(readFileSync(single)).metadataProps.map((p) => [p.key, p.value]));
    expect([...meta.keys()].some((k) => k.startsWith("prunec"))).toBe(true);

    // Images written from sample.prds as grayscale PNGs.
    const n = 4;
    const images: string[] = [];
    for (let i = 0; i < n; i++) {
      const path = join(root, `digit-${i}.png`);
      png(path, 64, 64, 1, set.pixels.subarray(i * 4096, (i + 1) * 4096));
      images.push(path);
    }

    const processor = await AutoProcessor.from_pretrained("digits-vit-pruned");
    const dense = await AutoModelForImageClassification.from_pretrained("digits-vit");
    const pruned = await AutoModelForImageClassification.from_pretrained("digits-vit-pruned");
    const classify = await pipeline("image-classification", "digits-vit-pruned");
    try {
      for (let i = 0; i < n; i++) {
        const image = await RawImage.read(images[i]!);
        expect(image.channels).toBe(1);
        const { pixel_values } = await processor(image);
        expect(pixel_values.dims).toEqual([1, 1, 64, 64]);
        // The processor gives exactly what the model was trained on: pixel/255.
        const want = batchInput(set, i, i + 1);
        expect(maxAbsDiff(pixel_values.data as Float32Array, want.data)).toBeLessThanOrEqual(1e-7);

        const ort = await runNode(readFileSync(single), {
          pixel_values: { type: "float32", dims: [1, 1, 64, 64], data: pixel_values.data as Float32Array },
        });
        const { logits } = await pruned({ pixel_values });
        expect(logits.dims).toEqual([1, 10]);
        expect(maxAbsDiff(logits.data as Float32Array, ort.logits!.data as Float32Array)).toBeLessThanOrEqual(1e-5);
        // The dense folder runs the dense model: onnxruntime's logits for examples/digits/model.onnx.
        const denseOut = await dense({ pixel_values });
        const denseOrt = await runNode(readFileSync(join(DIGITS, "model.onnx")), {
          pixel_values: { type: "float32", dims: [1, 1, 64, 64], data: pixel_values.data as Float32Array },
        });
        expect(
          maxAbsDiff(denseOut.logits.data as Float32Array, denseOrt.logits!.data as Float32Array),
        ).toBeLessThanOrEqual(1e-5);
        expect(maxAbsDiff(logits.data as Float32Array, denseOut.logits.data as Float32Array)).toBeGreaterThan(1e-4);

        const [top] = (await classify(images[i]!, { top_k: 1 })) as { label: string; score: number }[];
        expect(top!.label).toBe(labels[argmax(ort.logits!.data as Float32Array)]);
      }
    } finally {
      await Promise.all([dense.dispose(), pruned.dispose(), classify.dispose()]);
    }
  });
});

describe("transformers.js: vision encoder folder (onnx/vision_encoder.onnx)", () => {
  const spec = "after encoder keep 8 tokens by cls-attn\n";

  it("AutoModel with model_file_name 'vision_encoder' returns the directly compiled model's fewer tokens and values", async () => {
    const dir = join(root, "vit-encoder");
    mkdirSync(join(dir, "onnx"), { recursive: true });
    copyFileSync(ENCODER, join(dir, "onnx", "vision_encoder.onnx"));
    writeJson(join(dir, "config.json"), {
      model_type: "vit",
      architectures: ["ViTModel"],
      num_channels: 3,
      image_size: 32,
      patch_size: 8,
      hidden_size: 32,
      num_hidden_layers: 2,
      num_attention_heads: 2,
    });
    writeJson(join(dir, "preprocessor_config.json"), {
      image_processor_type: "ViTImageProcessor",
      do_resize: true,
      size: { height: 32, width: 32 },
      do_rescale: true,
      rescale_factor: 1 / 255,
      do_normalize: true,
      image_mean: [0.5, 0.5, 0.5],
      image_std: [0.5, 0.5, 0.5],
    });
    const specPath = join(root, "encoder.prune");
    writeFileSync(specPath, spec);
    const r = prunec(dir, specPath, "-o", join(root, "vit-encoder-pruned"));
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("(onnx/vision_encoder.onnx compiled;");
    expect(r.stdout).toContain("note: output 'last_hidden_state' has one row per token on axis 1: 17 → 9 rows");
    const single = join(root, "encoder-single.onnx");
    expect(prunec(ENCODER, specPath, "-o", single).status).toBe(0);

    const rgb = new Uint8Array(32 * 32 * 3);
    for (let i = 0; i < rgb.length; i++) rgb[i] = (i * 37 + (i >> 5) * 11) % 256;
    const imagePath = join(root, "encoder.png");
    png(imagePath, 32, 32, 3, rgb);

    const processor = await AutoProcessor.from_pretrained("vit-encoder-pruned");
    const dense = await AutoModel.from_pretrained("vit-encoder", { model_file_name: "vision_encoder" });
    const pruned = await AutoModel.from_pretrained("vit-encoder-pruned", { model_file_name: "vision_encoder" });
    try {
      const { pixel_values } = await processor(await RawImage.read(imagePath));
      expect(pixel_values.dims).toEqual([1, 3, 32, 32]);
      const ort = await runNode(readFileSync(single), {
        pixel_values: { type: "float32", dims: [1, 3, 32, 32], data: pixel_values.data as Float32Array },
      });
      const out = await pruned({ pixel_values });
      expect(out.last_hidden_state.dims).toEqual([1, 9, 32]);
      expect(ort.last_hidden_state!.dims).toEqual([1, 9, 32]);
      expect(
        maxAbsDiff(out.last_hidden_state.data as Float32Array, ort.last_hidden_state!.data as Float32Array),
      ).toBeLessThanOrEqual(1e-5);
      // `after encoder` selects rows of the dense output: the CLS row first, then 8 of the 16 patch rows.
      const d = await dense({ pixel_values });
      expect(d.last_hidden_state.dims).toEqual([1, 17, 32]);
      const denseRows = d.last_hidden_state.data as Float32Array;
      const prunedRows = out.last_hidden_state.data as Float32Array;
      const row = (x: Float32Array, i: number) => x.subarray(i * 32, (i + 1) * 32);
      const matched = Array.from({ length: 9 }, (_, i) =>
        Array.from({ length: 17 }, (_, j) => j).find((j) => maxAbsDiff(row(prunedRows, i), row(denseRows, j)) <= 1e-5),
      );
      expect(matched[0]).toBe(0);
      // In position order.
      expect(matched).toEqual([...matched].sort((a, b) => a! - b!));
      expect(new Set(matched).size).toBe(9);
      expect(matched.every((j) => j !== undefined)).toBe(true);
    } finally {
      await Promise.all([dense.dispose(), pruned.dispose()]);
    }
  });
});
