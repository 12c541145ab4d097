/**
 * The attention maps criteria read, in one canonical layout: [batch, heads, queries, keys]
 * (batch 1 for batch-less models). Exporters lay attention out as [B·H,q,k] (torchvision),
 * [B,H,q,k], or [H,q,k] (batch-less Qwen2-VL); the per-head tensors (logits, values) of the same
 * layer share that layout, so one conversion serves them all.
 *
 * A criterion's `prepare` proves a layer's attention readable with `attentionOf` (and its values
 * with `valuesOf`), which narrow the layer's optional facts or say why not; its scorer then builds
 * on `probabilities` (softmax output, optionally only the CLS row), `logits` (the softmax input:
 * scaled q·kᵀ plus masks) and `values` ([B,H,N,D]) of the proven attention.
 *
 * Fused com.microsoft.MultiHeadAttention never materializes probabilities, so they are recomputed
 * in fp32 from the op's own inputs (q and k after their projections and rotary), following the
 * op's definition: softmax(scale · q·kᵀ + attention_bias), scale defaulting to 1/√head_size. Only
 * the rows a criterion asks for are computed (one CLS row, or all of them for column means).
 */
import type { LayerInfo } from "../../src/analysis/transformer.js";
import type { AttentionCore } from "../../src/analysis/attention.js";
import { attrInt, attr, type NodeProto } from "../../src/ir/graph.js";
import type { NodeBuilder } from "../builder.js";
import type { Prepared } from "../criterion.js";
import { gqaAttention, gqaLogits, type GqaAttention } from "./gqa-map.js";

const FLOAT = 1;

/** How a layer's per-head tensors are laid out; a layout that folds heads into the batch carries the head count. */
export type HeadLayout =
  | { form: "batch,heads,q,k" }
  | { form: "heads,q,k" }
  | { form: "batch*heads,q,k"; heads: number };

/** Probabilities the graph materializes (MatMul + Softmax). */
export interface MaterializedAttention {
  kind: "materialized";
  index: number;
  /** The Softmax output and input (scaled q·kᵀ with masks and biases applied). */
  probs: string;
  logits: string;
  layout: HeadLayout;
  /** The P·V MatMul, when found. */
  pv: NodeProto | undefined;
}

/** com.microsoft.MultiHeadAttention with separate q/k/v of rank 3, whose probabilities prunec recomputes. */
export interface MhaAttention {
  kind: "MultiHeadAttention";
  index: number;
  node: NodeProto;
  heads: number;
  headSize: number;
}

/** A layer's attention, proven readable: materialized, or recomputed behind a fused op. */
export type Attention = MaterializedAttention | MhaAttention | GqaAttention;

/** The values [B,H,N,D] a layer's probabilities multiply: the P·V MatMul's right input, or MultiHeadAttention's value input. */
export type Values = { kind: "materialized"; tensor: string; layout: HeadLayout } | MhaAttention;

/** The per-head layout of `layer`, or `unknownLayout` when it could not be determined (or the head count a folded layout needs). */
export function headLayout(layer: LayerInfo, unknownLayout: string): Prepared<HeadLayout> {
  const form = layer.probsLayout;
  if (!form) return { why: unknownLayout };
  if (form !== "batch*heads,q,k") return { ok: { form } };
  if (!layer.heads) return { why: `the number of heads of layer ${layer.index} could not be determined` };
  return { ok: { form, heads: layer.heads } };
}

/** A layer's probabilities, readable or recomputable, or why they are not. */
export function attentionOf(layer: LayerInfo): Prepared<Attention> {
  const core = layer.core;
  if (!core) return { why: `layer ${layer.index} has no softmax attention (${layer.kind})` };
  if (!core.probs) return recomputed(layer, core);
  const layout = headLayout(
    layer,
    `the layout of layer ${layer.index}'s attention probabilities ('${core.probs}') could not be determined`,
  );
  if ("why" in layout) return layout;
  return {
    ok: {
      kind: "materialized",
      index: layer.index,
      probs: core.probs,
      logits: core.anchor.input[0]!,
      layout: layout.ok,
      pv: core.pv,
    },
  };
}

