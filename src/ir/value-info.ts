/** ValueInfo helpers: building a tensor's declared type and shape, reading the batch symbol. */
import { create } from "@bufbuild/protobuf";
import {
  TypeProto_TensorSchema,
  TypeProtoSchema,
  TensorShapeProtoSchema,
  TensorShapeProto_DimensionSchema,
  ValueInfoProtoSchema,
  type GraphProto,
  type ValueInfoProto,
} from "../onnx/gen/onnx_pb.js";
import type { Dim } from "../analysis/dims.js";

/** The first graph input's leading dimension (the batch, for the models prunec prunes). */
export function batchDim(graph: GraphProto): Dim | undefined {
  const first = graph.input[0]?.type?.value;
  const d = first?.case === "tensorType" ? first.value.shape?.dim[0] : undefined;
  if (d?.value.case === "dimParam") return d.value.value;
  // A negative dim_value declares no size (onnxruntime takes any there).
  if (d?.value.case === "dimValue" && d.value.value >= 0n) return Number(d.value.value);
  return undefined;
}

export function valueInfo(name: string, elemType: number, dims: (Dim | undefined)[]): ValueInfoProto {
  // A number that is no exact int64 (inferred from malformed sizes) is declared unknown rather than failing to encode.
  const dim = dims.map((d) =>
    create(TensorShapeProto_DimensionSchema, {
      value:
        typeof d === "number" && Number.isSafeInteger(d)
          ? { case: "dimValue", value: BigInt(d) }
          : typeof d === "string"
            ? { case: "dimParam", value: d }
            : { case: undefined },
    }),
  );
  const tensorType = create(TypeProto_TensorSchema, { elemType, shape: create(TensorShapeProtoSchema, { dim }) });
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, { value: { case: "tensorType", value: tensorType } }),
  });
}
