/**
 * Decoders with a KV cache (com.microsoft.GroupQueryAttention, as transformers.js exports them):
 * after a stage, the layers below keep fewer tokens in their caches than the caller's attention
 * mask counts. Each such layer gets its own sequence-length inputs, from its own past and query:
 *   total_sequence_length = past length + query length,  seqlens_k = total − 1 (per example),
 * and its attention_bias (key padding: the same row for every query, as these exports build it)
 * keeps the first `total` key columns. With left padding (or none) those are exactly the columns of
 * the tokens the layer holds: padding first, then the kept prompt tokens and the generated ones,
 * since a stage removes only real tokens. So prefill prunes once and the decode steps of the same
 * merged model keep working with the shorter caches (FastV's cache semantics). Right-padded
 * batches are not supported by this rewrite (documented).
 */
import type { NodeProto } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import type { NodeBuilder } from "./builder.js";

/** GroupQueryAttention inputs rewritten per layer (never carried as token rows). */
export const CACHED_INPUTS = { seqlens: 5, total: 6, bias: 10 } as const;

/**
 * Replacements for the GroupQueryAttention nodes of layers `from`..: per-layer sequence lengths
 * and key-padding bias; `keyBias` [B, N'] (padding of a per-example stage, or undefined) is added.
 */
export function rewriteCachedAttention(
  b: NodeBuilder,
  model: TransformerInfo,
  dense: TransformerInfo,
  from: number,
  keyBias: string | undefined,
  /**
   * The last layer rewritten (inclusive; default: the last layer): a KV-cache stage rewrites only
   * the layer whose cache it evicts (`from` = `until`); a stage padding in front stops before the
   * next stage, which rewrites the layers below it with its own padding (passes/front-padding.ts).
   */
  until?: number,
  /**
   * Which of the host bias's key columns the layer's cache holds: the first `total` (a stream
   * stage: pads first, then the kept prompt tokens), the last (a KV-cache stage: the kept entries,
   * pads only where an example has fewer real entries than the budget, then the generated ones), or
   * none (a decode-time stage below a stream stage, whose own slot bias marks its pads).
   */
  columns: "first" | "last" | "none" = "first",
): Map<NodeProto, NodeProto> {
  const out = new Map<NodeProto, NodeProto>();
  for (const l of model.layers.slice(from, until === undefined ? undefined : until + 1)) {
    const core = l.core;
    if (core?.kind !== "GroupQueryAttention") continue;
    const n = core.anchor;
    const inputs = [...n.input];
    while (inputs.length <= CACHED_INPUTS.bias) inputs.push("");
    // Start from the dense model's inputs: an earlier stage's padding is never kept as a real token.
    const denseCore = dense.layers[l.index]?.core;
    if (!denseCore)
      throw new Error(
        `layer ${l.index}: the dense model has no attention core for this cached GroupQueryAttention layer (checked by the plan)`,
      );
    const original = denseCore.anchor.input;
    inputs[CACHED_INPUTS.seqlens] = original[CACHED_INPUTS.seqlens] ?? "";
    inputs[CACHED_INPUTS.total] = original[CACHED_INPUTS.total] ?? "";
    inputs[CACHED_INPUTS.bias] = original[CACHED_INPUTS.bias] ?? "";
    const qShape = b.op("Shape", [inputs[0]!]);
    const batch = b.slice(qShape, 0, 0, 1);
    const queryLength = b.slice(qShape, 0, 1, 2);
    const past = inputs[3] ? b.slice(b.op("Shape", [inputs[3]]), 0, 2, 3) : b.int64([0], [1], "no_past");
    const total = b.op("Add", [past, queryLength], {}, `layer${l.index}_total`); // int64 [1]
    if (inputs[CACHED_INPUTS.total]) {
      // Keep the original's rank (scalar or [1]).
      inputs[CACHED_INPUTS.total] = b.op(
        "Reshape",
        [b.op("Cast", [total], { to: 6 }), b.op("Shape", [inputs[CACHED_INPUTS.total]!])],
        {},
        `layer${l.index}_total_sequence_length`,
      );
    }
    if (inputs[CACHED_INPUTS.seqlens]) {
      const last = b.op("Cast", [b.op("Sub", [total, b.int64([1], [1], "one")])], { to: 6 });
      inputs[CACHED_INPUTS.seqlens] = b.op("Expand", [last, batch], {}, `layer${l.index}_seqlens_k`);
    }
    // "none": the caller's slot bias says which slots are pads (a decode-time stage below a stream stage).
    let bias = columns === "none" ? undefined : inputs[CACHED_INPUTS.bias] || undefined;
    if (bias)
      bias = b.op(
        "Slice",
        columns === "first"
          ? [
              bias,
              b.int64([0, 0], [2], "starts"),
              b.op("Concat", [queryLength, total], { axis: 0 }),
              b.int64([2, 3], [2], "axes"),
            ]
          : [
              bias,
              b.op("Concat", [b.int64([0], [1]), b.op("Neg", [total])], { axis: 0 }),
              b.op("Concat", [queryLength, b.int64([Number.MAX_SAFE_INTEGER], [1], "to_end")], { axis: 0 }),
              b.int64([2, 3], [2], "axes"),
            ],
        {},
        `layer${l.index}_attention_bias`,
      );
    if (keyBias) {
      const keys = b.unsqueeze(keyBias, [1, 2]); // [B,1,1,N'] (N' = 1 at decode steps: broadcast)
      bias = bias
        ? b.op("Add", [bias, keys], {}, `layer${l.index}_skip_padding`)
        : b.op(
            "Expand",
            [keys, b.op("Concat", [b.int64([1, 1]), queryLength, b.int64([1])], { axis: 0 })],
            {},
            `layer${l.index}_padding_bias`,
          );
    }
    if (bias) inputs[CACHED_INPUTS.bias] = bias;
    else if (columns === "none") inputs[CACHED_INPUTS.bias] = "";
    out.set(n, shallowCopy(n, { input: inputs }));
  }
  return out;
}
