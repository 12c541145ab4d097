/**
 * Token counts. `keep P%` of N prunable tokens keeps round-half-up(P/100 · N), never fewer than 1
 * (language.md). P is taken as the exact decimal the user wrote, so the count is computed in
 * integers: no float rounding decides a boundary like 12.5% of 196.
 */
import type { NodeBuilder } from "./builder.js";

/** P as an integer ratio num/den (P = 33.3 → 333/10). */
export function percentRatio(percent: number): { num: number; den: number } {
  const text = String(percent);
  if (/e/i.test(text)) throw new Error(`percent ${text} has too many digits`);
  const decimals = text.includes(".") ? text.length - text.indexOf(".") - 1 : 0;
  const den = 10 ** decimals;
  return { num: Math.round(percent * den), den };
}

export function keepCountStatic(percent: number, n: number): number {
  const { num, den } = percentRatio(percent);
  const k = Math.floor((2 * num * n + 100 * den) / (200 * den));
  return Math.min(n, Math.max(1, k));
}

/**
 * The same formulas as graph ops on an int64 [1] tensor holding N; returns an int64 [1] tensor:
 * keep P% → max(1, round-half-up(P%·N)); drop P% → max(1, N − max(1, round-half-up(P%·N))).
 * (A static `drop` that would keep nothing is rejected by the plan; at run time one token stays.)
 */
export function keepCountDynamic(b: NodeBuilder, n: string, percent: number, drop = false): string {
  const k = b.op("Max", [shareDynamic(b, n, percent), b.int64([1])], {}, "at_least_one");
  if (!drop) return k;
  return b.op("Max", [b.op("Sub", [n, k], {}, "remaining"), b.int64([1])], {}, "at_least_one");
}

/** round-half-up(P/100 · N) as graph ops on int64 N (any shape), in integers; no floor of one. */
export function shareDynamic(b: NodeBuilder, n: string, percent: number): string {
  const { num, den } = percentRatio(percent);
  const scaled = b.op("Add", [b.op("Mul", [n, b.int64([2 * num])]), b.int64([100 * den])]);
  return b.op("Div", [scaled, b.int64([200 * den])], {}, "round_half_up");
}
