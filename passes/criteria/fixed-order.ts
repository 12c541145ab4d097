/**
 * Input-independent baselines: `random(seed)` and `uniform` rank the prunable tokens by a fixed
 * order computed at compile time, so every example keeps the same positions. The order becomes
 * constant scores (earlier = higher), expanded over the batch.
 */
import type { CriterionModule, Prepared, ScoreContext } from "../criterion.js";
import type { Dim } from "../../src/analysis/dims.js";
import { mulberry32 } from "../../src/random.js";

/** A random permutation of 0..n-1 (Fisher–Yates driven by mulberry32(seed)). */
export function randomOrder(n: number, seed: number): number[] {
  const next = mulberry32(seed);
  const order = [...Array(n).keys()];
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/**
 * Patches of a g×g grid in farthest-point order, starting at the cell nearest the centre (lowest
 * index on ties): any prefix of the order is spread evenly over the image.
 */
export function uniformOrder(grid: number): number[] {
  const n = grid * grid;
  const xy = (i: number) => [i % grid, Math.floor(i / grid)] as const;
  const c = (grid - 1) / 2;
  const dist2 = (i: number, x: number, y: number) => (xy(i)[0] - x) ** 2 + (xy(i)[1] - y) ** 2;
  let first = 0;
  for (let i = 1; i < n; i++) if (dist2(i, c, c) < dist2(first, c, c)) first = i;
  const order = [first];
  const nearest = Array.from({ length: n }, (_, i) => dist2(i, ...xy(first)));
  while (order.length < n) {
    let best = -1;
    for (let i = 0; i < n; i++) if (nearest[i]! > 0 && (best < 0 || nearest[i]! > nearest[best]!)) best = i;
    order.push(best);
    for (let i = 0; i < n; i++) nearest[i] = Math.min(nearest[i]!, dist2(i, ...xy(best)));
  }
  return order;
}

/** Constant scores from an order of the prunable tokens, as [batch, Np]. */
function scoresFromOrder(ctx: ScoreContext, order: number[]): string {
  const { b, model, stream } = ctx;
  const scores = new Array<number>(order.length);
  order.forEach((token, rank) => (scores[token] = order.length - rank));
  const constant = b.float(scores, [1, order.length], "fixed_scores");
  if (model.batchAxis === undefined) return constant;
  const batch = b.slice(b.op("Shape", [stream]), 0, model.batchAxis, model.batchAxis + 1);
  const shape = b.op("Concat", [batch, b.int64([order.length])], { axis: 0 });
  return b.op("Expand", [constant, shape], {}, "over_batch");
}

/** The static token count entering the stage, or why it is symbolic. */
function staticCount(tokensIn: Dim | undefined): Prepared<number> {
  return typeof tokensIn === "number"
    ? { ok: tokensIn }
    : { why: `the token count is symbolic (${String(tokensIn)}); this criterion needs a static one` };
}

export const random: CriterionModule = {
  name: "random",
  // `keep kv … by random` is passes/criteria/kv-presses.ts' randomKv (same name and argument).
  targets: ["stream", "kv"],
  summary: "a fixed random subset of the prunable tokens (same for every input)",
  args: { seed: { type: "integer", default: 0, doc: "seed of the mulberry32 generator" } },
  needs: "a static token count",
  prepare({ tokensIn, prefix, args }) {
    const tokens = staticCount(tokensIn);
    if ("why" in tokens) return tokens;
    const order = () => randomOrder(tokens.ok - prefix, Number(args["seed"] ?? 0));
    return { ok: { kind: "score", score: (ctx) => scoresFromOrder(ctx, order()) } };
  },
};

export const uniform: CriterionModule = {
  name: "uniform",
  summary: "an even spatial spread of patches (farthest-point order on the patch grid from the centre)",
  args: {},
  needs: "a static token count; a square patch grid",
  prepare({ model, tokensIn, prefix }) {
    const tokens = staticCount(tokensIn);
    if ("why" in tokens) return tokens;
    if (tokens.ok !== model.tokens)
      return { why: "it spreads tokens over the full patch grid, so it must be the first stage" };
    const patches = tokens.ok - model.cls.prefixTokens;
    const g = Math.round(Math.sqrt(patches));
    if (g * g !== patches) return { why: `${patches} prunable tokens do not form a square patch grid` };
    const grid = Math.round(Math.sqrt(tokens.ok - prefix));
    return { ok: { kind: "score", score: (ctx) => scoresFromOrder(ctx, uniformOrder(grid)) } };
  },
};
