/**
 * The host's key-padding mask (`attention_mask` [batch, total], 1 on real tokens) and which of its
 * columns line up with a cached layer's slots.
 *
 * Invariant (left padding, the only padding side prunec supports on cached decoders): a layer's
 * cache holds each example's kept pads first, then its real tokens in position order, then the
 * generated ones. How many pads it keeps depends on the stream stages above it:
 * - no stage, or stages `of SET`: every pad (pads belong to no set, so a set stage keeps them);
 *   the layer's `total` slots line up with the host mask's FIRST `total` columns;
 * - stages without a set: each ranks the host's pads below every real token (`hostPadRank`), so
 *   an example keeps max(0, pads − dropped) of them, which are exactly the zeros among the host
 *   mask's LAST `total` columns, at the prefill and at every decode step (dropped = dense total −
 *   layer total, the same for every example).
 * Stages with and without a set above the same cached layer would need the set stages' drop count
 * at decode steps, which nothing carries: there the layer takes the last columns, exact at batch 1
 * and in unpadded batches only (documented; a host's padding is not known at compile time).
 */
import type { GraphProto } from "../src/ir/graph.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import type { NodeBuilder } from "./builder.js";

/** Whether a layer after `layer` keeps a KV cache read by GroupQueryAttention (a stage's rows then stay in it). */
export function cachedGqaBelow(model: TransformerInfo, layer: number): boolean {
  return model.layers.slice(layer + 1).some((l) => l.cache && l.core?.kind === "GroupQueryAttention");
}

/** Which host-mask columns a cached layer's slots line up with. */
export type HostColumns = "first" | "last";

/** The host's key-padding mask: a graph input `attention_mask` [batch, total] (transformers.js and torch exports). */
export function attentionMask(g: GraphProto): string | undefined {
  const m = g.input.find((i) => i.name === "attention_mask");
  const shape = m?.type?.value.case === "tensorType" ? m.type.value.value.shape : undefined;
  return shape?.dim.length === 2 ? m!.name : undefined;
}

/**
 * The columns rule for a cached layer below the given stream stages (those acting after an earlier
 * layer): `last` when a stage without a set acts above it, else `first` (see the invariant above).
 */
export function hostColumns(
  stages: readonly { layer: { index: number }; ofSet?: unknown; encoder?: unknown }[],
  layer: number,
): HostColumns {
  return stages.some((s) => !s.encoder && s.layer.index < layer && s.ofSet === undefined) ? "last" : "first";
}

/** bool [B, n]: the first `n` (int64 [1]) columns of the host mask. */
export function firstColumns(b: NodeBuilder, mask: string, n: string): string {
  const columns = b.op("Slice", [mask, b.int64([0], [1], "from_start"), n, b.int64([1], [1], "key_axis")]);
  return b.op("Cast", [columns], { to: 9 });
}

/** The last `count` (int64 [1]) columns of a [batch, columns] mask (its own element type). */
export function lastColumns(b: NodeBuilder, mask: string, count: string): string {
  return b.op("Slice", [
    mask,
    b.op("Neg", [count]),
    b.int64([Number.MAX_SAFE_INTEGER], [1], "to_end"),
    b.int64([1], [1], "axis"),
  ]);
}

/** bool [B, n]: the host mask's columns that line up with `n` entries under `rule`. */
export function hostColumnsOf(b: NodeBuilder, mask: string, n: string, rule: HostColumns): string {
  return rule === "first" ? firstColumns(b, mask, n) : b.op("Cast", [lastColumns(b, mask, n)], { to: 9 });
}
