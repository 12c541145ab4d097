/**
 * last-token-attn (FastV, methods.md §14): s_j = mean over heads of the attention probability from
 * the last prompt token (the sequence's last row) to token j. FastV prunes before layer K using
 * layer K−1's map: in prunec that is `after layer K−1 drop P% of image by last-token-attn`.
 * Without a set it is LazyLLM's prefill selection (methods.md §28: `imp[last] = +inf`), for plain
 * LLMs: the last token, which the next one is generated from, scores above every other token, so
 * it is always kept. The last row is the last prompt token for unpadded and left-padded batches
 * (transformers.js's default); right-padded batches would read a padding row, so prompts must be
 * left-padded.
 */
import type { CriterionModule, ScoreContext } from "../criterion.js";
import { attentionOf, probabilities } from "../attention/attention-map.js";

export const lastTokenAttn: CriterionModule = {
  name: "last-token-attn",
  paddingSafe: true,
  summary:
    "mean over heads of the last prompt token's attention to each token (FastV, methods.md §14; without a set, LazyLLM's prefill selection, §28)",
  args: {},
  adaptiveNeedsSet:
    "without a set the last token is raised above every other (it is always kept), so the scores are no longer an attention mass",
  needs:
    "attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention / GroupQueryAttention); left-padded prompts; `of image` for FastV, no set for LazyLLM's prefill (the last token always kept)",
  prepare({ layer }) {
    const attention = attentionOf(layer);
    if ("why" in attention) return attention;
    const score = ({ b, prefix }: ScoreContext): string => {
      const last = b.op(
        "Gather",
        [probabilities(b, attention.ok, "all"), b.int64([-1], [1], "last_row")],
        { axis: 2 },
        "last_query",
      ); // [B,H,1,N]
      const s = b.op("Cast", [b.reduceMean(b.slice(last, 3, prefix), [1, 2], 0)], { to: 1 }, "scores_fp32"); // [B,Np]
      // The last token scores one above the example's best (finite: amounts may sum scores).
      const n = b.slice(b.op("Shape", [s]), 0, 1, 2);
      const isLast = b.op(
        "Equal",
        [b.range(n, "positions"), b.op("Sub", [n, b.int64([1], [1], "one")])],
        {},
        "is_last",
      );
      const top = b.op("Add", [b.reduce("ReduceMax", s, [1], 1), b.float([1], [], "one_more")], {}, "above_all");
      return b.op("Where", [isLast, top, s], {}, "last_token_kept");
    };
    return { ok: { kind: "score", score } };
  },
};
