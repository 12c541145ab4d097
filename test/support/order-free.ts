/** A compiled model's order-free form (test/support/record-compiles.ts, scripts/compare-compiles.ts). */
import { toBinary } from "@bufbuild/protobuf";
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { NodeProtoSchema } from "../../src/onnx/gen/onnx_pb.js";

/**
 * The model's bytes with its main graph's nodes in the order of their own encodings and its
 * initializers and value_info by name: what stays when only the order of a list changed (a pass
 * appends the constants it folds in the order it meets their nodes).
 */
export function orderFree(bytes: Uint8Array): Uint8Array {
  const model = decodeModel(bytes);
  const graph = model.graph;
  if (!graph) return bytes;
  const keyed = graph.node.map((n) => ({ n, key: Buffer.from(toBinary(NodeProtoSchema, n)).toString("hex") }));
  keyed.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  graph.node = keyed.map((k) => k.n);
  const byName = <T extends { name: string }>(a: T, b: T) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  graph.initializer = [...graph.initializer].sort(byName);
  graph.valueInfo = [...graph.valueInfo].sort(byName);
  return encodeModel(model);
}
