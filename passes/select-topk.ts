/**
 * TopK selection: the K best-scoring prunable tokens, returned as ascending token positions with
 * the special prefix tokens (CLS, registers) always kept in front. Ties go to the lower index,
 * as ONNX TopK specifies. Output: int64 [batch, prefix + K].
 */
import type { NodeBuilder } from "./builder.js";

export function selectTopK(b: NodeBuilder, scores: string, k: string, prefix: number): string {
  const [, best] = b.opN("TopK", [scores, k], 2, { axis: -1, largest: 1, sorted: 1 });
  // Re-sort the winners by position so kept tokens stay in their original order.
  const [ascending] = b.opN("TopK", [best!, k], 2, { axis: -1, largest: 0, sorted: 1 });
  return withPrefix(b, ascending!, prefix);
}

/** Ascending prunable positions int64 [batch, K] → token positions with the prefix tokens in front. */
export function withPrefix(b: NodeBuilder, ascending: string, prefix: number): string {
  if (prefix === 0) return ascending;
  const shifted = b.op("Add", [ascending, b.int64([prefix], [1], "prefix")], {}, "to_token_positions");
  const batch = b.slice(b.op("Shape", [shifted]), 0, 0, 1);
  const shape = b.op("Concat", [batch, b.int64([prefix], [1])], { axis: 0 });
  const special = b.op("Expand", [b.int64([...Array(prefix).keys()], [1, prefix], "special_tokens"), shape]);
  return b.op("Concat", [special, shifted], { axis: 1 }, "kept_positions");
}
