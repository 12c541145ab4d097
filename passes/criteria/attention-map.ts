/**
 * The attention maps criteria read, in one canonical layout: [batch, heads, queries, keys]
 * (batch 1 for batch-less models). Exporters lay attention out as [B·H,q,k] (torchvision),
 * [B,H,q,k], or [H,q,k] (batch-less Qwen2-VL); the per-head tensors (logits, values) of the same
 * layer share that layout, so one conversion serves them all.
 *
 * Criteria build on `probabilities` (softmax output, optionally only the CLS row), `logits` (the
 * softmax input: scaled q·kᵀ plus masks) and `values` ([B,H,N,D]).
 */
import type { LayerInfo } from "../../src/analysis/transformer.js";
import type { NodeBuilder } from "../builder.js";

/** Why a layer's probabilities cannot be read, or undefined when they can. */
export function probabilitiesUnavailable(layer: LayerInfo): string | undefined {
  const core = layer.core;
  if (!core) return `layer ${layer.index} has no softmax attention (${layer.kind})`;
  if (!core.probs) {
    return `layer ${layer.index} uses fused com.microsoft.${core.kind} (node '${core.anchor.name}'), which does not expose attention probabilities; attention criteria behind fused attention are not supported yet`;
  }
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
  const probs = canonical(b, layer, layer.core!.probs!);
  if (rows === "all") return probs;
  return b.op("Gather", [probs, b.int64([0], [1], "cls_row")], { axis: 2 }, "cls_query");
}

/** The softmax input [B,H,N,N] of `layer` (scaled q·kᵀ with masks and biases applied). */
export function logits(b: NodeBuilder, layer: LayerInfo): string {
  return canonical(b, layer, layer.core!.anchor.input[0]!);
}

/** The values [B,H,N,D] that `layer`'s probabilities multiply (the P·V MatMul's right input). */
export function values(b: NodeBuilder, layer: LayerInfo): string {
  const pv = layer.core!.pv;
  if (!pv) throw new Error(`layer ${layer.index} has no P·V MatMul`);
  return canonical(b, layer, pv.input[1]!);
}

/**
 * Per-key scores [B,Np] from probabilities [B,H,Q,N]: `reduceQueries` reduces the query axis
 * (axis 2) to size 1; the special prefix keys are dropped and heads averaged.
 */
export function keyScores(b: NodeBuilder, probs: string, prefix: number, reduceQueries: (probs: string, queryAxis: number) => string): string {
  const cols = b.slice(reduceQueries(probs, 2), 3, prefix); // [B,H,1,Np]
  return b.reduceMean(cols, [1, 2], 0); // [B,Np]
}
