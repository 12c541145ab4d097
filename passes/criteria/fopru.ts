/**
 * fopru (FoPru, methods.md §10; third-party code `dongxianzhe/hydrainfer`,
 * hydrainfer/layer/token_prunning.py: focal_prunning, called on `scores[:, :, 1:, 1:]`):
 *   P = head-mean attention probabilities restricted to prunable × prunable (queries and keys both
 *   without the prefix tokens; rows are not renormalised);
 *   s1 = column mean (mean over the query rows i of P[i,j]), s2 = row mean (mean over j of P[i,j]);
 *   the score is s1 when var(s1) > var(s2), else s2 (hydrainfer's strict `>`: a tie takes the row
 *   mean), decided per example (Where on a [B,1] condition).
 * hydrainfer uses torch.var (divisor n−1); s1 and s2 have the same length, so the population
 * variance (divisor n) used here orders them the same way.
 *
 * `strategy: rank` keeps the best tokens; `strategy: rows` keeps whole rows of the square patch
 * grid, each row scored by the sum of the score over its w = √Np tokens (the amount counts rows).
 */
import type { CriterionModule, Prepared, ScoreContext, Scorer, StageFacts } from "../criterion.js";
import type { NodeBuilder } from "../builder.js";
import { attentionOf, probabilities, type Attention } from "../attention/attention-map.js";

const STRATEGIES = ["rank", "rows"] as const;

const strategyOf = (facts: StageFacts): string => String(facts.args["strategy"] ?? "rank");

/** Why the prunable tokens of this stage do not form a square grid, or its width. */
function gridWidth(facts: StageFacts): Prepared<number> {
  const { model, tokensIn, prefix } = facts;
  if (typeof tokensIn !== "number")
    return { why: `the token count is symbolic (${String(tokensIn)}); strategy 'rows' needs a static one` };
  if (tokensIn !== model.tokens)
    return {
      why: `strategy 'rows' needs the full patch grid, but an earlier stage already pruned it (${tokensIn} of ${String(model.tokens)} tokens enter this stage)`,
    };
  const patches = tokensIn - prefix;
  const width = Math.round(Math.sqrt(patches));
  if (width * width !== patches)
    return { why: `${patches} prunable tokens do not form a square patch grid; strategy 'rows' needs one` };
  return { ok: width };
}

/** Variance over the last axis, [B,1]. */
function variance(b: NodeBuilder, s: string): string {
  const centred = b.op("Sub", [s, b.reduceMean(s, [1], 1)], {}, "centre");
  return b.reduceMean(b.op("Mul", [centred, centred], {}, "square"), [1], 1);
}

/** The FoPru score [B,Np] of the prunable tokens. */
export function fopruScores(b: NodeBuilder, attention: Attention, prefix: number): string {
  const probs = probabilities(b, attention, "all"); // [B,H,N,N]
  const patches = b.slice(b.slice(probs, 2, prefix), 3, prefix); // [B,H,Np,Np]
  const p = b.reduceMean(patches, [1], 0); // [B,Np,Np]
  const columns = b.reduceMean(p, [1], 0); // s1: mean over the query rows, [B,Np]
  const rowMeans = b.reduceMean(p, [2], 0); // s2: mean over the keys, [B,Np]
  const useColumns = b.op("Greater", [variance(b, columns), variance(b, rowMeans)], {}, "columns_vary_more"); // [B,1]
  return b.op("Where", [useColumns, columns, rowMeans], {}, "focal_score");
}

/** fopru's scorer for the stage: a score per token (`rank`), or per grid row with the rows as groups (`rows`). */
function prepare(facts: StageFacts): Prepared<Scorer> {
  const strategy = strategyOf(facts);
  if (!(STRATEGIES as readonly string[]).includes(strategy))
    return { why: `strategy '${strategy}' is not one of ${STRATEGIES.join(", ")}` };
  const attention = attentionOf(facts.layer);
  if ("why" in attention) return attention;
  if (strategy !== "rows")
    return { ok: { kind: "score", score: ({ b, prefix }) => fopruScores(b, attention.ok, prefix) } };
  const grid = gridWidth(facts);
  if ("why" in grid) return grid;
  const w = grid.ok;
  const score = ({ b, prefix }: ScoreContext): string => {
    const scores = fopruScores(b, attention.ok, prefix);
    const byRow = b.op("Reshape", [scores, b.int64([0, w, w], [3], "grid_shape")], {}, "grid_rows"); // [B,w,w]
    return b.reduce("ReduceSum", byRow, [2], 0); // [B,w]
  };
  const groups = {
    unit: "grid row",
    members: Array.from({ length: w }, (_, r) => Array.from({ length: w }, (_, c) => r * w + c)),
  };
  return { ok: { kind: "score", score, groups } };
}

export const fopru: CriterionModule = {
  name: "fopru",
  summary: "column or row mean of patch-to-patch attention, whichever varies more (FoPru, methods.md §10)",
  args: {
    strategy: { type: "identifier", default: "rank", doc: "`rank` (TopK of tokens) or `rows` (whole grid rows)" },
  },
  needs:
    "attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention); no CLS needed; `rows`: a static square patch grid, before any other stage",
  prepare,
};

/** `spatial-rows`: the language's name for FoPru's row strategy, the same module with `strategy: rows`. */
const rows = (facts: StageFacts): StageFacts => ({ ...facts, args: { ...facts.args, strategy: "rows" } });
export const spatialRows: CriterionModule = {
  name: "spatial-rows",
  summary: "whole grid rows ranked by the summed FoPru score; the same as fopru(strategy: rows) (methods.md §10)",
  args: {},
  needs:
    "attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention); a static square patch grid, before any other stage",
  prepare: (facts) => prepare(rows(facts)),
};
