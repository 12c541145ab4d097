/**
 * Lossless ONNX model I/O. @bufbuild/protobuf keeps unknown fields (fields newer than our schema
 * survive a round trip) and decodes `bytes` fields as views into the input buffer, so weights are
 * never copied. A round-trip test over every shared model checks byte equality.
 */
import { create, fromBinary, toBinary, type Message } from "@bufbuild/protobuf";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import {
  GraphProtoSchema,
  ModelProtoSchema,
  TensorProtoSchema,
  type ModelProto,
  type NodeProto,
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
 * Each main-graph node of `model` (decoded from `bytes`) with its field there: key, length and
 * message, a view of `bytes`. Empty when the bytes are laid out otherwise than one graph field
 * holding one node field per node (a message field may legally come in parts, which merge).
 * For encodeModelParts: a node a compile kept is written as these bytes instead of being encoded.
 */
export function nodeFields(model: ModelProto, bytes: Uint8Array): ReadonlyMap<NodeProto, Uint8Array> {
  const out = new Map<NodeProto, Uint8Array>();
  const nodes = model.graph?.node ?? [];
  if (!nodes.length) return out;
  const graphs = lengthDelimited(bytes, 0, bytes.length, 7);
  if (graphs?.length !== 1) return out;
  const g = graphs[0]!;
  const fields = lengthDelimited(bytes, g.body, g.end, 1);
  if (fields?.length !== nodes.length) return out;
  fields.forEach((f, i) => out.set(nodes[i]!, bytes.subarray(f.start, f.end)));
  return out;
}

/**
 * The occurrences of length-delimited field `number` among the fields in bytes[from, to): where each
 * starts (its key), where its body starts, where it ends; read with @bufbuild/protobuf's own wire
 * reader. Undefined for anything it cannot read (a length past the end): the caller then
 * re-encodes, as it always may.
 */
function lengthDelimited(
  bytes: Uint8Array,
  from: number,
  to: number,
  number: number,
): { start: number; body: number; end: number }[] | undefined {
  const found: { start: number; body: number; end: number }[] = [];
  const reader = new BinaryReader(bytes.subarray(from, to));
  try {
    while (reader.pos < reader.len) {
      const start = reader.pos;
      const [no, wire] = reader.tag();
      if (no !== number || wire !== WireType.LengthDelimited) {
        reader.skip(wire, no);
        continue;
      }
      const len = reader.uint32();
      const body = reader.pos;
      reader.pos += len;
      if (reader.pos > reader.len) return undefined;
      found.push({ start: from + start, body: from + body, end: from + reader.pos });
    }
  } catch {
    return undefined;
  }
  return found;
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

/**
 * The encoded model as consecutive segments (weights are views into the decoded input).
 * `kept`: nodes with the bytes they were decoded from (`nodeFields`), written as those bytes, not
 * encoded. Pre: none of them was changed since it was decoded. compile() passes its input's: its
 * passes never mutate a node (they copy), and ~90% of a compiled model's nodes are the input's,
 * whose encoding was most of a cold process's encode step. The same bytes as encoding them, for an
 * input written in field order as serializers write.
 */
export function encodeModelParts(
  model: ModelProto,
  kept: ReadonlyMap<NodeProto, Uint8Array> = new Map(),
): Uint8Array[] {
  const graph = model.graph;
  if (!graph) return [toBinary(ModelProtoSchema, model)];
  const graphParts: Uint8Array[] = [];
  // Runs of nodes to encode go at once, between kept nodes' own bytes.
  let fresh: NodeProto[] = [];
  const flushNodes = () => {
    if (fresh.length) graphParts.push(toBinary(GraphProtoSchema, create(GraphProtoSchema, { node: fresh })));
    fresh = [];
  };
  for (const n of graph.node) {
    const bytes = kept.get(n);
    if (!bytes) fresh.push(n);
    else {
      flushNodes();
      graphParts.push(bytes);
    }
  }
  flushNodes();
  graphParts.push(toBinary(GraphProtoSchema, pick(GraphProtoSchema, graph, ["name"], false)));
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
