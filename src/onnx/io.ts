/**
 * Lossless ONNX model I/O. @bufbuild/protobuf keeps unknown fields (fields newer than our schema
 * survive a round trip) and decodes `bytes` fields as views into the input buffer, so weights are
 * never copied. A round-trip test over every shared model checks byte equality.
 */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema, type ModelProto } from "./gen/onnx_pb.js";
import { PrunecError } from "../errors.js";

export type { ModelProto } from "./gen/onnx_pb.js";

/** Decode an ONNX ModelProto, or throw a PrunecError("format") naming `source`. */
export function decodeModel(bytes: Uint8Array, source = "model"): ModelProto {
  if (bytes.length === 0) throw new PrunecError("format", `${source}: empty file, expected an ONNX model`);
  let model: ModelProto;
  try {
    model = fromBinary(ModelProtoSchema, bytes);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    if (/premature EOF|out of range|index out of/i.test(why)) {
      throw new PrunecError("format", `${source}: truncated ONNX model (the protobuf data ends early: ${why})`);
    }
    throw new PrunecError("format", `${source}: not an ONNX model (protobuf decoding failed: ${why})`);
  }
  // Arbitrary bytes sometimes decode as a protobuf; a model needs an IR version, an opset and a graph.
  if (model.irVersion <= 0n || model.opsetImport.length === 0 || model.graph === undefined) {
    throw new PrunecError("format", `${source}: not an ONNX model (no ir_version, opset_import or graph)`);
  }
  return model;
}

export function encodeModel(model: ModelProto): Uint8Array {
  return toBinary(ModelProtoSchema, model);
}
