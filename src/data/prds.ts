/**
 * Labelled image sets in prunec's compact format (`.prds`), readable without Python:
 *   "PRUNEDS1" | uint32 LE header length H | H bytes JSON header | n·t label bytes | n·c·h·w pixel bytes (NCHW)
 * The model input is pixel/255 as float32, or (pixel/255 − mean_c)/std_c when the header has both
 * `mean` and `std` (arrays of `channels` finite numbers, std > 0: a model's normalisation, as
 * `prunec pack` records it from a preprocessor_config.json or flags).
 *
 * The header is a JSON object: n, channels, height, width, classes are positive safe integers;
 * labels (optional) is an array of `classes` strings naming the classes; targets (optional) is
 * "examples" (the default: t = 1, one label per example) or "patches" (t = the header field
 * patches, a positive safe integer: one label per patch, row-major over the patch grid, example
 * after example); patches is read only when targets is "patches"; mean and std as above; other fields (input, seed,
 * description, patch_grid) are free. The file must be exactly 12 + H + n·t + n·c·h·w bytes and
 * every label byte below `classes`. Anything else is PrunecError "format" (exit 3) naming the file
 * and the field, and nothing is allocated from a header field before it is checked against the
 * file's length.
 */
import { decodeModel } from "../onnx/io.js";
import { PrunecError } from "../errors.js";

export interface DatasetHeader {
  n: number;
  channels: number;
  height: number;
  width: number;
  classes: number;
  labels?: string[];
  targets?: "examples" | "patches";
  patches?: number;
  /** Per channel: the model input is (pixel/255 − mean)/std. Both or neither. */
  mean?: number[];
  std?: number[];
  [key: string]: unknown;
}

export interface Dataset {
  header: DatasetHeader;
  /** n bytes, or n·patches bytes (example-major) when `patches` is set. */
  labels: Uint8Array;
  pixels: Uint8Array;
  /** Labels per example: set (the header's `patches`) only for a per-patch set. */
  patches?: number;
}

const MAGIC = "PRUNEDS1";
const SIZE_FIELDS = ["n", "channels", "height", "width", "classes"] as const;

/** A header value as a message shows it: short, whatever its size. */
function shown(v: unknown): string {
  const s = v === undefined ? "nothing" : JSON.stringify(v);
  return s.length > 40 ? `${s.slice(0, 39)}…` : s;
}

