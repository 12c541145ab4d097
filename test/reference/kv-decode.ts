/**
 * The float64 reference for decode-time KV eviction (`during decode keep kv C tokens by h2o | a2sf`),
 * written from the authors' code, one example at a time:
 *
 *   - H2O: FMInference/H2O @ ac75c2a, h2o_hf/utils_real_drop/modify_llama.py (H2OKVCache_LayerWise,
 *     H2OLlamaAttention): hh_score accumulates each forward's column sums of the causal attention
 *     (new entries start at their own), evict when T > hh + recent: sort(TopK(s[:T−recent], hh)) ∪
 *     the last `recent`, after the step's attention used the full cache; keys cached after rotary.
 *   - A2SF's decode-time form: Dirac-Notation/A2SF @ a4360f1, utils_real_drop/modify_llama.py
 *     (`scoring_policy="a2sf"`): the prefill's rows weighted λ^(N−1−i); each step
 *     s[..., :−1] = row[..., :−1] + λ·s_prev, the new entry starts at its own; when T = hh + recent + 1
 *     drop the first argmin of s[..., :T−recent].
 *   - StreamingLLM: mit-han-lab/streaming-llm @ 2e50426, streaming_llm/kv_cache.py (StartRecentKVCache
 *     `__call__`): past seq_len > start + recent keeps [0, start) and [seq_len − recent, seq_len),
 *     after the step. Its pos-shift re-rotates keys at cache slots; prunec's keys keep the rotary they
 *     were cached with (kvpress's StreamingLLMPress without KeyRerotationPress), as here.
 *
 * methods.md §25–§26. Both are MHA with one score per query head; prunec's GQA form sums a KV head's
 * group (A2SF's prefill form's reduction), which at one query head per KV head is the authors'.
 * Ties: the earlier entry leaves first (A2SF's argmin; H2O's torch.topk promises no order).
 * Budget C = hh + recent.
 */
import type { KvCache, ReferenceDecoder } from "./decoder.js";
import { a2sfScores, causalProbs, kvHeadOf, type Mat } from "./kv-presses.js";

export type DecodeEviction =
  | {
      method: "h2o" | "a2sf";
      /** C: entries each KV head keeps (hh + recent). */
      budget: number;
      recent: number;
      /** λ (A2SF); H2O accumulates without decay (1). */
      forget?: number;
    }
  /** StreamingLLM's StartRecentKVCache: the first `sinks` entries and the most recent C − sinks. */
  | { method: "streaming"; budget: number; sinks: number };

export interface DecodeEvictingGeneration {
  tokens: number[];
  /** Logits of each decode step. */
  steps: Float64Array[];
  /**
   * Per call (the prefill, then each decode step), per layer and KV head: the kept entries as
   * slots of that call's cache (its past, then the new entry), ascending.
   */
  keptSlots: number[][][][];
  /** The same as original positions (0-based prompt and generated token indices). */
  keptPositions: number[][][][];
  /** Per call, layer, KV head: the carried score of each kept entry (what the next call reads). */
  scores: number[][][][];
}

/** Adds one query's softmax attention over `keys` (scaled dot products) to `received`, entry by entry. */
export function addAttention(
  received: number[],
  q: ArrayLike<number>,
  keys: readonly ArrayLike<number>[],
  scale: number,
): void {
  const logit = keys.map((k) => {
    let a = 0;
    for (let d = 0; d < q.length; d++) a += k[d]! * q[d]!;
    return a * scale;
  });
  const max = Math.max(...logit);
  const e = logit.map((x) => Math.exp(x - max));
  const z = e.reduce((a, x) => a + x, 0);
  e.forEach((x, j) => (received[j]! += x / z));
}

/** Keep `count` of `scores` with the last `recent` forced, ties to the later entry; ascending slots. */
export function keepBest(scores: readonly number[], count: number, recent: number): number[] {
  const t = scores.length;
  if (t <= count) return scores.map((_, j) => j);
  const head = scores
    .slice(0, t - recent)
    .map((s, j) => ({ s, j }))
    .sort((a, b) => b.s - a.s || b.j - a.j)
    .slice(0, count - recent)
    .map((x) => x.j);
  return [...head.sort((a, b) => a - b), ...Array.from({ length: recent }, (_, i) => t - recent + i)];
}

/**
 * A prefill stage composed with the decode-time one: per KV head, the prompt entries its press keeps
 * (ascending), from layer l's causal probabilities [head][query][key] and keys [kvHead][entry][d].
 * The decode-time rule then sees only those entries at the prefill, as if the press had evicted
 * first: its budget and recent window count them.
 */
export type PrefillPress = (l: number, probs: number[][][], keys: number[][][]) => number[][];

/** What else the compiled spec does around the decode-time stage. */
export interface DecodeContext {
  /** A prefill stage composed on the same layers. */
  prefillPress?: PrefillPress;
  /**
   * A stream stage above: after layer `afterLayer` only the prompt rows `keep` returns go on (the
   * prefill runs layer by layer); the decode-time stage then acts on `layers` only.
   */
  stream?: { afterLayer: number; keep(lastRowProbs: Float64Array): number[] };
  /** The layers the decode-time stage evicts (all when absent). */
  layers?: readonly number[];
}

