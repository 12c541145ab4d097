/**
 * evs (EVS, efficient video sampling, methods.md §31; vLLM `vllm/multimodal/evs.py` @ 094f117,
 * `compute_retention_mask`, lines 39–93): a token that did not change since the previous frame
 * carries little news. Per token, dissimilarity = 1 − cos(e_t, e_{t−1}) against the previous frame's
 * UNPRUNED embedding at the same position (lines 71–74: `F.cosine_similarity`, default eps 1e-8, which
 * torch computes as Σ (x/max(‖x‖, eps))·(y/max(‖y‖, eps))); the first frame scores 255, above any
 * dissimilarity (≤ 2), so it is kept whole (lines 76–78); the kept tokens are the first of a stable
 * descending argsort (line 82: ties to the lower index), returned as a mask (position order).
 *
 * vLLM prunes a whole video in one call ([T·H'·W', D], one budget max(tpf, int(T·tpf·(1 − q))) over
 * every frame, lines 17–36). Here the model runs once per frame (`across frames`), so one call is
 * vLLM's computation over two frames, the previous one counted as already kept: the previous
 * frame's rows come from the stage's state (`past_key_values.stageN.prunec_frame`), and the call
 * keeps its own budget (`keep P%` of its prunable tokens) of the current frame by dissimilarity; the
 * first call (empty state) keeps every token. The state it leaves is the stage's input, every row,
 * in float (the next call compares against it). Scores and the state are computed in float32.
 */
import type { CriterionModule, ScoreContext } from "../criterion.js";
import { previousRows } from "../frames.js";

/** torch's `F.cosine_similarity` eps (its default; evs.py passes none). */
const EPS = 1e-8;
/** The first frame's score (evs.py line 77). */
const FIRST_FRAME = 255;

function score(ctx: ScoreContext): string {
  const { b, prefix, frame } = ctx;
  if (!frame) throw new Error("evs needs 'across frames' (checked by the plan)");
  const current = b.op("Cast", [ctx.stream], { to: 1 }, "current_frame"); // [B,N,D]
  const previous = previousRows(b, frame.past, current); // [B,N,D]
  const cos = b.reduce(
    "ReduceSum",
    // Each row divided by max(‖row‖₂, eps), as torch's cosine_similarity normalizes.
    b.op(
      "Mul",
      [
        b.unitRows(current, 2, EPS, "current_norm", "current_unit"),
        b.unitRows(previous, 2, EPS, "previous_norm", "previous_unit"),
      ],
      {},
      "cosine_terms",
    ),
    [2],
    0,
  ); // [B,N]
  const dissimilarity = b.op("Sub", [b.float([1], [], "one"), cos], {}, "dissimilarity");
  const scores = b.op("Where", [frame.first, b.float([FIRST_FRAME], [], "first_frame_score"), dissimilarity]);
  return b.slice(scores, 1, prefix); // [B,Np]
}

export const evs: CriterionModule = {
  name: "evs",
  summary:
    "1 − cosine similarity of each token to the same token of the previous call's unpruned stage input (EVS, methods.md §31); the first call keeps every token",
  args: {},
  needs:
    "'across frames' (the model runs once per frame; the state holds the previous frame's stage input); a batch axis",
  frames: {
    holds: "the stage's input, every row, unpruned: float [batch, tokens, hidden]",
    required:
      "evs compares each token with the same token of the previous frame, which only a state carried from call to call holds",
    dims: (tokens, hidden) => [tokens, hidden],
  },
  prepare: () => ({
    ok: {
      kind: "score",
      score,
      // The next call compares against this call's input rows, all of them, before any pruning.
      next: (ctx) => ctx.stream,
    },
  }),
};
