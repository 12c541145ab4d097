/**
 * Shape rules for elementwise and data-movement ops (the ones exporters also use to compute
 * Reshape targets at run time). Each also carries the tensor's value when it is small and
 * known, so Shape -> Gather -> Unsqueeze -> Concat -> Reshape chains resolve to concrete shapes.
 */
import type { NodeProto } from "../ir/graph.js";
import { attr } from "../ir/graph.js";
import { readNumbers, elementCount as tensorElements } from "../onnx/tensor.js";
import type { TensorProto } from "../onnx/gen/onnx_pb.js";
import type { Dim, Shape } from "./dims.js";
import type { DimAlgebra } from "./shape-expr.js";
import {
  MAX_VALUE_ELEMENTS,
  broadcast,
  elementCount,
  freshShape,
  input,
  intAttr,
  intsAttr,
  isFloatType,
  isHuge,
  mapBroadcast,
  normAxis,
  numbers,
  numericShape,
  takeAlong,
  transposeData,
  type Ctx,
  type Out,
  type Rule,
  type Val,
} from "./shape-ctx.js";

// ---- constants -------------------------------------------------------------------------------

/** A TensorProto as shape and (if small and readable) value. */
export function tensorOut(t: TensorProto): Out {
  const shape = t.dims.map(Number);
  if (tensorElements(t) > MAX_VALUE_ELEMENTS) return { shape };
  const data = readNumbers(t, MAX_VALUE_ELEMENTS);
  return data ? { shape, value: { data, float: isFloatType(t.dataType) } } : { shape };
}

const constant: Rule = (n) => {
  const a = n.attribute[0];
  if (!a) return [];
  switch (a.name) {
    case "value":
      return a.t ? [tensorOut(a.t)] : [];
    case "value_int":
      return [{ shape: [], value: { data: [Number(a.i)], float: false } }];
    case "value_float":
      return [{ shape: [], value: { data: [a.f], float: true } }];
    case "value_ints":
      return [{ shape: [a.ints.length], value: { data: a.ints.map(Number), float: false } }];
    case "value_floats":
      return [{ shape: [a.floats.length], value: { data: a.floats.slice(), float: true } }];
    case "value_strings":
      return [{ shape: [a.strings.length] }];
    case "value_string":
      return [{ shape: [] }];
    default:
      return [];
  }
};

// ---- elementwise -----------------------------------------------------------------------------

type Unary = (alg: DimAlgebra, x: Dim) => Dim | undefined;
const onNumber =
  (f: (x: number) => number): Unary =>
  (_, x) =>
    typeof x === "number" ? f(x) : undefined;

/** Value semantics of unary ops that appear in shape computations; symbols are sizes (>= 0, integral). */
const UNARY_VALUES: Record<string, Unary> = {
  Identity: (_, x) => x,
  Neg: (alg, x) => alg.neg(x),
  Abs: (alg, x) => (typeof x === "number" ? Math.abs(x) : alg.geq(x, 0) ? x : undefined),
  Relu: (alg, x) => (typeof x === "number" ? Math.max(0, x) : alg.geq(x, 0) ? x : undefined),
  Floor: (_, x) => (typeof x === "number" ? Math.floor(x) : x),
  Ceil: (_, x) => (typeof x === "number" ? Math.ceil(x) : x),
  Round: (_, x) => (typeof x === "number" ? Math.round(x) : x),
  Sqrt: onNumber(Math.sqrt),
  Reciprocal: onNumber((x) => 1 / x),
  Exp: onNumber(Math.exp),
  Log: onNumber(Math.log),
  Sign: onNumber(Math.sign),
  Not: onNumber((x) => (x ? 0 : 1)),
};

const mapValue = (cx: Ctx, v: Val | undefined, f: Unary, float: boolean): Val | undefined => {
  if (!v) return undefined;
  const data: Dim[] = [];
  for (const x of v.data) {
    const y = f(cx.alg, x);
    if (y === undefined) return undefined;
    data.push(y);
  }
  return { data, float };
};

