/** Graph inputs as plain facts (element type name, rank) for spec checks. */
import { TensorProto_DataType, type GraphProto } from "../onnx/gen/onnx_pb.js";

/** A model input as the planner checks token-set masks against it. */
export interface InputFact {
  elemType: string;
  rank: number;
}

export function modelInputs(graph: GraphProto): Map<string, InputFact> {
  const out = new Map<string, InputFact>();
  for (const i of graph.input) {
    if (i.type?.value.case !== "tensorType") continue;
    const t = i.type.value.value;
    out.set(i.name, {
      elemType: (TensorProto_DataType[t.elemType] ?? "unknown").toLowerCase(),
      rank: t.shape?.dim.length ?? -1,
    });
  }
  return out;
}
