/**
 * Reference VLA-Pruner (methods.md §32) in float64 on plain arrays, written from the authors' code
 * (`MINT-SJTU/VLA-Pruner` @ fa5bfed; read, not copied), independent of the compiler's:
 * - `currentScore`: modeling_llama.py lines 1078–1082, 1093–1097: head mean of the layer's
 *   attention, mean over every query row (`use_prefil_attention`), at the image columns.
 * - `temporalGuide`: modeling_prismatic.py lines 573–577: `weights = [γ^i for i in range(W−1, −1, −1)]`,
 *   `guided += weights[i] · av_hist[−1 − i]`, then ÷ Σ (the newest vector weighs γ^(W−1), the oldest 1).
 * - `redundancyMinimization`: modeling_llama.py lines 950–971 (`_redundancy_minization`), re-picks included.
 * - `vlaSelect`: lines 1099–1120: k = the stage's count; U = unique(TopK(g, k) ∪ TopK(c, k)), sorted;
 *   if |U| > k the greedy filter on U's layer-0 embeddings, else U.
 * - `importance`: modeling_prismatic.py lines 612–618 with `_extract_action_modality_attentions`
 *   (from line 640): the action rows' attention at the recorded layer, pruned columns 0, mean over
 *   heads then rows; prunec's action rows are rows of the same call (parallel decoding).
 * TopK ties go to the lower index (the compiled model's rule; torch leaves them unspecified).
 */

/** Indices of the k largest of x, ties to the lower index. */
export function topK(x: readonly number[], k: number): number[] {
  return [...x.keys()].sort((a, b) => x[b]! - x[a]! || a - b).slice(0, k);
}

/** c over the image positions: mean over heads and every query row of probs[h][i][j]. */
export function currentScore(probs: readonly (readonly (readonly number[])[])[], image: readonly number[]): number[] {
  return image.map((j) => {
    let s = 0;
    for (const head of probs) for (const row of head) s += row[j]!;
    return s / (probs.length * probs[0]!.length);
  });
}

/** g from a full deque (oldest first), as predict_action computes it. */
export function temporalGuide(hist: readonly (readonly number[])[], gamma: number): number[] {
  const w = hist.length;
  const weights = Array.from({ length: w }, (_, i) => gamma ** (w - 1 - i));
  const guided = new Array<number>(hist[0]!.length).fill(0);
  for (let i = 0; i < w; i++) hist[w - 1 - i]!.forEach((v, j) => (guided[j]! += weights[i]! * v));
  const total = guided.reduce((a, v) => a + v, 0);
  return guided.map((v) => v / total);
}

/** `_redundancy_minization`: indices into `features` of the k greedy max-min picks (in pick order). */
export function redundancyMinimization(features: readonly (readonly number[])[], k: number): number[] {
  const n = features.length;
  if (n <= k) return [...features.keys()];
  const unit = features.map((f) => {
    const norm = Math.sqrt(f.reduce((a, v) => a + v * v, 0));
    return f.map((v) => v / norm);
  });
  const d = unit.map((a) => unit.map((b) => 1 - a.reduce((s, v, i) => s + v * b[i]!, 0)));
  const argmax = (s: number[]) => s.reduce((best, v, i) => (v > s[best]! ? i : best), 0);
  const picks: number[] = [];
  for (let t = 0; t < k; t++) {
    const scores = [...Array(n).keys()].map((j) => {
      const column = (t === 0 ? [...Array(n).keys()] : picks).map((i) => d[i]![j]!);
      if (t === 0) return [...column].sort((a, b) => a - b)[1]!; // torch.topk(.., 2, largest=False).values[1]
      return Math.min(...column);
    });
    picks.push(argmax(scores));
  }
  return picks;
}

export interface VlaDecision {
  /** Kept image-relative indices, ascending. */
  kept: number[];
  /** |U| and whether the diversity filter ran (|U| > k). */
  union: number;
  filtered: boolean;
}

/** One pruned call over the image tokens: c, g and the image tokens' layer-0 embeddings. */
export function vlaSelect(
  c: readonly number[],
  g: readonly number[],
  embeddings: readonly (readonly number[])[],
  k: number,
): VlaDecision {
  const union = [...new Set([...topK(g, k), ...topK(c, k)])].sort((a, b) => a - b);
  if (union.length <= k) return { kept: union, union: union.length, filtered: false };
  const picks = redundancyMinimization(
    union.map((i) => embeddings[i]!),
    k,
  );
  return { kept: [...new Set(picks.map((p) => union[p]!))].sort((a, b) => a - b), union: union.length, filtered: true };
}

/**
 * v over the dense positions (0 off the image and at pruned columns): probs[h][r][q] of the pruned
 * call's recorded layer, `kept[r]` the dense position of row r (−1: padding), `action` the dense
 * action positions, `image` whether each dense position is an image token.
 */
export function importance(
  probs: readonly (readonly (readonly number[])[])[],
  kept: readonly number[],
  action: ReadonlySet<number>,
  image: readonly boolean[],
): number[] {
  const v = new Array<number>(image.length).fill(0);
  const rows = kept.flatMap((p, r) => (p >= 0 && action.has(p) ? [r] : []));
  kept.forEach((p, q) => {
    if (p < 0 || !image[p]) return;
    let s = 0;
    for (const head of probs) for (const r of rows) s += head[r]![q]!;
    v[p] = s / (probs.length * rows.length);
  });
  return v;
}

/** round-half-up(P%·n), the stage's `keep P% of SET` count per example. */
export function keepCount(n: number, percent: number): number {
  return Math.floor((2 * percent * n + 100) / 200);
}
