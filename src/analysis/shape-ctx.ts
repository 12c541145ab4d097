/**
 * What the per-op shape rules (shape-ops*.ts) see of the running inference, plus the shape and
 * small-value helpers they share. A rule gets a node and returns one result per output; it never
 * writes state itself, so the driver (shapes.ts) can merge results with declared value_info.
 */
import type { GraphProto, NodeProto } from "../ir/graph.js";
import { attr } from "../ir/graph.js";
import type { Dim, Shape } from "./dims.js";
import type { DimAlgebra } from "./shape-expr.js";

/** The elements of a small tensor, row-major; `float` marks floating-point element types. */
export interface Val {
  data: Dim[];
  float: boolean;
}

/** What a rule infers for one output: its shape and, for small tensors, its value. */
export interface Out {
  shape: Shape;
  value?: Val;
}

export interface Ctx {
  readonly alg: DimAlgebra;
  /** Shape of a tensor, undefined when unknown or when `name` is absent (optional input). */
  shape(name: string | undefined): Shape | undefined;
  /** Value of a small tensor (a shape computation or a small constant), when known. */
  value(name: string | undefined): Val | undefined;
  /** Infer a subgraph (an If branch) in the current scope; the shapes of its outputs. */
  subgraph(g: GraphProto): (Shape | undefined)[];
}

export type Rule = (n: NodeProto, cx: Ctx) => (Out | undefined)[];

/** Values are tracked only for tensors up to this many elements: shape vectors, scalars, indices. */
export const MAX_VALUE_ELEMENTS = 1024;

/** onnx.TensorProto.DataType codes of floating-point types (float, f16, double, bf16, f8s, f4). */
const FLOAT_TYPES = new Set([1, 10, 11, 16, 17, 18, 19, 20, 23]);
export const isFloatType = (t: number): boolean => FLOAT_TYPES.has(t);

// ---- small accessors -------------------------------------------------------------------------

export function input(n: NodeProto, i: number): string | undefined {
  const s = n.input[i];
  return s ? s : undefined;
}

export function intsAttr(n: NodeProto, name: string): number[] | undefined {
  const a = attr(n, name);
  return a ? a.ints.map(Number) : undefined;
}

export function intAttr(n: NodeProto, name: string, dflt: number): number {
  const a = attr(n, name);
  return a ? Number(a.i) : dflt;
}

export function stringAttr(n: NodeProto, name: string): string | undefined {
  const a = attr(n, name);
  return a ? new TextDecoder().decode(a.s) : undefined;
}

/** A value whose elements are all numbers (indices, axes, sizes), as plain numbers. */
export function numbers(v: Val | undefined): number[] | undefined {
  if (!v?.data.every((d) => typeof d === "number")) return undefined;
  return v.data as number[];
}

export function numericShape(s: Shape | undefined): number[] | undefined {
  if (!s?.every((d) => typeof d === "number")) return undefined;
  return s as number[];
}

export function normAxis(axis: number, rank: number): number | undefined {
  const a = axis < 0 ? axis + rank : axis;
  return a >= 0 && a < rank ? a : undefined;
}

/** Int64 "infinities" that exporters write for open slice ends (INT64_MAX, INT32_MAX...). */
export const isHuge = (x: number): boolean => Math.abs(x) >= 2 ** 31 - 1;

// ---- shapes ----------------------------------------------------------------------------------

/** One output dim from two broadcast input dims; undefined when they are different numbers. */
export function broadcastDim(alg: DimAlgebra, a: Dim, b: Dim): Dim | undefined {
  if (a === b) return a;
  // 1 against anything first: comparing a symbol (the batch) with 1 in the algebra allocates, and
  // every elementwise op against a bias or a scalar would pay it.
  if (a === 1) return b;
  if (b === 1) return a;
  if (alg.equal(a, b)) return a;
  // A symbol broadcast against a number other than 1 must equal that number (or be 1).
  if (typeof a === "number") return typeof b === "number" ? undefined : a;
  if (typeof b === "number") return b;
  // Two different symbols: one of them is 1 at run time or they are equal; prefer a named one.
  return alg.isFresh(a) && !alg.isFresh(b) ? b : a;
}

