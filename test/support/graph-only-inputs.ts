/**
 * Inputs and a scratch directory for running the graph-only exports (../shared/models/graph-only)
 * on synthetic weights: deterministic pixel features, Qwen2-VL's rotary angles and block-diagonal
 * attention mask for several images in one call, and Qwen3.5's image_grid_thw. The same recipes as
 * test/graph-only.test.ts (one image there), generalised to several images.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeSyntheticWeights } from "./synthetic-weights.js";
import { mulberry32 } from "../../src/random.js";
import type { Feeds } from "../helpers/ort.js";

export const GRAPH_ONLY = {
  qwen2: "graph-only/qwen2-vl-2b-vision-tower-torchexport/model.onnx",
  qwen35: "graph-only/qwen3.5-0.8b-vlm-int8/vision_encoder_quantized.onnx",
  gemma: "graph-only/gemma-3-4b-vlm/vision_encoder.onnx",
} as const;

/** IEEE half bits of x (inputs here are in [-1, 1]: no overflow, tiny values flush to zero). */
export function half(x: number): number {
  const b = new Uint32Array(new Float32Array([x]).buffer)[0]!;
  const exp = ((b >>> 23) & 0xff) - 112;
  return exp <= 0 ? (b >>> 16) & 0x8000 : ((b >>> 16) & 0x8000) | (exp << 10) | ((b >>> 13) & 0x3ff);
}

/** The most negative finite half (torch.finfo(float16).min, what HF Qwen2-VL masks other images with). */
const HALF_MIN = 0xfbff;

export function uniform(n: number, seed: number): Float32Array {
  const rnd = mulberry32(seed);
  return Float32Array.from({ length: n }, () => rnd() * 2 - 1);
}

/** Qwen2-VL's rotary angles for one h×w image: (row, col) positions in 2×2 merge-window order, 20 inverse frequencies each. */
export function qwen2RotaryAngles(h: number, w: number): Float32Array {
  const invFreq = Array.from({ length: 20 }, (_, i) => 1 / 10000 ** ((2 * i) / 40));
  const out = new Float32Array(h * w * 40);
  let t = 0;
  for (let bh = 0; bh < h / 2; bh++)
    for (let bw = 0; bw < w / 2; bw++)
      for (let dh = 0; dh < 2; dh++)
        for (let dw = 0; dw < 2; dw++, t++) {
          invFreq.forEach((f, i) => {
            out[t * 40 + i] = (2 * bh + dh) * f;
            out[t * 40 + 20 + i] = (2 * bw + dw) * f;
          });
        }
  return out;
}

/** Token ranges [start, end) of consecutive images of the given patch counts. */
export function imageRanges(sizes: readonly number[]): [number, number][] {
  let start = 0;
  return sizes.map((s) => [start, (start += s)] as [number, number]);
}

/**
 * Qwen2-VL vision tower feeds for several h×w images in one call: patches of all images in a row,
 * each image's rotary angles from its own grid, and the [1, N, N] half mask that lets a patch attend
 * only to the patches of its own image (0 inside, finfo(float16).min outside).
 */
export function qwen2Feeds(grids: readonly [number, number][], seed: number): Feeds {
  const sizes = grids.map(([h, w]) => h * w);
  const n = sizes.reduce((a, b) => a + b, 0);
  const rotary = new Float32Array(n * 40);
  const mask = new Uint16Array(n * n).fill(HALF_MIN);
  imageRanges(sizes).forEach(([s, e], i) => {
    rotary.set(qwen2RotaryAngles(...grids[i]!), s * 40);
    for (let q = s; q < e; q++) mask.fill(0, q * n + s, q * n + e);
  });
  return {
    input: { type: "float16", dims: [n, 1176], data: Uint16Array.from(uniform(n * 1176, seed), half) },
    rotary_pos_emb: { type: "float32", dims: [n, 40], data: rotary },
    attention_mask: { type: "float16", dims: [1, n, n], data: mask },
  };
}

/** Qwen3.5 vision encoder feeds for images given as [t, h, w] (the graph builds the attention_bias and rotary positions from image_grid_thw). */
export function qwen35Feeds(grids: readonly [number, number, number][], seed: number): Feeds {
  const n = grids.reduce((a, [t, h, w]) => a + t * h * w, 0);
  return {
    pixel_values: { type: "float32", dims: [n, 1536], data: uniform(n * 1536, seed) },
    image_grid_thw: { type: "int64", dims: [grids.length, 3], data: BigInt64Array.from(grids.flat(), BigInt) },
  };
}

/** Gemma-3's SigLIP encoder feeds: one 896×896 image (its position embedding fixes the 64×64 patch grid). */
export function gemmaFeeds(seed: number): Feeds {
  return { pixel_values: { type: "float32", dims: [1, 3, 896, 896], data: uniform(3 * 896 * 896, seed) } };
}

/**
 * Run `fn` in a fresh temp dir holding synthetic weights for `source` and the given model files
 * (which must read the same external data as `source`, e.g. edits or compilations of it).
 */
export async function withWeights<T>(
  source: Uint8Array,
  seed: number,
  files: Record<string, Uint8Array>,
  fn: (path: (name: string) => string) => Promise<T>,
): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "prunec-graph-only-"));
  try {
    writeSyntheticWeights(source, dir, seed);
    for (const [name, bytes] of Object.entries(files)) writeFileSync(join(dir, name), bytes);
    return await fn((name) => join(dir, name));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
