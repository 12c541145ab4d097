/**
 * Reading a layer's attention keys (ToMe's matching metric, passes/merge-stage.ts): from the Q·Kᵀ
 * MatMul's right input (Kᵀ) of unfused attention, or MultiHeadAttention's key input (+ its bias).
 */
import type { LayerInfo } from "../../src/analysis/transformer.js";
import { attrInt, type NodeProto } from "../../src/ir/graph.js";
import type { NodeBuilder } from "../builder.js";
import type { Prepared } from "../criterion.js";
import { canonical, headLayout, type HeadLayout } from "./attention-map.js";

const FLOAT = 1;

/**
 * A layer's keys, proven readable: Kᵀ per head in the layer's layout ([B·H,D,N], [B,H,D,N] or
 * [H,D,N]), or MultiHeadAttention's separate key input [B,N,H·D] (its packed bias applied).
 */
export type Keys =
  | { kind: "matmul"; kt: string; layout: HeadLayout }
  | { kind: "MultiHeadAttention"; node: NodeProto; heads: number; headSize: number };

/** The keys of `layer`, or why they cannot be read. */
export function keysOf(layer: LayerInfo): Prepared<Keys> {
  const core = layer.core;
  if (!core)
    return {
      why: `layer ${layer.index} has no softmax attention (${layer.kind}), so it has no keys to match tokens on`,
    };
  if (core.probs) {
    if (!core.qk) return { why: `the Q·Kᵀ MatMul of layer ${layer.index} was not found, so its keys cannot be read` };
    if (core.qk.opType !== "MatMul")
      return {
        why: `layer ${layer.index} computes Q·Kᵀ with ${core.qk.opType} (node '${core.qk.name}'); similarity reads Kᵀ from a MatMul`,
      };
    const layout = headLayout(
      layer,
      `the layout of layer ${layer.index}'s attention ('${core.probs}') could not be determined, so its keys cannot be split into heads`,
    );
    if ("why" in layout) return layout;
    return { ok: { kind: "matmul", kt: core.qk.input[1]!, layout: layout.ok } };
  }
  const n = core.anchor;
  const where = `layer ${layer.index}'s fused com.microsoft.${core.kind} (node '${n.name}')`;
  if (core.kind !== "MultiHeadAttention")
    return { why: `${where} takes no separate key input prunec can read (only MultiHeadAttention's is read)` };
  if (!n.input[1])
    return { why: `${where} takes packed q/k/v in one tensor; prunec reads the keys from a separate key input only` };
  if (n.input[6] || n.input[7])
    return { why: `${where} reads a past key/value cache; prunec merges tokens in encoders without a cache` };
  if (attrInt(n, "unidirectional", 0) !== 0)
    return { why: `${where} is causal (unidirectional=1); merging tokens of a causal model is not supported` };
  if (!layer.heads || !layer.headSize)
    return { why: `the number of heads or the head size of ${where} could not be determined` };
  if (layer.fusedInputRank !== 3)
    return {
      why: `${where} takes keys of rank ${layer.fusedInputRank ?? "unknown"}; prunec reads [batch, sequence, heads·head_size] keys`,
    };
  return { ok: { kind: "MultiHeadAttention", node: n, heads: layer.heads, headSize: layer.headSize } };
}

/** The keys averaged over heads, fp32 [B,N,D] (B = 1 for batch-less layouts). */
export function headMeanKeys(b: NodeBuilder, keys: Keys): string {
  if (keys.kind === "matmul") {
    const kt = b.op("Cast", [keys.kt], { to: FLOAT }, "keys_fp32");
    const perHead = canonical(b, keys.layout, kt); // [B,H,D,N]
    const mean = b.reduceMean(perHead, [1], 0); // [B,D,N]
    return b.op("Transpose", [mean], { perm: [0, 2, 1] }, "keys_by_token"); // [B,N,D]
  }
  const n = keys.node;
  let k = b.op("Cast", [n.input[1]!], { to: FLOAT }, "keys_fp32");
  if (n.input[3]) {
    const width = keys.heads * keys.headSize;
    k = b.op(
      "Add",
      [k, b.slice(b.op("Cast", [n.input[3]], { to: FLOAT }, "qkv_bias_fp32"), 0, width, 2 * width)],
      {},
      "key_bias",
    );
  }
  const split = b.op("Reshape", [k, b.int64([0, 0, keys.heads, keys.headSize], [4], "heads_shape")], {}, "split_heads"); // [B,N,H,D]
  return b.reduceMean(split, [2], 0); // [B,N,D]
}
