/** Models with external data, built from an embedded model with the repo's own ONNX I/O (no Python needed). */
import { create } from "@bufbuild/protobuf";
import {
  StringStringEntryProtoSchema,
  TensorProto_DataLocation,
  type TensorProto,
} from "../../src/onnx/gen/onnx_pb.js";
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { shallowCopy } from "../../src/ir/copy.js";

/** The model with every initializer over 1 KiB moved to `location` (offsets in file order). */
export function externalize(bytes: Uint8Array, location = "weights.bin"): { model: Uint8Array; weights: Uint8Array } {
  const m = decodeModel(bytes);
  const chunks: Uint8Array[] = [];
  let offset = 0;
  const initializer = m.graph!.initializer.map((t): TensorProto => {
    if (t.rawData.length <= 1024) return t;
    const entry = (key: string, value: string) => create(StringStringEntryProtoSchema, { key, value });
    const moved = shallowCopy(t, {
      rawData: new Uint8Array(),
      dataLocation: TensorProto_DataLocation.EXTERNAL,
      externalData: [
        entry("location", location),
        entry("offset", String(offset)),
        entry("length", String(t.rawData.length)),
      ],
    });
    delete (moved as { rawData?: Uint8Array }).rawData;
    chunks.push(t.rawData);
    offset += t.rawData.length;
    return moved;
  });
  const weights = new Uint8Array(offset);
  let at = 0;
  for (const c of chunks) {
    weights.set(c, at);
    at += c.length;
  }
  return { model: encodeModel(shallowCopy(m, { graph: shallowCopy(m.graph!, { initializer }) })), weights };
}
