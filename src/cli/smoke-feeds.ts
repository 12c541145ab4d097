/**
 * Synthetic inputs for the compile smoke run, from a model's declared inputs (the way optimum-cli
 * validates its exports): floats seeded pseudo-random, masks all ones/true, position ids 0..N-1,
 * input ids small integers, other integers ones. Symbolic sizes: the batch symbol takes the run's
 * batch, past/cache lengths 0 (an empty cache), any other symbol a small default. Pure.
 */
import { TensorProto_DataType as DT, type GraphProto, type ValueInfoProto } from "../onnx/gen/onnx_pb.js";
import type { Dim } from "../analysis/dims.js";
import { fillSigned, mulberry32 } from "../random.js";

export type FeedType =
  | "float32"
  | "float64"
  | "float16"
  | "int64"
  | "int32"
  | "int16"
  | "int8"
  | "uint8"
  | "uint16"
  | "uint32"
  | "uint64"
  | "bool";
export type FeedData =
  | Float32Array
  | Float64Array
  | Uint16Array
  | BigInt64Array
  | BigUint64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array
  | Uint32Array;

export interface SyntheticFeed {
  type: FeedType;
  dims: number[];
  data: FeedData;
}

/** A declared value: element type and dims (undefined where the model leaves a dim unnamed); `dims` undefined without a shape. */
export interface Declared {
  name: string;
  elemType: number;
  dims?: (Dim | undefined)[];
}

/** Symbols other than the batch and past lengths: divisible by 2 and 4 and a square, like the token grids prunec meets. */
export const DEFAULT_SIZE = 16;

/** Larger synthetic inputs are not built (a declared size of 2^32 would not fit in memory): the run is skipped. */
export const MAX_FEED_ELEMENTS = 1 << 26;

const FEED_TYPES: Partial<Record<number, FeedType>> = {
  [DT.FLOAT]: "float32",
  [DT.DOUBLE]: "float64",
  [DT.FLOAT16]: "float16",
  [DT.INT64]: "int64",
  [DT.INT32]: "int32",
  [DT.INT16]: "int16",
  [DT.INT8]: "int8",
  [DT.UINT8]: "uint8",
  [DT.UINT16]: "uint16",
  [DT.UINT32]: "uint32",
  [DT.UINT64]: "uint64",
  [DT.BOOL]: "bool",
};

export function isFloatType(t: FeedType): boolean {
  return t === "float32" || t === "float64" || t === "float16";
}

export function declared(v: ValueInfoProto): Declared {
  const t = v.type?.value;
  if (t?.case !== "tensorType") return { name: v.name, elemType: DT.UNDEFINED };
  const shape = t.value.shape;
  // A negative dim_value is no size: onnxruntime takes any there, as for an unnamed dim.
  const dims = shape?.dim.map((d): Dim | undefined =>
    d.value.case === "dimValue" && d.value.value >= 0n
      ? Number(d.value.value)
      : d.value.case === "dimParam" && d.value.value
        ? d.value.value
        : undefined,
  );
  return { name: v.name, elemType: t.value.elemType, ...(dims ? { dims } : {}) };
}

/** The graph's inputs the caller feeds (initializers listed as inputs are not). */
export function feedInputs(g: GraphProto): Declared[] {
  const inits = new Set(g.initializer.map((t) => t.name));
  return g.input.filter((i) => !inits.has(i.name)).map(declared);
}

/** A declared dim at one run's sizes. */
export function concreteDim(d: Dim | undefined, batchSymbol: Dim | undefined, batch: number): number {
  if (typeof d === "number") return d;
  if (d !== undefined && d === batchSymbol) return batch;
  if (d !== undefined && /past|cache/i.test(d)) return 0;
  return DEFAULT_SIZE;
}

/** IEEE half-precision bits of a float (round to nearest; the values fed are small and normal). */
function halfBits(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return sign;
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | (((u >>> 13) & 0x3ff) + ((u >>> 12) & 1));
}

function integers(type: FeedType, count: number, at: (k: number) => number): FeedData {
  const values = Array.from({ length: count }, (_, k) => at(k));
  switch (type) {
    case "int64":
      return BigInt64Array.from(values, BigInt);
    case "uint64":
      return BigUint64Array.from(values, BigInt);
    case "int32":
      return Int32Array.from(values);
    case "uint32":
      return Uint32Array.from(values);
    case "int16":
      return Int16Array.from(values);
    case "uint16":
      return Uint16Array.from(values);
    case "int8":
      return Int8Array.from(values);
    default:
      return Uint8Array.from(values); // uint8, bool
  }
}

/**
 * One input's synthetic value, or a reason it cannot be made (a type onnxruntime-node cannot take).
 * `seed` varies per input and batch, so inputs differ and a run is reproducible.
 */
export function syntheticFeed(
  d: Declared,
  batchSymbol: Dim | undefined,
  batch: number,
  seed: number,
): SyntheticFeed | string {
  const type = FEED_TYPES[d.elemType];
  if (!type)
    return `input '${d.name}' has element type ${DT[d.elemType] ?? d.elemType}, which the smoke run cannot feed`;
  if (!d.dims) return `input '${d.name}' has no declared shape`;
  const dims = d.dims.map((x) => concreteDim(x, batchSymbol, batch));
  const count = dims.reduce((a, b) => a * b, 1);
  if (count > MAX_FEED_ELEMENTS)
    return `input '${d.name}' would hold ${count} elements at its declared shape [${dims.join(", ")}], too many for a smoke run`;
  const last = dims.at(-1) ?? 1;
  if (isFloatType(type)) {
    // Filled in place: an image input holds ~10^5 values, and an intermediate array doubled the cost.
    if (type !== "float16") {
      const data = type === "float64" ? new Float64Array(count) : new Float32Array(count);
      fillSigned(data, seed);
      return { type, dims, data };
    }
    const next = mulberry32(seed);
    const data = new Uint16Array(count);
    for (let k = 0; k < count; k++) data[k] = halfBits(next() * 2 - 1);
    return { type, dims, data };
  }
  if (type === "bool" || /mask/i.test(d.name)) return { type, dims, data: integers(type, count, () => 1) };
  if (/position_ids|cache_position/i.test(d.name))
    return { type, dims, data: integers(type, count, (k) => k % Math.max(1, last)) };
  if (/ids$/i.test(d.name)) return { type, dims, data: integers(type, count, (k) => 1 + (k % 7)) };
  return { type, dims, data: integers(type, count, () => 1) };
}
