import { existsSync, readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { Graph, makeNode, type AttrValue, type NodeProto, type TensorProto } from "../src/ir/graph.js";
import { analyzeShapes, inferShapes, inferValues, DimAlgebra } from "../src/analysis/shapes.js";
import type { Shape } from "../src/analysis/dims.js";
import { decodeModel } from "../src/onnx/io.js";
import { floatTensor, int64Tensor } from "../src/onnx/tensor.js";
import {
  GraphProtoSchema,
  TensorShapeProto_DimensionSchema,
  TensorShapeProtoSchema,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
  type ValueInfoProto,
} from "../src/onnx/gen/onnx_pb.js";

// ---- tiny graph builder ----------------------------------------------------------------------

type DeclDim = number | string | null;

function valueInfo(name: string, dims: DeclDim[], elemType = 1): ValueInfoProto {
  const dim = dims.map((d) =>
    create(TensorShapeProto_DimensionSchema, {
      value:
        d === null
          ? { case: undefined }
          : typeof d === "number"
            ? { case: "dimValue", value: BigInt(d) }
            : { case: "dimParam", value: d },
    }),
  );
  const shape = create(TensorShapeProtoSchema, { dim });
  const type = create(TypeProtoSchema, {
    value: { case: "tensorType", value: create(TypeProto_TensorSchema, { elemType, shape }) },
  });
  return create(ValueInfoProtoSchema, { name, type });
}

interface Spec {
  inputs?: Record<string, DeclDim[]>;
  inits?: TensorProto[];
  nodes: NodeProto[];
  valueInfo?: Record<string, DeclDim[]>;
}

function graphOf(spec: Spec): Graph {
  return new Graph(
    create(GraphProtoSchema, {
      input: Object.entries(spec.inputs ?? {}).map(([n, d]) => valueInfo(n, d)),
      initializer: spec.inits ?? [],
      node: spec.nodes,
      valueInfo: Object.entries(spec.valueInfo ?? {}).map(([n, d]) => valueInfo(n, d)),
    }),
  );
}

let nodeCount = 0;
const node = (
  op: string,
  ins: string[],
  outs: string[],
  attrs: Record<string, AttrValue> = {},
  domain = "",
): NodeProto => makeNode(op, ins, outs, `n${nodeCount++}`, attrs, domain);
const i64 = (name: string, values: number[], dims?: number[]): TensorProto => int64Tensor(name, values, dims);

/** Shape of `out` after inferring a one-node graph over inputs `x` (and any constants). */
function one(
  op: string,
  inputs: Record<string, DeclDim[]>,
  ins: string[],
  attrs: Record<string, AttrValue> = {},
  inits: TensorProto[] = [],
  domain = "",
  outs = ["y"],
): (Shape | undefined)[] {
  const shapes = inferShapes(graphOf({ inputs, inits, nodes: [node(op, ins, outs, attrs, domain)] }), { strict: true });
  return outs.map((o) => shapes.get(o));
}

// ---- the dimension algebra -------------------------------------------------------------------

describe("DimAlgebra", () => {
  const alg = new DimAlgebra();
  it("folds numbers and keeps symbols canonical", () => {
    expect(alg.add(2, 3)).toBe(5);
    expect(alg.mul("batch_size", 3)).toBe("batch_size*3");
    expect(alg.mul(3, "batch_size")).toBe("batch_size*3");
    expect(alg.mul("batch_size", 1)).toBe("batch_size");
    expect(alg.add(alg.add("s", 1), -1)).toBe("s");
    expect(alg.sub(alg.add("past", "seq"), "past")).toBe("seq");
  });
  it("divides exactly when it can and floors otherwise", () => {
    expect(alg.exactDiv(alg.mul("b", 3), 3)).toBe("b");
    expect(alg.floorDiv(alg.mul("hw", 1280), 5120)).toBe("floor(hw/4)");
    expect(alg.floorDiv(alg.sub("height", 16), 16)).toBe("floor(height/16)-1");
    expect(alg.add(alg.floorDiv(alg.sub("height", 16), 16)!, 1)).toBe("floor(height/16)");
    expect(alg.ceilDiv(alg.add(alg.mul("n", 4), 1), 4)).toBe("n+1");
    expect(alg.floorDiv(7, 2)).toBe(3);
    expect(alg.floorDiv("a", 0)).toBeUndefined();
  });
  it("compares symbols as non-negative sizes", () => {
    expect(alg.compare("batch_size", -1)).toBe(1);
    expect(alg.compare(alg.add("s", 1), "s")).toBe(1);
    expect(alg.compare("a", "b")).toBeUndefined();
    expect(alg.compare("s", 0)).toBeUndefined(); // a size may be 0
    expect(alg.max("s", 0)).toBe("s");
    expect(alg.equal(alg.mul(alg.add("a", 1), 2), alg.add(alg.mul("a", 2), 2))).toBe(true);
  });
  it("treats unknown strings as opaque atoms", () => {
    expect(alg.mul("seq + 1", 2)).toBe("(seq + 1)*2");
    expect(alg.neg("seq + 1")).toBe("-(seq + 1)");
    expect(alg.add(alg.neg("seq + 1"), "seq + 1")).toBe(0);
    expect(alg.isFresh(alg.fresh())).toBe(true);
  });
});

// ---- op rules on small graphs ----------------------------------------------------------------

describe("shape rules", () => {
  it("broadcasts elementwise ops symbolically", () => {
    expect(one("Add", { a: ["b", "s", 64], c: [1, "s", 1] }, ["a", "c"])).toEqual([["b", "s", 64]]);
    expect(one("Mul", { a: [1, "n"], c: [5, 1] }, ["a", "c"])).toEqual([[5, "n"]]);
    expect(one("Where", { c: ["s", 1], a: [1], b: [1, 7] }, ["c", "a", "b"])).toEqual([["s", 7]]);
    expect(one("Relu", { a: ["b", 3] }, ["a"])).toEqual([["b", 3]]);
  });

  it("MatMul batches and broadcasts; Gemm transposes", () => {
    expect(one("MatMul", { a: ["b", 12, "s", 64], c: ["b", 12, 64, "t"] }, ["a", "c"])).toEqual([["b", 12, "s", "t"]]);
    expect(one("MatMul", { a: ["s", 64], c: [3, 64, 8] }, ["a", "c"])).toEqual([[3, "s", 8]]);
    expect(one("MatMul", { a: [64], c: ["b", 64, 8] }, ["a", "c"])).toEqual([["b", 8]]);
    expect(one("Gemm", { a: [64, "m"], c: [10, 64] }, ["a", "c"], { transA: 1, transB: 1 })).toEqual([["m", 10]]);
  });

  it("Conv and pools: numeric, symbolic, SAME padding", () => {
    const w = floatTensor("w", new Array(192 * 3 * 16 * 16).fill(0), [192, 3, 16, 16]);
    expect(one("Conv", { x: ["b", 3, 224, "width"] }, ["x", "w"], { strides: [16, 16] }, [w])).toEqual([
      ["b", 192, 14, "floor(width/16)"],
    ]);
    const w3 = floatTensor("w", new Array(8 * 3 * 3 * 3).fill(0), [8, 3, 3, 3]);
    expect(one("Conv", { x: [1, 3, "h", 10] }, ["x", "w"], { pads: [1, 1, 1, 1], strides: [2, 2] }, [w3])).toEqual([
      [1, 8, "floor((h+1)/2)", 5],
    ]);
    expect(one("Conv", { x: [1, 3, "h", 10] }, ["x", "w"], { auto_pad: "SAME_UPPER", strides: [2, 2] }, [w3])).toEqual([
      [1, 8, "ceil(h/2)", 5],
    ]);
    expect(one("MaxPool", { x: [1, 8, 7, 7] }, ["x"], { kernel_shape: [2, 2], strides: [2, 2], ceil_mode: 1 })).toEqual(
      [[1, 8, 4, 4]],
    );
    expect(one("AveragePool", { x: ["b", 8, 64, 64] }, ["x"], { kernel_shape: [4, 4], strides: [4, 4] })).toEqual([
      ["b", 8, 16, 16],
    ]);
    expect(one("GlobalAveragePool", { x: ["b", 8, 7, 7] }, ["x"])).toEqual([["b", 8, 1, 1]]);
  });

  it("Reshape: 0 copies, -1 infers, allowzero keeps 0", () => {
    expect(one("Reshape", { x: ["b", "s", 768] }, ["x", "t"], {}, [i64("t", [0, 0, 12, -1])])).toEqual([
      ["b", "s", 12, 64],
    ]);
    expect(one("Reshape", { x: ["b", "s", 768] }, ["x", "t"], {}, [i64("t", [-1, 768])])).toEqual([["b*s", 768]]);
    expect(one("Reshape", { x: ["hw", 1280] }, ["x", "t"], {}, [i64("t", [-1, 5120])])).toEqual([
      ["floor(hw/4)", 5120],
    ]);
    expect(one("Reshape", { x: [0, 4] }, ["x", "t"], { allowzero: 1 }, [i64("t", [0, 4])])).toEqual([[0, 4]]);
    // Target computed at run time from an unknown source: right rank, fresh dims.
    const [s] = one("Reshape", { x: ["b", 4], t: [3] }, ["x", "t"]);
    expect(s).toHaveLength(3);
  });

  it("Transpose, Flatten, Concat, Tile, Pad, Expand", () => {
    expect(one("Transpose", { x: ["b", "s", 12, 64] }, ["x"], { perm: [0, 2, 1, 3] })).toEqual([["b", 12, "s", 64]]);
    expect(one("Transpose", { x: [2, 3, 4] }, ["x"])).toEqual([[4, 3, 2]]);
    expect(one("Flatten", { x: ["b", 3, 4, 5] }, ["x"], { axis: 2 })).toEqual([["b*3", 20]]);
    expect(one("Concat", { a: ["b", 1, 8], c: ["b", "s", 8] }, ["a", "c"], { axis: 1 })).toEqual([["b", "s+1", 8]]);
    expect(one("Tile", { x: ["s", 1, 40] }, ["x", "r"], {}, [i64("r", [1, 1, 2])])).toEqual([["s", 1, 80]]);
    expect(one("Pad", { x: [1, 3, "h", 5] }, ["x", "p"], {}, [i64("p", [0, 0, 1, 2, 0, 0, 1, 2])])).toEqual([
      [1, 3, "h+2", 9],
    ]);
    expect(one("Expand", { x: [1, 1, 8] }, ["x", "t"], {}, [i64("t", [4, 1, 1])])).toEqual([[4, 1, 8]]);
  });

  it("Split: input sizes, attribute sizes, equal parts", () => {
    expect(one("Split", { x: [3, "s", 8] }, ["x", "sp"], { axis: 0 }, [i64("sp", [1, 2])], "", ["p", "q"])).toEqual([
      [1, "s", 8],
      [2, "s", 8],
    ]);
    expect(one("Split", { x: ["s", 12] }, ["x"], { axis: 1, split: [4, 8] }, [], "", ["p", "q"])).toEqual([
      ["s", 4],
      ["s", 8],
    ]);
    expect(one("Split", { x: ["s", 12] }, ["x"], { axis: -1 }, [], "", ["p", "q", "r"])).toEqual([
      ["s", 4],
      ["s", 4],
      ["s", 4],
    ]);
  });

  it("Slice: clamping, negative indices, INT64_MAX ends, steps, symbolic dims", () => {
    const big = Number.MAX_SAFE_INTEGER; // stands in for INT64_MAX, as exported
    const slice = (dims: DeclDim[], st: number[], en: number[], ax?: number[], sp?: number[]): Shape | undefined => {
      const inits = [i64("st", st), i64("en", en), ...(ax ? [i64("ax", ax)] : []), ...(sp ? [i64("sp", sp)] : [])];
      return one("Slice", { x: dims }, ["x", "st", "en", ...(ax ? ["ax"] : []), ...(sp ? ["sp"] : [])], {}, inits)[0];
    };
    expect(slice([10, 20], [2], [100], [1])).toEqual([10, 18]);
    expect(slice([10, 20], [-4], [big], [0])).toEqual([4, 20]);
    expect(slice([10], [0], [10], [0], [3])).toEqual([4]);
    expect(slice([10], [-1], [-big], [0], [-1])).toEqual([10]);
    expect(slice(["s", 8], [1], [big], [0])).toEqual(["s-1", 8]);
    expect(slice(["s", 8], [0], [-1], [0])).toEqual(["s-1", 8]);
    expect(slice(["s", 8], [-2], [big], [0])).toEqual([2, 8]);
    // Opset < 10: attributes.
    expect(one("Slice", { x: [5, 6] }, ["x"], { starts: [1], ends: [3], axes: [1] })).toEqual([[5, 2]]);
  });

  it("Gather, Squeeze/Unsqueeze in both forms, reductions, TopK", () => {
    expect(one("Gather", { x: [100, 64], ix: ["b", "s"] }, ["x", "ix"])).toEqual([["b", "s", 64]]);
    expect(one("Gather", { x: ["b", 4, 64] }, ["x", "k"], { axis: 1 }, [i64("k", [2], [])])).toEqual([["b", 64]]);
    expect(one("Squeeze", { x: [1, "s", 1, 8] }, ["x", "a"], {}, [i64("a", [0])])).toEqual([["s", 1, 8]]);
    expect(one("Squeeze", { x: [1, "s", 1, 8] }, ["x"], { axes: [-2] })).toEqual([[1, "s", 8]]);
    expect(one("Squeeze", { x: [1, "s", 1, 8] }, ["x"])).toEqual([["s", 8]]);
    expect(one("Unsqueeze", { x: ["s", 8] }, ["x", "a"], {}, [i64("a", [0, -1])])).toEqual([[1, "s", 8, 1]]);
    expect(one("Unsqueeze", { x: ["s", 8] }, ["x"], { axes: [1] })).toEqual([["s", 1, 8]]);
    expect(one("ReduceMean", { x: ["b", "s", 8] }, ["x"], { axes: [-1] })).toEqual([["b", "s", 1]]);
    expect(one("ReduceSum", { x: ["b", "s", 8] }, ["x", "a"], { keepdims: 0 }, [i64("a", [1])])).toEqual([["b", 8]]);
    expect(one("ReduceMax", { x: ["b", "s", 8] }, ["x"], { keepdims: 0 })).toEqual([[]]);
    expect(one("TopK", { x: ["b", 100] }, ["x", "k"], {}, [i64("k", [5])], "", ["v", "i"])).toEqual([
      ["b", 5],
      ["b", 5],
    ]);
  });

  it("shape tensors: Shape(start,end), ConstantOfShape, Range", () => {
    const g = graphOf({
      inputs: { x: ["b", "s", 64] },
      inits: [i64("zero", [0], []), i64("one", [1], [])],
      nodes: [
        node("Shape", ["x"], ["sh"], { start: 1 }),
        node("ConstantOfShape", ["sh"], ["c"]),
        node("Shape", ["x"], ["full"]),
        node("Gather", ["full", "one"], ["len"]),
        node("Range", ["zero", "len", "one"], ["r"]),
      ],
    });
    const { shapes, values } = analyzeShapes(g, { strict: true });
    expect(values.get("sh")).toEqual(["s", 64]);
    expect(shapes.get("c")).toEqual(["s", 64]);
    expect(values.get("len")).toEqual(["s"]);
    expect(shapes.get("r")).toEqual(["s"]);
  });

  it("propagates exporter-style dynamic Reshape targets (Shape -> Gather -> Div -> Concat)", () => {
    // torch: q.reshape(B, S, heads, hidden // heads) with every size read from Shape(x).
    const g = graphOf({
      inputs: { x: ["batch", "seq", 768] },
      inits: [i64("i0", [0], []), i64("i1", [1], []), i64("i2", [2], []), i64("h", [12], []), i64("ax", [0])],
      nodes: [
        node("Shape", ["x"], ["sh"]),
        node("Gather", ["sh", "i0"], ["b"], { axis: 0 }),
        node("Gather", ["sh", "i1"], ["s"], { axis: 0 }),
        node("Gather", ["sh", "i2"], ["d"], { axis: 0 }),
        node("Div", ["d", "h"], ["hd"]),
        node("Mul", ["b", "h"], ["bh"]),
        node("Unsqueeze", ["bh", "ax"], ["u0"]),
        node("Unsqueeze", ["s", "ax"], ["u1"]),
        node("Unsqueeze", ["hd", "ax"], ["u2"]),
        node("Concat", ["u0", "u1", "u2"], ["target"], { axis: 0 }),
        node("Reshape", ["x", "target"], ["y"]),
        node("Cast", ["target"], ["tf"], { to: 1 }),
      ],
    });
    const { shapes, values } = analyzeShapes(g, { strict: true });
    expect(values.get("target")).toEqual(["batch*12", "seq", 64]);
    expect(shapes.get("y")).toEqual(["batch*12", "seq", 64]);
    expect(values.has("tf")).toBe(false); // floats are not reported as values
  });

  it("decides Equal/Where on sizes (torch's expand(-1) pattern)", () => {
    const g = graphOf({
      inputs: { x: ["b", 196, 192] },
      inits: [
        i64("i0", [0], []),
        i64("ax", [0]),
        i64("m1", [-1]),
        i64("neg", [-1, -1]),
        floatTensor("tok", new Array(192).fill(0), [1, 1, 192]),
      ],
      nodes: [
        node("Shape", ["x"], ["sh"]),
        node("Gather", ["sh", "i0"], ["b"]),
        node("Unsqueeze", ["b", "ax"], ["ub"]),
        node("Concat", ["ub", "neg"], ["t"], { axis: 0 }),
        node("Shape", ["t"], ["tl"]),
        node("ConstantOfShape", ["tl"], ["ones"], { value: int64Tensor("v", [1]) }),
        node("Mul", ["ones", "m1"], ["minus"]),
        node("Equal", ["t", "minus"], ["eq"]),
        node("Where", ["eq", "ones", "t"], ["w"]),
        node("Expand", ["tok", "w"], ["e"]),
        node("Concat", ["e", "x"], ["y"], { axis: 1 }),
      ],
    });
    const { shapes, values } = analyzeShapes(g, { strict: true });
    expect(values.get("w")).toEqual(["b", 1, 1]);
    expect(shapes.get("y")).toEqual(["b", 197, 192]);
  });

  it("contrib ops: MultiHeadAttention, GroupQueryAttention, MatMulNBits, quantization", () => {
    expect(
      one(
        "MultiHeadAttention",
        { q: ["b", "s", 1152], k: ["b", "s", 1152], v: ["b", "s", 1152] },
        ["q", "k", "v"],
        { num_heads: 16 },
        [],
        "com.microsoft",
      ),
    ).toEqual([["b", "s", 1152]]);
    expect(
      one(
        "MultiHeadAttention",
        { q: ["b", "s", 512], k: ["b", 8, "L", 64], v: ["b", 8, "L", 32] },
        ["q", "k", "v"],
        { num_heads: 8 },
        [],
        "com.microsoft",
      ),
    ).toEqual([["b", "s", 256]]);
    const gqa = one(
      "GroupQueryAttention",
      { q: ["b", "s", 2048], k: ["b", "s", 1024], v: ["b", "s", 1024], pk: ["b", 4, "p", 256], pv: ["b", 4, "p", 256] },
      ["q", "k", "v", "pk", "pv"],
      { num_heads: 8, kv_num_heads: 4 },
      [],
      "com.microsoft",
      ["o", "pk2", "pv2"],
    );
    expect(gqa).toEqual([
      ["b", "s", 2048],
      ["b", 4, "p+s", 256],
      ["b", 4, "p+s", 256],
    ]);
    expect(
      one(
        "GroupQueryAttention",
        { qkv: ["b", "s", 4096] },
        ["qkv"],
        { num_heads: 16, kv_num_heads: 8 },
        [],
        "com.microsoft",
      ),
    ).toEqual([["b", "s", 2048]]);
    expect(
      one(
        "MatMulNBits",
        { a: ["b", "s", 1152] },
        ["a"],
        { K: 1152, N: 4304, bits: 4, block_size: 32 },
        [],
        "com.microsoft",
      ),
    ).toEqual([["b", "s", 4304]]);
    expect(one("DynamicQuantizeLinear", { a: ["s", 768] }, ["a"], {}, [], "", ["q", "sc", "zp"])).toEqual([
      ["s", 768],
      [],
      [],
    ]);
    expect(one("MatMulInteger", { a: ["s", 768], w: [768, 2304] }, ["a", "w"])).toEqual([["s", 2304]]);
    expect(one("RotaryEmbedding", { a: [1, "s", 768] }, ["a"], {}, [], "com.microsoft")).toEqual([[1, "s", 768]]);
    expect(
      one(
        "SkipSimplifiedLayerNormalization",
        { a: ["b", "s", 64], k: ["b", "s", 64] },
        ["a", "k"],
        {},
        [],
        "com.microsoft",
        ["o", "m", "v", "sum"],
      ),
    ).toEqual([
      ["b", "s", 64],
      ["b", "s", 1],
      ["b", "s", 1],
      ["b", "s", 64],
    ]);
    expect(one("LayerNormalization", { a: ["b", "s", 64] }, ["a"], { axis: -1 }, [], "", ["o", "m", "v"])).toEqual([
      ["b", "s", 64],
      ["b", "s", 1],
      ["b", "s", 1],
    ]);
  });

  it("seeds from inputs (missing dims get fresh symbols) and merges declared value_info", () => {
    const g = graphOf({
      inputs: { x: ["b", null, 8] },
      nodes: [
        node("Relu", ["x"], ["r"]),
        node("NoSuchOp", ["r"], ["u"]),
        node("Relu", ["u"], ["v"]),
        node("Relu", ["r"], ["w"]),
      ],
      valueInfo: { u: ["b", "t", 8], w: ["b", 5, "named"] },
    });
    const { shapes, unhandled } = analyzeShapes(g, { strict: true });
    const x = shapes.get("x")!;
    expect(x[0]).toBe("b");
    expect(x[1]).toMatch(/^unk__\d+$/);
    expect(shapes.get("u")).toEqual(["b", "t", 8]); // unknown op: declared value_info
    expect(shapes.get("v")).toEqual(["b", "t", 8]);
    // Declared numbers win; a declared name fills only what inference could not determine.
    expect(shapes.get("w")).toEqual(["b", 5, 8]);
    expect(inferShapes(g, { declared: "trust" }).get("w")).toEqual(["b", 5, 8]);
    expect(inferShapes(g, { declared: "ignore" }).get("u")).toBeUndefined();
    expect(unhandled).toEqual(new Set(["NoSuchOp"]));
  });

  it("never throws on malformed nodes", () => {
    const g = graphOf({
      inputs: { x: [2, 3] },
      nodes: [
        node("Reshape", ["x"], ["a"]),
        node("Conv", ["x", "missing"], ["b"]),
        node("Transpose", ["x"], ["c"], { perm: [0, 1, 2] }),
        node("Gather", ["x", "x"], ["d"], { axis: 5 }),
        node("Split", ["x"], ["e", "f"], { axis: 9 }),
        node("Slice", ["x", "x", "x"], ["g"]),
      ],
    });
    expect(() => inferShapes(g)).not.toThrow();
    expect(() => inferValues(g)).not.toThrow();
  });
});

// ---- real models -----------------------------------------------------------------------------

const MODELS = new URL("../../shared/models/", import.meta.url).pathname;
const HAVE_MODELS = existsSync(MODELS);
const load = (rel: string): Graph => new Graph(decodeModel(readFileSync(MODELS + rel), rel).graph!);
const title = (s: string): string => (HAVE_MODELS ? s : `${s} (skipped: ../shared/models is missing)`);

describe.skipIf(!HAVE_MODELS)(title("shapes of the shared models"), () => {
  it("vit-ti16 (torch 1.13 export, all Reshape targets computed from Shape ops)", () => {
    const g = load("synthetic/vit-ti16-cls-randinit/model.onnx");
    const { shapes } = analyzeShapes(g, { strict: true });
    expect(shapes.get("/encoder/Add_output_0")).toEqual(["batch_size", 197, 192]);
    expect(shapes.get("/encoder/layers/encoder_layer_0/Add_1_output_0")).toEqual(["batch_size", 197, 192]);
    expect(shapes.get("/encoder/layers/encoder_layer_11/Add_1_output_0")).toEqual(["batch_size", 197, 192]);
    // nn.MultiheadAttention folds heads into the batch: [batch*3 heads, tokens, tokens].
    expect(shapes.get("/encoder/layers/encoder_layer_0/self_attention/Softmax_output_0")).toEqual([
      "batch_size*3",
      197,
      197,
    ]);
    expect(shapes.get("logits")).toEqual(["batch_size", 1000]);
    const unknown = g.order.flatMap((n) => n.output).filter((o) => o && !shapes.has(o));
    expect(unknown).toEqual([]);
  });

  it("qwen2-vl vision tower (torch 2.x export)", () => {
    const g = load("graph-only/qwen2-vl-2b-vision-tower-torchexport/model.onnx");
    const { shapes } = analyzeShapes(g, { strict: true });
    // Per block: qkv [hw,3,16,80] -> q/k/v [hw,16,80] -> [16,hw,80]; scores [16,hw,hw] + mask [1,hw,hw].
    for (const i of [0, 31]) {
      expect(shapes.get(`/visual/blocks.${i}/attn/Softmax_output_0`)).toEqual([16, "hw", "hw"]);
      expect(shapes.get(`/visual/blocks.${i}/Add_output_0`)).toEqual(["hw", 1280]);
      expect(shapes.get(`/visual/blocks.${i}/Add_1_output_0`)).toEqual(["hw", 1280]);
    }
    // The merger folds 2x2 patches: Reshape(-1, 5120) of [hw, 1280].
    expect(shapes.get("encoder_output")).toEqual(["floor(hw/4)", 1536]);
    expect(inferShapes(g, { declared: "trust" }).get("encoder_output")).toEqual(["Gemmencoder_output_dim_0", 1536]);
  });

  it("gemma-3 vision encoders (transformers.js, with value_info): MultiHeadAttention outputs", () => {
    for (const file of ["vision_encoder.onnx", "vision_encoder_quantized.onnx"]) {
      const g = load(`graph-only/gemma-3-4b-vlm/${file}`);
      const { shapes } = analyzeShapes(g, { strict: true });
      const mha = g.order.filter((n) => n.opType === "MultiHeadAttention");
      expect(mha).toHaveLength(27);
      for (const n of mha) expect(shapes.get(n.output[0]!)).toEqual(["batch_size", 4096, 1152]);
      expect(shapes.get("/model/embeddings/Conv/output_0")).toEqual([
        "batch_size",
        1152,
        "floor(height/14)",
        "floor(width/14)",
      ]);
      expect(shapes.get("image_features")).toEqual(["batch_size", 256, 2560]);
    }
  });

  it("qwen3.5 vision encoder: MultiHeadAttention outputs follow num_patches", () => {
    const g = load("graph-only/qwen3.5-0.8b-vlm-int8/vision_encoder_quantized.onnx");
    const { shapes } = analyzeShapes(g, { strict: true });
    const mha = g.order.filter((n) => n.opType === "MultiHeadAttention");
    expect(mha).toHaveLength(12);
    for (const n of mha) expect(shapes.get(n.output[0]!)).toEqual([1, "num_patches", 768]);
    expect(shapes.get("image_features")).toEqual(["floor(num_patches/4)", 1024]);
    // Trusting the exporter's names instead gives its own (inconsistent) symbols, still rank 3.
    const trusted = inferShapes(g, { declared: "trust" });
    for (const n of mha) expect(trusted.get(n.output[0]!)).toEqual([1, "sequence_length", 768]);
  });

  it("decoders and embedding models infer without throwing", () => {
    for (const file of [
      "gemma-3-4b-vlm/decoder_model_merged.onnx",
      "gemma-3-4b-vlm/embed_tokens.onnx",
      "qwen3.5-0.8b-vlm-int8/decoder_model_merged_quantized.onnx",
      "qwen3.5-0.8b-vlm-int8/embed_tokens_quantized.onnx",
    ]) {
      const g = load(`graph-only/${file}`);
      for (const declared of ["fill", "ignore"] as const) {
        const shapes = inferShapes(g, { strict: true, declared });
        for (const o of g.outputs) if (declared === "fill") expect(shapes.get(o), `${file}: ${o}`).toBeDefined();
      }
    }
    const gemma = inferShapes(load("graph-only/gemma-3-4b-vlm/decoder_model_merged.onnx"), { declared: "ignore" });
    expect(gemma.get("/model/layers.0/attn/GroupQueryAttention/output_0")).toEqual([
      "batch_size",
      "sequence_length",
      2048,
    ]);
    expect(gemma.get("present.0.key")).toEqual(["batch_size", 4, "total_sequence_length", 256]);
  });
});
