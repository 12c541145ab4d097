/**
 * SparseVLM's text-rater scoring (methods.md §15; Gumpest/SparseVLMs v1.5/v2.0,
 * modelling_sparse_llama.py and score.py) on plain arrays, independent of passes/.
 *
 * Raters (once, on the layer-0 input embeddings of one example): V = image positions, T = the
 * positions after the image span that are not image; m = mean over V of softmax over T of V·Tᵀ;
 * raters = {t : m_t > mean(m)}. SparseVLM's mean over an empty rater set is NaN; as prunec, when no
 * text token qualifies every text token rates.
 * Score: s_j = mean over heads, mean over raters of P[h][r][j].
 */

/** Text positions of one example: after its last image token, not image (none without an image). */
export function textPositions(image: readonly boolean[]): number[] {
  const last = image.lastIndexOf(true);
  if (last < 0) return [];
  return [...image.keys()].filter((j) => j > last && !image[j]);
}

/** Each text token's relevance m_t (mean over image tokens of softmax over text of V·Tᵀ) and their mean. */
export function raterRelevance(
  embeds: readonly (readonly number[])[],
  image: readonly boolean[],
): { text: number[]; m: number[]; mean: number } {
  const text = textPositions(image);
  const visual = image.flatMap((v, j) => (v ? [j] : []));
  const dot = (a: readonly number[], b: readonly number[]) => a.reduce((s, x, i) => s + x * b[i]!, 0);
  const m = text.map(() => 0);
  for (const v of visual) {
    const logits = text.map((t) => dot(embeds[v]!, embeds[t]!));
    const max = Math.max(...logits);
    const exps = logits.map((l) => Math.exp(l - max));
    const sum = exps.reduce((a, b) => a + b, 0);
    exps.forEach((e, i) => (m[i]! += e / sum / visual.length));
  }
  return { text, m, mean: m.reduce((a, b) => a + b, 0) / m.length };
}

/** SparseVLM's raters of one example; `fallback` when none passed the threshold (all text rates). */
export function sparsevlmRaters(
  embeds: readonly (readonly number[])[],
  image: readonly boolean[],
): { raters: number[]; fallback: boolean } {
  const { text, m, mean } = raterRelevance(embeds, image);
  if (!text.length) return { raters: [], fallback: true };
  const raters = text.filter((_, i) => m[i]! > mean);
  return raters.length ? { raters, fallback: false } : { raters: text, fallback: true };
}

/** s_j for every key j of one example: probs[h][q][j], mean over heads and the raters' rows (zeros without raters). */
export function textAttnScores(
  probs: readonly (readonly (readonly number[])[])[],
  raters: readonly number[],
): number[] {
  const heads = probs.length;
  const n = probs[0]![0]!.length;
  return Array.from({ length: n }, (_, j) => {
    if (!raters.length) return 0;
    let s = 0;
    for (let h = 0; h < heads; h++) for (const r of raters) s += probs[h]![r]![j]!;
    return s / heads / raters.length;
  });
}