/** Output(s) shaped like input 0: activations, Softmax, Dropout (and its mask), quantize ops... */
const sameShape: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const f = UNARY_VALUES[n.opType];
  const x = f ? cx.value(input(n, 0)) : undefined;
  // Identity passes its input's value on as it is (values are never mutated): exporters put
  // Identity on weights, and mapping would copy each one element by element, at every inference.
  const v = x && f ? (n.opType === "Identity" ? x : mapValue(cx, x, f, x.float)) : undefined;
  return n.output.map(() => (v ? { shape: s, value: v } : { shape: s }));
};

const cast: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const v = cx.value(input(n, 0));
  const to = n.opType === "CastLike" ? undefined : intAttr(n, "to", 1);
  const toFloat = to === undefined ? cx.value(input(n, 1))?.float : isFloatType(to);
  if (!v || toFloat === undefined || to === 8 /* string */) return [{ shape: s }];
  const conv: Unary = toFloat
    ? (_, x) => x
    : to === 9 /* bool */
      ? (alg, x) => (typeof x === "number" ? (x !== 0 ? 1 : 0) : alg.compare(x, 0) === 1 ? 1 : undefined)
      : (_, x) => (typeof x === "number" ? Math.trunc(x) : x); // symbolic values are integral already
  const value = mapValue(cx, v, conv, toFloat);
  return [value ? { shape: s, value } : { shape: s }];
};

type Binary = (alg: DimAlgebra, a: Dim, b: Dim, float: boolean) => Dim | undefined;
const bool = (b: boolean | undefined): Dim | undefined => (b === undefined ? undefined : b ? 1 : 0);
const sign = (alg: DimAlgebra, a: Dim, b: Dim): number | undefined => alg.compare(a, b);

/** Integer Div truncates; float Div is exact when it can be, a plain quotient for numbers. */
const divide: Binary = (alg, a, b, float) => {
  if (typeof a === "number" && typeof b === "number") return b === 0 ? undefined : float ? a / b : Math.trunc(a / b);
  return float ? alg.exactDiv(a, b) : alg.floorDiv(a, b);
};

const BINARY_VALUES: Record<string, Binary> = {
  Add: (alg, a, b) => alg.add(a, b),
  Sub: (alg, a, b) => alg.sub(a, b),
  Mul: (alg, a, b) => alg.mul(a, b),
  Div: divide,
  Mod: (alg, a, b) => alg.mod(a, b),
  Max: (alg, a, b) => alg.max(a, b),
  Min: (alg, a, b) => alg.min(a, b),
  Pow: (_, a, b) => (typeof a === "number" && typeof b === "number" ? a ** b : undefined),
  Equal: (alg, a, b) => {
    const c = sign(alg, a, b);
    return c === undefined ? undefined : bool(c === 0);
  },
  Less: (alg, a, b) => {
    const c = sign(alg, a, b);
    return c === undefined ? undefined : bool(c < 0);
  },
  Greater: (alg, a, b) => {
    const c = sign(alg, a, b);
    return c === undefined ? undefined : bool(c > 0);
  },
  LessOrEqual: (alg, a, b) => (alg.geq(b, a) ? 1 : bool(sign(alg, a, b) === 1 ? false : undefined)),
  GreaterOrEqual: (alg, a, b) => (alg.geq(a, b) ? 1 : bool(sign(alg, a, b) === -1 ? false : undefined)),
  And: (_, a, b) => (typeof a === "number" && typeof b === "number" ? bool(!!a && !!b) : undefined),
  Or: (_, a, b) => (typeof a === "number" && typeof b === "number" ? bool(!!a || !!b) : undefined),
};
const COMPARISONS = new Set(["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or"]);

