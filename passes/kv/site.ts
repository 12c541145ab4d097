/**
 * Where a KV-cache stage acts in one layer, per attention kind (the layer's `cache` fact,
 * src/analysis/kv-cache.ts). The stage (passes/kv-stage.ts) is the same for both; what differs is
 * how the layer reads a cache shorter than the host's mask and where the press's probabilities
 * come from:
 *
 *   GroupQueryAttention: its sequence lengths and key bias are rewritten per layer
 *     (passes/cached-attention.ts); probabilities are recomputed in fp32 from the op's query and
 *     the dense present key (passes/attention/gqa-map.ts), inside the eviction branch only.
 *   plain attention: the mask operands joined to the logits keep their last T columns, T the
 *     layer's present length (the host's mask is right-aligned: its last columns are the newest
 *     slots, HF's cache_position convention); the probabilities are the graph's own Softmax.
 */
import type { Graph, NodeProto } from "../../src/ir/graph.js";
import { shallowCopy } from "../../src/ir/copy.js";
import type { LayerInfo, TransformerInfo } from "../../src/analysis/transformer.js";
import { logitChain, type LayerCache } from "../../src/analysis/kv-cache.js";
import type { NodeBuilder } from "../builder.js";
import type { Prepared } from "../criterion.js";
import { gqaAttention, gqaLogits } from "../attention/gqa-map.js";
import { CACHED_INPUTS, rewriteCachedAttention } from "../cached-attention.js";
import { denseName } from "../gather-tokens.js";

const FLOAT = 1;

export interface EvictionSite {
  heads: number;
  kvHeads: number;
  /** Nodes of the layer replaced so that it reads its own (shorter) cache at later calls. */
  replaced: Map<NodeProto, NodeProto>;
  /** float [B,H,S,N]: the call's causal probabilities over every cached entry (built with `t`). */
  probabilities(t: NodeBuilder): string;
  /** float [B,H,w,N]: the same for the last `w` queries. */
  windowProbabilities(t: NodeBuilder, window: number): string;
}

/** What a layer must have for its cache to be evicted, or why it cannot be (plan time). */
export function evictable(layer: LayerInfo): Prepared<{ cache: LayerCache; heads: number; kvHeads: number }> {
  const where = `layer ${layer.index}`;
  const cache = layer.cache;
  const core = layer.core;
  if (!cache || !core) return { why: `${where} has no KV cache prunec can evict: ${layer.cacheWhy ?? "no attention"}` };
  if (cache.attention === "GroupQueryAttention") {
    const gqa = gqaAttention(layer, core, `${where}'s GroupQueryAttention (node '${core.anchor.name}')`);
    return "why" in gqa ? gqa : { ok: { cache, heads: gqa.ok.heads, kvHeads: gqa.ok.kvHeads } };
  }
  const heads = layer.heads;
  const kvHeads = cache.kvHeads;
  if (layer.probsLayout !== "batch,heads,q,k")
    return { why: `${where}'s attention probabilities are not [batch, heads, queries, keys]` };
  if (!heads || !kvHeads || heads % kvHeads !== 0)
    return {
      why: `${where}'s query heads (${heads ?? "unknown"}) are not a multiple of its KV heads (${kvHeads ?? "unknown"})`,
    };
  return { ok: { cache, heads, kvHeads } };
}

