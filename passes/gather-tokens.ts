/**
 * Token gather: the residual stream tensor `r` leaving a layer is replaced, for every consumer, by
 * its rows at the kept positions.
 * Pre: `r` is produced by a node; keep is int64 [batch, K'] (batch 1 for batch-less models).
 * Post: the producer writes `<r>/dense`; a gather writes `r`, so consumers and graph outputs follow.
 */
import type { NodeBuilder } from "./builder.js";

export interface GatherPlan {
  /** Tensor name the original producer now writes. */
  dense: string;
  /** Node emitting `r` from `dense`. */
  output: string;
}

/** What the layer's original producer writes once a stage takes over the residual's name. */
export function denseName(r: string): string {
  return `${r}/dense`;
}

export function gatherTokens(b: NodeBuilder, r: string, keep: string, layout: { tokenAxis: number; batchAxis?: number }): GatherPlan {
  const dense = denseName(r);
  let gathered: string;
  if (layout.batchAxis === undefined) {
    const flat = b.squeeze(keep, [0]);
    gathered = b.op("Gather", [dense, flat], { axis: layout.tokenAxis }, "gather_tokens");
  } else if (layout.batchAxis === 0 && layout.tokenAxis === 1) {
    const idx = b.unsqueeze(keep, [2]); // [B, K', 1]
    gathered = b.op("GatherND", [dense, idx], { batch_dims: 1 }, "gather_tokens");
  } else {
    throw new Error("sequence-first residual streams are rejected before emission");
  }
  // Rename the last node's output to `r` so everything downstream reads the pruned stream.
  const last = b.nodes[b.nodes.length - 1]!;
  last.output[0] = r;
  return { dense, output: gathered };
}
