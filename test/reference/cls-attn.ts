/**
 * Reference cls-attn (methods.md §1) on plain arrays, written from the method's description and
 * independent of the compiler's code: probabilities[b][h][q][k] in, kept token positions out.
 */
export type Probs = number[][][][]; // [batch][head][query][key]

/** round-half-up(P/100 · n), at least 1 (language.md). */
export function keepCount(percent: number, n: number): number {
  return Math.min(n, Math.max(1, Math.floor((percent / 100) * n + 0.5)));
}

/** Scores of the prunable tokens (keys prefix..N-1) for one example. */
export function clsScores(probs: number[][][], prefix: number): number[] {
  const heads = probs.length;
  const n = probs[0]![0]!.length;
  const scores: number[] = [];
  for (let j = prefix; j < n; j++) {
    let sum = 0;
    for (let h = 0; h < heads; h++) sum += probs[h]![0]![j]!;
    scores.push(sum / heads);
  }
  return scores;
}

/** Top-k by score (ties: lower index first), returned as ascending token positions with the prefix in front. */
export function topKPositions(scores: number[], k: number, prefix: number): number[] {
  const order = scores.map((s, i) => [s, i] as const).sort((a, b) => (b[0] !== a[0] ? b[0] - a[0] : a[1] - b[1]));
  const chosen = order
    .slice(0, k)
    .map(([, i]) => i + prefix)
    .sort((a, b) => a - b);
  return [...Array(prefix).keys(), ...chosen];
}

export function clsAttnKeep(probs: Probs, percent: number, prefix: number): number[][] {
  return probs.map((example) => {
    const scores = clsScores(example, prefix);
    return topKPositions(scores, keepCount(percent, scores.length), prefix);
  });
}

/** global-attn (methods.md §4): mean over heads of the column mean over all queries, prunable keys only. */
export function globalScores(probs: number[][][], prefix: number): number[] {
  const heads = probs.length;
  const q = probs[0]!.length;
  const n = probs[0]![0]!.length;
  const scores: number[] = [];
  for (let j = prefix; j < n; j++) {
    let sum = 0;
    for (let h = 0; h < heads; h++) {
      let col = 0;
      for (let i = 0; i < q; i++) col += probs[h]![i]![j]!;
      sum += col / q;
    }
    scores.push(sum / heads);
  }
  return scores;
}

export function globalAttnKeep(probs: Probs, percent: number, prefix: number): number[][] {
  return probs.map((example) => {
    const scores = globalScores(example, prefix);
    return topKPositions(scores, keepCount(percent, scores.length), prefix);
  });
}