/** Broadcasting ops with any number of inputs (binary arithmetic, Sum/Max/Min/Mean, BiasAdd...). */
const broadcasting: Rule = (n, cx) => {
  const names = n.input.filter((x) => x !== "");
  const shapes = names.map((x) => cx.shape(x));
  if (shapes.some((s) => !s)) return [];
  const shape = broadcast(cx.alg, shapes as Shape[]);
  const f = BINARY_VALUES[n.opType];
  if (!f || names.length < 1) return [{ shape }];
  // Activations have no value: the common case returns before any value or numeric shape is built.
  const vals = names.map((x) => cx.value(x));
  if (vals.some((v) => !v)) return [{ shape }];
  const numShapes = shapes.map(numericShape);
  if (numShapes.some((s) => !s)) return [{ shape }];
  const float = !COMPARISONS.has(n.opType) && vals.some((v) => v!.float);
  const r = mapBroadcast(
    numShapes as number[][],
    vals.map((v) => v!.data),
    (xs) =>
      xs
        .slice(1)
        .reduce<Dim | undefined>((acc, x) => (acc === undefined ? undefined : f(cx.alg, acc, x, float)), xs[0]),
  );
  return [r ? { shape, value: { data: r.data, float } } : { shape }];
};

const where: Rule = (n, cx) => {
  const shapes = [0, 1, 2].map((i) => cx.shape(input(n, i)));
  if (shapes.some((s) => !s)) return [];
  const shape = broadcast(cx.alg, shapes as Shape[]);
  const vals = [0, 1, 2].map((i) => cx.value(input(n, i)));
  const numShapes = shapes.map(numericShape);
  if (vals.some((v) => !v) || numShapes.some((s) => !s)) return [{ shape }];
  const r = mapBroadcast(
    numShapes as number[][],
    vals.map((v) => v!.data),
    ([c, a, b]) => (typeof c === "number" ? (c ? a : b) : undefined),
  );
  return [r ? { shape, value: { data: r.data, float: vals[1]!.float } } : { shape }];
};

// ---- shape vectors ---------------------------------------------------------------------------

const shapeOf: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const clamp = (x: number): number => Math.min(Math.max(x < 0 ? x + s.length : x, 0), s.length);
  const start = clamp(intAttr(n, "start", 0));
  const end = clamp(intAttr(n, "end", s.length));
  const data = s.slice(start, Math.max(start, end));
  return [{ shape: [data.length], value: { data, float: false } }];
};

const size: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  return s ? [{ shape: [], value: { data: [cx.alg.product(s)], float: false } }] : [{ shape: [] }];
};

/** Shape named by a 1-D value, or a fresh one of the right rank when only its length is known. */
function shapeFromValue(cx: Ctx, name: string | undefined): Shape | undefined {
  const v = cx.value(name);
  if (v) return v.data.slice();
  const len = cx.shape(name)?.[0];
  return typeof len === "number" ? freshShape(cx.alg, len) : undefined;
}

const constantOfShape: Rule = (n, cx) => {
  const shape = shapeFromValue(cx, input(n, 0));
  if (!shape) return [];
  const t = attr(n, "value")?.t;
  const fill = t ? readNumbers(t)?.[0] : 0;
  const dims = numericShape(shape);
  if (fill === undefined || !dims || elementCount(dims) > MAX_VALUE_ELEMENTS) return [{ shape }];
  return [
    {
      shape,
      value: { data: new Array<Dim>(elementCount(dims)).fill(fill), float: t ? isFloatType(t.dataType) : true },
    },
  ];
};

const range: Rule = (n, cx) => {
  const [start, limit, delta] = [0, 1, 2].map((i) => cx.value(input(n, i))?.data[0]);
  if (start === undefined || limit === undefined || delta === undefined) return [{ shape: [cx.alg.fresh()] }];
  const float = cx.value(input(n, 0))!.float;
  let len: Dim | undefined;
  if (typeof start === "number" && typeof limit === "number" && typeof delta === "number") {
    len = Math.max(Math.ceil((limit - start) / delta), 0);
    if (len <= MAX_VALUE_ELEMENTS) {
      const data = Array.from({ length: len }, (_, i) => start + i * delta);
      return [{ shape: [len], value: { data, float } }];
    }
  } else if (typeof delta === "number" && delta > 0) {
    len = cx.alg.ceilDiv(cx.alg.sub(limit, start), delta);
  }
  return [{ shape: [len ?? cx.alg.fresh()] }];
};

