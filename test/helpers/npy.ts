/**
 * Minimal .npy reader for test fixtures: format versions 1.0, 2.0 and 3.0, little-endian
 * '<f4' (float32), '<i8' (int64) and '<i4' (int32), C order. Anything else is refused with a message.
 */
import { readFileSync } from "node:fs";

export type NpyData = Float32Array | BigInt64Array | Int32Array;
export type NpyDtype = "float32" | "int64" | "int32";

export interface NpyArray<D extends NpyData = NpyData> {
  shape: number[];
  /** Element type, named as onnxruntime names tensor types. */
  dtype: NpyDtype;
  /** Owns its own aligned buffer (a copy of the file's payload). */
  data: D;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

const DESCRS: Record<string, { dtype: NpyDtype; size: number }> = {
  "<f4": { dtype: "float32", size: 4 },
  "<i8": { dtype: "int64", size: 8 },
  "<i4": { dtype: "int32", size: 4 },
};

/** Parse .npy bytes. `source` only names the input in error messages. */
export function parseNpy(bytes: Uint8Array, source = "npy"): NpyArray {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b))
    throw new Error(`${source}: not a .npy file (bad magic)`);
  const major = bytes[6]!;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number;
  let headerStart: number;
  if (major === 1) {
    headerLen = view.getUint16(8, true);
    headerStart = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new Error(`${source}: truncated .npy header`);
    headerLen = view.getUint32(8, true);
    headerStart = 12;
  } else {
    throw new Error(`${source}: unsupported .npy format version ${major}.${bytes[7]}`);
  }
  const dataStart = headerStart + headerLen;
  if (dataStart > bytes.length) throw new Error(`${source}: truncated .npy header`);
  // v1/v2 headers are latin-1, v3 is utf-8; the keys and values we read are ASCII either way.
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(bytes.subarray(headerStart, dataStart));

  const descr = /['"]descr['"]\s*:\s*['"]([^'"]+)['"]/.exec(header)?.[1];
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new Error(`${source}: cannot parse .npy header ${JSON.stringify(header.trim())}`);
  }
  if (fortran === "True") throw new Error(`${source}: Fortran-order arrays are not supported`);
  const kind = DESCRS[descr];
  if (kind === undefined) {
    throw new Error(`${source}: dtype '${descr}' not supported (only ${Object.keys(DESCRS).join(", ")})`);
  }
  const shape = shapeText
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map((s) => {
      const n = Number(s.replace(/L$/, ""));
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${source}: bad dimension '${s}' in shape`);
      return n;
    });
  const count = shape.reduce((a, b) => a * b, 1);
  const byteLen = count * kind.size;
  if (bytes.length - dataStart < byteLen) {
    throw new Error(
      `${source}: payload has ${bytes.length - dataStart} bytes, shape (${shape.join(", ")}) needs ${byteLen}`,
    );
  }
  // Copy so the typed array is aligned and independent of the file buffer. (Not `bytes.slice`: on a
  // Node Buffer that returns a view, not a copy.)
  const copy = new Uint8Array(byteLen);
  copy.set(bytes.subarray(dataStart, dataStart + byteLen));
  const buf = copy.buffer;
  let data: NpyData;
  switch (kind.dtype) {
    case "float32":
      data = new Float32Array(buf);
      break;
    case "int64":
      data = new BigInt64Array(buf);
      break;
    case "int32":
      data = new Int32Array(buf);
      break;
  }
  return { shape, dtype: kind.dtype, data };
}

/** Read a .npy file. */
export function readNpy(path: string): NpyArray {
  return parseNpy(readFileSync(path), path);
}
