/**
 * Shape rules for compute ops: matrix products, convolutions and pools, normalizations,
 * attention (com.microsoft contrib ops and ONNX Attention), quantization and resizing.
 */
import type { NodeProto } from "../ir/graph.js";
import type { Dim, Shape } from "./dims.js";
import type { DimAlgebra } from "./shape-expr.js";
import {
  broadcast,
  freshShape,
  input,
  intAttr,
  intsAttr,
  normAxis,
  numbers,
  stringAttr,
  type Ctx,
  type Out,
  type Rule,
} from "./shape-ctx.js";

// ---- matrix products -------------------------------------------------------------------------

/** numpy.matmul: 1-D operands get a dim prepended/appended (and dropped again), batch dims broadcast. */
function matmulShape(alg: DimAlgebra, a: Shape, b: Shape): Shape | undefined {
  if (a.length === 0 || b.length === 0) return undefined;
  const a2 = a.length === 1 ? [1, a[0]!] : a;
  const b2 = b.length === 1 ? [b[0]!, 1] : b;
  const out = broadcast(alg, [a2.slice(0, -2), b2.slice(0, -2)]);
  if (a.length > 1) out.push(a2[a2.length - 2]!);
  if (b.length > 1) out.push(b2[b2.length - 1]!);
  return out;
}

const swapLast = (s: Shape): Shape => (s.length < 2 ? s : [...s.slice(0, -2), s[s.length - 1]!, s[s.length - 2]!]);

/** MatMul-like ops; `a`, `b` are the input positions of the two matrices (QLinearMatMul: 0, 3). */
const matmul =
  (a: number, b: number): Rule =>
  (n, cx) => {
    let sa = cx.shape(input(n, a));
    let sb = cx.shape(input(n, b));
    if (!sa || !sb) return [];
    // com.microsoft FusedMatMul transposes the last two dims first.
    if (intAttr(n, "transA", 0)) sa = swapLast(sa);
    if (intAttr(n, "transB", 0)) sb = swapLast(sb);
    const shape = matmulShape(cx.alg, sa, sb);
    return shape ? [{ shape }] : [];
  };

const gemm: Rule = (n, cx) => {
  const a = cx.shape(input(n, 0));
  const b = cx.shape(input(n, 1));
  if (!a || !b || a.length !== 2 || b.length !== 2) return [];
  const m = intAttr(n, "transA", 0) ? a[1]! : a[0]!;
  const nn = intAttr(n, "transB", 0) ? b[0]! : b[1]!;
  return [{ shape: [m, nn] }];
};

/** com.microsoft MatMulNBits: A [..., K] times a packed K x N weight. */
const matmulNBits: Rule = (n, cx) => {
  const a = cx.shape(input(n, 0));
  const N = intAttr(n, "N", -1);
  return a && N > 0 ? [{ shape: [...a.slice(0, -1), N] }] : [];
};

/**
 * Einsum with an explicit output and one letter per axis (no ellipsis): each output letter takes
 * the dim of the first input axis with that letter.
 */
const einsum: Rule = (n, cx) => {
  const eq = (stringAttr(n, "equation") ?? "").replace(/\s+/g, "");
  const m = /^([a-zA-Z,]+)->([a-zA-Z]*)$/.exec(eq);
  if (!m) return [];
  const terms = m[1]!.split(",");
  if (terms.length !== n.input.length) return [];
  const dims = new Map<string, Dim>();
  for (const [i, term] of terms.entries()) {
    const s = cx.shape(input(n, i));
    if (!s || s.length !== term.length) return [];
    for (const [k, letter] of [...term].entries()) if (!dims.has(letter)) dims.set(letter, s[k]!);
  }
  const out = [...m[2]!].map((l) => dims.get(l));
  return out.every((d): d is Dim => d !== undefined) ? [{ shape: out }] : [];
};

// ---- convolution and pooling -----------------------------------------------------------------

