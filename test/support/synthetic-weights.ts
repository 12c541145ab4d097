/**
 * Running the graph-only exports (../shared/models/graph-only: real graphs whose external weight
 * files are absent) in tests: cut a model down to its first layers, then write deterministic
 * synthetic weights where its external_data entries say they live.
 *
 * The values are chosen from how each tensor is used (norm scales near 1, small weights and biases,
 * quantized weights around their zero point with a scale that gives small real values), so
 * activations stay finite and vary from token to token through a few layers. The numbers mean
 * nothing; they only make the graph runnable. Integer tensors that could be shapes or indices are
 * never guessed: they fail with the consumers named.
 */
import { closeSync, constants, mkdirSync, openSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import { create } from "@bufbuild/protobuf";
import {
  TensorProto_DataType as DT,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
  type GraphProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from "../../src/onnx/gen/onnx_pb.js";
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { isExternal, readNumbers, elementCount } from "../../src/onnx/tensor.js";
import { Graph, attrInt } from "../../src/ir/graph.js";
import { shallowCopy } from "../../src/ir/copy.js";
import { analyzeTransformer } from "../../src/analysis/transformer.js";
import { mulberry32 } from "../../src/random.js";

// ───────────────────────────── truncation ─────────────────────────────

/** Name of the residual stream tensor leaving layer `layer` (0-based), from prunec's own analysis. */
export function residualOutput(modelBytes: Uint8Array | ModelProto, layer: number): string {
  const model = modelBytes instanceof Uint8Array ? decodeModel(modelBytes) : modelBytes;
  const info = analyzeTransformer(new Graph(model.graph!));
  const out = info.layers[layer]?.residual?.output;
  if (!out) throw new Error(`layer ${layer}: no residual stream found (model has ${info.layers.length} layers)`);
  return out;
}

/**
 * A model whose only graph output is the residual stream leaving layer keepLayers-1 (then each of
 * `extraOutputs`), with every node, initializer and value_info that no longer reaches an output
 * removed. External data entries are kept as recorded, so the cut model reads the same files.
 */
export function truncateToLayers(
  modelBytes: Uint8Array,
  keepLayers: number,
  extraOutputs: readonly string[] = [],
): Uint8Array {
  const model = decodeModel(modelBytes);
  const stream = residualOutput(model, keepLayers - 1);
  const graph = model.graph!;
  const g = new Graph(graph);
  const names = [stream, ...extraOutputs.filter((n) => n !== stream)];
  for (const n of names)
    if (!g.producer.has(n) && !g.initializers.has(n))
      throw new Error(`truncateToLayers: no tensor '${n}' in the model`);
  const outputs = names.map((name) => {
    const declared = g.valueInfo.get(name)?.type?.value;
    const elemType = declared?.case === "tensorType" ? declared.value.elemType : DT.FLOAT;
    const type = create(TypeProtoSchema, {
      value: { case: "tensorType", value: create(TypeProto_TensorSchema, { elemType }) },
    });
    return create(ValueInfoProtoSchema, { name, type });
  });
  const pruned = eliminateDeadCode(g, shallowCopy(graph, { output: outputs }));
  return encodeModel(shallowCopy(model, { graph: pruned }));
}

/**
 * The model with layers keepLayers.. removed and what follows the encoder kept: consumers of the
 * stream leaving the last layer (final norm, merger, pooling) read the stream leaving layer
 * keepLayers-1 instead. For running what comes after the encoder without running every layer.
 */
export function shortenToLayers(modelBytes: Uint8Array, keepLayers: number): Uint8Array {
  const model = decodeModel(modelBytes);
  const layers = analyzeTransformer(new Graph(model.graph!)).layers.length;
  const last = residualOutput(model, layers - 1);
  const cut = residualOutput(model, keepLayers - 1);
  const graph = model.graph!;
  const node = graph.node.map((n) =>
    n.input.includes(last) ? shallowCopy(n, { input: n.input.map((i) => (i === last ? cut : i)) }) : n,
  );
  const rewired = shallowCopy(graph, { node });
  return encodeModel(shallowCopy(model, { graph: eliminateDeadCode(new Graph(rewired), rewired) }));
}

/** Names a subgraph reads (over-approximated: every input of every node in it, recursively). */
function subgraphReads(n: NodeProto, into: Set<string>): void {
  for (const a of n.attribute) {
    for (const sub of [...(a.g ? [a.g] : []), ...a.graphs]) {
      for (const m of sub.node) {
        for (const i of m.input) if (i) into.add(i);
        subgraphReads(m, into);
      }
    }
  }
}

/** Keep the nodes whose outputs are (transitively) needed by `graph.output`; drop the rest. */
export function eliminateDeadCode(g: Graph, graph: GraphProto): GraphProto {
  const live = new Set(graph.output.map((o) => o.name));
  const keep = new Set<NodeProto>();
  for (const n of [...g.order].reverse()) {
    if (!n.output.some((o) => o && live.has(o))) continue;
    keep.add(n);
    for (const i of n.input) if (i) live.add(i);
    subgraphReads(n, live);
  }
  return shallowCopy(graph, {
    node: graph.node.filter((n) => keep.has(n)),
    initializer: graph.initializer.filter((t) => live.has(t.name)),
    sparseInitializer: graph.sparseInitializer.filter((s) => live.has(s.values?.name ?? "")),
    // Real inputs stay (the model's interface); inputs that only declared a dropped initializer go.
    input: graph.input.filter((i) => !g.initializers.has(i.name) || live.has(i.name)),
    valueInfo: graph.valueInfo.filter((v) => live.has(v.name)),
  });
}

// ───────────────────────────── synthetic weights ─────────────────────────────

/** Typical magnitude of a synthetic weight (uniform ±WEIGHT: σ ≈ 0.029, like an N(0, 0.02²) init). */
const WEIGHT = 0.05;
const BIAS = 0.02;
const NORMS = new Set([
  "LayerNormalization",
  "SimplifiedLayerNormalization",
  "RMSNormalization",
  "SkipLayerNormalization",
  "SkipSimplifiedLayerNormalization",
]);
/** Ops that only use a float constant as data (weights, biases, added embeddings, gathered tables). */
const DATA_OPS = new Set([
  "MatMul",
  "Gemm",
  "Conv",
  "ConvTranspose",
  "Add",
  "Sub",
  "Mul",
  "Concat",
  "Gather",
  "Where",
  "Expand",
]);

const ELEMENT_BYTES: Partial<Record<DT, number>> = {
  [DT.FLOAT]: 4,
  [DT.FLOAT16]: 2,
  [DT.BFLOAT16]: 2,
  [DT.DOUBLE]: 8,
  [DT.UINT8]: 1,
  [DT.INT8]: 1,
  [DT.INT32]: 4,
  [DT.INT64]: 8,
};

interface Use {
  node: NodeProto;
  slot: number;
}

/** Per-tensor generator: values depend on (seed, tensor name) only, not on the order tensors are written. */
function rngFor(seed: number, name: string): () => number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return mulberry32((h ^ seed) >>> 0);
}

function externalEntry(t: TensorProto): { location: string; offset: number; length: number | undefined } {
  const kv = new Map(t.externalData.map((e) => [e.key, e.value]));
  const location = kv.get("location");
  if (!location) throw new Error(`${t.name}: external data without a location`);
  const length = kv.get("length");
  return { location, offset: Number(kv.get("offset") ?? 0), length: length === undefined ? undefined : Number(length) };
}

/** Synthesises the value of each external tensor of one graph from how the graph uses it. */
class Synthesizer {
  private readonly cache = new Map<string, ArrayLike<number>>();
  constructor(
    private readonly g: Graph,
    private readonly seed: number,
  ) {}

  private uses(name: string): Use[] {
    return this.g
      .consumersOf(name)
      .flatMap((node) => node.input.flatMap((i, slot) => (i === name ? [{ node, slot }] : [])));
  }

  private describe(name: string): string {
    return (
      this.uses(name)
        .map((u) => `${u.node.opType}[${u.slot}] '${u.node.name}'`)
        .join(", ") || "no consumer"
    );
  }

  /** The numbers of a constant: read from the model, or synthesised when they are external. */
  numbers(name: string): ArrayLike<number> {
    const t = this.g.constantTensor(name);
    if (!t) throw new Error(`'${name}' is not a constant`);
    if (!isExternal(t)) {
      const v = readNumbers(t, Infinity);
      if (!v) throw new Error(`'${name}': cannot read its value`);
      return v;
    }
    const hit = this.cache.get(name);
    if (hit) return hit;
    const v = this.values(t);
    if (v.length <= 1 << 16) this.cache.set(name, v);
    return v;
  }

  /** Values of external tensor `t`, as numbers in its element type's range (raw bytes for packed 4/8-bit data). */
  values(t: TensorProto): Float32Array | Int32Array {
    const n = elementCount(t);
    const rnd = rngFor(this.seed, t.name);
    const uniform = (a: number) => (rnd() * 2 - 1) * a;
    const uses = this.uses(t.name);
    const fail = (why: string): never => {
      throw new Error(
        `synthetic weights: ${t.name} (type ${DT[t.dataType]}, dims [${t.dims.join(",")}]) ${why}; used by ${this.describe(t.name)}`,
      );
    };
    if (uses.length === 0) fail("has no consumer");
    const isFloat = [DT.FLOAT, DT.FLOAT16, DT.BFLOAT16, DT.DOUBLE].includes(t.dataType);
    const at = (op: string, slot: number) => uses.find((u) => u.node.opType === op && u.slot === slot);

    if (isFloat) {
      const out = new Float32Array(n);
      if (
        uses.some((u) => NORMS.has(u.node.opType) && u.slot === 1) ||
        uses.some((u) => u.node.opType === "Div" && u.slot === 1)
      ) {
        for (let i = 0; i < n; i++) out[i] = 1 + uniform(0.1); // norm scales, divisors: near 1
        return out;
      }
      const cosine = at("GroupQueryAttention", 7) ?? at("RotaryEmbedding", 2);
      const sine = at("GroupQueryAttention", 8) ?? at("RotaryEmbedding", 3);
      if ((cosine || sine) && t.dims.length === 2) {
        // Rotary caches [positions, d/2]: real tables (base 10000), so rotation stays a rotation.
        const half = Number(t.dims[1]);
        for (let p = 0; p < Number(t.dims[0]); p++) {
          for (let i = 0; i < half; i++) out[p * half + i] = (cosine ? Math.cos : Math.sin)(p * 10000 ** (-i / half));
        }
        return out;
      }
      const nbits = at("MatMulNBits", 2) ?? at("MatMulNBits", 3);
      if (nbits) {
        const half = 2 ** (attrInt(nbits.node, "bits", 4) - 1);
        // scales: weights (q - zp)·s with q uniform in [0, 2^bits) and zp = half span ±WEIGHT; float zero points: half.
        for (let i = 0; i < n; i++) out[i] = nbits.slot === 2 ? (WEIGHT / half) * (1 + uniform(0.1)) : half;
        return out;
      }
      if (this.isQuantScale(uses)) {
        for (let i = 0; i < n; i++) out[i] = (WEIGHT / 32) * (1 + uniform(0.1));
        return out;
      }
      if (
        uses.every(
          (u) =>
            DATA_OPS.has(u.node.opType) ||
            NORMS.has(u.node.opType) ||
            (u.node.opType === "MatMulNBits" && u.slot === 5),
        )
      ) {
        const a = t.dims.length <= 1 ? BIAS : WEIGHT; // biases (and norm biases) smaller than matrices and tables
        for (let i = 0; i < n; i++) out[i] = uniform(a);
        return out;
      }
      return fail("is a float tensor with a use these rules do not cover");
    }

    if (t.dataType === DT.UINT8 || t.dataType === DT.INT8) {
      const [lo, hi] = t.dataType === DT.UINT8 ? [0, 255] : [-128, 127];
      const out = new Int32Array(n);
      const nb = at("MatMulNBits", 1) ?? at("MatMulNBits", 3);
      if (nb) {
        const bits = attrInt(nb.node, "bits", 4);
        const N = attrInt(nb.node, "N", 0);
        const K = attrInt(nb.node, "K", 0);
        const blocks = Math.ceil(K / attrInt(nb.node, "block_size", 32));
        const perRow =
          nb.slot === 1
            ? blocks * Math.ceil((attrInt(nb.node, "block_size", 32) * bits) / 8)
            : Math.ceil((blocks * bits) / 8);
        if (n !== N * perRow) fail(`has ${n} bytes, MatMulNBits(N=${N}, K=${K}, bits=${bits}) expects ${N * perRow}`);
        if (bits !== 4 && bits !== 8) fail(`is packed with bits=${bits}; only 4 and 8 are handled`);
        // Packed weights: every nibble/byte uniform over the full range. Zero points: mid-range in every slot.
        const zp = bits === 4 ? 0x88 : 0x80;
        if (nb.slot === 3) return out.fill(zp);
        for (let i = 0; i < n; i += 4) {
          const word = Math.floor(rnd() * 2 ** 32); // mulberry32 gives 32 random bits: 4 bytes per draw
          for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = (word >>> (8 * j)) & 0xff;
        }
        return out;
      }
      if (
        uses.some(
          (u) =>
            (u.node.opType === "MatMulInteger" && u.slot === 3) ||
            (u.node.opType.endsWith("QuantizeLinear") && u.slot === 2),
        )
      ) {
        out.fill(t.dataType === DT.UINT8 ? 128 : 0); // zero points
        return out;
      }
      const q = this.quantizedData(t, uses);
      if (!q) return fail("is 8-bit data whose scale and zero point could not be found");
      const cols = q.scales.length;
      if (cols !== 1 && cols !== Number(t.dims.at(-1)))
        fail(`has ${cols} scales, neither per-tensor nor per last-axis channel`);
      // Integer half-range per channel so that (q - zp)·scale spans about ±WEIGHT.
      const range = Int32Array.from({ length: cols }, (_, c) =>
        Math.max(1, Math.min(127, Math.round(WEIGHT / q.scales[c]!))),
      );
      for (let i = 0; i < n; i++) {
        const r = range[cols === 1 ? 0 : i % cols]!;
        out[i] = Math.max(lo, Math.min(hi, q.zeroPoint + Math.floor(rnd() * (2 * r + 1)) - r));
      }
      return out;
    }

    if (t.dataType === DT.INT32) {
      const g = at("MatMulNBits", 4);
      if (g) {
        // g_idx is defined by the attributes: the block of each input channel.
        const bs = attrInt(g.node, "block_size", 32);
        return Int32Array.from({ length: n }, (_, k) => Math.floor(k / bs));
      }
    }
    return fail("is an integer tensor (a shape, index or count?): refusing to guess its value");
  }

  /** A float constant multiplying a dynamically quantized activation's scale, or dequantizing: a quantization scale. */
  private isQuantScale(uses: Use[]): boolean {
    return uses.every((u) => {
      if (u.node.opType.endsWith("QuantizeLinear")) return u.slot === 1;
      if (u.node.opType !== "Mul") return false;
      const other = u.node.input[1 - u.slot];
      const p = other ? this.g.producer.get(other) : undefined;
      return p?.opType === "DynamicQuantizeLinear" && p.output[1] === other;
    });
  }

  /**
   * Scale(s) and zero point of 8-bit data: a MatMulInteger B operand (scale: the constant that
   * multiplies the integer product, directly or through Mul(activation_scale, weight_scale)), or a
   * table dequantized by DequantizeLinear (directly or after a Gather).
   */
  private quantizedData(_t: TensorProto, uses: Use[]): { scales: ArrayLike<number>; zeroPoint: number } | undefined {
    const mmi = uses.find((u) => u.node.opType === "MatMulInteger" && u.slot === 1)?.node;
    if (mmi) {
      const zp = mmi.input[3] ? this.numbers(mmi.input[3])[0]! : 0;
      let out = mmi.output[0]!;
      for (let c = this.g.consumersOf(out)[0]; c && c.opType === "Cast"; c = this.g.consumersOf(out)[0])
        out = c.output[0]!;
      const mul = this.g.consumersOf(out).find((c) => c.opType === "Mul");
      const other = mul?.input.find((i) => i !== out);
      if (!other) return undefined;
      if (this.g.isConstant(other)) return { scales: this.numbers(other), zeroPoint: zp };
      const combined = this.g.producer.get(other);
      const w = combined?.opType === "Mul" ? combined.input.find((i) => this.g.isConstant(i)) : undefined;
      return w ? { scales: this.numbers(w), zeroPoint: zp } : undefined;
    }
    const dq =
      uses.find((u) => u.node.opType === "DequantizeLinear" && u.slot === 0)?.node ??
      uses
        .filter((u) => u.node.opType === "Gather" && u.slot === 0)
        .map((u) => this.g.consumersOf(u.node.output[0]!).find((c) => c.opType === "DequantizeLinear"))[0];
    if (!dq?.input[1]) return undefined;
    return { scales: this.numbers(dq.input[1]), zeroPoint: dq.input[2] ? this.numbers(dq.input[2])[0]! : 0 };
  }
}

/** Little-endian bytes of `v` as `dataType` (typed-array views are little-endian on every platform Node runs on). */
function encode(dataType: DT, v: Float32Array | Int32Array): Uint8Array {
  const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  switch (dataType) {
    case DT.FLOAT:
      return bytes(Float32Array.from(v));
    case DT.DOUBLE:
      return bytes(Float64Array.from(v));
    case DT.FLOAT16:
      return bytes(Uint16Array.from(v, toHalf));
    case DT.BFLOAT16:
      return bytes(Uint16Array.from(new Uint32Array(Float32Array.from(v).buffer), (u) => u >>> 16));
    case DT.UINT8:
      return Uint8Array.from(v);
    case DT.INT8:
      return bytes(Int8Array.from(v));
    case DT.INT32:
      return bytes(Int32Array.from(v));
    case DT.INT64:
      return bytes(BigInt64Array.from(v, (x) => BigInt(x)));
    default:
      throw new Error(`synthetic weights: element type ${DT[dataType]} is not handled`);
  }
}

/** float → IEEE half, rounding half up (the synthetic values are small normals: no subnormal care needed). */
function toHalf(x: number): number {
  const b = new Uint32Array(new Float32Array([x]).buffer)[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = ((b >>> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return sign;
  if (exp >= 31) return sign | 0x7c00;
  // A carry out of the mantissa correctly bumps the exponent.
  return sign | ((exp << 10) + ((b >>> 13) & 0x3ff) + ((b >>> 12) & 1));
}

/**
 * Write synthetic values for every external initializer of `model` at its recorded offset and
 * length in `dir/<location>` (files are created sparse: only the recorded ranges are written).
 * Returns `dir`; a model saved in `dir` then loads with its external data.
 */
/** Nodes of a graph and of its control-flow bodies (Qwen3.5's linear attention reads weights inside `If` branches). */
function hoisted(nodes: readonly NodeProto[]): NodeProto[] {
  return nodes.flatMap((n) => [
    n,
    ...hoisted(n.attribute.flatMap((a) => [...(a.g ? [a.g] : []), ...a.graphs]).flatMap((b) => b.node)),
  ]);
}

export function writeSyntheticWeights(model: Uint8Array | ModelProto, dir: string, seed: number): string {
  const proto = model instanceof Uint8Array ? decodeModel(model) : model;
  // Values are chosen from each tensor's consumers, those inside control-flow bodies included.
  const g = new Graph(shallowCopy(proto.graph!, { node: hoisted(proto.graph!.node) }));
  const synth = new Synthesizer(g, seed);
  const files = new Map<string, number>();
  try {
    for (const t of proto.graph!.initializer) {
      if (!isExternal(t)) continue;
      const { location, offset, length } = externalEntry(t);
      const width = ELEMENT_BYTES[t.dataType as DT];
      if (width === undefined)
        throw new Error(`synthetic weights: ${t.name} has element type ${DT[t.dataType]}, not handled`);
      const bytes = encode(t.dataType, synth.values(t));
      if (length !== undefined && length !== bytes.length)
        throw new Error(`synthetic weights: ${t.name} records length ${length}, its dims give ${bytes.length} bytes`);
      let fd = files.get(location);
      if (fd === undefined) {
        mkdirSync(dirname(join(dir, location)), { recursive: true });
        // No truncation: models cut from the same export share files, and each writes only its own ranges.
        fd = openSync(join(dir, location), constants.O_WRONLY | constants.O_CREAT);
        files.set(location, fd);
      }
      writeSync(fd, bytes, 0, bytes.length, offset);
    }
  } finally {
    for (const fd of files.values()) closeSync(fd);
  }
  return dir;
}
