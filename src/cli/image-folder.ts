/**
 * Image folders as people keep them (torchvision's ImageFolder convention): one subfolder per class,
 * classes numbered in the sorted order of their folder names (an empty folder still counts, so the
 * numbering does not shift), PNG and JPEG files inside, read in sorted order. When the model's
 * transformers `config.json` beside it names its classes (`id2label`), folders named after those
 * labels take the model's ids instead, whatever their order. Each image is decoded, converted to the model's channels, resized and stored as a
 * `.prds` data set (src/data/prds.ts), with the normalisation in its header, so `eval` and `pack`
 * see one format.
 *
 * Decoding and resizing are sharp's (libvips; the library transformers.js uses in Node), an
 * optional peer dependency loaded only by the commands that read images. Resizing is not bit-identical to PIL's, which Python
 * preprocessors use: a model's accuracy on the same folder can differ in the last digits.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { extname, join } from "node:path";
import { PrunecError } from "../errors.js";
import { importPeer } from "./peers.js";
import { runtimeError } from "./runtime.js";
import type { Dataset, DatasetHeader } from "../data/prds.js";

/** What a model expects of an image: its size, channels, how it was resized and normalised. */
export interface Preprocess {
  height: number;
  width: number;
  /** 1: grey (luminance), 3: sRGB without alpha. */
  channels: 1 | 3;
  /** `fill`: stretch to height × width; `shortest-edge`: scale the shortest edge to `edge`, keeping the aspect ratio, then crop the centre. */
  resize: { kind: "fill" } | { kind: "shortest-edge"; edge: number };
  kernel: "nearest" | "linear" | "cubic" | "lanczos3";
  /** Per channel, applied as (pixel/255 − mean)/std; absent: pixel/255. */
  mean?: number[];
  std?: number[];
}

const IMAGE_EXTENSIONS = new Set([".png", ".jpg", ".jpeg"]);

/** The model's class names by id from a transformers config.json (`id2label`), if it has one. */
export function modelLabels(configPath: string): string[] | undefined {
  let c: unknown;
  try {
    c = JSON.parse(readFileSync(configPath, "utf8"));
  } catch {
    return undefined;
  }
  const map = (c as { id2label?: unknown }).id2label;
  if (typeof map !== "object" || map === null) return undefined;
  const entries = Object.entries(map as Record<string, unknown>);
  const names: string[] = [];
  for (const [k, v] of entries) {
    const id = Number(k);
    if (!Number.isSafeInteger(id) || id < 0 || id >= entries.length || typeof v !== "string") return undefined;
    names[id] = v;
  }
  return names.length === entries.length && names.every((x) => x !== undefined) ? names : undefined;
}

/**
 * Class names (by label) and each image file (sorted) with its label; refuses what is not an image
 * folder. With `known` (the model's labels by id), every folder must be one of them.
 */
