/**
 * Token gather: the residual stream tensor `r` leaving a layer is replaced, for every consumer, by
 * its rows at the kept positions.
 * Pre: `r` is produced by a node; keep is int64 [batch, K'] (batch 1 for batch-less models); the
 *      stream is [B, N, ..], [N, B, D] (sequence-first) or batch-less [N, D].
 * Post: returns the gathered tensor; the stage then renames it to `r` (and the producer's output to
 * `<r>/dense`), so consumers and graph outputs follow.
 */
import type { NodeBuilder } from "./builder.js";

/** What the layer's original producer writes once a stage takes over the residual's name. */
export function denseName(r: string): string {
  return `${r}/dense`;
}

export function gatherTokens(
  b: NodeBuilder,
  dense: string,
  keep: string,
  layout: { tokenAxis: number; batchAxis?: number },
): string {
  if (layout.batchAxis === undefined) {
    const flat = b.squeeze(keep, [0]);
    return b.op("Gather", [dense, flat], { axis: layout.tokenAxis }, "gather_tokens");
  }
  if (layout.batchAxis === 0 && layout.tokenAxis === 1) {
    const idx = b.unsqueeze(keep, [2]); // [B, K', 1]
    return b.op("GatherND", [dense, idx], { batch_dims: 1 }, "gather_tokens");
  }
  if (layout.batchAxis === 1 && layout.tokenAxis === 0) {
    // Sequence-first [N, B, D]: gather batch-first, then back to the model's layout.
    const bf = b.op("Transpose", [dense], { perm: [1, 0, 2] }, "batch_first");
    const kept = b.op("GatherND", [bf, b.unsqueeze(keep, [2])], { batch_dims: 1 }, "gather_tokens");
    return b.op("Transpose", [kept], { perm: [1, 0, 2] }, "sequence_first");
  }
  throw new Error(
    `token axis ${layout.tokenAxis} with batch axis ${layout.batchAxis} is rejected by the plan before emission`,
  );
}
