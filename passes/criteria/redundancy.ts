/**
 * redundancy (Zero-TPrune's S-stage, similarity-based pruning, methods.md §12). There is no official
 * code, and the stored unofficial re-implementation (`MahdiarKhodabakhshi/Zero-TPrune` @ 04d03e1,
 * `tokenrank_vit.py`) never computes a similarity, so the rule is written from the paper's words
 * ("the importance distribution guides the partition of tokens into two groups and measures
 * similarity between them"; the less important tokens most similar to the important ones go):
 *   1. importance = the `pagerank` criterion's score of the layer (its arguments `iterations`,
 *      `temperature`; the I-stage's weighted PageRank), over the prunable tokens (special tokens
 *      are never scored);
 *   2. the ⌈Np/2⌉ most important prunable tokens are group B, kept by this stage; the other ⌊Np/2⌋
 *      are group A. Equal importance: the lower position counts as more important;
 *   3. for each a in A, s_a = max over b in B of cos(k_a, k_b), k = the layer's keys averaged over
 *      heads (ToMe's metric, `keysOf`), each vector divided by max(‖k‖₂, 1e-8) (torch's
 *      `cosine_similarity` eps);
 *   4. the stage drops the tokens of A with the highest s_a; equal s_a: the higher position goes first.
 * As a score for the top-k kind: B scores 3, a in A scores 1 − s_a (in [0, 2]), so every B token
 * ranks above every A token and TopK's tie rule (the lower position kept) is rule 4's. The stage may
 * drop at most ⌊Np/2⌋ tokens (`dropsAtMostHalf`, checked by the plan), so B is never dropped.
 */
import type { CriterionModule, ScoreContext } from "../criterion.js";
import { headMeanKeys, keysOf, type Keys } from "../attention/keys.js";
import { rankInGroup } from "../select-groups.js";
import { pagerank } from "./pagerank.js";

/** torch's `F.cosine_similarity` eps: each key divided by max(‖k‖₂, EPS). */
const EPS = 1e-8;
/** B's score: above 1 − cos for any cosine (≥ −1, with float32 slack). */
const IMPORTANT = 3;
/** A column outside B: below any cosine, so the max over B ignores it. */
const NOT_IN_B = -2;

/** The scores [B,Np]: IMPORTANT on group B, 1 − s_a on group A. */
function redundancyScores(ctx: ScoreContext, importance: string, keys: Keys): string {
  const { b, prefix, tokens } = ctx;
  // Rank of each token by importance, ties to the lower position (one group: every token).
  const np = tokens === undefined ? undefined : tokens - prefix;
  const rank = rankInGroup(b, importance, b.float([1], [1, 1, 1], "one_group"), np); // [B,Np]
  // rank < Np/2 ⟺ rank < ⌈Np/2⌉: the ⌈Np/2⌉ most important.
  const half =
    np !== undefined
      ? b.float([np / 2], [], "half_tokens")
      : b.op(
          "Div",
          [
            b.op("Cast", [b.slice(b.op("Shape", [importance]), 0, 1, 2)], { to: 1 }, "prunable_tokens"),
            b.float([2], [], "two"),
          ],
          {},
          "half_tokens",
        );
  const important = b.op("Less", [rank, half], {}, "group_b"); // bool [B,Np]
  const unit = b.unitRows(b.slice(headMeanKeys(b, keys), 1, prefix), 2, EPS, "key_norm", "unit_keys"); // [B,Np,D]
  const cos = b.op("MatMul", [unit, b.op("Transpose", [unit], { perm: [0, 2, 1] })], {}, "cosine"); // [B,Np,Np]
  const toB = b.op("Where", [b.unsqueeze(important, [1]), cos, b.float([NOT_IN_B], [], "not_in_b")], {}, "cosine_to_b");
  const nearest = b.reduce("ReduceMax", toB, [2], 0); // s_a [B,Np]
  const distinct = b.op("Sub", [b.float([1], [], "one"), nearest], {}, "distance_to_b");
  return b.op("Where", [important, b.float([IMPORTANT], [], "important"), distinct], {}, "redundancy");
}

export const redundancy: CriterionModule = {
  name: "redundancy",
  summary:
    "Zero-TPrune's S-stage (written from the paper, methods.md §12): the pagerank-important half of the tokens is kept; of the other half, the tokens whose keys (mean over heads) are most cosine-similar to an important token's are dropped first",
  args: pagerank.args,
  needs:
    "what pagerank needs (attention logits) and keys (MatMul + Softmax exports, or MultiHeadAttention's key input); an amount dropping at most half of the prunable tokens, known before the run",
  dropsAtMostHalf: "drops only tokens of the less important half (Zero-TPrune's S-stage partition)",
  prepare(facts) {
    // The I-stage's importance is pagerank's score, its arguments checked by pagerank itself.
    const importance = pagerank.prepare(facts);
    if ("why" in importance) return importance;
    const scorer = importance.ok;
    if (scorer.kind !== "score") throw new Error("pagerank scores tokens");
    const keys = keysOf(facts.layer);
    if ("why" in keys) return keys;
    return { ok: { kind: "score", score: (ctx) => redundancyScores(ctx, scorer.score(ctx), keys.ok) } };
  },
};