// ---- layout ----------------------------------------------------------------------------------

const reshape: Rule = (n, cx) => {
  const data = cx.shape(input(n, 0));
  const allowZero = intAttr(n, "allowzero", 0) === 1;
  const target =
    cx.value(input(n, 1)) ?? (attr(n, "shape") ? { data: intsAttr(n, "shape")!, float: false } : undefined);
  if (!target) {
    const len = cx.shape(input(n, 1))?.[0];
    return typeof len === "number" ? [{ shape: freshShape(cx.alg, len) }] : [];
  }
  const out: (Dim | undefined)[] = target.data.map((d, i) =>
    d === 0 && !allowZero ? data?.[i] : d === -1 ? undefined : d,
  );
  const inferred = target.data.indexOf(-1);
  if (inferred >= 0 && data && out.every((d, i) => i === inferred || d !== undefined)) {
    // The -1 dim is whatever is left of the element count; exporters make it divide exactly.
    const rest = cx.alg.product(out.filter((_d, i) => i !== inferred) as Dim[]);
    out[inferred] = cx.alg.exactDiv(cx.alg.product(data), rest) ?? cx.alg.floorDiv(cx.alg.product(data), rest);
  }
  const shape = out.map((d) => d ?? cx.alg.fresh());
  const v = cx.value(input(n, 0));
  return [v ? { shape, value: v } : { shape }];
};

const flatten: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const axis = intAttr(n, "axis", 1);
  const a = axis < 0 ? axis + s.length : axis;
  const v = cx.value(input(n, 0));
  const shape = [cx.alg.product(s.slice(0, a)), cx.alg.product(s.slice(a))];
  return [v ? { shape, value: v } : { shape }];
};

const transpose: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const perm = intsAttr(n, "perm") ?? s.map((_, i) => s.length - 1 - i);
  if (perm.length !== s.length) return [];
  const shape = perm.map((p) => s[p]!);
  const v = cx.value(input(n, 0));
  const dims = numericShape(s);
  return [v && dims ? { shape, value: { data: transposeData(dims, v.data, perm), float: v.float } } : { shape }];
};

/** Axes of Squeeze/Unsqueeze/Reduce*: the input (opset 13+/18+) or the older attribute. */
function axesOf(n: NodeProto, cx: Ctx, inputIndex: number): number[] | undefined | "unknown" {
  const name = input(n, inputIndex);
  if (name) return numbers(cx.value(name)) ?? "unknown";
  return intsAttr(n, "axes");
}

const squeeze: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  const axes = axesOf(n, cx, 1);
  if (!s || axes === "unknown") return [];
  // Without axes every size-1 dim goes; symbols are taken not to be 1 (as onnxruntime does).
  const drop = new Set(axes ? axes.map((a) => (a < 0 ? a + s.length : a)) : s.flatMap((d, i) => (d === 1 ? [i] : [])));
  const v = cx.value(input(n, 0));
  const shape = s.filter((_, i) => !drop.has(i));
  return [v ? { shape, value: v } : { shape }];
};

const unsqueeze: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  const axes = axesOf(n, cx, 1);
  if (!s || !axes || axes === "unknown") return [];
  const rank = s.length + axes.length;
  const at = new Set(axes.map((a) => (a < 0 ? a + rank : a)));
  const shape: Shape = [];
  let k = 0;
  for (let i = 0; i < rank; i++) shape.push(at.has(i) ? 1 : s[k++]!);
  if (k !== s.length) return [];
  const v = cx.value(input(n, 0));
  return [v ? { shape, value: v } : { shape }];
};

/** Dims that must be equal (Concat's other axes): the most informative spelling. */
const sameDim = (alg: DimAlgebra, ds: Dim[]): Dim =>
  ds.find((d) => typeof d === "number") ?? ds.find((d) => !alg.isFresh(d)) ?? ds[0]!;

