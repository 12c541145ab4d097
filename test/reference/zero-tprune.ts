/**
 * Reference redundancy (Zero-TPrune's S-stage, methods.md §12), written from the rule in
 * passes/criteria/redundancy.ts's doc comment (the paper's description; no code exists), on plain
 * arrays and independent of the compiler's lowering. Per example: the layer's attention logits
 * [h][N][N] and its keys averaged over heads [N][D] in, the kept positions (prefix in front,
 * ascending) out. Float64.
 *   importance = weighted PageRank (pagerankScores); B = the ⌈Np/2⌉ most important prunable tokens
 *   (ties: the lower position is more important), A = the rest; s_a = max over B of
 *   cos(k_a, k_b) with each key divided by max(‖k‖, 1e-8); drop the `dropped` tokens of A with the
 *   highest s_a (ties: the higher position first).
 */
import { pagerankScores } from "./attention-scores.js";

const EPS = 1e-8;

export interface RedundancyStep {
  /** Kept positions, prefix included, ascending. */
  kept: number[];
  /** Group B (the important half), positions ascending. */
  important: number[];
  /** s_a of every A token, by position. */
  similarity: Map<number, number>;
  /** Importance of the least important B token minus the most important A token's, relative to the former (≥ 0). */
  partitionGap: number;
  /** s of the last dropped A token minus the first kept A token's (≥ 0; Infinity when all or none of A go). */
  dropGap: number;
}

function unit(x: number[]): number[] {
  const norm = Math.max(Math.sqrt(x.reduce((a, v) => a + v * v, 0)), EPS);
  return x.map((v) => v / norm);
}

const dot = (x: number[], y: number[]): number => x.reduce((a, v, i) => a + v * y[i]!, 0);

/** One example: drop `dropped` of its prunable tokens (at most ⌊Np/2⌋). */
export function redundancyStep(
  logits: number[][][],
  keys: number[][],
  dropped: number,
  prefix: number,
  iterations = 5,
  temperature = 0.1,
): RedundancyStep {
  const importance = pagerankScores(logits, iterations, temperature, prefix);
  const np = importance.length;
  if (dropped > Math.floor(np / 2)) throw new Error(`redundancy drops at most ${Math.floor(np / 2)} of ${np}`);
  const byImportance = importance.map((s, i) => ({ s, i })).sort((a, b) => (b.s !== a.s ? b.s - a.s : a.i - b.i));
  const half = Math.ceil(np / 2);
  const groupB = byImportance.slice(0, half).map((t) => t.i);
  const groupA = byImportance.slice(half).map((t) => t.i);
  const boundary = byImportance[half - 1]!.s;
  const partitionGap = groupA.length ? (boundary - byImportance[half]!.s) / boundary : Infinity;
  const units = keys.slice(prefix).map(unit);
  const similarity = new Map<number, number>();
  for (const a of groupA) similarity.set(a + prefix, Math.max(...groupB.map((b) => dot(units[a]!, units[b]!))));
  // Most similar first; equal similarity: the higher position first.
  const byRedundancy = groupA.map((a) => a + prefix).sort((p, q) => similarity.get(q)! - similarity.get(p)! || q - p);
  const gone = new Set(byRedundancy.slice(0, dropped));
  const dropGap =
    dropped > 0 && dropped < byRedundancy.length
      ? similarity.get(byRedundancy[dropped - 1]!)! - similarity.get(byRedundancy[dropped]!)!
      : Infinity;
  const kept = [...Array(prefix + np).keys()].filter((p) => !gone.has(p));
  return {
    kept,
    important: groupB.map((i) => i + prefix).sort((p, q) => p - q),
    similarity,
    partitionGap,
    dropGap,
  };
}