/** Numpy broadcasting of several shapes; an impossible pair of dims becomes a fresh symbol. */
export function broadcast(alg: DimAlgebra, shapes: readonly Shape[]): Shape {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out: Shape = [];
  for (let i = 0; i < rank; i++) {
    let d: Dim = 1;
    for (const s of shapes) {
      const x = s[s.length - rank + i];
      if (x === undefined) continue;
      d = broadcastDim(alg, d, x) ?? alg.fresh();
    }
    out.push(d);
  }
  return out;
}

/** No tensor prunec meets has a higher rank; a malformed model's "rank" (a declared 2^31-long shape vector) must not allocate. */
export const MAX_RANK = 64;

/** A shape of `rank` unknown dims; throws (the rule's outputs stay unknown) past MAX_RANK. */
export const freshShape = (alg: DimAlgebra, rank: number): Shape => {
  if (!(Number.isInteger(rank) && rank >= 0 && rank <= MAX_RANK)) throw new Error(`rank ${rank} is out of range`);
  return Array.from({ length: rank }, () => alg.fresh());
};

/** A size as inference may hold it: an exact, non-negative integer (malformed models give NaN, 2^64, −3...). */
export const isSize = (d: Dim): boolean => typeof d !== "number" || (Number.isSafeInteger(d) && d >= 0);

// ---- values ----------------------------------------------------------------------------------

const strides = (shape: readonly number[]): number[] => {
  const out = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) out[i] = out[i + 1]! * shape[i + 1]!;
  return out;
};

const count = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** Elementwise `f` over broadcast inputs; undefined when too large or any element is undefined. */
export function mapBroadcast(
  shapes: readonly number[][],
  datas: readonly Dim[][],
  f: (xs: Dim[]) => Dim | undefined,
): { shape: number[]; data: Dim[] } | undefined {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const shape: number[] = [];
  for (let i = 0; i < rank; i++) {
    let d = 1;
    for (const s of shapes) {
      const x = s[s.length - rank + i] ?? 1;
      if (x !== 1 && d !== 1 && x !== d) return undefined;
      if (x !== 1) d = x;
    }
    shape.push(d);
  }
  const total = count(shape);
  if (total > MAX_VALUE_ELEMENTS) return undefined;
  const ins = shapes.map((s) => {
    const padded = [...new Array<number>(rank - s.length).fill(1), ...s];
    const st = strides(padded);
    return padded.map((d, i) => (d === 1 ? 0 : st[i]!));
  });
  const outStrides = strides(shape);
  const data: Dim[] = [];
  for (let flat = 0; flat < total; flat++) {
    const xs: Dim[] = [];
    for (let k = 0; k < shapes.length; k++) {
      let off = 0;
      for (let i = 0; i < rank; i++) off += (Math.floor(flat / outStrides[i]!) % shape[i]!) * ins[k]![i]!;
      xs.push(datas[k]![off]!);
    }
    const y = f(xs);
    if (y === undefined) return undefined;
    data.push(y);
  }
  return { shape, data };
}

/** Elements at `indices` along `axis` (Gather/Slice on a value); indices already non-negative. */
export function takeAlong(
  shape: readonly number[],
  data: readonly Dim[],
  axis: number,
  indices: readonly number[],
): Dim[] {
  const outer = count(shape.slice(0, axis));
  const inner = count(shape.slice(axis + 1));
  const dim = shape[axis]!;
  const out: Dim[] = [];
  for (let o = 0; o < outer; o++)
    for (const ix of indices) for (let i = 0; i < inner; i++) out.push(data[(o * dim + ix) * inner + i]!);
  return out;
}

export function transposeData(shape: readonly number[], data: readonly Dim[], perm: readonly number[]): Dim[] {
  const outShape = perm.map((p) => shape[p]!);
  const inStrides = strides(shape);
  const outStrides = strides(outShape);
  const out: Dim[] = [];
  for (let flat = 0; flat < data.length; flat++) {
    let off = 0;
    for (let i = 0; i < outShape.length; i++)
      off += (Math.floor(flat / outStrides[i]!) % outShape[i]!) * inStrides[perm[i]!]!;
    out.push(data[off]!);
  }
  return out;
}

export const elementCount = count;