interface Window {
  kernel: number[];
  strides: number[];
  dilations: number[];
  pads: number[];
  autoPad: string;
  ceil: boolean;
}

function windowOf(n: NodeProto, kernel: number[]): Window {
  const r = kernel.length;
  return {
    kernel,
    strides: intsAttr(n, "strides") ?? new Array<number>(r).fill(1),
    dilations: intsAttr(n, "dilations") ?? new Array<number>(r).fill(1),
    pads: intsAttr(n, "pads") ?? new Array<number>(2 * r).fill(0),
    autoPad: stringAttr(n, "auto_pad") ?? "NOTSET",
    ceil: intAttr(n, "ceil_mode", 0) === 1,
  };
}

/** Output size of one spatial axis: floor((x + pads - d*(k-1) - 1) / s) + 1, or ceil(x / s) for SAME. */
function windowDim(alg: DimAlgebra, x: Dim, w: Window, i: number): Dim | undefined {
  const s = w.strides[i] ?? 1;
  if (w.autoPad === "SAME_UPPER" || w.autoPad === "SAME_LOWER") return alg.ceilDiv(x, s);
  const pads = w.autoPad === "VALID" ? 0 : (w.pads[i] ?? 0) + (w.pads[i + w.kernel.length] ?? 0);
  const span = (w.dilations[i] ?? 1) * (w.kernel[i]! - 1) + 1;
  const q = w.ceil ? alg.ceilDiv(alg.add(x, pads - span), s) : alg.floorDiv(alg.add(x, pads - span), s);
  return q === undefined ? undefined : alg.add(q, 1);
}

function spatial(cx: Ctx, x: Shape, w: Window): Shape {
  return x.slice(2).map((d, i) => windowDim(cx.alg, d, w, i) ?? cx.alg.fresh());
}

const conv: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  const wt = cx.shape(input(n, 1));
  if (!x || x.length < 3) return [];
  const kernel = intsAttr(n, "kernel_shape") ?? wt?.slice(2).map((d) => (typeof d === "number" ? d : NaN));
  if (!kernel || kernel.some(Number.isNaN) || kernel.length !== x.length - 2)
    return [{ shape: freshShape(cx.alg, x.length) }];
  return [{ shape: [x[0]!, wt?.[0] ?? cx.alg.fresh(), ...spatial(cx, x, windowOf(n, kernel))] }];
};

const convTranspose: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  const wt = cx.shape(input(n, 1));
  if (!x || !wt || x.length < 3) return [];
  const channels = cx.alg.mul(wt[1]!, intAttr(n, "group", 1));
  const explicit = intsAttr(n, "output_shape");
  if (explicit) return [{ shape: [x[0]!, channels, ...explicit.slice(-(x.length - 2))] }];
  const kernel = intsAttr(n, "kernel_shape") ?? wt.slice(2).map((d) => (typeof d === "number" ? d : NaN));
  const w = windowOf(n, kernel);
  const outPad = intsAttr(n, "output_padding") ?? [];
  const dims = x.slice(2).map((d, i) => {
    const s = w.strides[i] ?? 1;
    if (Number.isNaN(kernel[i])) return cx.alg.fresh();
    if (w.autoPad.startsWith("SAME")) return cx.alg.mul(d, s);
    const pads = (w.pads[i] ?? 0) + (w.pads[i + kernel.length] ?? 0);
    const extra = (outPad[i] ?? 0) + (w.dilations[i] ?? 1) * (kernel[i]! - 1) + 1 - pads;
    return cx.alg.add(cx.alg.mul(cx.alg.sub(d, 1), s), extra);
  });
  return [{ shape: [x[0]!, channels, ...dims] }];
};

const pool: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  const kernel = intsAttr(n, "kernel_shape");
  if (!x || !kernel || kernel.length !== x.length - 2) return [];
  const shape = [x[0]!, x[1]!, ...spatial(cx, x, windowOf(n, kernel))];
  return n.output.map(() => ({ shape })); // MaxPool's Indices output has the same shape
};

