/**
 * Model mutations: truncation, byte flips, and protobuf-aware edits (decode with src/onnx/io.ts,
 * edit the ModelProto, re-encode). Each returns the mutant's bytes and a description that, with
 * the seed and case index, reproduces it.
 */
import { create } from "@bufbuild/protobuf";
import {
  AttributeProto_AttributeType as AT,
  AttributeProtoSchema,
  FunctionProtoSchema,
  GraphProtoSchema,
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  SparseTensorProtoSchema,
  StringStringEntryProtoSchema,
  TensorProto_DataLocation,
  TensorProtoSchema,
  TensorShapeProto_DimensionSchema,
  TensorShapeProtoSchema,
  TrainingInfoProtoSchema,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
  type AttributeProto,
  type GraphProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from "../../src/onnx/gen/onnx_pb.js";
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import type { Rng } from "./rng.js";

export interface Mutant {
  bytes: Uint8Array;
  description: string;
}

const INT64_MAX = 9223372036854775807n;
const INT64_MIN = -9223372036854775808n;

/** Byte ranges of the initializers' raw data (weights) in `bytes`: flips there rarely matter. */
export function weightRanges(bytes: Uint8Array): [number, number][] {
  const ranges: [number, number][] = [];
  try {
    const m = decodeModel(bytes);
    for (const t of m.graph?.initializer ?? []) {
      if (t.rawData.length > 0 && t.rawData.buffer === bytes.buffer) {
        const at = t.rawData.byteOffset - bytes.byteOffset;
        ranges.push([at, at + t.rawData.length]);
      }
    }
  } catch {
    /* not decodable: no weight ranges */
  }
  return ranges.sort((a, b) => a[0] - b[0]);
}

/** A position outside the weight ranges (the protobuf structure), uniformly. */
function structuralOffset(r: Rng, size: number, weights: readonly [number, number][]): number {
  const structural = size - weights.reduce((s, [a, b]) => s + (b - a), 0);
  if (structural <= 0) return r.int(0, size - 1);
  let k = r.int(0, structural - 1);
  let at = 0;
  for (const [a, b] of weights) {
    if (k < a - at) return at + k;
    k -= a - at;
    at = b;
  }
  return at + k;
}

export function truncateModel(r: Rng, bytes: Uint8Array, weights: readonly [number, number][]): Mutant {
  const where = r.weighted<"anywhere" | "structure" | "tail" | "head">([
    [3, "anywhere"],
    [4, "structure"],
    [2, "tail"],
    [1, "head"],
  ]);
  let at: number;
  if (where === "anywhere") at = r.int(0, bytes.length - 1);
  else if (where === "structure") at = structuralOffset(r, bytes.length, weights);
  else if (where === "tail") at = bytes.length - r.int(1, Math.min(64, bytes.length));
  else at = r.int(0, Math.min(64, bytes.length - 1));
  return { bytes: bytes.slice(0, at), description: `truncate to ${at} of ${bytes.length} bytes (${where})` };
}

export function flipModel(r: Rng, bytes: Uint8Array, weights: readonly [number, number][]): Mutant {
  const out = bytes.slice();
  const count = r.int(1, 20);
  const flips: string[] = [];
  for (let i = 0; i < count; i++) {
    const at = r.chance(0.8) ? structuralOffset(r, out.length, weights) : r.int(0, out.length - 1);
    const mask = r.chance(0.5) ? 1 << r.int(0, 7) : r.int(1, 255);
    out[at]! ^= mask;
    flips.push(`${at}^0x${mask.toString(16)}`);
  }
  return { bytes: out, description: `flip ${count} byte${count === 1 ? "" : "s"}: ${flips.join(" ")}` };
}

// ---------- protobuf-aware edits ----------

type Edit = (r: Rng, m: ModelProto, g: GraphProto) => string;

const producedTensors = (g: GraphProto): string[] => g.node.flatMap((n) => n.output.filter((o) => o !== ""));
const allTensors = (g: GraphProto): string[] => [
  ...g.input.map((i) => i.name),
  ...g.initializer.map((t) => t.name),
  ...producedTensors(g),
];
const nodeIndex = (r: Rng, g: GraphProto): number => r.int(0, g.node.length - 1);
const someNode = (r: Rng, g: GraphProto, filter: (n: NodeProto) => boolean = () => true): NodeProto | undefined => {
  const ns = g.node.filter(filter);
  return ns.length ? r.pick(ns) : undefined;
};
const describeNode = (n: NodeProto): string => `${n.opType} '${n.name}'`;

/** A weird int64 for dims, attributes and shape values. */
function weirdInt(r: Rng): bigint {
  return r.pick([
    0n,
    -1n,
    -2n,
    -7n,
    1n,
    2n,
    3n,
    65n,
    1000003n,
    2n ** 31n,
    2n ** 31n - 1n,
    2n ** 32n,
    2n ** 40n,
    2n ** 53n,
    2n ** 53n + 1n,
    2n ** 62n,
    INT64_MAX,
    INT64_MIN,
    -(2n ** 40n),
  ]);
}

/** A weird dtype: unknown, undefined, string, bfloat16, complex, float8, int4, ... */
function weirdDtype(r: Rng): number {
  return r.pick([0, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 21, 22, 23, 24, 25, 99, 255, 1 << 20, -1, 2147483647]);
}

function weirdName(r: Rng): string {
  return r.pick([
    "",
    " ",
    "x".repeat(r.int(1000, 100000)),
    "\u0000",
    "naïve/∆/🙂",
    "..",
    "/",
    "a\nb",
    "\ud800",
    "prunec.stage0.indices",
    "__proto__",
    "constructor",
    "pixel_values",
    "logits",
    "image_mask",
  ]);
}

function tensorWithNewData(t: TensorProto, data: Uint8Array): void {
  t.rawData = data;
}

const edits: Record<string, Edit> = {
  "drop-nodes": (r, _m, g) => {
    const k = r.weighted([
      [5, 1],
      [3, r.int(2, 10)],
      [1, Math.max(1, Math.floor(g.node.length * r.next()))],
    ]);
    const dropped: string[] = [];
    for (let i = 0; i < k && g.node.length > 0; i++) dropped.push(describeNode(g.node.splice(nodeIndex(r, g), 1)[0]!));
    return `drop ${dropped.length} node(s): ${dropped.slice(0, 5).join(", ")}${dropped.length > 5 ? ", ..." : ""}`;
  },
  "rename-tensor": (r, _m, g) => {
    const names = producedTensors(g);
    if (!names.length) return "rename: no tensors";
    const old = r.pick(names);
    const fresh = r.chance(0.3) ? weirdName(r) : `${old}_renamed`;
    const consistent = r.chance(0.4);
    for (const n of g.node) {
      n.output = n.output.map((o) => (o === old ? fresh : o));
      if (consistent) n.input = n.input.map((i) => (i === old ? fresh : i));
    }
    if (consistent) for (const o of g.output) if (o.name === old) o.name = fresh;
    return `rename tensor '${old}' → '${fresh.slice(0, 40)}'${fresh.length > 40 ? "…" : ""} (${consistent ? "every use" : "producer only: consumers dangle"})`;
  },
  cycle: (r, _m, g) => {
    if (g.node.length < 2) return "cycle: too few nodes";
    if (r.chance(0.2)) {
      const n = someNode(r, g, (n) => n.input.length > 0 && n.output.length > 0)!;
      const slot = r.int(0, n.input.length - 1);
      n.input[slot] = n.output[0]!;
      return `self loop: ${describeNode(n)} input ${slot} reads its own output '${n.output[0]}'`;
    }
    for (let tries = 0; tries < 20; tries++) {
      const i = r.int(0, g.node.length - 2);
      const j = r.int(i + 1, g.node.length - 1);
      const a = g.node[i]!;
      const b = g.node[j]!;
      if (!a.input.length || !b.output.length) continue;
      const slot = r.int(0, a.input.length - 1);
      a.input[slot] = b.output[0]!;
      return `cycle: node ${i} ${describeNode(a)} input ${slot} reads later node ${j} ${describeNode(b)}'s output '${b.output[0]}'`;
    }
    return "cycle: no candidate";
  },
  "duplicate-node-name": (r, _m, g) => {
    const a = g.node[nodeIndex(r, g)]!;
    const b = g.node[nodeIndex(r, g)]!;
    b.name = a.name;
    return `node ${describeNode(b)} renamed to '${a.name}' (duplicate)`;
  },
  "duplicate-tensor-name": (r, _m, g) => {
    const kind = r.pick([
      "two producers",
      "initializer = node output",
      "graph input = node output",
      "initializer = graph input",
      "duplicate initializer",
      "duplicate graph input",
      "duplicate graph output",
    ] as const);
    const produced = producedTensors(g);
    if (kind === "two producers") {
      const a = someNode(r, g, (n) => n.output.length > 0)!;
      const b = someNode(r, g, (n) => n.output.length > 0)!;
      b.output[0] = a.output[0]!;
      return `two producers of '${a.output[0]}': ${describeNode(a)} and ${describeNode(b)}`;
    }
    if (kind === "initializer = node output" && g.initializer.length) {
      const t = r.pick(g.initializer);
      const out = r.pick(produced);
      t.name = out;
      return `initializer renamed to node output '${out}'`;
    }
    if (kind === "graph input = node output" && g.input.length) {
      const out = r.pick(produced);
      g.input[0]!.name = out;
      return `graph input 0 renamed to node output '${out}'`;
    }
    if (kind === "initializer = graph input" && g.initializer.length && g.input.length) {
      const t = r.pick(g.initializer);
      t.name = g.input[0]!.name;
      return `initializer renamed to graph input '${t.name}'`;
    }
    if (kind === "duplicate initializer" && g.initializer.length) {
      const t = r.pick(g.initializer);
      const copy = create(TensorProtoSchema, { name: t.name, dims: [1n], dataType: 1, rawData: new Uint8Array(4) });
      g.initializer.push(copy);
      return `second initializer named '${t.name}' (float [1])`;
    }
    if (kind === "duplicate graph input" && g.input.length) {
      g.input.push(create(ValueInfoProtoSchema, { ...g.input[0]!, name: g.input[0]!.name }));
      return `graph input '${g.input[0]!.name}' listed twice`;
    }
    if (kind === "duplicate graph output" && g.output.length) {
      g.output.push(create(ValueInfoProtoSchema, { ...g.output[0]!, name: g.output[0]!.name }));
      return `graph output '${g.output[0]!.name}' listed twice`;
    }
    return `duplicate-tensor-name (${kind}): no candidate`;
  },
  "bad-dtype": (r, _m, g) => {
    const d = weirdDtype(r);
    const what = r.pick([
      "initializer",
      "graph input",
      "graph output",
      "Cast to",
      "value_info",
      "Constant value",
    ] as const);
    if (what === "initializer" && g.initializer.length) {
      const t = r.pick(g.initializer);
      const before = t.dataType;
      t.dataType = d;
      return `initializer '${t.name}' dtype ${before} → ${d}`;
    }
    if ((what === "graph input" || what === "graph output") && (what === "graph input" ? g.input : g.output).length) {
      const v = r.pick(what === "graph input" ? g.input : g.output);
      if (v.type?.value.case === "tensorType") v.type.value.value.elemType = d;
      else
        v.type = create(TypeProtoSchema, {
          value: { case: "tensorType", value: create(TypeProto_TensorSchema, { elemType: d }) },
        });
      return `${what} '${v.name}' elem type → ${d}`;
    }
    if (what === "Cast to") {
      const n = someNode(r, g, (n) => n.opType === "Cast");
      const a = n?.attribute.find((a) => a.name === "to");
      if (a) {
        a.i = BigInt(d);
        return `${describeNode(n!)} to=${d}`;
      }
    }
    if (what === "Constant value") {
      const n = someNode(r, g, (n) => n.opType === "Constant");
      const t = n?.attribute.find((a) => a.t)?.t;
      if (t) {
        t.dataType = d;
        return `${describeNode(n!)} value dtype → ${d}`;
      }
    }
    const name = r.pick(producedTensors(g));
    g.valueInfo.push(valueInfoOf(name, d, [r.chance(0.5) ? 1n : weirdInt(r)]));
    return `value_info '${name}' elem type ${d}`;
  },
  "bad-dims": (r, _m, g) => {
    const what = r.pick([
      "initializer dims",
      "graph input shape",
      "graph output shape",
      "value_info shape",
      "Constant dims",
    ] as const);
    const dims = (n: number): bigint[] =>
      Array.from({ length: n }, () => (r.chance(0.6) ? weirdInt(r) : BigInt(r.int(1, 8))));
    if (what === "initializer dims" && g.initializer.length) {
      const t = r.pick(g.initializer);
      const before = t.dims.join(",");
      if (r.chance(0.5) && t.dims.length) t.dims[r.int(0, t.dims.length - 1)] = weirdInt(r);
      else t.dims = dims(r.int(0, 6));
      return `initializer '${t.name}' dims [${before}] → [${t.dims.join(",")}]`;
    }
    if (what === "Constant dims") {
      const n = someNode(r, g, (n) => n.opType === "Constant");
      const t = n?.attribute.find((a) => a.t)?.t;
      if (t) {
        t.dims = dims(r.int(0, 4));
        return `${describeNode(n!)} value dims → [${t.dims.join(",")}]`;
      }
    }
    if (
      (what === "graph input shape" || what === "graph output shape") &&
      (what === "graph input shape" ? g.input : g.output).length
    ) {
      const v = r.pick(what === "graph input shape" ? g.input : g.output);
      const shape = v.type?.value.case === "tensorType" ? v.type.value.value.shape : undefined;
      if (shape?.dim.length && r.chance(0.7)) {
        const k = r.int(0, shape.dim.length - 1);
        const val = r.chance(0.8) ? weirdInt(r) : undefined;
        shape.dim[k] = create(
          TensorShapeProto_DimensionSchema,
          val === undefined
            ? { value: { case: "dimParam", value: weirdName(r).slice(0, 20) } }
            : { value: { case: "dimValue", value: val } },
        );
        return `${what} '${v.name}' dim ${k} → ${val ?? "weird symbol"}`;
      }
      const rank = r.int(0, 7);
      v.type = create(TypeProtoSchema, {
        value: {
          case: "tensorType",
          value: create(TypeProto_TensorSchema, { elemType: 1, shape: shapeOf(dims(rank)) }),
        },
      });
      return `${what} '${v.name}' → float rank ${rank}`;
    }
    const name = r.pick(producedTensors(g));
    const ds = dims(r.int(0, 5));
    g.valueInfo.push(valueInfoOf(name, 1, ds));
    return `value_info '${name}' float [${ds.join(",")}]`;
  },
  "dangling-input": (r, _m, g) => {
    const n = someNode(r, g, (n) => n.input.length > 0);
    if (!n) return "dangling: no node with inputs";
    const slot = r.int(0, n.input.length - 1);
    n.input[slot] = r.chance(0.8) ? "no_such_tensor" : weirdName(r);
    return `${describeNode(n)} input ${slot} → a tensor nothing produces`;
  },
  opset: (r, m) => {
    const kind = r.pick(["version", "none", "domain", "duplicate", "add ms", "negative"] as const);
    if (kind === "none") {
      m.opsetImport = [];
      return "opset_import emptied";
    }
    const o = m.opsetImport[0];
    if (!o) return "opset: none present";
    if (kind === "version") {
      const v = r.pick([0n, 1n, 6n, 7n, 9n, 11n, 12n, 13n, 14n, 16n, 18n, 21n, 23n, 99n, 2n ** 62n, INT64_MAX]);
      o.version = v;
      return `opset '${o.domain}' version → ${v}`;
    }
    if (kind === "negative") {
      o.version = r.pick([-1n, INT64_MIN]);
      return `opset '${o.domain}' version → ${o.version}`;
    }
    if (kind === "domain") {
      o.domain = r.pick(["com.microsoft", "ai.onnx.ml", "bogus", "ai.onnx"]);
      return `opset domain → '${o.domain}'`;
    }
    if (kind === "duplicate") {
      m.opsetImport.push(create(OperatorSetIdProtoSchema, { domain: o.domain, version: o.version + 1n }));
      return `opset '${o.domain}' imported twice (${o.version}, ${o.version + 1n})`;
    }
    m.opsetImport.push(create(OperatorSetIdProtoSchema, { domain: "com.microsoft", version: r.pick([0n, 1n, 99n]) }));
    return "com.microsoft opset added";
  },
  "ir-version": (r, m) => {
    const v = r.pick([1n, 2n, 3n, 4n, 6n, 7n, 9n, 10n, 11n, 12n, 99n, 2n ** 40n, INT64_MAX, -1n, INT64_MIN, 0n]);
    m.irVersion = v;
    return `ir_version → ${v}`;
  },
  "constant-edit": (r, _m, g) => {
    const n = someNode(r, g, (n) => n.opType === "Constant");
    if (!n) return "constant: none";
    const kind = r.pick([
      "extra inputs",
      "no value",
      "two values",
      "value_ints",
      "value_float",
      "sparse value",
      "value_string",
      "empty tensor",
    ] as const);
    if (kind === "extra inputs") {
      const names = allTensors(g);
      n.input = Array.from({ length: r.int(1, 3) }, () => (r.chance(0.7) ? r.pick(names) : "no_such_tensor"));
      return `${describeNode(n)} gets inputs [${n.input.join(", ")}]`;
    }
    if (kind === "no value") n.attribute = [];
    else if (kind === "two values") n.attribute.push(attr("value_int", AT.INT, { i: 3n }));
    else if (kind === "value_ints")
      n.attribute = [attr("value_ints", AT.INTS, { ints: Array.from({ length: r.int(0, 4) }, () => weirdInt(r)) })];
    else if (kind === "value_float")
      n.attribute = [attr("value_float", AT.FLOAT, { f: r.pick([NaN, Infinity, -0, 1e38, 0.5]) })];
    else if (kind === "sparse value")
      n.attribute = [
        attr("sparse_value", AT.SPARSE_TENSOR, {
          sparseTensor: create(SparseTensorProtoSchema, {
            dims: [4n],
            values: create(TensorProtoSchema, { dataType: 1, dims: [1n], floatData: [1] }),
            indices: create(TensorProtoSchema, { dataType: 7, dims: [1n], int64Data: [9n] }),
          }),
        }),
      ];
    else if (kind === "value_string")
      n.attribute = [attr("value_string", AT.STRING, { s: new TextEncoder().encode("hello") })];
    else n.attribute = [attr("value", AT.TENSOR, { t: create(TensorProtoSchema, { dataType: 7, dims: [0n] }) })];
    return `${describeNode(n)}: ${kind}`;
  },
  "remove-graph-io": (r, _m, g) => {
    const kind = r.pick(["first input", "all inputs", "all outputs", "first output", "output renamed"] as const);
    if (kind === "first input") g.input.splice(0, 1);
    else if (kind === "all inputs") g.input = [];
    else if (kind === "all outputs") g.output = [];
    else if (kind === "first output") g.output.splice(0, 1);
    else if (g.output[0]) g.output[0].name = "no_such_output";
    return `graph ${kind} removed`;
  },
  "attribute-edit": (r, _m, g) => {
    const n = someNode(r, g, (n) => n.attribute.length > 0);
    if (!n) return "attribute: none";
    const a = r.pick(n.attribute);
    const kind = r.pick(["int value", "ints value", "type swap", "remove", "duplicate", "float value"] as const);
    if (kind === "int value") {
      a.i = weirdInt(r);
      return `${describeNode(n)} attribute '${a.name}' i=${a.i}`;
    }
    if (kind === "ints value") {
      a.ints = Array.from({ length: r.int(0, 6) }, () => (r.chance(0.5) ? weirdInt(r) : BigInt(r.int(-3, 4))));
      return `${describeNode(n)} attribute '${a.name}' ints=[${a.ints.join(",")}]`;
    }
    if (kind === "type swap") {
      const t = r.pick([
        AT.UNDEFINED,
        AT.FLOAT,
        AT.INT,
        AT.STRING,
        AT.TENSOR,
        AT.GRAPH,
        AT.FLOATS,
        AT.INTS,
        AT.STRINGS,
        99 as AT,
      ]);
      a.type = t;
      return `${describeNode(n)} attribute '${a.name}' type → ${t}`;
    }
    if (kind === "remove") {
      n.attribute = n.attribute.filter((x) => x !== a);
      return `${describeNode(n)} attribute '${a.name}' removed`;
    }
    if (kind === "float value") {
      a.f = r.pick([NaN, Infinity, -Infinity, 0, -1e30, 1e-45]);
      return `${describeNode(n)} attribute '${a.name}' f=${a.f}`;
    }
    n.attribute.push(create(AttributeProtoSchema, { ...a }));
    return `${describeNode(n)} attribute '${a.name}' twice`;
  },
  "axis-edit": (r, _m, g) => {
    const n = someNode(r, g, (n) =>
      [
        "Softmax",
        "Gather",
        "Concat",
        "Transpose",
        "Unsqueeze",
        "Split",
        "LayerNormalization",
        "ReduceMean",
        "Slice",
        "Squeeze",
        "Flatten",
        "Gemm",
      ].includes(n.opType),
    );
    if (!n) return "axis: none";
    const name =
      n.opType === "Transpose"
        ? "perm"
        : n.opType === "Gemm"
          ? r.pick(["transA", "transB"])
          : n.opType === "Unsqueeze" || n.opType === "Squeeze"
            ? "axes"
            : "axis";
    const value = r.chance(0.5) ? weirdInt(r) : BigInt(r.int(-6, 6));
    n.attribute = n.attribute.filter((a) => a.name !== name);
    if (name === "perm" || name === "axes")
      n.attribute.push(
        attr(name, AT.INTS, { ints: r.chance(0.5) ? [value, value] : [value, 0n, 1n].slice(0, r.int(1, 3)) }),
      );
    else n.attribute.push(attr(name, AT.INT, { i: value }));
    return `${describeNode(n)} ${name} → ${value}`;
  },
  "initializer-values": (r, _m, g) => {
    const ints = g.initializer.filter((t) => t.dataType === 7);
    const constants = g.node
      .filter((n) => n.opType === "Constant")
      .map((n) => n.attribute.find((a) => a.t)?.t)
      .filter((t): t is TensorProto => t !== undefined && t.dataType === 7);
    const pool = [...ints, ...constants];
    const kind = r.pick(["int64 values", "raw length", "data fields", "external data"] as const);
    if (kind === "int64 values" && pool.length) {
      const t = r.pick(pool);
      const n = Math.max(1, Number(t.dims.reduce((a, b) => a * b, 1n)) || 1);
      const values = new BigInt64Array(Math.min(n, 64));
      for (let i = 0; i < values.length; i++) values[i] = r.chance(0.5) ? weirdInt(r) : BigInt(r.int(-3, 300));
      tensorWithNewData(t, new Uint8Array(values.buffer));
      t.int64Data = [];
      return `int64 tensor '${t.name}' [${t.dims.join(",")}] values → [${Array.from(values).join(",")}]`;
    }
    const t = r.pick([...g.initializer, ...constants].length ? [...g.initializer, ...constants] : pool);
    if (!t) return "initializer: none";
    if (kind === "raw length") {
      const len = r.pick(
        [0, 1, 3, 7, t.rawData.length - 1, t.rawData.length + 5, Math.floor(t.rawData.length / 2)].filter(
          (x) => x >= 0,
        ),
      );
      const data = new Uint8Array(len);
      data.set(t.rawData.subarray(0, Math.min(len, t.rawData.length)));
      tensorWithNewData(t, data);
      return `tensor '${t.name}' raw_data ${len} bytes (dims [${t.dims.join(",")}], dtype ${t.dataType})`;
    }
    if (kind === "data fields") {
      const which = r.pick([
        "float_data + raw_data",
        "int64_data wrong count",
        "string_data",
        "double_data",
        "no data",
      ] as const);
      if (which === "float_data + raw_data") t.floatData = [1, 2, 3];
      else if (which === "int64_data wrong count") {
        t.rawData = new Uint8Array(0);
        delete (t as Partial<TensorProto>).rawData;
        t.int64Data = [weirdInt(r)];
      } else if (which === "string_data") t.stringData = [new TextEncoder().encode("x")];
      else if (which === "double_data") t.doubleData = [NaN];
      else {
        delete (t as Partial<TensorProto>).rawData;
        t.floatData = [];
        t.int64Data = [];
      }
      return `tensor '${t.name}': ${which}`;
    }
    // External data: compile does not need the files, but checks the locations.
    const location = r.pick([
      "weights.bin",
      "../../etc/passwd",
      "/etc/passwd",
      "a/../../b.bin",
      "",
      "C:\\x.bin",
      "\u0000",
      "sub/dir/w.bin",
      "x".repeat(5000),
    ]);
    const entries = [create(StringStringEntryProtoSchema, { key: "location", value: location })];
    if (r.chance(0.6))
      entries.push(
        create(StringStringEntryProtoSchema, {
          key: "offset",
          value: r.pick(["0", "-1", "abc", "1e30", "9223372036854775807", "4096"]),
        }),
      );
    if (r.chance(0.6))
      entries.push(
        create(StringStringEntryProtoSchema, {
          key: "length",
          value: r.pick(["0", "-5", "xyz", "99999999999999999999", "16"]),
        }),
      );
    if (r.chance(0.2)) entries.push(create(StringStringEntryProtoSchema, { key: "location", value: "other.bin" }));
    t.externalData = entries;
    t.dataLocation = r.chance(0.9) ? TensorProto_DataLocation.EXTERNAL : (7 as TensorProto_DataLocation);
    if (r.chance(0.7)) delete (t as Partial<TensorProto>).rawData;
    return `tensor '${t.name}' external data ${JSON.stringify(entries.map((e) => [e.key, e.value.slice(0, 40)]))}`;
  },
  "input-arity": (r, _m, g) => {
    const n = someNode(r, g, (n) => n.input.length > 0);
    if (!n) return "arity: none";
    const kind = r.pick([
      "drop input",
      "extra inputs",
      "empty name",
      "swap inputs",
      "drop outputs",
      "extra outputs",
      "empty output",
    ] as const);
    if (kind === "drop input") n.input.splice(r.int(0, n.input.length - 1), 1);
    else if (kind === "extra inputs") n.input.push(...Array.from({ length: r.int(1, 4) }, () => r.pick(allTensors(g))));
    else if (kind === "empty name") n.input[r.int(0, n.input.length - 1)] = "";
    else if (kind === "swap inputs") n.input.reverse();
    else if (kind === "drop outputs") n.output = [];
    else if (kind === "extra outputs") n.output.push(`${n.name}_extra_out`, `${n.name}_extra_out2`);
    else if (n.output.length) n.output[0] = "";
    return `${describeNode(n)}: ${kind} → inputs [${n.input.slice(0, 6).join(", ")}] outputs [${n.output.join(", ")}]`;
  },
  "op-type": (r, _m, g) => {
    const n = g.node[nodeIndex(r, g)]!;
    const before = describeNode(n);
    const kind = r.pick(["other op", "unknown op", "domain", "function"] as const);
    if (kind === "other op")
      n.opType = r.pick([
        "Relu",
        "Add",
        "MatMul",
        "Softmax",
        "Reshape",
        "Transpose",
        "Gather",
        "Concat",
        "Identity",
        "LayerNormalization",
        "MultiHeadAttention",
        "GroupQueryAttention",
        "Loop",
        "If",
        "Scan",
        "Einsum",
        "TopK",
        "GatherND",
        "Shape",
        "Constant",
      ]);
    else if (kind === "unknown op") n.opType = r.pick(["", "NoSuchOp", "softmax", "MATMUL", "x".repeat(300)]);
    else if (kind === "domain") n.domain = r.pick(["com.microsoft", "ai.onnx.ml", "bogus.domain", "ai.onnx"]);
    else {
      // A model-local function named like the node's op, in its domain: the op is redefined.
      _m.functions.push(
        create(FunctionProtoSchema, {
          name: n.opType,
          domain: n.domain,
          input: ["x"],
          output: ["y"],
          node: [create(NodeProtoSchema, { opType: "Identity", input: ["x"], output: ["y"] })],
          opsetImport: _m.opsetImport,
        }),
      );
      return `${before}: a model function with its name redefines the op`;
    }
    return `${before} → op '${n.opType.slice(0, 30)}' domain '${n.domain}'`;
  },
  "shuffle-nodes": (r, _m, g) => {
    const kind = r.pick(["reverse", "shuffle", "swap two"] as const);
    if (kind === "reverse") g.node.reverse();
    else if (kind === "shuffle") {
      for (let i = g.node.length - 1; i > 0; i--) {
        const j = r.int(0, i);
        [g.node[i], g.node[j]] = [g.node[j]!, g.node[i]!];
      }
    } else {
      const i = nodeIndex(r, g);
      const j = nodeIndex(r, g);
      [g.node[i], g.node[j]] = [g.node[j]!, g.node[i]!];
    }
    return `nodes out of order (${kind})`;
  },
  subgraph: (r, _m, g) => {
    const n = g.node[nodeIndex(r, g)]!;
    const inner = create(NodeProtoSchema, {
      opType: "Identity",
      input: [r.pick(allTensors(g))],
      output: [r.chance(0.5) ? (n.output[0] ?? "y") : "inner_y"],
      name: r.chance(0.5) ? n.name : "inner",
    });
    const body = create(GraphProtoSchema, {
      node: [inner],
      name: "body",
      output: [create(ValueInfoProtoSchema, { name: inner.output[0]! })],
    });
    const ifNode = create(NodeProtoSchema, {
      opType: "If",
      name: "fuzz_if",
      input: [r.pick(allTensors(g))],
      output: [r.chance(0.5) ? (n.output[0] ?? "z") : "fuzz_if_out"],
      attribute: [attr("then_branch", AT.GRAPH, { g: body }), attr("else_branch", AT.GRAPH, { g: body })],
    });
    g.node.splice(r.int(0, g.node.length), 0, ifNode);
    return `If node with Identity subgraphs inserted (reads '${ifNode.input[0]}', writes '${ifNode.output[0]}', inner writes '${inner.output[0]}')`;
  },
  "names-weird": (r, _m, g) => {
    const kind = r.pick(["node names empty", "graph name", "tensor weird", "all node names same"] as const);
    if (kind === "node names empty") for (const n of g.node) n.name = "";
    else if (kind === "all node names same") for (const n of g.node) n.name = "n";
    else if (kind === "graph name") g.name = weirdName(r);
    else {
      const names = producedTensors(g);
      const old = r.pick(names);
      const fresh = weirdName(r);
      for (const n of g.node) {
        n.output = n.output.map((o) => (o === old ? fresh : o));
        n.input = n.input.map((i) => (i === old ? fresh : i));
      }
      return `tensor '${old}' consistently renamed to a weird name (${fresh.length} chars)`;
    }
    return kind;
  },
  "sparse-and-extras": (r, m, g) => {
    const kind = r.pick(["sparse initializer", "training info", "metadata", "unknown fields"] as const);
    if (kind === "sparse initializer") {
      const name = r.pick([...allTensors(g), "sparse_w"]);
      g.sparseInitializer.push(
        create(SparseTensorProtoSchema, {
          dims: [weirdInt(r)],
          values: create(TensorProtoSchema, { name, dataType: 1, dims: [2n], floatData: [1, 2] }),
          indices: create(TensorProtoSchema, { dataType: 7, dims: [2n], int64Data: [0n, weirdInt(r)] }),
        }),
      );
      return `sparse initializer '${name}'`;
    }
    if (kind === "training info") {
      m.trainingInfo.push(create(TrainingInfoProtoSchema, {}));
      return "empty training_info";
    }
    if (kind === "metadata") {
      m.metadataProps.push(
        create(StringStringEntryProtoSchema, {
          key: r.pick(["prunec", "prunec.version", "prunec.spec", ""]),
          value: weirdName(r),
        }),
      );
      return "metadata_props entry";
    }
    (g as unknown as { $unknown: unknown[] }).$unknown = [
      { no: r.int(30, 200), wireType: 2, data: new Uint8Array([3, 1, 2, 3]) },
    ];
    return "unknown field on the graph";
  },
  "value-info-conflict": (r, _m, g) => {
    const names = producedTensors(g);
    const k = r.int(1, 20);
    for (let i = 0; i < k; i++) {
      const rank = r.int(0, 5);
      g.valueInfo.push(
        valueInfoOf(
          r.pick(names),
          r.pick([1, 7, 9, 10]),
          Array.from({ length: rank }, () => (r.chance(0.3) ? weirdInt(r) : BigInt(r.int(1, 200)))),
        ),
      );
    }
    return `${k} value_info entries with arbitrary types and shapes`;
  },
};

function attr(name: string, type: AT, fields: Partial<Omit<AttributeProto, "$typeName" | "$unknown">>): AttributeProto {
  return Object.assign(create(AttributeProtoSchema, { name, type }), fields);
}

function shapeOf(dims: readonly bigint[]) {
  return create(TensorShapeProtoSchema, {
    dim: dims.map((d) => create(TensorShapeProto_DimensionSchema, { value: { case: "dimValue", value: d } })),
  });
}

function valueInfoOf(name: string, elemType: number, dims: readonly bigint[]): ValueInfoProto {
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, {
      value: { case: "tensorType", value: create(TypeProto_TensorSchema, { elemType, shape: shapeOf(dims) }) },
    }),
  });
}

export const PROTO_EDITS: readonly string[] = Object.keys(edits);

/**
 * `count` protobuf-aware edits of kind `kinds` (one each; a kind is drawn at random when empty).
 * Decodes `bytes` afresh (weights stay views of the seed: edits replace data, never write into it).
 */
export function protoEdit(r: Rng, bytes: Uint8Array, kinds: readonly string[]): Mutant {
  const m = decodeModel(bytes);
  const g = m.graph!;
  const done: string[] = [];
  for (const kind of kinds) {
    const edit = edits[kind];
    if (!edit) throw new Error(`unknown edit ${kind}`);
    if (g.node.length === 0) {
      done.push(`${kind}: no nodes left`);
      continue;
    }
    done.push(`${kind}: ${edit(r, m, g)}`);
  }
  return { bytes: encodeModel(m), description: done.join("; ") };
}
