/**
 * Reference cls-attn-ensemble (VTC-CLS, methods.md §2), pagerank (AIM get_importance, §8/§12) and
 * fopru (FoPru, §10) on plain arrays, written from the methods' descriptions and independent of the
 * compiler's code. Per example: probabilities or logits [head][query][key] in, scores or kept
 * token positions (prefix in front, ascending) out. Arithmetic is float64.
 */
import { clsScores, keepCount, topKPositions, type Probs } from "./cls-attn.js";

/** VTC-CLS: Σ over the given layers' maps of the head-mean CLS row, prunable keys only. */
export function ensembleScores(layers: number[][][][], prefix: number): number[] {
  const perLayer = layers.map((probs) => clsScores(probs, prefix));
  return perLayer[0]!.map((_, j) => perLayer.reduce((sum, s) => sum + s[j]!, 0));
}

/** [layer][batch][h][q][k] → kept positions per example. */
export function ensembleKeep(layers: Probs[], percent: number, prefix: number): number[][] {
  return layers[0]!.map((_, b) => {
    const scores = ensembleScores(
      layers.map((l) => l[b]!),
      prefix,
    );
    return topKPositions(scores, keepCount(percent, scores.length), prefix);
  });
}

/**
 * AIM's weighted PageRank on one example's logits [h][N][N]: M = softmax(logits/τ) per row,
 * d = (1/N)·1, `iterations` times d_j ← Σ_i d_i M[i][j], score = sqrt(mean_h d²); prunable tokens.
 */
export function pagerankScores(
  logits: number[][][],
  iterations: number,
  temperature: number,
  prefix: number,
): number[] {
  const n = logits[0]!.length;
  const perHead = logits.map((rowsOfHead) => {
    const m = rowsOfHead.map((row) => {
      const scaled = row.map((x) => x / temperature);
      const max = Math.max(...scaled);
      const e = scaled.map((x) => Math.exp(x - max));
      const z = e.reduce((a, x) => a + x, 0);
      return e.map((x) => x / z);
    });
    let d = new Array<number>(n).fill(1 / n);
    for (let it = 0; it < iterations; it++) {
      const next = new Array<number>(n).fill(0);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) next[j]! += d[i]! * m[i]![j]!;
      d = next;
    }
    return d;
  });
  const scores: number[] = [];
  for (let j = prefix; j < n; j++)
    scores.push(Math.sqrt(perHead.reduce((a, d) => a + d[j]! * d[j]!, 0) / perHead.length));
  return scores;
}

export function pagerankKeep(
  logits: Probs,
  percent: number,
  prefix: number,
  iterations = 5,
  temperature = 0.1,
): number[][] {
  return logits.map((example) => {
    const scores = pagerankScores(example, iterations, temperature, prefix);
    return topKPositions(scores, keepCount(percent, scores.length), prefix);
  });
}

const mean = (xs: number[]): number => xs.reduce((a, x) => a + x, 0) / xs.length;
const variance = (xs: number[]): number => {
  const m = mean(xs);
  return mean(xs.map((x) => (x - m) ** 2));
};

/** FoPru on one example's probabilities [h][N][N]: the score of the prunable tokens and which mean it is. */
export function fopruScores(
  probs: number[][][],
  prefix: number,
): { scores: number[]; chose: "columns" | "rows"; margin: number } {
  const n = probs[0]!.length;
  const np = n - prefix;
  // Head-mean patch × patch attention.
  const p = Array.from({ length: np }, (_, i) =>
    Array.from({ length: np }, (_, j) => mean(probs.map((h) => h[i + prefix]![j + prefix]!))),
  );
  const columns = Array.from({ length: np }, (_, j) => mean(p.map((row) => row[j]!)));
  const rowMeans = p.map(mean);
  const [vc, vr] = [variance(columns), variance(rowMeans)];
  // Strict '>' as in hydrainfer's focal_prunning: a tie takes the row mean.
  return vc > vr
    ? { scores: columns, chose: "columns", margin: vc / vr }
    : { scores: rowMeans, chose: "rows", margin: vc / vr };
}

export function fopruKeep(probs: Probs, percent: number, prefix: number): number[][] {
  return probs.map((example) => {
    const { scores } = fopruScores(example, prefix);
    return topKPositions(scores, keepCount(percent, scores.length), prefix);
  });
}

/**
 * FoPru's row strategy: rows of the w×w grid scored by the sum of their tokens' scores, the best
 * `rowsKept` rows kept whole (ties: lower row first), as ascending positions with the prefix.
 */
export function fopruRowsKeep(probs: Probs, rowsKept: number, prefix: number): number[][] {
  return probs.map((example) => {
    const { scores } = fopruScores(example, prefix);
    const w = Math.round(Math.sqrt(scores.length));
    const rowScores = Array.from({ length: w }, (_, r) => scores.slice(r * w, (r + 1) * w).reduce((a, x) => a + x, 0));
    const rowsChosen = topKPositions(rowScores, rowsKept, 0);
    const positions = rowsChosen
      .flatMap((r) => Array.from({ length: w }, (_, c) => prefix + r * w + c))
      .sort((a, b) => a - b);
    return [...Array(prefix).keys(), ...positions];
  });
}
