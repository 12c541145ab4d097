/**
 * A proposed int64-free formulation of cls-attn selection + token gather (README.md, "Making the
 * added subgraph GPU-resident"), as a standalone ONNX model the suite runs on WebGPU to show that
 * every node of it stays on the GPU with onnxruntime-web 1.30.
 *
 * prunec's current selection (passes/select-topk.ts + gather-tokens.ts) computes token positions
 * in int64 (TopK on the int64 winners to sort them, Add for the CLS offset, Shape/Slice/Concat/
 * Expand/Concat to put the CLS position in front, Unsqueeze for GatherND); the WebGPU EP has no
 * int64 kernels for those, so they run on the CPU. Here int64 only ever appears as TopK's indices
 * output feeding GatherND's indices input, which WebGPU handles:
 *
 *   s3        = Unsqueeze(scores [B,N], axes=[2])                     [B,N,1] float
 *   vals, _   = TopK(s3, K, axis=1, largest=1)                        the K best scores
 *   thr       = Slice(vals, K-1:K, axis 1)                            [B,1,1] K-th best score
 *   mask      = GreaterOrEqual(s3, thr)                               the winners (ties: all)
 *   key       = Where(mask, pos, pos + N)                             winners first, by position
 *   _, idx    = TopK(key, K, axis=1, largest=0, sorted=1)             [B,K,1] ascending positions
 *                                                                      (ties go to the lower index, as in prunec)
 *   kept      = GatherND(Slice(x, 1:, axis 1), idx, batch_dims=1)     [B,K,D] the kept patch tokens
 *   y         = Concat(Slice(x, 0:1, axis 1), kept, axis=1)           CLS in front, float Concat
 */
import { create } from "@bufbuild/protobuf";
import {
  GraphProtoSchema,
  ModelProtoSchema,
  OperatorSetIdProtoSchema,
  TensorShapeProto_DimensionSchema,
  TensorShapeProtoSchema,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
  TensorProto_DataType as DT,
} from "../../src/onnx/gen/onnx_pb.js";
import { encodeModel } from "../../src/onnx/io.js";
import { makeNode } from "../../src/ir/graph.js";
import { floatTensor, int64Tensor } from "../../src/onnx/tensor.js";

function valueInfo(name: string, elemType: number, dims: (number | string)[]) {
  const dim = dims.map((d) =>
    create(TensorShapeProto_DimensionSchema, { value: typeof d === "number" ? { case: "dimValue", value: BigInt(d) } : { case: "dimParam", value: d } }),
  );
  const tensorType = create(TypeProto_TensorSchema, { elemType, shape: create(TensorShapeProtoSchema, { dim }) });
  return create(ValueInfoProtoSchema, { name, type: create(TypeProtoSchema, { value: { case: "tensorType", value: tensorType } }) });
}

/** Inputs `x` float [batch, 1+n, d] and `scores` float [batch, n]; outputs `y` [batch, 1+k, d] and `idx` int64 [batch, k, 1]. */
export function int64FreeSelection(n: number, d: number, k: number): Uint8Array {
  const positions = [...Array(n).keys()];
  const nodes = [
    makeNode("Unsqueeze", ["scores", "axis2"], ["s3"], "proposal/Unsqueeze"),
    makeNode("TopK", ["s3", "k"], ["best_scores", "best_positions"], "proposal/TopK_scores", { axis: 1, largest: 1, sorted: 1 }),
    makeNode("Slice", ["best_scores", "k_minus_1", "k", "axis1"], ["threshold"], "proposal/Slice_threshold"),
    makeNode("GreaterOrEqual", ["s3", "threshold"], ["winner"], "proposal/GreaterOrEqual"),
    makeNode("Where", ["winner", "pos", "pos_plus_n"], ["key"], "proposal/Where_key"),
    makeNode("TopK", ["key", "k"], ["kept_positions_f", "idx"], "proposal/TopK_positions", { axis: 1, largest: 0, sorted: 1 }),
    makeNode("Slice", ["x", "one", "end", "axis1"], ["patches"], "proposal/Slice_patches"),
    makeNode("Slice", ["x", "zero", "one", "axis1"], ["cls"], "proposal/Slice_cls"),
    makeNode("GatherND", ["patches", "idx"], ["kept"], "proposal/GatherND", { batch_dims: 1 }),
    makeNode("Concat", ["cls", "kept"], ["y"], "proposal/Concat_tokens", { axis: 1 }),
  ];
  const initializer = [
    int64Tensor("axis1", [1]),
    int64Tensor("axis2", [2]),
    int64Tensor("k", [k]),
    int64Tensor("k_minus_1", [k - 1]),
    int64Tensor("zero", [0]),
    int64Tensor("one", [1]),
    int64Tensor("end", [n + 1]),
    floatTensor("pos", positions, [1, n, 1]),
    floatTensor("pos_plus_n", positions.map((p) => p + n), [1, n, 1]),
  ];
  const graph = create(GraphProtoSchema, {
    name: "int64_free_selection",
    node: nodes,
    initializer,
    input: [valueInfo("x", DT.FLOAT, ["batch", n + 1, d]), valueInfo("scores", DT.FLOAT, ["batch", n])],
    output: [valueInfo("y", DT.FLOAT, ["batch", k + 1, d]), valueInfo("idx", DT.INT64, ["batch", k, 1])],
  });
  return encodeModel(create(ModelProtoSchema, { irVersion: 8n, opsetImport: [create(OperatorSetIdProtoSchema, { domain: "", version: 17n })], graph }));
}
