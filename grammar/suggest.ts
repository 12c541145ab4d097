/** "Did you mean" suggestions by edit distance. */

/** Optimal-string-alignment distance: Levenshtein plus adjacent transpositions. */
export function editDistance(a: string, b: string): number {
  const n = a.length;
  const m = b.length;
  if (n === 0) return m;
  if (m === 0) return n;
  // d[i][j] flattened; rows of length m + 1.
  const w = m + 1;
  const d = new Array<number>((n + 1) * w).fill(0);
  for (let i = 0; i <= n; i++) d[i * w] = i;
  for (let j = 0; j <= m; j++) d[j] = j;
  for (let i = 1; i <= n; i++) {
    for (let j = 1; j <= m; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[(i - 1) * w + j]! + 1, d[i * w + j - 1]! + 1, d[(i - 1) * w + j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        v = Math.min(v, d[(i - 2) * w + j - 2]! + 1);
      }
      d[i * w + j] = v;
    }
  }
  return d[n * w + m]!;
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
 */
export function closest(word: string, candidates: Iterable<string>): string | undefined {
  const w = word.toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const c = candidate.toLowerCase();
    const dist = editDistance(w, c);
    if (dist <= budget(w.length) && dist < bestDistance) {
      best = candidate;
      bestDistance = dist;
    }
  }
  return best;
}