const concat: Rule = (n, cx) => {
  const names = n.input.filter((x) => x !== "");
  const shapes = names.map((x) => cx.shape(x));
  const known = shapes.filter((s): s is Shape => s !== undefined);
  if (known.length === 0) return [];
  const rank = known[0]!.length;
  const axis = normAxis(intAttr(n, "axis", 0), rank);
  if (axis === undefined || known.some((s) => s.length !== rank)) return [];
  const shape = known[0]!.map((_, i) =>
    i === axis
      ? known.length === shapes.length
        ? cx.alg.sum(known.map((s) => s[i]!))
        : cx.alg.fresh()
      : sameDim(
          cx.alg,
          known.map((s) => s[i]!),
        ),
  );
  const vals = names.map((x) => cx.value(x));
  const dims = shapes.map(numericShape);
  if (vals.some((v) => !v) || dims.some((d) => !d)) return [{ shape }];
  // Row-major concat: for each index before `axis`, the inputs' blocks one after another.
  const outer = elementCount((dims[0] as number[]).slice(0, axis));
  const data: Dim[] = [];
  for (let o = 0; o < outer; o++) {
    vals.forEach((v, k) => {
      const block = elementCount((dims[k] as number[]).slice(axis));
      data.push(...v!.data.slice(o * block, (o + 1) * block));
    });
  }
  return [{ shape, value: { data, float: vals.some((v) => v!.float) } }];
};

const split: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const axis = normAxis(intAttr(n, "axis", 0), s.length);
  if (axis === undefined) return [];
  const k = n.output.length;
  let sizes: Dim[] | undefined = input(n, 1) ? cx.value(input(n, 1))?.data : intsAttr(n, "split");
  if (!sizes && !input(n, 1)) {
    // Equal parts; with num_outputs (opset 18) the last part may be smaller.
    const part = cx.alg.ceilDiv(s[axis]!, k);
    if (part !== undefined)
      sizes = Array.from({ length: k }, (_, i) => (i < k - 1 ? part : cx.alg.sub(s[axis]!, cx.alg.mul(part, k - 1))));
  }
  const v = cx.value(input(n, 0));
  const dims = numericShape(s);
  let offset = 0;
  return n.output.map((_, i) => {
    const size = sizes?.[i] ?? cx.alg.fresh();
    const shape = s.map((d, j) => (j === axis ? size : d));
    let out: Out = { shape };
    // Sizes come from the model: only parts that fit in the input are read out of its value.
    if (v && dims && typeof size === "number" && Number.isInteger(size) && size >= 0 && offset + size <= dims[axis]!) {
      const idx = Array.from({ length: size }, (_, j) => offset + j);
      out = { shape, value: { data: takeAlong(dims, v.data, axis, idx), float: v.float } };
      offset += size;
    }
    return out;
  });
};

/** Start index and length of one sliced axis; symbolic sizes are assumed to contain the range. */
function sliceAxis(
  alg: DimAlgebra,
  dim: Dim,
  start: Dim,
  end: Dim,
  step: number,
): { start: Dim; len: Dim } | undefined {
  if (typeof dim === "number" && typeof start === "number" && typeof end === "number") {
    let s = start < 0 ? start + dim : start;
    let e = end < 0 ? end + dim : end;
    if (step > 0) {
      s = Math.min(Math.max(s, 0), dim);
      e = Math.min(Math.max(e, 0), dim);
    } else {
      s = Math.min(Math.max(s, 0), dim - 1);
      e = Math.min(Math.max(e, -1), dim - 1);
    }
    return { start: s, len: Math.max(0, Math.ceil((e - s) / step)) };
  }
  if (step < 0) {
    const full =
      typeof start === "number" && (start === -1 || isHuge(start)) && typeof end === "number" && end <= -(2 ** 31) + 1;
    return full ? { start: alg.sub(dim, 1), len: dim } : undefined;
  }
  const resolve = (x: Dim): Dim =>
    typeof x !== "number" ? x : isHuge(x) ? (x > 0 ? dim : 0) : x < 0 ? alg.add(dim, x) : x;
  const s = resolve(start);
  const diff = alg.sub(resolve(end), s);
  const len = step === 1 ? diff : alg.ceilDiv(diff, step);
  if (len === undefined) return undefined;
  return { start: s, len: typeof len === "number" ? Math.max(0, len) : len };
}

