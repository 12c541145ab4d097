/**
 * Labelled image sets in prunec's compact format (`.prds`), readable without Python:
 *   "PRUNEDS1" | uint32 LE header length H | H bytes JSON header | n label bytes | n·c·h·w pixel bytes (NCHW)
 * The model input is pixel/255 as float32.
 */
import { PrunecError } from "../errors.js";

export interface DatasetHeader {
  n: number;
  channels: number;
  height: number;
  width: number;
  classes: number;
  labels?: string[];
  [key: string]: unknown;
}

export interface Dataset {
  header: DatasetHeader;
  labels: Uint8Array;
  pixels: Uint8Array;
}

const MAGIC = "PRUNEDS1";

export function parseDataset(bytes: Uint8Array, source = "dataset"): Dataset {
  const fail = (why: string): never => {
    throw new PrunecError("format", `${source}: not a prunec dataset (${why})`);
  };
  if (bytes.length < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) fail(`expected the magic '${MAGIC}'`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getUint32(8, true);
  if (12 + headerLength > bytes.length) fail("header runs past the end of the file");
  let header: DatasetHeader;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + headerLength))) as DatasetHeader;
  } catch {
    return fail("header is not JSON");
  }
  for (const k of ["n", "channels", "height", "width", "classes"] as const) {
    if (!Number.isInteger(header[k]) || header[k] <= 0) fail(`header field '${k}' must be a positive integer`);
  }
  const { n, channels, height, width } = header;
  const start = 12 + headerLength;
  const size = n * channels * height * width;
  if (bytes.length !== start + n + size) fail(`expected ${start + n + size} bytes for ${n} examples, found ${bytes.length}`);
  return { header, labels: bytes.subarray(start, start + n), pixels: bytes.subarray(start + n, start + n + size) };
}

/** Examples [from, to) as the model's float input (pixel/255), NCHW. */
export function batchInput(d: Dataset, from: number, to: number): { data: Float32Array; dims: number[] } {
  const { channels, height, width } = d.header;
  const per = channels * height * width;
  const src = d.pixels.subarray(from * per, to * per);
  const data = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) data[i] = src[i]! / 255;
  return { data, dims: [to - from, channels, height, width] };
}