export function listImageFolder(
  dir: string,
  known?: readonly string[],
): { classes: string[]; files: { path: string; label: number }[] } {
  let entries: string[];
  try {
    entries = readdirSync(dir).sort();
  } catch (e) {
    throw new PrunecError("io", `${dir}: cannot read the folder (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  const classes = entries.filter((e) => !e.startsWith(".") && statSync(join(dir, e)).isDirectory());
  if (!classes.length)
    throw new PrunecError(
      "io",
      `${dir}: expected one subfolder per class (the ImageFolder convention: ${dir}/<class>/<image>.png), found none`,
    );
  const names = known ?? classes;
  if (names.length > 256)
    throw new PrunecError("io", `${dir}: ${names.length} classes; a data set holds at most 256 classes`);
  const unknown = known && classes.find((c) => !known.includes(c));
  if (unknown !== undefined)
    throw new PrunecError(
      "io",
      `${dir}: folder '${unknown}' names no class of the model (its config.json's id2label: ${known!.slice(0, 8).join(", ")}${known!.length > 8 ? ", …" : ""})`,
    );
  const files = classes.flatMap((c) =>
    readdirSync(join(dir, c))
      .sort()
      .filter((f) => !f.startsWith(".") && IMAGE_EXTENSIONS.has(extname(f).toLowerCase()))
      .map((f) => ({ path: join(dir, c, f), label: names.indexOf(c) })),
  );
  if (!files.length)
    throw new PrunecError("io", `${dir}: no .png, .jpg or .jpeg image in its ${classes.length} class folders`);
  return { classes: [...names], files };
}

type Sharp = typeof import("sharp").default;

/** sharp, an optional peer like the runtimes: only commands that read images need it (exit 7 saying how to install it). */
async function loadSharp(): Promise<Sharp> {
  try {
    return (await importPeer("sharp")).default;
  } catch (e) {
    throw runtimeError("sharp", "reading an image folder", e);
  }
}

/** One image as CHW uint8 of the preprocess's size. */
async function imagePixels(sharp: Sharp, path: string, p: Preprocess): Promise<Uint8Array> {
  const bytes = readFileSync(path);
  let image = sharp(bytes, { failOn: "error" }).rotate(); // EXIF orientation, as viewers show it
  image = p.channels === 1 ? image.grayscale() : image.toColourspace("srgb");
  image = image.removeAlpha();
  if (p.resize.kind === "fill") image = image.resize(p.width, p.height, { fit: "fill", kernel: p.kernel });
  else {
    const meta = await sharp(bytes).metadata();
    const w = meta.autoOrient?.width ?? meta.width ?? 1;
    const h = meta.autoOrient?.height ?? meta.height ?? 1;
    const scale = p.resize.edge / Math.min(w, h);
    const sw = Math.max(p.width, Math.round(w * scale));
    const sh = Math.max(p.height, Math.round(h * scale));
    image = image.resize(sw, sh, { fit: "fill", kernel: p.kernel }).extract({
      left: Math.floor((sw - p.width) / 2),
      top: Math.floor((sh - p.height) / 2),
      width: p.width,
      height: p.height,
    });
  }
  let hwc: Buffer;
  let channels: number;
  try {
    const { data, info } = await image.raw().toBuffer({ resolveWithObject: true });
    hwc = data;
    channels = info.channels;
  } catch (e) {
    throw new PrunecError("format", `${path}: not a readable image (${(e as Error).message})`);
  }
  if (channels !== p.channels)
    throw new PrunecError("format", `${path}: decoded to ${channels} channels, expected ${p.channels}`);
  // HWC → CHW, as the model's NCHW input.
  const plane = p.height * p.width;
  const chw = new Uint8Array(plane * p.channels);
  for (let i = 0; i < plane; i++) for (let c = 0; c < p.channels; c++) chw[c * plane + i] = hwc[i * p.channels + c]!;
  return chw;
}

/** The folder as a data set: every image preprocessed, labels from the class folders. */
export async function readImageFolder(
  dir: string,
  p: Preprocess,
  onProgress?: (done: number, total: number) => void,
  known?: readonly string[],
): Promise<Dataset> {
  const { classes, files } = listImageFolder(dir, known);
  const sharp = await loadSharp();
  const per = p.channels * p.height * p.width;
  const pixels = new Uint8Array(files.length * per);
  const labels = new Uint8Array(files.length);
  for (const [i, f] of files.entries()) {
    pixels.set(await imagePixels(sharp, f.path, p), i * per);
    labels[i] = f.label;
    onProgress?.(i + 1, files.length);
  }
  const header: DatasetHeader = {
    n: files.length,
    channels: p.channels,
    height: p.height,
    width: p.width,
    classes: classes.length,
    labels: classes,
    ...(p.mean && p.std ? { mean: p.mean, std: p.std } : {}),
    input: p.mean && p.std ? "float32 (pixel/255 - mean)/std, NCHW" : "float32 pixel/255, NCHW",
    description: `packed by prunec from the image folder ${dir} (${p.resize.kind === "fill" ? "resized" : `shortest edge ${p.resize.edge}, centre crop`} to ${p.height}x${p.width}, ${p.kernel})`,
  };
  return { header, labels, pixels };
}
