/**
 * SpAtten's cascade token pruning while generating (HPCA'21, §III; methods.md §27: the public code
 * has no cascade, so this follows the paper's equations, independent of prunec), in float64, one
 * example: a cached token's importance is the attention it has received, s_j += Σ_l Σ_h Σ_i P_l[h,i,j]
 * over every layer, head and query row of each forward (prompt and generated tokens), never
 * decayed; when the cache holds more than C tokens the least important leave every layer at once
 * ("pruned tokens disappear from all later layers and steps"). The budget rule is the issue's
 * decode-time form (at most C entries, the lowest leaves; ties: the earlier entry leaves first).
 * Keys are cached after rotary at their dense positions.
 */
import type { KvCache, ReferenceDecoder } from "./decoder.js";
import { causalProbs, kvHeadOf } from "./kv-presses.js";
import { addAttention, keepBest } from "./kv-decode.js";

export interface CascadeGeneration {
  tokens: number[];
  /** Logits of each decode step. */
  steps: Float64Array[];
  /** Per call (the prefill, then each step): the kept slots of that call's cache, the same in every layer and KV head. */
  keptSlots: number[][];
  /** The same as original positions. */
  keptPositions: number[][];
  /** Per call: each kept entry's importance (what the next call reads). */
  scores: number[][];
}

export function spattenCascadeGeneration(
  reference: ReferenceDecoder,
  prompt: readonly number[],
  budget: number,
  steps: number,
): CascadeGeneration {
  const o = reference.o;
  const scale = 1 / Math.sqrt(o.headSize);
  const perHead = () =>
    Array.from({ length: o.layers }, () => Array.from({ length: o.heads }, () => [] as Float64Array[]));
  const cache: KvCache = reference.newCache();
  const record: Omit<CascadeGeneration, "tokens" | "steps"> = { keptSlots: [], keptPositions: [], scores: [] };
  let scores: number[] = [];
  let positions: number[] = [];
  /** Add this call's received attention, keep the best C in every layer, record. */
  const evict = (received: number[], newPositions: number[]) => {
    scores = [...scores, ...new Array<number>(newPositions.length).fill(0)].map((s, j) => s + received[j]!);
    positions = [...positions, ...newPositions];
    const keep = keepBest(scores, budget, 0);
    for (let l = 0; l < o.layers; l++)
      for (let g = 0; g < o.kvHeads; g++) {
        cache.keys[l]![g] = keep.map((j) => cache.keys[l]![g]![j]!);
        cache.values[l]![g] = keep.map((j) => cache.values[l]![g]![j]!);
      }
    scores = keep.map((j) => scores[j]!);
    positions = keep.map((j) => positions[j]!);
    record.keptSlots.push(keep);
    record.keptPositions.push([...positions]);
    record.scores.push([...scores]);
  };
  // The prompt: every layer's causal attention, summed over heads and query rows.
  const queries = perHead();
  const prefill = reference.forward(prompt, cache, queries);
  const received = new Array<number>(prompt.length).fill(0);
  for (let l = 0; l < o.layers; l++) {
    const q = queries[l]!.map((rows) => rows.map((r) => Array.from(r)));
    const k = cache.keys[l]!.map((rows) => rows.map((r) => Array.from(r)));
    for (const head of causalProbs(q, k, scale)) for (const row of head) row.forEach((p, j) => (received[j]! += p));
  }
  evict(
    received,
    Array.from(prompt, (_, j) => j),
  );
  const argmax = (x: Float64Array) => x.reduce((best, v, i) => (v > x[best]! ? i : best), 0);
  const tokens = [argmax(prefill.at(-1)!)];
  const stepLogits: Float64Array[] = [];
  for (let step = 1; step < steps; step++) {
    const q = perHead();
    const position = cache.length;
    const [logits] = reference.forward([tokens.at(-1)!], cache, q);
    // The new query's attention over each layer's whole cache (its own entry last), over every head.
    const got = new Array<number>(scores.length + 1).fill(0);
    for (let l = 0; l < o.layers; l++)
      for (let h = 0; h < o.heads; h++)
        addAttention(got, q[l]![h]![0]!, cache.keys[l]![kvHeadOf(h, o.heads, o.kvHeads)]!, scale);
    evict(got, [position]);
    stepLogits.push(logits!);
    tokens.push(argmax(logits!));
  }
  return { tokens, steps: stepLogits, ...record };
}
