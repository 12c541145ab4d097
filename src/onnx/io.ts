/**
 * Lossless ONNX model I/O. @bufbuild/protobuf keeps unknown fields (fields newer than our schema
 * survive a round trip) and decodes `bytes` fields as views into the input buffer, so weights are
 * never copied. A round-trip test over every shared model checks byte equality.
 */
import { create, fromBinary, toBinary, type Message } from "@bufbuild/protobuf";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";
import {
  GraphProtoSchema,
  ModelProtoSchema,
  TensorProtoSchema,
  type ModelProto,
  type TensorProto,
} from "./gen/onnx_pb.js";
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

/**
 * Encode a model. Equal, byte for byte, to `toBinary(ModelProtoSchema, model)`, but weights are
 * copied once: @bufbuild/protobuf re-concatenates every nested message on the way out (tensor,
 * graph, model: three copies of all weights), so the model, graph and initializer envelopes are
 * written here as segments around each raw_data view, and the segments are laid into one buffer.
 * Fields go in field-number order with unknown fields last, as protobuf serializers write them.
 */
export function encodeModel(model: ModelProto): Uint8Array {
  return concat(encodeModelParts(model));
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A tensor whose raw_data is at least this long is written as a view of it, not copied. */
const VIEW_BYTES = 4096;

/** The encoded model as consecutive segments (weights are views into the decoded input). */
export function encodeModelParts(model: ModelProto): Uint8Array[] {
  const graph = model.graph;
  if (!graph) return [toBinary(ModelProtoSchema, model)];
  const graphParts: Uint8Array[] = [toBinary(GraphProtoSchema, pick(GraphProtoSchema, graph, ["node", "name"], false))];
  // Small tensors are encoded whole, a run of them at once: splitting each one around its bytes
  // cost more than copying them (a graph-only decoder has hundreds of empty initializers).
  let small: TensorProto[] = [];
  const flush = () => {
    if (small.length) graphParts.push(toBinary(GraphProtoSchema, create(GraphProtoSchema, { initializer: small })));
    small = [];
  };
  for (const t of graph.initializer) {
    if (t.rawData.length < VIEW_BYTES) small.push(t);
    else {
      flush();
      graphParts.push(...field(5, tensorParts(t)));
    }
  }
  flush();
  graphParts.push(
    toBinary(
      GraphProtoSchema,
      pick(
        GraphProtoSchema,
        graph,
        ["docString", "input", "output", "valueInfo", "quantizationAnnotation", "sparseInitializer", "metadataProps"],
        true,
      ),
    ),
  );
  return [
    toBinary(
      ModelProtoSchema,
      pick(
        ModelProtoSchema,
        model,
        ["irVersion", "producerName", "producerVersion", "domain", "modelVersion", "docString"],
        false,
      ),
    ),
    ...field(7, graphParts),
    toBinary(
      ModelProtoSchema,
      pick(
        ModelProtoSchema,
        model,
        ["opsetImport", "metadataProps", "trainingInfo", "functions", "configuration"],
        true,
      ),
    ),
  ];
}

/** A tensor as segments: fields before raw_data, the raw_data field (a view, not a copy), the rest. */
function tensorParts(t: TensorProto): Uint8Array[] {
  const head = toBinary(
    TensorProtoSchema,
    pick(
      TensorProtoSchema,
      t,
      ["dims", "dataType", "segment", "floatData", "int32Data", "stringData", "int64Data", "name"],
      false,
    ),
  );
  const tail = toBinary(
    TensorProtoSchema,
    pick(
      TensorProtoSchema,
      t,
      ["doubleData", "uint64Data", "docString", "externalData", "dataLocation", "metadataProps"],
      true,
    ),
  );
  if (!Object.hasOwn(t, "rawData")) return [head, tail];
  return [head, ...field(9, [t.rawData]), tail];
}

/** A length-delimited field (wire type 2) around the given segments. */
function field(number: number, parts: Uint8Array[]): Uint8Array[] {
  let len = parts.reduce((n, p) => n + p.length, 0);
  const key: number[] = [];
  for (let v = (number << 3) | 2; ; ) {
    key.push(v > 0x7f ? (v & 0x7f) | 0x80 : v);
    if (v <= 0x7f) break;
    v >>>= 7;
  }
  for (;;) {
    key.push(len > 0x7f ? (len & 0x7f) | 0x80 : len);
    if (len <= 0x7f) break;
    len = Math.floor(len / 128);
  }
  return [Uint8Array.from(key), ...parts];
}

/** A new message of `m`'s type with only `fields` copied (proto2 presence kept), plus unknown fields if asked. */
function pick<T extends Message>(schema: GenMessage<T>, m: T, fields: (keyof T & string)[], unknown: boolean): T {
  const copy = create(schema) as Record<string, unknown>;
  const src = m as Record<string, unknown>;
  for (const f of fields) if (Object.hasOwn(src, f)) copy[f] = src[f];
  if (unknown && src["$unknown"] !== undefined) copy["$unknown"] = src["$unknown"];
  return copy as T;
}