const globalPool: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  return x && x.length >= 2 ? [{ shape: [x[0]!, x[1]!, ...x.slice(2).map(() => 1)] }] : [];
};

// ---- normalization ---------------------------------------------------------------------------

/** LayerNormalization & co: Y like X; Mean/InvStdDev keep the dims before `axis`, 1 after. */
const layerNorm: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  if (!x) return [];
  const axis = normAxis(intAttr(n, "axis", -1), x.length) ?? x.length - 1;
  const stats = x.map((d, i) => (i < axis ? d : 1));
  return n.output.map((_, i) => ({ shape: i === 0 ? x : stats }));
};

/** com.microsoft Skip(Simplified)LayerNormalization: output, mean, inv_std_var, input_skip_bias_sum. */
const skipLayerNorm: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  if (!x) return [];
  const stats = [...x.slice(0, -1), 1];
  return n.output.map((_, i) => ({ shape: i === 0 || i === 3 ? x : stats }));
};

/** BatchNormalization (training outputs are per-channel), Instance/GroupNormalization, LRN. */
const channelNorm: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  if (!x) return [];
  return n.output.map((_, i) => ({ shape: i === 0 ? x : [x[1] ?? cx.alg.fresh()] }));
};

// ---- attention -------------------------------------------------------------------------------

/**
 * com.microsoft MultiHeadAttention. query [B,S,D] (or packed QKV [B,S,N,3,H]); key/value
 * [B,L,D] or BNSH [B,N,L,H] (or packed KV [B,L,N,2,H] in key). Output [B,S,Dv]; present_key
 * and present_value are BNSH with past + L positions; output_qk is [B,N,S,total].
 */
const multiHeadAttention: Rule = (n, cx) => {
  const q = cx.shape(input(n, 0));
  if (!q) return [];
  const alg = cx.alg;
  const heads = intAttr(n, "num_heads", 0);
  const k = cx.shape(input(n, 1));
  const v = cx.shape(input(n, 2));
  const [b, s] = [q[0]!, q[1]!];
  let vHidden: Dim | undefined;
  let kvLen: Dim | undefined;
  let headSize: Dim | undefined;
  if (q.length === 5) {
    vHidden = alg.mul(q[2]!, q[4]!);
    kvLen = s;
    headSize = q[4]!;
  } else if (q.length === 3) {
    headSize = heads ? alg.exactDiv(q[2]!, heads) : undefined;
    if (v?.length === 3) [vHidden, kvLen] = [v[2]!, v[1]!];
    else if (v?.length === 4) [vHidden, kvLen] = [alg.mul(v[1]!, v[3]!), v[2]!];
    else if (k?.length === 5) [vHidden, kvLen] = [alg.mul(k[2]!, k[4]!), k[1]!];
    else if (!k) [vHidden, kvLen] = [q[2]!, s];
  }
  const out: (Out | undefined)[] = [{ shape: [b, s, vHidden ?? alg.fresh()] }];
  const pastK = cx.shape(input(n, 6));
  const pastV = cx.shape(input(n, 7));
  // With BNSH key/value, present is key/value itself; otherwise past (if any) plus L new positions.
  const total = k?.length === 4 ? k[2]! : kvLen === undefined ? alg.fresh() : pastK ? alg.add(pastK[2]!, kvLen) : kvLen;
  const vHead = vHidden !== undefined && heads ? alg.exactDiv(vHidden, heads) : undefined;
  out[1] = { shape: [b, heads || alg.fresh(), total, headSize ?? pastK?.[3] ?? alg.fresh()] };
  out[2] = { shape: [b, heads || alg.fresh(), total, vHead ?? pastV?.[3] ?? alg.fresh()] };
  out[3] = { shape: [b, heads || alg.fresh(), s, total] };
  return out.slice(0, n.output.length);
};

