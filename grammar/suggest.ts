/** "Did you mean" suggestions by edit distance. */

/** Optimal-string-alignment distance: Levenshtein plus adjacent transpositions. */
export function editDistance(a: string, b: string): number {
  return boundedDistance(a, b, Math.max(a.length, b.length));
}

/**
 * The optimal-string-alignment distance of a and b when it is at most `max`, else `max + 1`.
 * Only the diagonal band |i − j| <= max is computed, so the cost is O(|a|·max), not O(|a|·|b|):
 * a suggestion for a huge word (a fuzzed spec) stays cheap.
 */
export function boundedDistance(a: string, b: string, max: number): number {
  const n = a.length;
  const m = b.length;
  if (Math.abs(n - m) > max) return max + 1;
  if (n === 0 || m === 0) return Math.max(n, m);
  const over = max + 1;
  // Three rolling rows (i−2, i−1, i) of length m + 1; cells outside the band read as `over`.
  let prev2 = new Array<number>(m + 1).fill(over);
  let prev = new Array<number>(m + 1).fill(over);
  let cur = new Array<number>(m + 1).fill(over);
  for (let j = 0; j <= Math.min(m, max); j++) prev[j] = j;
  for (let i = 1; i <= n; i++) {
    const lo = Math.max(1, i - max);
    const hi = Math.min(m, i + max);
    cur[lo - 1] = lo === 1 ? i : over;
    if (hi < m) cur[hi + 1] = over;
    let rowMin = cur[lo - 1]!;
    for (let j = lo; j <= hi; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, prev2[j - 2]! + 1);
      v = Math.min(v, over);
      cur[j] = v;
      if (v < rowMin) rowMin = v;
    }
    if (rowMin > max) return over; // every alignment already costs more than max
    [prev2, prev, cur] = [prev, cur, prev2];
  }
  return Math.min(prev[m]!, over);
}

/** How many edits a word of this length may be away from a candidate: 0 up to 2 letters, 1 up to 4, else 2. */
function budget(length: number): number {
  if (length <= 2) return 0;
  if (length <= 4) return 1;
  return 2;
}

/**
 * The candidate closest to `word` (case-insensitively), if close enough to be a plausible typo.
 * Ties go to the earlier candidate. A candidate equal to `word` ignoring case is returned (a case slip).
 * Each comparison costs O(length · budget), so even long words against many candidates stay linear.
 */
export function closest(word: string, candidates: Iterable<string>): string | undefined {
  const w = word.toLowerCase();
  const max = budget(w.length);
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const c = candidate.toLowerCase();
    const dist = boundedDistance(w, c, max);
    if (dist <= max && dist < bestDistance) {
      best = candidate;
      bestDistance = dist;
    }
  }
  return best;
}