/** Dense prefill, eviction to the budget, then greedy decode steps that each score, then evict. */
export function decodeEvictingGeneration(
  reference: ReferenceDecoder,
  prompt: readonly number[],
  spec: DecodeEviction,
  steps: number,
  context: DecodeContext = {},
): DecodeEvictingGeneration {
  const { prefillPress } = context;
  const evicted = (l: number) => !context.layers || context.layers.includes(l);
  const o = reference.o;
  const forget = spec.method === "a2sf" ? (spec.forget ?? 1) : 1;
  // Which entries stay: by score (H2O, A2SF) or StreamingLLM's start + recent.
  const select = (row: readonly number[]): number[] => {
    if (spec.method !== "streaming") return keepBest(row, spec.budget, spec.recent);
    const t = row.length;
    if (t <= spec.budget) return row.map((_, j) => j);
    const recent = spec.budget - spec.sinks;
    return [
      ...Array.from({ length: spec.sinks }, (_, j) => j),
      ...Array.from({ length: recent }, (_, i) => t - recent + i),
    ];
  };
  const scale = 1 / Math.sqrt(o.headSize);
  const perHead = () =>
    Array.from({ length: o.layers }, () => Array.from({ length: o.heads }, () => [] as Float64Array[]));
  const cache: KvCache = reference.newCache();
  const queries = perHead();
  const last = context.stream
    ? reference.prefillLayerwise(prompt, cache, queries, context.stream)
    : reference.forward(prompt, cache, queries).at(-1)!;
  // Scores and original positions per layer and KV head, parallel to the cache rows.
  const scores: number[][][] = [];
  const positions: number[][][] = [];
  const record = { keptSlots: [] as number[][][][], keptPositions: [] as number[][][][], scores: [] as number[][][][] };
  const evict = (l: number, g: number, keep: number[]) => {
    cache.keys[l]![g] = keep.map((j) => cache.keys[l]![g]![j]!);
    cache.values[l]![g] = keep.map((j) => cache.values[l]![g]![j]!);
    scores[l]![g] = keep.map((j) => scores[l]![g]![j]!);
    positions[l]![g] = keep.map((j) => positions[l]![g]![j]!);
  };
  const slots: number[][][] = [];
  for (let l = 0; l < o.layers; l++) {
    const q = queries[l]!.map((rows) => rows.map((r) => Array.from(r)));
    const k = cache.keys[l]!.map((rows) => rows.map((r) => Array.from(r)));
    // Σ over the group and the prompt's rows, row i weighted λ^(N−1−i) (H2O: 1).
    const probs = causalProbs(q, k, scale);
    const s: Mat = a2sfScores(probs, o.kvHeads, forget);
    scores.push(s);
    positions.push(s.map((row) => row.map((_, j) => j)));
    const pressed = prefillPress?.(l, probs, k);
    slots.push(
      s.map((row, g) => {
        const allowed = pressed?.[g];
        const keep = !evicted(l)
          ? row.map((_, j) => j)
          : allowed
            ? select(allowed.map((j) => row[j]!)).map((i) => allowed[i]!)
            : select(row);
        evict(l, g, keep);
        return keep;
      }),
    );
  }
  const snapshot = (kept: number[][][]) => {
    record.keptSlots.push(kept);
    record.keptPositions.push(positions.map((l) => l.map((g) => [...g])));
    record.scores.push(scores.map((l) => l.map((g) => [...g])));
  };
  snapshot(slots);
  const argmax = (x: Float64Array) => x.reduce((best, v, i) => (v > x[best]! ? i : best), 0);
  const tokens = [argmax(last)];
  const stepLogits: Float64Array[] = [];
  for (let step = 1; step < steps; step++) {
    const q = perHead();
    const position = cache.length;
    const [logits] = reference.forward([tokens.at(-1)!], cache, q);
    const kept: number[][][] = [];
    for (let l = 0; l < o.layers; l++) {
      kept.push(
        Array.from({ length: o.kvHeads }, (_, g) => {
          const keys = cache.keys[l]![g]!;
          // The new query's attention over the whole cache (the step's own entry included), summed over the group.
          const received = new Array<number>(keys.length).fill(0);
          for (let h = 0; h < o.heads; h++)
            if (kvHeadOf(h, o.heads, o.kvHeads) === g) addAttention(received, q[l]![h]![0]!, keys, scale);
          const old = scores[l]![g]!;
          scores[l]![g] = [...old.map((s, j) => forget * s + received[j]!), received[keys.length - 1]!];
          positions[l]![g] = [...positions[l]![g]!, position];
          const keep = evicted(l) ? select(scores[l]![g]!) : scores[l]![g]!.map((_, j) => j);
          evict(l, g, keep);
          return keep;
        }),
      );
    }
    snapshot(kept);
    stepLogits.push(logits!);
    tokens.push(argmax(logits!));
  }
  return { tokens, steps: stepLogits, ...record };
}