/**
 * com.microsoft GroupQueryAttention. query [B,S,D] with separate key/value, or packed
 * [B,S,(N+2*kvN)*H]. Output [B,S,N*H]; present_key/value [B,kvN,T,H] where T is the
 * total_sequence_length input when known, else past + S (no shared KV buffer).
 */
const groupQueryAttention: Rule = (n, cx) => {
  const q = cx.shape(input(n, 0));
  if (q?.length !== 3) return [];
  const alg = cx.alg;
  const heads = intAttr(n, "num_heads", 0);
  const kvHeads = intAttr(n, "kv_num_heads", 0);
  const packed = !input(n, 1);
  const headSize = packed
    ? heads + 2 * kvHeads
      ? alg.exactDiv(q[2]!, heads + 2 * kvHeads)
      : undefined
    : heads
      ? alg.exactDiv(q[2]!, heads)
      : undefined;
  const hidden = packed ? (headSize !== undefined ? alg.mul(headSize, heads) : alg.fresh()) : q[2]!;
  const past = cx.shape(input(n, 3));
  const given = cx.value(input(n, 6))?.data[0];
  const total = given ?? (past ? alg.add(past[2]!, q[1]!) : alg.fresh());
  const present: Shape = [q[0]!, kvHeads || past?.[1] || alg.fresh(), total, headSize ?? past?.[3] ?? alg.fresh()];
  return [{ shape: [q[0]!, q[1]!, hidden] }, { shape: present }, { shape: present }].slice(0, n.output.length);
};

/**
 * Attention: com.microsoft (input [B,S,D], packed QKV weights, present [2,B,N,P+S,H]) and
 * ONNX opset 23 (Q, K, V as [B,S,hidden] or [B,N,S,H]; present_key/value [B,kvN,P+L,H]).
 */
const attention: Rule = (n, cx) => {
  const alg = cx.alg;
  const x = cx.shape(input(n, 0));
  if (!x) return [];
  if (n.domain === "com.microsoft") {
    const w = cx.shape(input(n, 1));
    const sizes = intsAttr(n, "qkv_hidden_sizes");
    const vHidden = sizes?.[2] ?? (w?.[1] !== undefined ? alg.exactDiv(w[1], 3) : undefined) ?? alg.fresh();
    const heads = intAttr(n, "num_heads", 0);
    const past = cx.shape(input(n, 4));
    const head = heads ? alg.exactDiv(vHidden, heads) : undefined;
    const total = past ? alg.add(past[3]!, x[1]!) : x[1]!;
    return [
      { shape: [x[0]!, x[1]!, vHidden] },
      { shape: [2, x[0]!, heads || alg.fresh(), total, head ?? alg.fresh()] },
    ];
  }
  const k = cx.shape(input(n, 1));
  const v = cx.shape(input(n, 2));
  if (!k || !v) return [];
  const qHeads = intAttr(n, "q_num_heads", 0);
  const kvHeads = intAttr(n, "kv_num_heads", 0);
  const pastK = cx.shape(input(n, 4));
  const newLen = k.length === 4 ? k[2]! : k[1]!;
  const total = pastK ? alg.add(pastK[2]!, newLen) : newLen;
  const kHead = k.length === 4 ? k[3]! : kvHeads ? alg.exactDiv(k[2]!, kvHeads) : undefined;
  const vHead = v.length === 4 ? v[3]! : kvHeads ? alg.exactDiv(v[2]!, kvHeads) : undefined;
  const y: Shape =
    x.length === 4
      ? [x[0]!, x[1]!, x[2]!, vHead ?? alg.fresh()]
      : [x[0]!, x[1]!, vHead !== undefined && qHeads ? alg.mul(vHead, qHeads) : alg.fresh()];
  const kvN = k.length === 4 ? k[1]! : kvHeads || alg.fresh();
  return [
    { shape: y },
    { shape: [x[0]!, kvN, total, kHead ?? alg.fresh()] },
    { shape: [x[0]!, kvN, total, vHead ?? alg.fresh()] },
  ].slice(0, n.output.length);
};

