/** Small tensor constants: building the ones passes add, reading the ones analysis needs. */
import { create } from "@bufbuild/protobuf";
import {
  TensorProtoSchema,
  TensorProto_DataType as DT,
  TensorProto_DataLocation,
  type TensorProto,
} from "./gen/onnx_pb.js";

export { TensorProto_DataType as DataType } from "./gen/onnx_pb.js";

/**
 * `[f(0), …, f(length − 1)]`, the values of a constant table. A plain loop: `Array.from({ length })`
 * iterates an array-like object generically, about ten times slower, which showed in a decoder's
 * 131k-entry KV budget table (12 ms of a 90 ms compile).
 */
export function tabulate(length: number, f: (i: number) => number): number[] {
  const out = new Array<number>(length);
  for (let i = 0; i < length; i++) out[i] = f(i);
  return out;
}

export function int64Tensor(
  name: string,
  values: readonly number[],
  dims: readonly number[] = [values.length],
): TensorProto {
  const raw = new Uint8Array(values.length * 8);
  const view = new DataView(raw.buffer);
  values.forEach((v, i) => {
    // Two 32-bit halves for safe integers: a BigInt per entry was the slow part of a decoder's
    // 128k-entry KV budget table.
    if (Number.isSafeInteger(v)) {
      const high = Math.floor(v / 2 ** 32);
      view.setUint32(i * 8, v - high * 2 ** 32, true);
      view.setInt32(i * 8 + 4, high, true);
    } else view.setBigInt64(i * 8, BigInt(v), true);
  });
  return create(TensorProtoSchema, { name, dataType: DT.INT64, dims: dims.map(BigInt), rawData: raw });
}

/** A float32 (4 bytes) or float64 (8 bytes) initializer, little-endian raw data. */
function realTensor(name: string, values: readonly number[], dims: readonly number[], bytes: 4 | 8): TensorProto {
  const raw = new Uint8Array(values.length * bytes);
  const view = new DataView(raw.buffer);
  values.forEach((v, i) => (bytes === 4 ? view.setFloat32(i * 4, v, true) : view.setFloat64(i * 8, v, true)));
  return create(TensorProtoSchema, {
    name,
    dataType: bytes === 4 ? DT.FLOAT : DT.DOUBLE,
    dims: dims.map(BigInt),
    rawData: raw,
  });
}

export function floatTensor(
  name: string,
  values: readonly number[],
  dims: readonly number[] = [values.length],
): TensorProto {
  return realTensor(name, values, dims, 4);
}

export function doubleTensor(
  name: string,
  values: readonly number[],
  dims: readonly number[] = [values.length],
): TensorProto {
  return realTensor(name, values, dims, 8);
}

export function isExternal(t: TensorProto): boolean {
  return t.dataLocation === TensorProto_DataLocation.EXTERNAL;
}

export function elementCount(t: TensorProto): number {
  return t.dims.reduce((a, d) => a * Number(d), 1);
}

/**
 * The values of an integer or float tensor stored inside the model, as numbers, or undefined when
 * the data is external, too large to be a shape constant, or of a type analysis does not read.
 */
export function readNumbers(t: TensorProto, maxElements = 1 << 16): number[] | undefined {
  const n = elementCount(t);
  if (isExternal(t) || n > maxElements) return undefined;
  // Analyses read the same shape constants many times; tensors are not mutated once built.
  if (valueCache.has(t)) return valueCache.get(t);
  const value = decodeNumbers(t, n);
  valueCache.set(t, value);
  return value;
}

const valueCache = new WeakMap<TensorProto, number[] | undefined>();

function decodeNumbers(t: TensorProto, n: number): number[] | undefined {
  const raw = t.rawData;
  if (raw.length > 0) {
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const width: Partial<Record<DT, number>> = {
      [DT.INT64]: 8,
      [DT.INT32]: 4,
      [DT.FLOAT]: 4,
      [DT.DOUBLE]: 8,
      [DT.UINT8]: 1,
      [DT.INT8]: 1,
      [DT.BOOL]: 1,
      [DT.FLOAT16]: 2,
    };
    const w = width[t.dataType as DT];
    if (w === undefined || raw.byteLength < n * w) return undefined;
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      switch (t.dataType) {
        case DT.INT64:
          out.push(Number(view.getBigInt64(i * 8, true)));
          break;
        case DT.INT32:
          out.push(view.getInt32(i * 4, true));
          break;
        case DT.FLOAT:
          out.push(view.getFloat32(i * 4, true));
          break;
        case DT.DOUBLE:
          out.push(view.getFloat64(i * 8, true));
          break;
        case DT.UINT8:
        case DT.BOOL:
          out.push(view.getUint8(i));
          break;
        case DT.INT8:
          out.push(view.getInt8(i));
          break;
        case DT.FLOAT16:
          out.push(halfToFloat(view.getUint16(i * 2, true)));
          break;
      }
    }
    return out;
  }
  if (t.int64Data.length) return t.int64Data.map(Number);
  if (t.int32Data.length) return t.int32Data.slice();
  if (t.floatData.length) return t.floatData.slice();
  if (t.doubleData.length) return t.doubleData.slice();
  return n === 0 ? [] : undefined;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}
