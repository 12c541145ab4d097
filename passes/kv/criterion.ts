/**
 * The contract between a KV-cache stage (`keep kv` / `drop kv`, passes/kv-stage.ts) and the press
 * that scores a layer's cache entries. A press proves what it needs of the layer in `prepareKv` and
 * returns a scorer; the stage calls it per layer and keeps, per KV head, the best-scoring entries.
 * Semantics and sources of every press: docs/kv-cache.md.
 */
import type { CriterionInfo } from "../../grammar/registry.js";
import type { ArgValue } from "../../grammar/ir.js";
import type { LayerInfo, TransformerInfo } from "../../src/analysis/transformer.js";
import type { NodeBuilder } from "../builder.js";
import type { Graph } from "../../src/ir/graph.js";
import type { Prepared } from "../criterion.js";
import type { DecodeForm } from "../../src/plan-types.js";

/**
 * A layer whose attention keeps a cache prunec can find (GroupQueryAttention with present outputs,
 * or plain attention over Concat(past, current) graph outputs: src/analysis/kv-cache.ts).
 */
export function hasEvictableCache(layer: LayerInfo): boolean {
  return layer.cache !== undefined;
}

export interface KvFacts {
  model: TransformerInfo;
  /** The graph `model` describes (constants a press reads: rotary tables). */
  graph: Graph;
  layer: LayerInfo;
  args: Readonly<Record<string, ArgValue>>;
}

/** What a press reads while the stage emits one layer's eviction. */
export interface KvScoreContext {
  b: NodeBuilder;
  args: Readonly<Record<string, ArgValue>>;
  /** Query heads and KV heads (query head h reads KV head floor(h / (heads / kvHeads))). */
  heads: number;
  kvHeads: number;
  /** float [B, kvH, N, D]: the present keys (after rotary) the cache would hold. */
  keys: string;
  /** float [B, kvH, N, D]: the present values (a Cast built on demand where they are not float). */
  values(): string;
  /** int64 [1]: N, the entries in the present cache. */
  n: string;
  /** int64 [1] or [B,1,1] (`--kv-state`: per example): K', how many entries each KV head keeps. */
  kept: string;
  /**
   * int64 [B,1,1]: each example's leading pad entries (left padding; 0 without). Entry j is the
   * example's position j − padding; pads score below every real entry whatever the press gives them.
   */
  padding: string;
  /** float [B, H, S, N]: the causal attention probabilities of the call's queries, pad queries' rows zero (computed once, on demand). */
  probabilities(): string;
  /** float [B, H, w, N]: the same for the call's last `w` queries only (SnapKV's window). */
  windowProbabilities(window: number): string;
}

export interface KvScorer {
  /** float [B, kvH, N]: higher = kept; ties go to the lower position. */
  score(ctx: KvScoreContext): string;
  /**
   * A budget of the press's own at prefill (PyramidKV's per-layer ramp): int64 [1] entries per KV
   * head, from N (int64 [1]) and the stage's kept fraction c; absent = the stage's budget.
   */
  budget?(b: NodeBuilder, n: string, fraction: number): string;
  /**
   * The same budget computed here for N entries (float64, as the graph's `budget`), written as an
   * int64 table over every length the model can hold: exact, and free of float64 kernels (which
   * onnxruntime-web's WebGPU build lacks). Used whenever the stage can bound N.
   */
  budgetAt?(n: number, fraction: number): number;
}

export interface KvCriterionModule extends CriterionInfo {
  targets: readonly ["kv"];
  /** What a layer must have, in words (for docs). */
  needs: string;
  /** Where the semantics come from: repository, commit, file. */
  reference: string;
  prepareKv(facts: KvFacts): Prepared<KvScorer>;
  /** Only budgets written as a percentage (the press spreads a fraction over the layers). */
  fractionOnly?: boolean;
  /** Why the press cannot be restricted to a token set (`of SET`), if it cannot. */
  noSet?: string;
  /** The press's decode-time form (`during decode`); absent: prefill only. */
  decode?(args: Readonly<Record<string, ArgValue>>): DecodeForm;
  /** Why the press has no prefill-only form (it acts at every call), if it has none. */
  decodeOnly?: string;
  /** Why the press cannot act on a layer above which a stream stage prunes (its cache then holds fewer entries than the prompt), if it cannot. */
  noStreamBelow?: string;
}

/** int64 [B,1,N]: each entry's position in its example (left pads first: j − the example's pads). */
export function ownPositions(b: NodeBuilder, ctx: KvScoreContext): string {
  return b.op("Sub", [b.range(ctx.n, "positions"), ctx.padding], {}, "own_positions");
}
