/**
 * The attention maps criteria read, in one canonical layout: [batch, heads, queries, keys]
 * (batch 1 for batch-less models). Exporters lay attention out as [B·H,q,k] (torchvision),
 * [B,H,q,k], or [H,q,k] (batch-less Qwen2-VL); the per-head tensors (logits, values) of the same
 * layer share that layout, so one conversion serves them all.
 *
 * Criteria build on `probabilities` (softmax output, optionally only the CLS row), `logits` (the
 * softmax input: scaled q·kᵀ plus masks) and `values` ([B,H,N,D]).
 *
 * Fused com.microsoft.MultiHeadAttention never materializes probabilities, so they are recomputed
 * in fp32 from the op's own inputs (q and k after their projections and rotary), following the
 * op's definition: softmax(scale · q·kᵀ + attention_bias), scale defaulting to 1/√head_size. Only
 * the rows a criterion asks for are computed (one CLS row, or all of them for column means).
 */
import type { LayerInfo } from "../../src/analysis/transformer.js";
import { attrInt, attr } from "../../src/ir/graph.js";
import type { NodeBuilder } from "../builder.js";
import { gqaLogits, gqaUnavailable } from "./gqa-map.js";

const FLOAT = 1;

/** Why a layer's probabilities cannot be read or recomputed, or undefined when they can. */
export function probabilitiesUnavailable(layer: LayerInfo): string | undefined {
  const core = layer.core;
  if (!core) return `layer ${layer.index} has no softmax attention (${layer.kind})`;
  if (!core.probs) return recomputeUnavailable(layer);
  if (!layer.probsLayout) return `the layout of layer ${layer.index}'s attention probabilities ('${core.probs}') could not be determined`;
  if (layer.probsLayout === "batch*heads,q,k" && !layer.heads) return `the number of heads of layer ${layer.index} could not be determined`;
  return undefined;
}

/** A per-head tensor of the layer in the exporter's layout → [B,H,X,Y]. */
function canonical(b: NodeBuilder, layer: LayerInfo, t: string): string {
  switch (layer.probsLayout) {
    case "batch,heads,q,k":
      return t;
    case "heads,q,k":
      return b.unsqueeze(t, [0]);
    case "batch*heads,q,k": {
      // PyTorch folds heads batch-major (b·H + h). [B·H,1,X,Y] → [-1,H,0,0]: the zeros copy X and Y.
      const four = b.unsqueeze(t, [1]);
      return b.op("Reshape", [four, b.int64([-1, layer.heads!, 0, 0], [4], "heads_shape")], {}, "unfold_heads");
    }
    default:
      throw new Error(`unsupported attention layout ${String(layer.probsLayout)}`);
  }
}

/**
 * Attention probabilities [B,H,Q,N] of `layer`: all query rows, or only the CLS row (Q = 1).
 * Pre: probabilitiesUnavailable(layer) is undefined.
 */
export function probabilities(b: NodeBuilder, layer: LayerInfo, rows: "all" | "cls"): string {
  if (!layer.core!.probs) {
    if (layer.core!.kind === "GroupQueryAttention") {
      const probs = b.op("Softmax", [gqaLogits(b, layer)], { axis: -1 }, "recomputed_probs");
      return rows === "all" ? probs : b.op("Gather", [probs, b.int64([0], [1], "cls_row")], { axis: 2 }, "cls_query");
    }
    return b.op("Softmax", [recomputedLogits(b, layer, rows)], { axis: -1 }, "recomputed_probs");
  }
  const probs = canonical(b, layer, layer.core!.probs);
  if (rows === "all") return probs;
  return b.op("Gather", [probs, b.int64([0], [1], "cls_row")], { axis: 2 }, "cls_query");
}

/** The softmax input [B,H,N,N] of `layer` (scaled q·kᵀ with masks and biases applied). */
export function logits(b: NodeBuilder, layer: LayerInfo): string {
  if (!layer.core!.probs) return layer.core!.kind === "GroupQueryAttention" ? gqaLogits(b, layer) : recomputedLogits(b, layer, "all");
  return canonical(b, layer, layer.core!.anchor.input[0]!);
}

/** The values [B,H,N,D] that `layer`'s probabilities multiply (the P·V MatMul's right input). */
export function values(b: NodeBuilder, layer: LayerInfo): string {
  const core = layer.core!;
  if (core.kind === "GroupQueryAttention") throw new Error("values behind GroupQueryAttention are not recomputed (no criterion that reads them runs in decoders yet)");
  if (!core.probs) {
    let v = b.op("Cast", [core.anchor.input[2]!], { to: FLOAT }, "value_fp32");
    const bias = core.anchor.input[3];
    if (bias) {
      // The op adds bias[2W:3W] to v (bias = [3W], q|k|v).
      const width = layer.heads! * layer.headSize!;
      v = b.op("Add", [v, b.slice(b.op("Cast", [bias], { to: FLOAT }, "qkv_bias_fp32"), 0, 2 * width, 3 * width)], {}, "value_bias");
    }
    return splitHeads(b, layer, v, [0, 2, 1, 3]);
  }
  if (!core.pv) throw new Error(`layer ${layer.index} has no P·V MatMul`);
  return canonical(b, layer, core.pv.input[1]!);
}