const slice: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const fromAttr = !input(n, 1);
  const starts = fromAttr ? intsAttr(n, "starts") : cx.value(input(n, 1))?.data;
  const ends = fromAttr ? intsAttr(n, "ends") : cx.value(input(n, 2))?.data;
  const axes = fromAttr ? intsAttr(n, "axes") : input(n, 3) ? numbers(cx.value(input(n, 3))) : undefined;
  const steps = fromAttr ? undefined : input(n, 4) ? numbers(cx.value(input(n, 4))) : undefined;
  const axesKnown = fromAttr || !input(n, 3) || axes !== undefined;
  const stepsKnown = fromAttr || !input(n, 4) || steps !== undefined;
  if (!starts || !ends || !axesKnown || !stepsKnown) {
    // Which axes shrink is unknown (or by how much): keep the rank, fresh sizes where it may change.
    const touched = axes && axesKnown ? new Set(axes.map((a) => (a < 0 ? a + s.length : a))) : undefined;
    return [{ shape: s.map((d, i) => (touched && !touched.has(i) ? d : cx.alg.fresh())) }];
  }
  const shape = s.slice();
  const v = cx.value(input(n, 0));
  let dims = numericShape(s);
  let data = v?.data;
  for (let k = 0; k < starts.length; k++) {
    const axis = normAxis(axes?.[k] ?? k, s.length);
    const step = steps?.[k] ?? 1;
    if (axis === undefined || step === 0) return [];
    const r = sliceAxis(cx.alg, s[axis]!, starts[k]!, ends[k]!, step);
    shape[axis] = r ? r.len : cx.alg.fresh();
    if (
      data &&
      dims &&
      r &&
      typeof r.start === "number" &&
      typeof r.len === "number" &&
      Number.isInteger(r.len) &&
      r.len <= dims[axis]!
    ) {
      const idx = Array.from({ length: r.len }, (_, j) => (r.start as number) + j * step);
      data = takeAlong(dims, data, axis, idx);
      dims = dims.map((d, i) => (i === axis ? (r.len as number) : d));
    } else data = undefined;
  }
  return [data && v ? { shape, value: { data, float: v.float } } : { shape }];
};

const gather: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  const ix = cx.shape(input(n, 1));
  if (!s || !ix) return [];
  const axis = normAxis(intAttr(n, "axis", 0), s.length);
  if (axis === undefined) return [];
  const shape = [...s.slice(0, axis), ...ix, ...s.slice(axis + 1)];
  const v = cx.value(input(n, 0));
  const indices = numbers(cx.value(input(n, 1)));
  const dims = numericShape(s);
  if (!v || !indices || !dims) return [{ shape }];
  const dim = dims[axis]!;
  const norm = indices.map((i) => (i < 0 ? i + dim : i));
  if (norm.some((i) => i < 0 || i >= dim)) return [{ shape }];
  return [{ shape, value: { data: takeAlong(dims, v.data, axis, norm), float: v.float } }];
};

const gatherElements: Rule = (n, cx) => {
  const ix = cx.shape(input(n, 1));
  return ix ? [{ shape: ix }] : [];
};

const gatherND: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  const ix = cx.shape(input(n, 1));
  const last = ix?.[ix.length - 1];
  if (!s || !ix || typeof last !== "number") return [];
  const b = intAttr(n, "batch_dims", 0);
  return [{ shape: [...ix.slice(0, -1), ...s.slice(b + last)] }];
};

