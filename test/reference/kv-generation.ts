/**
 * The reference generation loop for KV-cache stages: prefill densely in float64 (capturing each
 * layer's rotated queries, its queries before rotary, and its keys/values), evict at prefill with the reference press
 * (test/reference/kv-presses.ts, written from the authors' code), then decode greedily over the
 * kept cache. Rotary positions keep counting the dense tokens, as the compiled model's host does.
 */
import type { KvCache, ReferenceDecoder } from "./decoder.js";
import { evictPrefill, type LayerInput, type PressSpec } from "./kv-presses.js";

export interface EvictingGeneration {
  /** kept[layer][kvHead]: ascending positions. */
  kept: number[][][];
  /** `steps` greedy tokens: the prefill's argmax, then one per decode step. */
  tokens: number[];
  /** Logits of each decode step (steps − 1 of them). */
  steps: Float64Array[];
  /** The prefill's last-position logits. */
  last: Float64Array;
  /** What the press scored per layer: the rotated queries, keys and values of the prefill. */
  layers: LayerInput[];
}

export function evictingGeneration(
  reference: ReferenceDecoder,
  prompt: readonly number[],
  press: PressSpec,
  steps: number,
  /** Kept positions to decode over instead of the press's ([layer][kvHead]): a set chosen among ties. */
  keptOverride?: readonly (readonly (readonly number[])[])[],
): EvictingGeneration {
  const o = reference.o;
  const cache: KvCache = reference.newCache();
  const perHead = () =>
    Array.from({ length: o.layers }, () => Array.from({ length: o.heads }, () => [] as Float64Array[]));
  const queries = perHead();
  const preRope = perHead();
  const prefill = reference.forward(prompt, cache, queries, preRope);
  const rowsOf = (x: Float64Array[][]) => x.map((r) => r.map((t) => Array.from(t)));
  const layers: LayerInput[] = queries.map((q, l) => ({
    q: rowsOf(q),
    qPre: rowsOf(preRope[l]!),
    k: rowsOf(cache.keys[l]!),
    v: rowsOf(cache.values[l]!),
  }));
  const evicted = evictPrefill(layers, press);
  const kept = keptOverride ? keptOverride.map((l) => l.map((g) => [...g])) : evicted.kept;
  // The cache keeps the kept entries; positions go on counting the dense tokens (cache.length).
  kept.forEach((perHead, l) =>
    perHead.forEach((kept, g) => {
      cache.keys[l]![g] = kept.map((t) => cache.keys[l]![g]![t]!);
      cache.values[l]![g] = kept.map((t) => cache.values[l]![g]![t]!);
    }),
  );
  const decoded = reference.decodeGreedy(prefill.at(-1)!, cache, steps);
  return { kept: evicted.kept, ...decoded, last: prefill.at(-1)!, layers };
}
