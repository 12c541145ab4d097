/**
 * The models the WebGPU suite runs, and their candidate inputs.
 *
 *   tiny-vit  examples/tiny-vit (always): ref_in.npy's two images, then seeded standard-normal ones
 *   digits    examples/digits (only when model.onnx is there): the images of sample.prds, /255
 *             (then the first 16 of test.prds, if some samples are too close to a tie to compare)
 *
 * PRUNEC_WEBGPU_DIGITS_DIR points the digits case at another folder with the same two files (used
 * to try the suite on a stand-in before the trained model existed).
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { readNpy } from "../helpers/npy.js";
import { REPO_ROOT } from "../helpers/shared.js";
import { mulberry32 } from "../../src/random.js";

export interface Sample {
  /** Where it came from, e.g. "ref_in.npy[1]" or "sample.prds[7]". */
  id: string;
  /** C*H*W float32, C order. */
  data: Float32Array;
  label?: number;
}

export interface ModelCase {
  name: string;
  modelPath: string;
  input: string;
  output: string;
  /** [C, H, W] of one image. */
  image: [number, number, number];
  /** Pruning specs compiled from the dense model (each one variant). */
  specs: string[];
  batchSize: number;
  batchCount: number;
  /** Candidates in order of preference; the suite takes the first batchSize*batchCount eligible ones. */
  candidates(): Sample[];
}

/** Standard normal samples (Box–Muller over mulberry32). */
export function normal(count: number, seed: number): Float32Array {
  const next = mulberry32(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const u = Math.max(next(), 1e-12);
    const v = next();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < count) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

export interface Prds {
  n: number;
  channels: number;
  height: number;
  width: number;
  header: Record<string, unknown>;
  labels: Uint8Array;
  pixels: Uint8Array;
}

/** .prds: "PRUNEDS1" | u32 LE header length H | H bytes JSON {n, channels, height, width, ...} | n labels | n*c*h*w uint8 NCHW. */
export function parsePrds(bytes: Uint8Array, source = "prds"): Prds {
  const magic = new TextDecoder("latin1").decode(bytes.subarray(0, 8));
  if (magic !== "PRUNEDS1") throw new Error(`${source}: bad magic ${JSON.stringify(magic)}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const h = view.getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + h))) as Record<string, unknown>;
  const num = (k: string) => {
    const v = header[k];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0)
      throw new Error(`${source}: header field '${k}' is not a positive integer`);
    return v;
  };
  const n = num("n");
  const channels = num("channels");
  const height = num("height");
  const width = num("width");
  const labelsAt = 12 + h;
  const pixelsAt = labelsAt + n;
  const size = n * channels * height * width;
  if (bytes.length !== pixelsAt + size)
    throw new Error(`${source}: ${bytes.length} bytes, expected ${pixelsAt + size}`);
  return {
    n,
    channels,
    height,
    width,
    header,
    labels: bytes.subarray(labelsAt, pixelsAt),
    pixels: bytes.subarray(pixelsAt, pixelsAt + size),
  };
}

/** The first `limit` images of a .prds file as 1x64x64 float32 pixel/255 samples. */
function prdsSamples(path: string, name: string, limit = Infinity): Sample[] {
  const set = parsePrds(readFileSync(path), path);
  if (set.channels !== 1 || set.height !== 64 || set.width !== 64) {
    throw new Error(`${path}: images are ${set.channels}x${set.height}x${set.width}, the model takes 1x64x64`);
  }
  const per = set.channels * set.height * set.width;
  return Array.from({ length: Math.min(set.n, limit) }, (_, i) => {
    const data = new Float32Array(per);
    for (let j = 0; j < per; j++) data[j] = set.pixels[i * per + j]! / 255;
    return { id: `${name}[${i}]`, data, label: set.labels[i]! };
  });
}

function tinyVit(): ModelCase {
  const dir = join(REPO_ROOT, "examples", "tiny-vit");
  const image: [number, number, number] = [3, 64, 64];
  const per = image[0] * image[1] * image[2];
  return {
    name: "tiny-vit",
    modelPath: join(dir, "model.onnx"),
    input: "pixel_values",
    output: "logits",
    image,
    specs: ["after layer 1 keep 50% by cls-attn\n"],
    batchSize: 2,
    batchCount: 2,
    candidates() {
      const ref = readNpy(join(dir, "ref_in.npy"));
      const refData = ref.data as Float32Array;
      const out: Sample[] = [];
      for (let i = 0; i < ref.shape[0]!; i++)
        out.push({ id: `ref_in.npy[${i}]`, data: refData.slice(i * per, (i + 1) * per) });
      for (let i = 0; i < 8; i++) out.push({ id: `normal(seed=${100 + i})`, data: normal(per, 100 + i) });
      return out;
    },
  };
}

export const DIGITS_DIR = process.env["PRUNEC_WEBGPU_DIGITS_DIR"] ?? join(REPO_ROOT, "examples", "digits");

function digits(): ModelCase | undefined {
  const modelPath = join(DIGITS_DIR, "model.onnx");
  const samplePath = join(DIGITS_DIR, "sample.prds");
  if (!existsSync(modelPath)) return undefined;
  return {
    name: "digits",
    modelPath,
    input: "pixel_values",
    output: "logits",
    image: [1, 64, 64],
    // The two single-stage schedules, and both together (a second stage on already pruned tokens).
    specs: [
      "after layer 1 keep 50% by cls-attn\n",
      "after layer 2 keep 25% by cls-attn\n",
      "after layer 1 keep 50% by cls-attn\nafter layer 2 keep 25% by cls-attn\n",
    ],
    batchSize: 4,
    batchCount: 2,
    // sample.prds first; a few test.prds images behind them, in case some samples are near ties.
    candidates() {
      if (!existsSync(samplePath)) throw new Error(`${modelPath} exists but ${samplePath} does not`);
      const out = prdsSamples(samplePath, "sample.prds");
      const testPath = join(DIGITS_DIR, "test.prds");
      if (existsSync(testPath)) out.push(...prdsSamples(testPath, "test.prds", 16));
      return out;
    },
  };
}

/** tiny-vit always; digits when examples/digits/model.onnx exists. */
export function modelCases(): ModelCase[] {
  const d = digits();
  return d ? [tinyVit(), d] : [tinyVit()];
}
