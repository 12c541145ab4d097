/**
 * Shared by the attention-map criteria: reduce a layer's materialized probabilities over the
 * queries (a criterion's choice: the CLS row, the mean of all rows, ...), keep the prunable keys,
 * and average over heads. Returns [batch, prunable] (batch 1 for batch-less models).
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

/**
 * `reduceQueries(probs, axis)` must return the probabilities with the query axis reduced to size 1.
 */
export function keyScores(b: NodeBuilder, layer: LayerInfo, prefix: number, reduceQueries: (probs: string, queryAxis: number) => string): string {
  const probs = layer.core!.probs!;
  switch (layer.probsLayout) {
    case "batch,heads,q,k": {
      const cols = b.slice(reduceQueries(probs, 2), 3, prefix); // [B,H,1,Np]
      return b.reduceMean(cols, [1, 2], 0); // [B,Np]
    }
    case "heads,q,k": {
      const cols = b.slice(reduceQueries(probs, 1), 2, prefix); // [H,1,Np]
      return b.reduceMean(cols, [0], 0); // [1,Np]: the batch-less model scores as batch 1
    }
    case "batch*heads,q,k": {
      const cols = b.slice(reduceQueries(probs, 1), 2, prefix); // [B*H,1,Np]
      // PyTorch folds heads batch-major (b*H + h); Reshape's 0 copies Np from axis 2.
      const split = b.op("Reshape", [cols, b.int64([-1, layer.heads!, 0], [3], "heads_shape")], {}, "unfold_heads"); // [B,H,Np]
      return b.reduceMean(split, [1], 0); // [B,Np]
    }
    default:
      throw new Error(`unsupported probability layout ${String(layer.probsLayout)}`);
  }
}
