/**
 * Reading a layer's attention keys (ToMe's matching metric, passes/merge-stage.ts): from the Q·Kᵀ
 * MatMul's right input (Kᵀ) of unfused attention, or MultiHeadAttention's key input (+ its bias).
 */
import type { LayerInfo } from "../../src/analysis/transformer.js";
import { attrInt } from "../../src/ir/graph.js";
import type { NodeBuilder } from "../builder.js";

const FLOAT = 1;

/** Why the keys of `layer` cannot be read, or undefined when they can. */
export function keysUnavailable(layer: LayerInfo): string | undefined {
  const core = layer.core;
  if (!core) return `layer ${layer.index} has no softmax attention (${layer.kind}), so it has no keys to match tokens on`;
  if (core.probs) {
    if (!core.qk) return `the Q·Kᵀ MatMul of layer ${layer.index} was not found, so its keys cannot be read`;
    if (core.qk.opType !== "MatMul") return `layer ${layer.index} computes Q·Kᵀ with ${core.qk.opType} (node '${core.qk.name}'); similarity reads Kᵀ from a MatMul`;
    if (!layer.probsLayout) return `the layout of layer ${layer.index}'s attention ('${core.probs}') could not be determined, so its keys cannot be split into heads`;
    if (layer.probsLayout === "batch*heads,q,k" && !layer.heads) return `the number of heads of layer ${layer.index} could not be determined`;
    return undefined;
  }
  const n = core.anchor;
  const where = `layer ${layer.index}'s fused com.microsoft.${core.kind} (node '${n.name}')`;
  if (core.kind !== "MultiHeadAttention") return `${where} takes no separate key input prunec can read (only MultiHeadAttention's is read)`;
  if (!n.input[1]) return `${where} takes packed q/k/v in one tensor; prunec reads the keys from a separate key input only`;
  if (n.input[6] || n.input[7]) return `${where} reads a past key/value cache; prunec merges tokens in encoders without a cache`;
  if (attrInt(n, "unidirectional", 0) !== 0) return `${where} is causal (unidirectional=1); merging tokens of a causal model is not supported`;
  if (!layer.heads || !layer.headSize) return `the number of heads or the head size of ${where} could not be determined`;
  if (layer.fusedInputRank !== 3) return `${where} takes keys of rank ${layer.fusedInputRank ?? "unknown"}; prunec reads [batch, sequence, heads·head_size] keys`;
  return undefined;
}

/**
 * The layer's keys averaged over heads, fp32 [B,N,D] (B = 1 for batch-less layouts).
 * Pre: keysUnavailable(layer) is undefined.
 */
export function headMeanKeys(b: NodeBuilder, layer: LayerInfo): string {
  const core = layer.core!;
  if (core.probs) {
    const kt = b.op("Cast", [core.qk!.input[1]!], { to: FLOAT }, "keys_fp32");
    let perHead: string; // [B,H,D,N]
    if (layer.probsLayout === "batch,heads,q,k") perHead = kt;
    else if (layer.probsLayout === "heads,q,k") perHead = b.unsqueeze(kt, [0]);
    else {
      // [B·H,D,N], heads batch-major (b·H + h) → [B,H,D,N]: the zeros copy D and N.
      perHead = b.op("Reshape", [b.unsqueeze(kt, [1]), b.int64([-1, layer.heads!, 0, 0], [4], "heads_shape")], {}, "unfold_heads");
    }
    const mean = b.reduceMean(perHead, [1], 0); // [B,D,N]
    return b.op("Transpose", [mean], { perm: [0, 2, 1] }, "keys_by_token"); // [B,N,D]
  }
  const n = core.anchor;
  let k = b.op("Cast", [n.input[1]!], { to: FLOAT }, "keys_fp32");
  if (n.input[3]) {
    const width = layer.heads! * layer.headSize!;
    k = b.op("Add", [k, b.slice(b.op("Cast", [n.input[3]], { to: FLOAT }, "qkv_bias_fp32"), 0, width, 2 * width)], {}, "key_bias");
  }
  const split = b.op("Reshape", [k, b.int64([0, 0, layer.heads!, layer.headSize!], [4], "heads_shape")], {}, "split_heads"); // [B,N,H,D]
  return b.reduceMean(split, [2], 0); // [B,N,D]
}