// ---- quantization, resizing ------------------------------------------------------------------

/** DynamicQuantizeLinear: y like x, scalar scale and zero point. */
const dynamicQuantize: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  return [x ? { shape: x } : undefined, { shape: [] }, { shape: [] }];
};

const resize: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  if (!x) return [];
  const alg = cx.alg;
  // Resize: X, roi, scales, sizes (opset 11+); Upsample / Resize-10: X, scales.
  const scalesAt = n.opType === "Upsample" || n.input.length === 2 ? 1 : 2;
  const sizes = n.opType === "Resize" ? cx.value(input(n, 3))?.data : undefined;
  const scales =
    numbers(cx.value(input(n, scalesAt))) ??
    (n.attribute.some((a) => a.name === "scales") ? n.attribute.find((a) => a.name === "scales")!.floats : undefined);
  const axes = intsAttr(n, "axes")?.map((a) => (a < 0 ? a + x.length : a)) ?? x.map((_, i) => i);
  const shape = x.slice();
  if (sizes && sizes.length === axes.length) axes.forEach((a, i) => (shape[a] = sizes[i]!));
  else if (scales && scales.length === axes.length) {
    axes.forEach((a, i) => {
      const d = shape[a]!,
        f = scales[i]!;
      shape[a] = typeof d === "number" ? Math.floor(d * f) : Number.isInteger(f) ? alg.mul(d, f) : alg.fresh();
    });
  } else return [{ shape: [x[0]!, ...freshShape(alg, x.length - 1)] }];
  return [{ shape }];
};

const depthToSpace: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  const b = intAttr(n, "blocksize", 0);
  if (x?.length !== 4 || !b) return [];
  const alg = cx.alg;
  const c = alg.exactDiv(x[1]!, b * b) ?? alg.fresh();
  return [{ shape: [x[0]!, c, alg.mul(x[2]!, b), alg.mul(x[3]!, b)] }];
};

const spaceToDepth: Rule = (n, cx) => {
  const x = cx.shape(input(n, 0));
  const b = intAttr(n, "blocksize", 0);
  if (x?.length !== 4 || !b) return [];
  const alg = cx.alg;
  return [
    {
      shape: [
        x[0]!,
        alg.mul(x[1]!, b * b),
        alg.floorDiv(x[2]!, b) ?? alg.fresh(),
        alg.floorDiv(x[3]!, b) ?? alg.fresh(),
      ],
    },
  ];
};

export const NN_RULES: Record<string, Rule> = {
  MatMul: matmul(0, 1),
  MatMulInteger: matmul(0, 1),
  MatMulIntegerToFloat: matmul(0, 1),
  DynamicQuantizeMatMul: matmul(0, 1),
  FusedMatMul: matmul(0, 1),
  QLinearMatMul: matmul(0, 3),
  Gemm: gemm,
  MatMulNBits: matmulNBits,
  Einsum: einsum,
  Conv: conv,
  ConvInteger: conv,
  ConvTranspose: convTranspose,
  AveragePool: pool,
  MaxPool: pool,
  LpPool: pool,
  GlobalAveragePool: globalPool,
  GlobalMaxPool: globalPool,
  GlobalLpPool: globalPool,
  LayerNormalization: layerNorm,
  SimplifiedLayerNormalization: layerNorm,
  RMSNormalization: layerNorm,
  SkipLayerNormalization: skipLayerNorm,
  SkipSimplifiedLayerNormalization: skipLayerNorm,
  BatchNormalization: channelNorm,
  InstanceNormalization: channelNorm,
  GroupNormalization: channelNorm,
  LRN: channelNorm,
  MultiHeadAttention: multiHeadAttention,
  GroupQueryAttention: groupQueryAttention,
  Attention: attention,
  DynamicQuantizeLinear: dynamicQuantize,
  Resize: resize,
  Upsample: resize,
  DepthToSpace: depthToSpace,
  SpaceToDepth: spaceToDepth,
};