const expand: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  const target = shapeFromValue(cx, input(n, 1));
  if (!s || !target) return [];
  // A fresh target dim (value unknown) keeps the input's dim unless that is 1.
  const t = target.map((d, i) => {
    const x = s[s.length - target.length + i];
    return cx.alg.isFresh(d) && x !== undefined && x !== 1 ? x : d;
  });
  const shape = broadcast(cx.alg, [s, t]);
  const v = cx.value(input(n, 0));
  const dims = numericShape(s);
  const outDims = numericShape(shape);
  if (!v || !dims || !outDims || elementCount(outDims) > MAX_VALUE_ELEMENTS) return [{ shape }];
  const r = mapBroadcast([dims, outDims], [v.data, new Array<Dim>(elementCount(outDims)).fill(0)], ([x]) => x);
  return [r ? { shape, value: { data: r.data, float: v.float } } : { shape }];
};

const tile: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const reps = cx.value(input(n, 1))?.data;
  return [
    {
      shape: reps && reps.length === s.length ? s.map((d, i) => cx.alg.mul(d, reps[i]!)) : freshShape(cx.alg, s.length),
    },
  ];
};

const pad: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const pads = input(n, 1) ? cx.value(input(n, 1))?.data : intsAttr(n, "pads");
  const axes = input(n, 3) ? numbers(cx.value(input(n, 3))) : s.map((_, i) => i);
  if (!pads || !axes || pads.length !== 2 * axes.length) return [{ shape: freshShape(cx.alg, s.length) }];
  const shape = s.slice();
  axes.forEach((a, k) => {
    const i = a < 0 ? a + s.length : a;
    shape[i] = cx.alg.add(cx.alg.add(shape[i]!, pads[k]!), pads[k + axes.length]!);
  });
  return [{ shape }];
};

const REDUCE_VALUES: Record<string, (alg: DimAlgebra, xs: Dim[]) => Dim | undefined> = {
  ReduceSum: (alg, xs) => alg.sum(xs),
  ReduceProd: (alg, xs) => alg.product(xs),
  ReduceMax: (alg, xs) => xs.reduce<Dim | undefined>((a, x) => (a === undefined ? undefined : alg.max(a, x)), xs[0]),
  ReduceMin: (alg, xs) => xs.reduce<Dim | undefined>((a, x) => (a === undefined ? undefined : alg.min(a, x)), xs[0]),
};

const reduce: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const keep = intAttr(n, "keepdims", 1) === 1;
  // ArgMax/ArgMin reduce one `axis`; Reduce* take `axes` (attribute, or input 1 from opset 13/18).
  const axes = n.opType.startsWith("Arg") ? [intAttr(n, "axis", 0)] : axesOf(n, cx, 1);
  if (axes === "unknown") return keep ? [{ shape: freshShape(cx.alg, s.length) }] : [];
  if (axes && axes.length === 0 && intAttr(n, "noop_with_empty_axes", 0) === 1) return [{ shape: s }];
  const all = !axes || axes.length === 0;
  const set = new Set((axes ?? []).map((a) => (a < 0 ? a + s.length : a)));
  const shape = s.flatMap((d, i) => (all || set.has(i) ? (keep ? [1] : []) : [d]));
  const v = cx.value(input(n, 0));
  const f = REDUCE_VALUES[n.opType];
  if (v && f && s.length === 1 && (all || set.has(0))) {
    const r = f(cx.alg, v.data);
    if (r !== undefined) return [{ shape, value: { data: [r], float: v.float } }];
  }
  return [{ shape }];
};

const topK: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const axis = normAxis(intAttr(n, "axis", -1), s.length);
  if (axis === undefined) return [];
  const k = input(n, 1) ? cx.value(input(n, 1))?.data[0] : intAttr(n, "k", -1);
  const shape = s.map((d, i) => (i === axis ? (k === undefined || k === -1 ? cx.alg.fresh() : k) : d));
  return [{ shape }, { shape }];
};

const oneHot: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  if (!s) return [];
  const depth = cx.value(input(n, 1))?.data[0] ?? cx.alg.fresh();
  const axis = intAttr(n, "axis", -1);
  const at = axis < 0 ? axis + s.length + 1 : axis;
  return [{ shape: [...s.slice(0, at), depth, ...s.slice(at)] }];
};

