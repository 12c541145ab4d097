/**
 * Large and pathological graphs built in code (issue 13: analysis must be linear in graph size):
 * a small unfused pre-norm ViT whose layer is replicated many times, fed by a long chain of Adds
 * or by a "diamond ladder" (each node reading the previous two: 2^k paths through k levels, which
 * makes any walk without memoisation exponential). All layers share their weights, so a 100k-node
 * model stays a few hundred kilobytes.
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

export interface BigVitOptions {
  layers: number;
  /** Adds chained on the input before the patch embedding (a long chain). */
  chain?: number;
  /** Levels of a diamond ladder on the input before the patch embedding. */
  ladder?: number;
  /** Levels of a diamond ladder inside layer 0's MLP branch (between its two MatMuls). */
  mlpLadder?: number;
  /** Levels of a diamond ladder computing layer 0's attention scale from its constant (no activation on any path). */
  scaleLadder?: number;
}

/** Patches, features per patch, hidden size, heads: tokens are patches + 1 (CLS). */
export const BIG_VIT = { patches: 4, features: 6, hidden: 8, heads: 2, classes: 3 } as const;

/** Nodes per transformer layer (see `layer` below). */
export const NODES_PER_LAYER = 21;

export function buildBigVit(o: BigVitOptions): Uint8Array {
  const { patches, features, hidden: d, heads, classes } = BIG_VIT;
  const hd = d / heads;
  const rand = mulberry32(11);
  const nodes: NodeProto[] = [];
  const inits: TensorProto[] = [];
  const weight = (name: string, dims: number[], std = 0.3, mean = 0): string => {
    const size = dims.reduce((a, b) => a * b, 1);
    inits.push(
      floatTensor(
        name,
        Array.from({ length: size }, () => mean + std * (2 * rand() - 1)),
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
  ): string => {
    const out = `${name}_output_0`;
    nodes.push(makeNode(op, inputs, [out], name, attrs));
    return out;
  };
  const ladder = (prefix: string, x: string, levels: number): string => {
    // y_k = Add(y_{k-1}, y_{k-2}) · ½ keeps the values bounded; every level reads the previous two.
    let [a, b] = [x, node("Identity", `${prefix}/ladder_start`, [x])];
    for (let k = 0; k < levels; k++)
      [a, b] = [
        b,
        node("Mul", `${prefix}/ladder_${k}/Mul`, [node("Add", `${prefix}/ladder_${k}/Add`, [a, b]), "half"]),
      ];
    return b;
  };
  inits.push(floatTensor("half", [0.5], []));

  let x = "pixel_values";
  for (let k = 0; k < (o.chain ?? 0); k++) x = node("Add", `/input_chain/Add_${k}`, [x, "chain.bias"]);
  if (o.chain) weight("chain.bias", [features], 0);
  if (o.ladder) x = ladder("/input_ladder", x, o.ladder);

  const emb = node("MatMul", "/embeddings/patch/MatMul", [x, weight("embeddings.patch.weight", [features, d])]);
  const batch = node("Slice", "/embeddings/batch", [
    node("Shape", "/embeddings/Shape", [emb]),
    ints("zero", [0]),
    ints("one", [1]),
  ]);
  const clsShape = node("Concat", "/embeddings/cls_shape", [batch, ints("one_hidden", [1, d])], { axis: 0 });
  const cls = node("Expand", "/embeddings/cls_expand", [weight("class_token", [1, 1, d]), clsShape]);
  const tokens = node("Concat", "/embeddings/Concat", [cls, emb], { axis: 1 });
  x = node("Add", "/embeddings/pos/Add", [tokens, weight("pos_embedding", [1, patches + 1, d])]);

  // One layer's weights, shared by every layer.
  const w = {
    ln1: [weight("ln_1.weight", [d], 0.05, 1), weight("ln_1.bias", [d], 0.02)],
    ln2: [weight("ln_2.weight", [d], 0.05, 1), weight("ln_2.bias", [d], 0.02)],
    q: weight("q.weight", [d, d], 1),
    k: weight("k.weight", [d, d], 1),
    v: weight("v.weight", [d, d]),
    o: weight("out.weight", [d, d]),
    fc1: weight("fc1.weight", [d, 2 * d]),
    fc2: weight("fc2.weight", [2 * d, d]),
    heads: ints("heads_shape", [0, 0, heads, hd]),
    merged: ints("merged_shape", [0, 0, d]),
    scale: weight("scale", [1], 0, 1 / Math.sqrt(hd)),
  };
  for (let l = 0; l < o.layers; l++) {
    const p = `/encoder/layers.${l}`;
    const ln1 = node("LayerNormalization", `${p}/ln_1/LayerNormalization`, [x, ...w.ln1], {
      axis: -1,
      epsilon: { float: 1e-5 },
    });
    const split = (name: string, weightName: string, perm: number[]) =>
      node(
        "Transpose",
        `${p}/attn/${name}/Transpose`,
        [
          node("Reshape", `${p}/attn/${name}/Reshape`, [
            node("MatMul", `${p}/attn/${name}/MatMul`, [ln1, weightName]),
            w.heads,
          ]),
        ],
        { perm },
      );
    const q = split("q", w.q, [0, 2, 1, 3]);
    const k = split("k", w.k, [0, 2, 3, 1]);
    const v = split("v", w.v, [0, 2, 1, 3]);
    const qk = node("MatMul", `${p}/attn/MatMul`, [q, k]);
    // The ladder's scale comes first, so the search for Q·Kᵀ asks whether it is an activation before finding the MatMul.
    const scores = node(
      "Mul",
      `${p}/attn/Mul`,
      l === 0 && o.scaleLadder ? [ladder(`${p}/attn/scale`, w.scale, o.scaleLadder), qk] : [qk, w.scale],
    );
    const probs = node("Softmax", `${p}/attn/Softmax`, [scores], { axis: -1 });
    const ctx = node("MatMul", `${p}/attn/MatMul_1`, [probs, v]);
    const merged = node("Reshape", `${p}/attn/Reshape`, [
      node("Transpose", `${p}/attn/Transpose`, [ctx], { perm: [0, 2, 1, 3] }),
      w.merged,
    ]);
    const mid = node("Add", `${p}/Add`, [x, node("MatMul", `${p}/attn/out/MatMul`, [merged, w.o])]);
    const ln2 = node("LayerNormalization", `${p}/ln_2/LayerNormalization`, [mid, ...w.ln2], {
      axis: -1,
      epsilon: { float: 1e-5 },
    });
    let h = node("Relu", `${p}/mlp/Relu`, [node("MatMul", `${p}/mlp/fc1/MatMul`, [ln2, w.fc1])]);
    if (l === 0 && o.mlpLadder) h = ladder(`${p}/mlp`, h, o.mlpLadder);
    x = node("Add", `${p}/Add_1`, [mid, node("MatMul", `${p}/mlp/fc2/MatMul`, [h, w.fc2])]);
  }
  const normed = node(
    "LayerNormalization",
    "/encoder/ln/LayerNormalization",
    [x, weight("ln.weight", [d], 0.05, 1), weight("ln.bias", [d], 0.02)],
    { axis: -1, epsilon: { float: 1e-5 } },
  );
  const first = node("Gather", "/head/Gather", [normed, ints("cls_index", [0])], { axis: 1 });
  const logits = node("MatMul", "/head/MatMul", [
    node("Squeeze", "/head/Squeeze", [first, ints("squeeze_axes", [1])]),
    weight("head.weight", [d, classes]),
  ]);
  nodes.push(makeNode("Identity", [logits], ["logits"], "/head/Identity"));

  const graph = create(GraphProtoSchema, {
    name: "big-vit",
    node: nodes,
    initializer: inits,
    input: [valueInfo("pixel_values", 1, ["batch", patches, features])],
    output: [valueInfo("logits", 1, ["batch", classes])],
  });
  return encodeModel(
    create(ModelProtoSchema, {
      irVersion: 8n,
      producerName: "prunec-test",
      opsetImport: [create(OperatorSetIdProtoSchema, { domain: "", version: 17n })],
      graph,
    }),
  );
}
