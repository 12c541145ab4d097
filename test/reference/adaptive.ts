/** Reference adaptive counts on plain arrays (language.md): mass P% and above X, float32 like the graph. */
const f = Math.fround;

/** Fewest tokens whose scores (clipped at 0), largest first, sum to at least P% of the total; at least 1. */
export function massCount(scores: number[], percent: number): number {
  const s = scores.map((v) => f(Math.max(0, v))).sort((a, b) => b - a);
  let total = 0;
  for (const v of s) total = f(total + v);
  const target = f(total * f(percent / 100));
  let before = 0;
  let count = 0;
  for (const v of s) {
    if (!(before < target)) break;
    count++;
    before = f(before + v);
  }
  return Math.max(1, count);
}

/** Tokens scoring above X; at least 1. */
export function aboveCount(scores: number[], threshold: number): number {
  return Math.max(1, scores.filter((v) => v > f(threshold)).length);
}