/** The values of a readable attention, or why they cannot be read. */
export function valuesOf(attention: Attention): Prepared<Values> {
  switch (attention.kind) {
    case "materialized":
      if (!attention.pv)
        return { why: `layer ${attention.index}'s values (the P·V MatMul's right input) were not found` };
      return { ok: { kind: "materialized", tensor: attention.pv.input[1]!, layout: attention.layout } };
    case "MultiHeadAttention":
      return { ok: attention };
    case "GroupQueryAttention":
      return {
        why: `layer ${attention.index}'s values behind com.microsoft.GroupQueryAttention (node '${attention.node.name}') are not recomputed`,
      };
  }
}

/** A per-head tensor of the layer in the exporter's layout → [B,H,X,Y]. */
export function canonical(b: NodeBuilder, layout: HeadLayout, t: string): string {
  switch (layout.form) {
    case "batch,heads,q,k":
      return t;
    case "heads,q,k":
      return b.unsqueeze(t, [0]);
    case "batch*heads,q,k": {
      // PyTorch folds heads batch-major (b·H + h). [B·H,1,X,Y] → [-1,H,0,0]: the zeros copy X and Y.
      const four = b.unsqueeze(t, [1]);
      return b.op("Reshape", [four, b.int64([-1, layout.heads, 0, 0], [4], "heads_shape")], {}, "unfold_heads");
    }
  }
}

/** Attention probabilities [B,H,Q,N]: all query rows, or only the CLS row (Q = 1). */
export function probabilities(b: NodeBuilder, attention: Attention, rows: "all" | "cls"): string {
  switch (attention.kind) {
    case "GroupQueryAttention": {
      const probs = b.op("Softmax", [gqaLogits(b, attention)], { axis: -1 }, "recomputed_probs");
      return rows === "all" ? probs : b.op("Gather", [probs, b.int64([0], [1], "cls_row")], { axis: 2 }, "cls_query");
    }
    case "MultiHeadAttention":
      return b.op("Softmax", [recomputedLogits(b, attention, rows)], { axis: -1 }, "recomputed_probs");
    case "materialized": {
      const probs = canonical(b, attention.layout, attention.probs);
      if (rows === "all") return probs;
      return b.op("Gather", [probs, b.int64([0], [1], "cls_row")], { axis: 2 }, "cls_query");
    }
  }
}

/** The softmax input [B,H,N,N] (scaled q·kᵀ with masks and biases applied). */
export function logits(b: NodeBuilder, attention: Attention): string {
  switch (attention.kind) {
    case "GroupQueryAttention":
      return gqaLogits(b, attention);
    case "MultiHeadAttention":
      return recomputedLogits(b, attention, "all");
    case "materialized":
      return canonical(b, attention.layout, attention.logits);
  }
}

/** The values [B,H,N,D] that the layer's probabilities multiply (the P·V MatMul's right input). */
export function values(b: NodeBuilder, v: Values): string {
  if (v.kind === "materialized") return canonical(b, v.layout, v.tensor);
  const n = v.node;
  let value = b.op("Cast", [n.input[2]!], { to: FLOAT }, "value_fp32");
  const bias = n.input[3];
  if (bias) {
    // The op adds bias[2W:3W] to v (bias = [3W], q|k|v).
    const width = v.heads * v.headSize;
    value = b.op(
      "Add",
      [value, b.slice(b.op("Cast", [bias], { to: FLOAT }, "qkv_bias_fp32"), 0, 2 * width, 3 * width)],
      {},
      "value_bias",
    );
  }
  return splitHeads(b, v, value, [0, 2, 1, 3]);
}

