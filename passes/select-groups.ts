/**
 * Group selection: keep the K best-scoring groups (grid rows, merge groups) whole. Groups are
 * ranked by TopK (ties to the lower group index), re-sorted by group index, expanded to their
 * member positions through a constant table, and the positions sorted ascending so kept tokens
 * stay in their original order. Output: int64 [batch, prefix + K·size], like selectTopK.
 */
import type { NodeBuilder } from "./builder.js";
import { withPrefix } from "./select-topk.js";

export function selectGroups(b: NodeBuilder, scores: string, keepGroups: number, members: number[][], prefix: number): string {
  const size = members[0]!.length;
  const k = b.int64([keepGroups], [1], "k_groups");
  const [, best] = b.opN("TopK", [scores, k], 2, { axis: -1, largest: 1, sorted: 1 });
  const table = b.int64(members.flat(), [members.length, size], "group_members");
  const positions = b.op("Gather", [table, best!], { axis: 0 }, "group_positions"); // [B, K, size]
  const flat = b.op("Reshape", [positions, b.int64([0, keepGroups * size], [2], "flat_shape")], {}, "flatten_groups");
  const [ascending] = b.opN("TopK", [flat, b.int64([keepGroups * size], [1], "k_tokens")], 2, { axis: -1, largest: 0, sorted: 1 });
  return withPrefix(b, ascending!, prefix);
}
