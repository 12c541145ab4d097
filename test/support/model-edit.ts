/** Test-only model edits: expose intermediate tensors (e.g. a layer's attention probabilities) as outputs; scale a weight. */
import { create } from "@bufbuild/protobuf";
import {
  OperatorSetIdProtoSchema,
  TensorProto_DataType as DT,
  TypeProtoSchema,
  TypeProto_TensorSchema,
  ValueInfoProtoSchema,
} from "../../src/onnx/gen/onnx_pb.js";
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { shallowCopy } from "../../src/ir/copy.js";
import { floatTensor, readNumbers } from "../../src/onnx/tensor.js";
import { makeNode } from "../../src/ir/graph.js";
import { valueInfo } from "../../src/ir/value-info.js";

export function withOutputs(modelBytes: Uint8Array, names: string[], elemType = 1): Uint8Array {
  const model = decodeModel(modelBytes);
  const g = model.graph!;
  const extra = names.map((name) =>
    create(ValueInfoProtoSchema, {
      name,
      type: create(TypeProtoSchema, {
        value: { case: "tensorType", value: create(TypeProto_TensorSchema, { elemType }) },
      }),
    }),
  );
  return encodeModel(shallowCopy(model, { graph: shallowCopy(g, { output: [...g.output, ...extra] }) }));
}

/** The model with graph outputs declared with the given dims (a number, or a symbol's name), as an exporter may declare them. */
export function declaring(modelBytes: Uint8Array, dims: Record<string, (number | string)[]>): Uint8Array {
  const model = decodeModel(modelBytes);
  const g = model.graph!;
  for (const name of Object.keys(dims))
    if (!g.output.some((o) => o.name === name)) throw new Error(`no graph output '${name}'`);
  const output = g.output.map((o) => {
    const d = dims[o.name];
    const t = o.type?.value;
    return d && t?.case === "tensorType" ? valueInfo(o.name, t.value.elemType, d) : o;
  });
  return encodeModel(shallowCopy(model, { graph: shallowCopy(g, { output }) }));
}

/** The model with float initializer `name` multiplied by `factor`. */
export function scaleInitializer(modelBytes: Uint8Array, name: string, factor: number): Uint8Array {
  const model = decodeModel(modelBytes);
  const g = model.graph!;
  const initializer = g.initializer.map((t) => {
    if (t.name !== name) return t;
    const values = readNumbers(t, Number.POSITIVE_INFINITY);
    if (!values) throw new Error(`initializer '${name}' is not readable`);
    return floatTensor(
      name,
      values.map((x) => x * factor),
      t.dims.map(Number),
    );
  });
  if (!g.initializer.some((t) => t.name === name)) throw new Error(`no initializer '${name}'`);
  return encodeModel(shallowCopy(model, { graph: shallowCopy(g, { initializer }) }));
}

/** [B*H, N, N] (batch-major heads) probabilities as nested arrays [B][H][N][N]. */
export function unfoldProbs(data: Float32Array, dims: number[], heads: number): number[][][][] {
  const [bh, n, m] = dims as [number, number, number];
  const batch = bh / heads;
  const out: number[][][][] = [];
  for (let b = 0; b < batch; b++) {
    const ex: number[][][] = [];
    for (let h = 0; h < heads; h++) {
      const mat: number[][] = [];
      for (let q = 0; q < n; q++) {
        const off = ((b * heads + h) * n + q) * m;
        mat.push(Array.from(data.subarray(off, off + m)));
      }
      ex.push(mat);
    }
    out.push(ex);
  }
  return out;
}

/** Rows of an int64 [B, K] tensor as number arrays. */
export function rows(data: BigInt64Array, dims: number[]): number[][] {
  const [b, k] = dims as [number, number];
  return Array.from({ length: b }, (_, i) => Array.from(data.subarray(i * k, (i + 1) * k), Number));
}

/**
 * The model with an extra output `test/nope` ([batch_size, 10]) computed from `logits` by an op
 * onnxruntime has no kernel for: prunec compiles it, and onnxruntime cannot load the result.
 */
export function unloadable(bytes: Uint8Array): Uint8Array {
  const m = decodeModel(bytes);
  const g = m.graph!;
  return encodeModel(
    shallowCopy(m, {
      opsetImport: [...m.opsetImport, create(OperatorSetIdProtoSchema, { domain: "test.nokernel", version: 1n })],
      graph: shallowCopy(g, {
        node: [...g.node, makeNode("Nope", ["logits"], ["test/nope"], "test/nope", {}, "test.nokernel")],
        output: [...g.output, valueInfo("test/nope", DT.FLOAT, ["batch_size", 10])],
      }),
    }),
  );
}
