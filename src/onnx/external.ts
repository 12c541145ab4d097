/**
 * External-data checks. prunec never reads or rewrites weight files: it keeps each initializer's
 * location/offset/length as they are, and refuses locations that would escape the model's folder.
 */
import {
  TensorProto_DataType as DT,
  type ModelProto,
  type TensorProto,
  type GraphProto,
  type AttributeProto,
} from "./gen/onnx_pb.js";
import { elementCount, isExternal } from "./tensor.js";
import { PrunecError } from "../errors.js";

export interface ExternalRef {
  tensor: string;
  location: string;
  offset?: string;
  length?: string;
  /** The tensor's size in bytes from its type and shape (what a reader needs when `length` is absent); undefined for strings and unknown types. */
  bytes?: number;
}

/** Bits per element of each fixed-width tensor type. */
const BITS: Partial<Record<DT, number>> = {
  [DT.FLOAT]: 32,
  [DT.UINT8]: 8,
  [DT.INT8]: 8,
  [DT.UINT16]: 16,
  [DT.INT16]: 16,
  [DT.INT32]: 32,
  [DT.INT64]: 64,
  [DT.BOOL]: 8,
  [DT.FLOAT16]: 16,
  [DT.DOUBLE]: 64,
  [DT.UINT32]: 32,
  [DT.UINT64]: 64,
  [DT.COMPLEX64]: 64,
  [DT.COMPLEX128]: 128,
  [DT.BFLOAT16]: 16,
  [DT.FLOAT8E4M3FN]: 8,
  [DT.FLOAT8E4M3FNUZ]: 8,
  [DT.FLOAT8E5M2]: 8,
  [DT.FLOAT8E5M2FNUZ]: 8,
  [DT.UINT4]: 4,
  [DT.INT4]: 4,
  [DT.FLOAT4E2M1]: 4,
  [DT.FLOAT8E8M0]: 8,
  [DT.UINT2]: 2,
  [DT.INT2]: 2,
};

function* graphTensors(g: GraphProto): Generator<TensorProto> {
  yield* g.initializer;
  for (const s of g.sparseInitializer) {
    if (s.values) yield s.values;
    if (s.indices) yield s.indices;
  }
  for (const n of g.node) for (const a of n.attribute) yield* attributeTensors(a);
}

function* attributeTensors(a: AttributeProto): Generator<TensorProto> {
  if (a.t) yield a.t;
  yield* a.tensors;
  if (a.g) yield* graphTensors(a.g);
  for (const sub of a.graphs) yield* graphTensors(sub);
}

/** Every external reference of the model, after checking that none escapes the model folder. */
export function checkExternalData(model: Pick<ModelProto, "graph">, source = "model"): ExternalRef[] {
  const refs: ExternalRef[] = [];
  if (!model.graph) return refs;
  for (const t of graphTensors(model.graph)) {
    if (!isExternal(t)) continue;
    const kv = new Map(t.externalData.map((e) => [e.key, e.value]));
    const location = kv.get("location");
    if (location === undefined || location === "") {
      throw new PrunecError("format", `${source}: initializer '${t.name}' has external data without a location`);
    }
    if (escapesFolder(location)) {
      throw new PrunecError(
        "format",
        `${source}: initializer '${t.name}' has external data location '${location}' outside the model's folder (absolute paths and '..' are not allowed)`,
      );
    }
    const ref: ExternalRef = { tensor: t.name, location };
    const offset = kv.get("offset");
    const length = kv.get("length");
    if (offset !== undefined) ref.offset = offset;
    if (length !== undefined) ref.length = length;
    const bits = BITS[t.dataType as DT];
    if (bits !== undefined) ref.bytes = Math.ceil((elementCount(t) * bits) / 8);
    refs.push(ref);
  }
  return refs;
}

function escapesFolder(location: string): boolean {
  if (location.startsWith("/") || location.startsWith("\\") || /^[A-Za-z]:/.test(location)) return true;
  return location.split(/[\\/]/).some((part) => part === "..");
}