/** A fused layer's attention, recomputable from its inputs, or why it cannot be recomputed. */
function recomputed(layer: LayerInfo, core: AttentionCore): Prepared<MhaAttention | GqaAttention> {
  const n = core.anchor;
  const where = `layer ${layer.index}'s fused com.microsoft.${core.kind} (node '${n.name}')`;
  if (core.kind === "GroupQueryAttention") return gqaAttention(layer, core, where);
  if (core.kind !== "MultiHeadAttention") {
    return {
      why: `${where} does not expose attention probabilities, and prunec recomputes them only behind MultiHeadAttention and GroupQueryAttention (${core.kind} takes packed projection weights)`,
    };
  }
  if (!n.input[1] || !n.input[2])
    return { why: `${where} takes packed q/k/v in one tensor; prunec recomputes attention from separate q and k only` };
  if (n.input[4]) return { why: `${where} has a key_padding_mask input, which prunec's recompute does not apply` };
  if (n.input[6] || n.input[7])
    return { why: `${where} reads a past key/value cache; prunec prunes encoders without a cache` };
  if (attrInt(n, "unidirectional", 0) !== 0)
    return { why: `${where} is causal (unidirectional=1); prunec's recompute is bidirectional` };
  if (!layer.heads || !layer.headSize)
    return { why: `the number of heads or the head size of ${where} could not be determined` };
  if (layer.fusedInputRank !== 3)
    return {
      why: `${where} takes q/k of rank ${layer.fusedInputRank ?? "unknown"}; prunec recomputes attention from [batch, sequence, heads·head_size] inputs`,
    };
  return {
    ok: { kind: "MultiHeadAttention", index: layer.index, node: n, heads: layer.heads, headSize: layer.headSize },
  };
}

/** [B,S,H·D] → [B,S,H,D] → transposed by `perm`. */
function splitHeads(b: NodeBuilder, mha: MhaAttention, t: string, perm: number[]): string {
  const split = b.op("Reshape", [t, b.int64([0, 0, mha.heads, mha.headSize], [4], "heads_shape")], {}, "split_heads");
  return b.op("Transpose", [split], { perm }, "heads_first");
}

/**
 * scale·q·kᵀ (+ bias slices, + attention_bias) for MultiHeadAttention's inputs, in fp32, [B,H,Q,N]
 * with Q = 1 (the CLS row) or all rows.
 */
function recomputedLogits(b: NodeBuilder, mha: MhaAttention, rows: "all" | "cls"): string {
  const n = mha.node;
  const width = mha.heads * mha.headSize;
  let q = b.op("Cast", [n.input[0]!], { to: FLOAT }, "query_fp32");
  let k = b.op("Cast", [n.input[1]!], { to: FLOAT }, "key_fp32");
  if (n.input[3]) {
    // The op adds bias[0:W] to q and bias[W:2W] to k (bias = [3W], q|k|v).
    const bias = b.op("Cast", [n.input[3]], { to: FLOAT }, "qkv_bias_fp32");
    q = b.op("Add", [q, b.slice(bias, 0, 0, width)], {}, "query_bias");
    k = b.op("Add", [k, b.slice(bias, 0, width, 2 * width)], {}, "key_bias");
  }
  if (rows === "cls") q = b.slice(q, 1, 0, 1);
  const qh = splitHeads(b, mha, q, [0, 2, 1, 3]); // [B,H,Q,D]
  const kt = splitHeads(b, mha, k, [0, 2, 3, 1]); // [B,H,D,N]
  const scaleAttr = attr(n, "scale")?.f;
  const scale = scaleAttr ? scaleAttr : 1 / Math.sqrt(mha.headSize);
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
export function keyScores(
  b: NodeBuilder,
  probs: string,
  prefix: number,
  reduceQueries: (probs: string, queryAxis: number) => string,
): string {
  const cols = b.slice(reduceQueries(probs, 2), 3, prefix); // [B,H,1,Np]
  return b.reduceMean(cols, [1, 2], 0); // [B,Np]
}

/** Mean over heads of the CLS query's probabilities to the prunable keys, [B,Np]. */
export function clsRowScores(b: NodeBuilder, attention: Attention, prefix: number): string {
  return keyScores(b, probabilities(b, attention, "cls"), prefix, (p) => p);
}
