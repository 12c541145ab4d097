/**
 * A small pre-norm ViT built in code whose attention is com.microsoft.MultiHeadAttention (the
 * layout transformers.js exports use: q, k, v as [batch, tokens, heads·head_size]), with a learned
 * CLS token, so that cls-attn and global-attn can be tested behind fused attention. Options add
 * the op's packed q|k|v bias input and an additive attention_bias [1, 1, N, N].
 * Weights come from mulberry32(seed); q/k weights are large enough that attention is far from
 * uniform (no near-ties between token scores).
 */
import { create } from "@bufbuild/protobuf";
import {
  GraphProtoSchema,
  ModelProtoSchema,
  OperatorSetIdProtoSchema,
  type NodeProto,
  type TensorProto,
} from "../../src/onnx/gen/onnx_pb.js";
import { encodeModel } from "../../src/onnx/io.js";
import { makeNode, type AttrValue } from "../../src/ir/graph.js";
import { floatTensor, int64Tensor } from "../../src/onnx/tensor.js";
import { valueInfo } from "../../src/ir/value-info.js";
import { mulberry32 } from "../../src/random.js";
import type { Feeds } from "../helpers/ort.js";

export interface FusedVitOptions {
  layers: number;
  patches: number;
  hidden: number;
  heads: number;
  /** Input features per patch (the patch embedding is one MatMul). */
  inputs: number;
  classes: number;
  qkvBias: boolean;
  attentionBias: boolean;
  seed: number;
}

export const FUSED_VIT: FusedVitOptions = {
  layers: 3,
  patches: 36,
  hidden: 32,
  heads: 4,
  inputs: 12,
  classes: 5,
  qkvBias: true,
  attentionBias: true,
  seed: 7,
};

export function buildFusedVit(o: FusedVitOptions = FUSED_VIT): Uint8Array {
  const rand = mulberry32(o.seed);
  const nodes: NodeProto[] = [];
  const inits: TensorProto[] = [];
  const n = o.patches + 1;
  const d = o.hidden;
  const weight = (name: string, dims: number[], std: number, mean = 0): string => {
    const size = dims.reduce((a, b) => a * b, 1);
    inits.push(
      floatTensor(
        name,
        Array.from({ length: size }, () => mean + std * (2 * rand() - 1) * Math.sqrt(3)),
        dims,
      ),
    );
    return name;
  };
  const ints = (name: string, values: number[]): string => {
    inits.push(int64Tensor(name, values));
    return name;
  };
  const node = (
    op: string,
    name: string,
    inputs: string[],
    attrs: Record<string, AttrValue | { float: number }> = {},
    domain = "",
  ): string => {
    const out = `${name}/output_0`;
    nodes.push(makeNode(op, inputs, [out], name, attrs, domain));
    return out;
  };
  const linear = (name: string, x: string, inDim: number, outDim: number, std: number): string =>
    node("Add", `${name}/Add`, [
      node("MatMul", `${name}/MatMul`, [x, weight(`${name}.weight`, [inDim, outDim], std)]),
      weight(`${name}.bias`, [outDim], 0.02),
    ]);
  const layerNorm = (name: string, x: string): string =>
    node("LayerNormalization", name, [x, weight(`${name}.weight`, [d], 0.05, 1), weight(`${name}.bias`, [d], 0.02)], {
      axis: -1,
      epsilon: { float: 1e-5 },
    });

  const embedded = node("MatMul", "/embeddings/patch/MatMul", [
    "patches",
    weight("embeddings.patch.weight", [o.inputs, d], 0.5),
  ]);
  const batch = node("Slice", "/embeddings/batch", [
    node("Shape", "/embeddings/Shape", ["patches"]),
    ints("zero", [0]),
    ints("one", [1]),
  ]);
  const clsShape = node("Concat", "/embeddings/cls_shape", [batch, ints("one_hidden", [1, d])], { axis: 0 });
  const cls = node("Expand", "/embeddings/cls_expand", [weight("embeddings.cls_token", [1, 1, d], 1), clsShape]);
  const tokens = node("Concat", "/embeddings/Concat", [cls, embedded], { axis: 1 });
  let x = node("Add", "/embeddings/Add", [tokens, weight("embeddings.position", [1, n, d], 0.5)]);

  for (let l = 0; l < o.layers; l++) {
    const p = `/encoder/layers.${l}`;
    const h = layerNorm(`${p}/norm1`, x);
    const q = linear(`${p}/attn/q`, h, d, d, 0.6);
    const k = linear(`${p}/attn/k`, h, d, d, 0.6);
    const v = linear(`${p}/attn/v`, h, d, d, 0.2);
    const mhaInputs = [
      q,
      k,
      v,
      o.qkvBias ? weight(`${p}.attn.qkv_bias`, [3 * d], 0.3) : "",
      "",
      o.attentionBias ? weight(`${p}.attn.attention_bias`, [1, 1, n, n], 1) : "",
    ];
    const attn = node("MultiHeadAttention", `${p}/attn/mha`, mhaInputs, { num_heads: o.heads }, "com.microsoft");
    x = node("Add", `${p}/Add`, [x, linear(`${p}/attn/out`, attn, d, d, 0.2)]);
    const m = node("Relu", `${p}/mlp/Relu`, [linear(`${p}/mlp/fc1`, layerNorm(`${p}/norm2`, x), d, 2 * d, 0.2)]);
    x = node("Add", `${p}/Add_1`, [x, linear(`${p}/mlp/fc2`, m, 2 * d, d, 0.2)]);
  }
  const clsOut = node("Gather", "/head/cls", [layerNorm("/encoder/norm", x), ints("cls_index", [0])], { axis: 1 });
  const squeezed = node("Squeeze", "/head/Squeeze", [clsOut, ints("squeeze_axis", [1])]);
  nodes.push(makeNode("MatMul", [squeezed, weight("head.weight", [d, o.classes], 0.3)], ["logits"], "/head/MatMul"));

  const graph = create(GraphProtoSchema, {
    name: "fused-vit",
    node: nodes,
    initializer: inits,
    input: [valueInfo("patches", 1, ["batch", o.patches, o.inputs])],
    output: [valueInfo("logits", 1, ["batch", o.classes])],
  });
  const opsetImport = [
    create(OperatorSetIdProtoSchema, { domain: "", version: 17n }),
    create(OperatorSetIdProtoSchema, { domain: "com.microsoft", version: 1n }),
  ];
  return encodeModel(create(ModelProtoSchema, { irVersion: 8n, opsetImport, producerName: "prunec-test", graph }));
}

/** Deterministic `patches` input [batch, FUSED_VIT.patches, FUSED_VIT.inputs] for the default fused ViT. */
export function fusedVitFeeds(batch: number): Feeds {
  const size = FUSED_VIT.patches * FUSED_VIT.inputs;
  const data = new Float32Array(batch * size);
  for (let b = 0; b < batch; b++)
    for (let i = 0; i < size; i++) data[b * size + i] = Math.sin(i * 0.37 + b * 1.9) * (1.5 - 0.3 * b);
  return { patches: { type: "float32", dims: [batch, FUSED_VIT.patches, FUSED_VIT.inputs], data } };
}