const nonZero: Rule = (n, cx) => {
  const s = cx.shape(input(n, 0));
  return s ? [{ shape: [s.length, cx.alg.fresh()] }] : [];
};

/** If: both branches are inferred; a dim they agree on is kept, others become fresh symbols. */
const ifRule: Rule = (n, cx) => {
  const then = attr(n, "then_branch")?.g;
  const other = attr(n, "else_branch")?.g;
  if (!then || !other) return [];
  const a = cx.subgraph(then);
  const b = cx.subgraph(other);
  return n.output.map((_, i) => {
    const x = a[i],
      y = b[i];
    if (!x || !y || x.length !== y.length) return undefined;
    return { shape: x.map((d, j) => (cx.alg.equal(d, y[j]!) ? d : cx.alg.fresh())) };
  });
};

export const TENSOR_RULES: Record<string, Rule> = {
  Constant: constant,
  If: ifRule,
  Cast: cast,
  CastLike: cast,
  Where: where,
  Shape: shapeOf,
  Size: size,
  ConstantOfShape: constantOfShape,
  Range: range,
  Reshape: reshape,
  Flatten: flatten,
  Transpose: transpose,
  Squeeze: squeeze,
  Unsqueeze: unsqueeze,
  Concat: concat,
  Split: split,
  Slice: slice,
  Gather: gather,
  GatherElements: gatherElements,
  GatherND: gatherND,
  Expand: expand,
  Tile: tile,
  Pad: pad,
  TopK: topK,
  OneHot: oneHot,
  NonZero: nonZero,
  ArgMax: reduce,
  ArgMin: reduce,
  ...Object.fromEntries(
    [
      "ReduceMean",
      "ReduceSum",
      "ReduceMax",
      "ReduceMin",
      "ReduceProd",
      "ReduceL1",
      "ReduceL2",
      "ReduceLogSum",
      "ReduceLogSumExp",
      "ReduceSumSquare",
    ].map((op) => [op, reduce]),
  ),
  ...Object.fromEntries(
    [
      "Add",
      "Sub",
      "Mul",
      "Div",
      "Pow",
      "Mod",
      "Max",
      "Min",
      "Sum",
      "Mean",
      "Equal",
      "Less",
      "Greater",
      "LessOrEqual",
      "GreaterOrEqual",
      "And",
      "Or",
      "Xor",
      "BitShift",
      "BitwiseAnd",
      "BitwiseOr",
      "BitwiseXor",
      "PRelu",
      "BiasAdd",
    ].map((op) => [op, broadcasting]),
  ),
  ...Object.fromEntries(
    [
      "Identity",
      "Neg",
      "Abs",
      "Relu",
      "Floor",
      "Ceil",
      "Round",
      "Sqrt",
      "Reciprocal",
      "Exp",
      "Log",
      "Sign",
      "Not",
      "Gelu",
      "FastGelu",
      "QuickGelu",
      "BiasGelu",
      "Erf",
      "Sigmoid",
      "HardSigmoid",
      "HardSwish",
      "Tanh",
      "Sin",
      "Cos",
      "Tan",
      "Asin",
      "Acos",
      "Atan",
      "Sinh",
      "Cosh",
      "Softplus",
      "Softsign",
      "Elu",
      "Selu",
      "Celu",
      "LeakyRelu",
      "ThresholdedRelu",
      "Mish",
      "IsNaN",
      "IsInf",
      "Clip",
      "Softmax",
      "LogSoftmax",
      "Hardmax",
      "Dropout",
      "CumSum",
      "Trilu",
      "EyeLike",
      "BitwiseNot",
      "QuantizeLinear",
      "DequantizeLinear",
      "ScatterND",
      "ScatterElements",
      "Scatter",
      "RotaryEmbedding",
      "Shrink",
    ].map((op) => [op, sameShape]),
  ),
};
