/**
 * Group selection: keep the K best-scoring groups (grid rows, merge groups) whole. Groups are
 * ranked by TopK (ties to the lower group index), re-sorted by group index, expanded to their
 * member positions through a constant table, and the positions sorted ascending so kept tokens
 * stay in their original order. Output: int64 [batch, prefix + K·size], like selectTopK.
 */
import type { NodeBuilder } from "./builder.js";
import { selectTopK, withPrefix } from "./select-topk.js";
import { tabulate } from "../src/onnx/tensor.js";

export function selectGroups(
  b: NodeBuilder,
  scores: string,
  keepGroups: number,
  members: number[][],
  prefix: number,
): string {
  const size = members[0]!.length;
  const k = b.int64([keepGroups], [1], "k_groups");
  const [, best] = b.opN("TopK", [scores, k], 2, { axis: -1, largest: 1, sorted: 1 });
  const table = b.int64(members.flat(), [members.length, size], "group_members");
  const positions = b.op("Gather", [table, best!], { axis: 0 }, "group_positions"); // [B, K, size]
  const flat = b.op("Reshape", [positions, b.int64([0, keepGroups * size], [2], "flat_shape")], {}, "flatten_groups");
  const [ascending] = b.opN("TopK", [flat, b.int64([keepGroups * size], [1], "k_tokens")], 2, {
    axis: -1,
    largest: 0,
    sorted: 1,
  });
  return withPrefix(b, ascending!, prefix);
}

/** Mean token score of each group (members: a constant table of prunable positions), [B, groups]. */
export function meanOverGroups(b: NodeBuilder, tokenScores: string, members: number[][]): string {
  const table = b.int64(members.flat(), [members.length, members[0]!.length], "group_members");
  return b.reduceMean(b.op("Gather", [tokenScores, table], { axis: 1 }, "group_scores"), [2], 0);
}

/**
 * Keep the best groups of `size` consecutive tokens (the fold of a Qwen-style patch merger), so
 * the merger still folds whole groups: ascending group indices g expand to g·size + 0..size-1.
 * `scores` are per group [B, G]; returns int64 positions [B, K·size].
 */
export function selectFolded(b: NodeBuilder, scores: string, k: string, size: number): string {
  const groups = selectTopK(b, scores, k, 0); // [B, K] ascending
  const starts = b.op("Mul", [b.unsqueeze(groups, [2]), b.int64([size], [1], "group_size")], {}, "group_start"); // [B,K,1]
  const positions = b.op(
    "Add",
    [starts, b.int64([...Array(size).keys()], [1, 1, size], "group_offsets")],
    {},
    "group_positions",
  ); // [B,K,size]
  return b.op("Reshape", [positions, b.int64([0, -1], [2], "flat_shape")], {}, "flatten_groups");
}

/**
 * float [B, N]: per token, the members of its own group ranked ahead of it: scoring higher, or as
 * high at a lower position (ONNX TopK's tie rule). `same` float [B or 1, N, N] is 1 where tokens i
 * and j share a group (0 elsewhere, and on rows of tokens in no group); `scores` float [B, N].
 * A token keeps its group's best k when its rank is below k (crops' chunks, `of each SET`'s spans).
 * With a static token count `n` the lower-position table is a constant (no int64 shape arithmetic,
 * which WebGPU leaves on the CPU); otherwise it is built from the scores' width.
 */
export function rankInGroup(b: NodeBuilder, scores: string, same: string, n?: number): string {
  const si = b.unsqueeze(scores, [2]); // [B,N,1]
  const sj = b.unsqueeze(scores, [1]); // [B,1,N]
  const asFloat = (t: string) => b.op("Cast", [t], { to: 1 });
  let lower: string; // float [N,N]: 1 where j < i
  if (n !== undefined) {
    lower = b.float(
      tabulate(n * n, (k) => (k % n < Math.floor(k / n) ? 1 : 0)),
      [n, n],
      "lower_position",
    );
  } else {
    const r = b.range(b.slice(b.op("Shape", [scores]), 0, 1, 2), "positions");
    lower = asFloat(b.op("Less", [b.unsqueeze(r, [0]), b.unsqueeze(r, [1])], {}, "lower_position"));
  }
  const ahead = b.op(
    "Add",
    [asFloat(b.op("Greater", [sj, si])), b.op("Mul", [asFloat(b.op("Equal", [sj, si])), lower])],
    {},
    "ranks_ahead",
  );
  return b.reduce("ReduceSum", b.op("Mul", [same, ahead], {}, "ahead_in_group"), [2], 0);
}