export function parseDataset(bytes: Uint8Array, source = "dataset"): Dataset {
  const fail = (why: string): never => {
    throw new PrunecError("format", `${source}: not a prunec dataset (${why})`);
  };
  if (bytes.length < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC)
    fail(`expected the magic '${MAGIC}'`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getUint32(8, true);
  if (12 + headerLength > bytes.length)
    fail(`header length ${headerLength} runs past the end of the file (${bytes.length} bytes)`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(12, 12 + headerLength));
  } catch {
    return fail("header is not UTF-8");
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return fail("header is not JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
    return fail(`header must be a JSON object, got ${shown(parsed)}`);
  const header = parsed as Record<string, unknown>;
  for (const k of SIZE_FIELDS) {
    const v = header[k];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0)
      fail(`header field '${k}' must be a positive integer`);
  }
  const { n, channels, height, width, classes } = header as unknown as DatasetHeader;
  const names = header["labels"];
  if (names !== undefined) {
    if (!Array.isArray(names) || names.length !== classes || !names.every((x) => typeof x === "string")) {
      fail(`header field 'labels' must be an array of ${classes} strings (one per class), got ${shown(names)}`);
    }
  }
  const mean = header["mean"];
  const std = header["std"];
  const perChannel = (v: unknown, positive: boolean) =>
    Array.isArray(v) &&
    v.length === channels &&
    v.every((x) => typeof x === "number" && Number.isFinite(x) && (!positive || x > 0));
  if ((mean === undefined) !== (std === undefined))
    fail(`header fields 'mean' and 'std' go together, got only '${mean === undefined ? "std" : "mean"}'`);
  if (mean !== undefined && !perChannel(mean, false))
    fail(`header field 'mean' must be an array of ${channels} finite numbers (one per channel), got ${shown(mean)}`);
  if (std !== undefined && !perChannel(std, true))
    fail(`header field 'std' must be an array of ${channels} positive numbers (one per channel), got ${shown(std)}`);
  const targets = header["targets"];
  if (targets !== undefined && targets !== "examples" && targets !== "patches")
    fail(`header field 'targets' must be "examples" or "patches", got ${shown(targets)}`);
  let patches: number | undefined;
  if (targets === "patches") {
    const p = header["patches"];
    if (typeof p !== "number" || !Number.isSafeInteger(p) || p <= 0)
      fail(`header field 'patches' must be a positive integer when 'targets' is "patches", got ${shown(p)}`);
    patches = p as number;
  }
  // Sizes against the file before anything is sized by them, in exact integers: a huge header
  // value gives a message, not an overflow or an allocation.
  const start = 12 + headerLength;
  const per = BigInt(channels) * BigInt(height) * BigInt(width);
  const perLabels = BigInt(patches ?? 1);
  const expected = BigInt(start) + BigInt(n) * (perLabels + per);
  if (expected !== BigInt(bytes.length)) {
    const what = patches === undefined ? `${n} examples` : `${n} examples of ${patches} patch labels`;
    fail(`expected ${expected} bytes for ${what}, found ${bytes.length}`);
  }
  const size = n * Number(per); // now known to fit in the file
  const count = n * (patches ?? 1);
  const labels = bytes.subarray(start, start + count);
  for (let i = 0; i < count; i++) {
    if (labels[i]! < classes) continue;
    if (patches === undefined)
      fail(`label ${labels[i]} of example ${i} is not below header field 'classes' (${classes})`);
    const p = patches as number;
    fail(
      `label ${labels[i]} of example ${Math.floor(i / p)}, patch ${i % p} is not below header field 'classes' (${classes})`,
    );
  }
  const pixels = bytes.subarray(start + count, start + count + size);
  return { header: header as unknown as DatasetHeader, labels, pixels, ...(patches !== undefined && { patches }) };
}

/**
 * The model's first graph input that is not an initializer (where images go): its name and, for a
 * tensor, its element type and declared sizes (a symbolic size by its name, "?" when unnamed;
 * undefined when no shape is declared).
 */
export function firstInput(
  modelBytes: Uint8Array,
  modelName: string,
): { name: string; tensor?: { elemType: number; dims: (number | string)[] | undefined } } | undefined {
  const g = decodeModel(modelBytes, modelName).graph;
  const inits = new Set(g?.initializer.map((t) => t.name));
  const input = g?.input.find((i) => !inits.has(i.name));
  if (!input) return undefined;
  const t = input.type?.value;
  if (t?.case !== "tensorType") return { name: input.name };
  const dims = t.value.shape?.dim.map((d) =>
    d.value.case === "dimValue"
      ? Number(d.value.value)
      : d.value.case === "dimParam" && d.value.value
        ? d.value.value
        : "?",
  );
  return { name: input.name, tensor: { elemType: t.value.elemType, dims } };
}

/**
 * The data set's examples must be what the model's first input takes, [batch, channels, height,
 * width] float32 (symbolic sizes match anything): otherwise exit 2 (the data given does not fit the
 * model given) naming both, before onnxruntime fails on the first batch.
 */
export function checkDatasetFitsModel(
  data: Dataset,
  modelBytes: Uint8Array,
  dataName: string,
  modelName: string,
): void {
  const input = firstInput(modelBytes, modelName);
  if (!input) throw new PrunecError("io", `${modelName}: the model has no input to feed ${dataName}'s images to`);
  const { channels, height, width } = data.header;
  const refused = (what: string): PrunecError =>
    new PrunecError(
      "io",
      `${dataName}: examples are float32 [batch, ${channels}, ${height}, ${width}], but ${modelName}'s input '${input.name}' ${what}`,
    );
  const t = input.tensor;
  if (!t) throw refused("is not a tensor");
  if (t.elemType !== 1) throw refused(`has element type ${t.elemType} (float32 is 1)`);
  const dims = t.dims;
  if (dims === undefined) return; // no declared shape: nothing to compare
  if (dims.length !== 4) throw refused(`has rank ${dims.length} ([${dims.join(", ")}])`);
  const want = [channels, height, width];
  for (let i = 0; i < 3; i++) {
    const d = dims[i + 1];
    if (typeof d === "number" && d !== want[i]) throw refused(`is [${dims.join(", ")}]`);
  }
}

/** Examples [from, to) as the model's float input (pixel/255, normalised when the header says how), NCHW. */
export function batchInput(d: Dataset, from: number, to: number): { data: Float32Array; dims: number[] } {
  const { channels, height, width, mean, std } = d.header;
  const plane = height * width;
  const per = channels * plane;
  const src = d.pixels.subarray(from * per, to * per);
  const data = new Float32Array(src.length);
  if (mean && std)
    for (let i = 0; i < src.length; i++) {
      const c = Math.floor(i / plane) % channels;
      data[i] = (src[i]! / 255 - mean[c]!) / std[c]!;
    }
  else for (let i = 0; i < src.length; i++) data[i] = src[i]! / 255;
  return { data, dims: [to - from, channels, height, width] };
}

/** The `.prds` bytes of a data set (parseDataset reads them back to the same header, labels and pixels). */
export function encodeDataset(d: Dataset): Uint8Array {
  const header = new TextEncoder().encode(JSON.stringify(d.header));
  const out = new Uint8Array(12 + header.length + d.labels.length + d.pixels.length);
  out.set(new TextEncoder().encode(MAGIC), 0);
  new DataView(out.buffer).setUint32(8, header.length, true);
  out.set(header, 12);
  out.set(d.labels, 12 + header.length);
  out.set(d.pixels, 12 + header.length + d.labels.length);
  return out;
}