/** Why a fused layer's attention cannot be recomputed from its inputs, or undefined. */
function recomputeUnavailable(layer: LayerInfo): string | undefined {
  const core = layer.core!;
  const n = core.anchor;
  const where = `layer ${layer.index}'s fused com.microsoft.${core.kind} (node '${n.name}')`;
  if (core.kind === "GroupQueryAttention") return gqaUnavailable(layer, where);
  if (core.kind !== "MultiHeadAttention") {
    return `${where} does not expose attention probabilities, and prunec recomputes them only behind MultiHeadAttention and GroupQueryAttention (${core.kind} takes packed projection weights)`;
  }
  if (!n.input[1] || !n.input[2]) return `${where} takes packed q/k/v in one tensor; prunec recomputes attention from separate q and k only`;
  if (n.input[4]) return `${where} has a key_padding_mask input, which prunec's recompute does not apply`;
  if (n.input[6] || n.input[7]) return `${where} reads a past key/value cache; prunec prunes encoders without a cache`;
  if (attrInt(n, "unidirectional", 0) !== 0) return `${where} is causal (unidirectional=1); prunec's recompute is bidirectional`;
  if (!layer.heads || !layer.headSize) return `the number of heads or the head size of ${where} could not be determined`;
  if (layer.fusedInputRank !== 3) return `${where} takes q/k of rank ${layer.fusedInputRank ?? "unknown"}; prunec recomputes attention from [batch, sequence, heads·head_size] inputs`;
  return undefined;
}

/** [B,S,H·D] → [B,S,H,D] → transposed by `perm`. */
function splitHeads(b: NodeBuilder, layer: LayerInfo, t: string, perm: number[]): string {
  const split = b.op("Reshape", [t, b.int64([0, 0, layer.heads!, layer.headSize!], [4], "heads_shape")], {}, "split_heads");
  return b.op("Transpose", [split], { perm }, "heads_first");
}

/**
 * scale·q·kᵀ (+ bias slices, + attention_bias) for MultiHeadAttention's inputs, in fp32, [B,H,Q,N]
 * with Q = 1 (the CLS row) or all rows.
 */
function recomputedLogits(b: NodeBuilder, layer: LayerInfo, rows: "all" | "cls"): string {
  const n = layer.core!.anchor;
  const width = layer.heads! * layer.headSize!;
  let q = b.op("Cast", [n.input[0]!], { to: FLOAT }, "query_fp32");
  let k = b.op("Cast", [n.input[1]!], { to: FLOAT }, "key_fp32");
  if (n.input[3]) {
    // The op adds bias[0:W] to q and bias[W:2W] to k (bias = [3W], q|k|v).
    const bias = b.op("Cast", [n.input[3]], { to: FLOAT }, "qkv_bias_fp32");
    q = b.op("Add", [q, b.slice(bias, 0, 0, width)], {}, "query_bias");
    k = b.op("Add", [k, b.slice(bias, 0, width, 2 * width)], {}, "key_bias");
  }
  if (rows === "cls") q = b.slice(q, 1, 0, 1);
  const qh = splitHeads(b, layer, q, [0, 2, 1, 3]); // [B,H,Q,D]
  const kt = splitHeads(b, layer, k, [0, 2, 3, 1]); // [B,H,D,N]
  const scaleAttr = attr(n, "scale")?.f;
  const scale = scaleAttr ? scaleAttr : 1 / Math.sqrt(layer.headSize!);
  const scores = b.op("Mul", [b.op("MatMul", [qh, kt], {}, "query_key"), b.float([scale], [], "scale")], {}, "scaled");
  if (!n.input[5]) return scores;
  let bias = b.op("Cast", [n.input[5]], { to: FLOAT }, "attention_bias_fp32"); // [B|1, H|1, S, N]
  if (rows === "cls") bias = b.slice(bias, 2, 0, 1);
  return b.op("Add", [scores, bias], {}, "with_attention_bias");
}

/**
 * Per-key scores [B,Np] from probabilities [B,H,Q,N]: `reduceQueries` reduces the query axis
 * (axis 2) to size 1; the special prefix keys are dropped and heads averaged.
 */
export function keyScores(b: NodeBuilder, probs: string, prefix: number, reduceQueries: (probs: string, queryAxis: number) => string): string {
  const cols = b.slice(reduceQueries(probs, 2), 3, prefix); // [B,H,1,Np]
  return b.reduceMean(cols, [1, 2], 0); // [B,Np]
}

/** Mean over heads of the CLS query's probabilities to the prunable keys, [B,Np]. */
export function clsRowScores(b: NodeBuilder, layer: LayerInfo, prefix: number): string {
  return keyScores(b, probabilities(b, layer, "cls"), prefix, (p) => p);
}