export function evictionSite(
  b: NodeBuilder,
  g: Graph,
  model: TransformerInfo,
  dense: TransformerInfo,
  layer: LayerInfo,
  cache: LayerCache,
  /**
   * Which of the host's key-padding columns the layer's cache holds (GroupQueryAttention): the
   * first T (a stream stage above: pads first, then the kept prompt tokens), the last T (the
   * layer's own eviction: kept entries, then the generated ones), or none (`slotBias` says which
   * slots are pads at every call).
   */
  columns: "first" | "last" | "none",
  /**
   * float [B,1,1,T]: added to the layer's logits over its T cached entries (0, or −1e9 on filler
   * slots a carried validity marks: `--kv-state`); none without the state.
   */
  slotBias?: string,
): EvictionSite {
  const core = layer.core;
  const checked = evictable(layer);
  if (!core || "why" in checked)
    throw new Error(`layer ${layer.index}: ${"why" in checked ? checked.why : "no attention"} (checked by the plan)`);
  const { heads, kvHeads } = checked.ok;
  const renamed = new Map([
    [cache.presentKey, denseName(cache.presentKey)],
    [cache.presentValue, denseName(cache.presentValue)],
  ]);
  if (cache.attention === "GroupQueryAttention") {
    const attention = gqaAttention(layer, core, `layer ${layer.index}'s GroupQueryAttention`);
    if ("why" in attention) throw new Error(`${attention.why} (checked by the plan)`);
    // The press reads the rewired op too (its bias then fits any call's cache), writing /dense.
    const replaced = rewriteCachedAttention(b, model, dense, layer.index, undefined, layer.index, columns);
    let rewired = replaced.get(core.anchor) ?? core.anchor;
    if (slotBias) {
      rewired = withSlotBias(b, rewired, slotBias);
      replaced.set(core.anchor, rewired);
    }
    const gqa = {
      ...attention.ok,
      node: shallowCopy(rewired, { output: rewired.output.map((o) => renamed.get(o) ?? o) }),
    };
    return {
      heads,
      kvHeads,
      replaced,
      probabilities: (t) => t.op("Softmax", [gqaLogits(t, gqa, "all")], { axis: -1 }, "probabilities"),
      windowProbabilities: (t, w) =>
        t.op("Softmax", [gqaLogits(t, gqa, "all", w)], { axis: -1 }, "window_probabilities"),
    };
  }
  const probs = core.probs;
  const qk = core.qk;
  if (!probs || !qk)
    throw new Error(`layer ${layer.index}: plain attention without probabilities (checked by the plan)`);
  return {
    heads,
    kvHeads,
    replaced: slotBiased(b, maskToCache(b, g, layer, cache, qk, core.anchor), core.anchor, slotBias),
    probabilities: (t) => t.op("Cast", [probs], { to: FLOAT }, "probabilities"),
    windowProbabilities: (t, w) => t.slice(t.op("Cast", [probs], { to: FLOAT }, "probabilities"), 2, -w),
  };
}

/** GroupQueryAttention with `slotBias` added to its attention_bias (input 10; [B,1,S,T] when it had none). */
function withSlotBias(b: NodeBuilder, n: NodeProto, slotBias: string): NodeProto {
  const inputs = [...n.input];
  while (inputs.length <= CACHED_INPUTS.bias) inputs.push("");
  const bias = inputs[CACHED_INPUTS.bias];
  const everyQuery = () => {
    const sizes = b.op("Shape", [slotBias]);
    const queryLength = b.slice(b.op("Shape", [inputs[0]!]), 0, 1, 2);
    return b.op("Concat", [b.slice(sizes, 0, 0, 2), queryLength, b.slice(sizes, 0, 3, 4)], { axis: 0 });
  };
  inputs[CACHED_INPUTS.bias] = bias
    ? b.op("Add", [bias, slotBias], {}, "filler_slots_masked")
    : b.op("Expand", [slotBias, everyQuery()], {}, "filler_slots_masked");
  return shallowCopy(n, { input: inputs });
}

/** Plain attention: the Softmax reads its logits plus `slotBias` (replacements `replaced` grow by it). */
function slotBiased(
  b: NodeBuilder,
  replaced: Map<NodeProto, NodeProto>,
  softmax: NodeProto,
  slotBias: string | undefined,
): Map<NodeProto, NodeProto> {
  if (!slotBias) return replaced;
  const logits = b.op("Add", [softmax.input[0]!, slotBias], {}, "filler_slots_masked");
  replaced.set(softmax, shallowCopy(softmax, { input: [logits, ...softmax.input.slice(1)] }));
  return replaced;
}

/**
 * The nodes between Q·Kᵀ and Softmax that join a mask operand, each reading the operand's last T
 * columns (T = the layer's present length, read from the dense present key: this call's cache).
 */
function maskToCache(
  b: NodeBuilder,
  g: Graph,
  layer: LayerInfo,
  cache: LayerCache,
  qk: NodeProto,
  softmax: NodeProto,
): Map<NodeProto, NodeProto> {
  const operands = new Set(cache.maskOperands ?? []);
  const out = new Map<NodeProto, NodeProto>();
  if (!operands.size) return out;
  const total = b.slice(b.op("Shape", [denseName(cache.presentKey)]), 0, 2, 3); // int64 [1]
  const sliced = new Map<string, string>();
  const lastColumns = (t: string): string => {
    const known = sliced.get(t);
    if (known) return known;
    const s = b.op(
      "Slice",
      [t, b.op("Neg", [total]), b.int64([Number.MAX_SAFE_INTEGER], [1], "to_end"), b.int64([-1], [1], "key_axis")],
      {},
      "mask_columns",
    );
    sliced.set(t, s);
    return s;
  };
  // The chain from Softmax up to Q·Kᵀ, as the analysis walked it.
  for (const { node: n } of logitChain(g, qk, softmax) ?? [])
    if (n.input.some((i) => operands.has(i)))
      out.set(n, shallowCopy(n, { input: n.input.map((i) => (operands.has(i) ? lastColumns(i) : i)) }));
  if (out.size === 0)
    throw new Error(
      `layer ${layer.index}: the mask operands were not found between Q·Kᵀ and Softmax (checked by the analysis)`,
    );
  return out;
}
