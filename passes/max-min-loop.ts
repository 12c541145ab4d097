/**
 * The greedy max-min step shared by DivPrune's `diversity` (passes/criteria/diversity.ts) and
 * VLA-Pruner's candidate filter (passes/max-min-subset.ts): pick the column of largest running
 * minimum distance, fold that pick's row into the running minimum, repeat; as an ONNX Loop whose
 * trip count is a tensor (static or run time).
 */
import { create } from "@bufbuild/protobuf";
import {
  AttributeProtoSchema,
  AttributeProto_AttributeType as AT,
  GraphProtoSchema,
  TensorProtoSchema,
  TensorProto_DataType as DT,
} from "../src/onnx/gen/onnx_pb.js";
import { valueInfo } from "../src/ir/value-info.js";
import { NodeBuilder } from "./builder.js";

/** D[b, i[b], :] for picks i int64 [B,1]: [B,N]. */
export function row(b: NodeBuilder, dist: string, i: string): string {
  return b.op("GatherND", [dist, i], { batch_dims: 1 }, "row");
}

export function argmax(b: NodeBuilder, d: string, label: string): string {
  return b.op("ArgMax", [d], { axis: 1, keepdims: 1, select_last_index: 0 }, label); // [B,1], first maximum
}

/** Loop of `steps` (int64 scalar, run time) iterations over the running min d0 [B,N]: the picks, int64 [B, steps]. */
export function selectionLoop(b: NodeBuilder, dist: string, d0: string, steps: string): string {
  const body = new NodeBuilder(`${b.prefix}/loop_body`, b.opset);
  const [iter, condIn, dIn] = ["iteration", "cond_in", "d_in"].map((s) => `${b.prefix}/loop_body/${s}`) as [
    string,
    string,
    string,
  ];
  const pick = argmax(body, dIn, "pick");
  const dOut = body.op("Min", [dIn, row(body, dist, pick)], {}, "running_min");
  const condOut = body.op("Identity", [condIn], {}, "cond");
  const graph = create(GraphProtoSchema, {
    name: `${b.prefix}/loop_body`,
    node: body.nodes,
    initializer: body.initializers,
    input: [
      valueInfo(iter, DT.INT64, []),
      valueInfo(condIn, DT.BOOL, []),
      valueInfo(dIn, DT.FLOAT, [undefined, undefined]),
    ],
    output: [
      valueInfo(condOut, DT.BOOL, []),
      valueInfo(dOut, DT.FLOAT, [undefined, undefined]),
      valueInfo(pick, DT.INT64, [undefined, 1]),
    ],
  });
  const cond = `${b.prefix}/true_${b.nodes.length}`;
  b.initializers.push(
    create(TensorProtoSchema, { name: cond, dataType: DT.BOOL, dims: [], rawData: new Uint8Array([1]) }),
  );
  const [, scanned] = b.opN("Loop", [steps, cond, d0], 2); // d after the loop (unused), picks [steps, B, 1]
  const loop = b.nodes[b.nodes.length - 1]!;
  loop.attribute.push(create(AttributeProtoSchema, { name: "body", type: AT.GRAPH, g: graph }));
  return b.op("Transpose", [b.squeeze(scanned!, [2])], { perm: [1, 0] }, "loop_picks"); // [B, steps]
}
