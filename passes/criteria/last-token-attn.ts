/**
 * last-token-attn (FastV, methods.md §14): s_j = mean over heads of the attention probability from
 * the last prompt token (the sequence's last row) to token j. FastV prunes before layer K using
 * layer K−1's map: in prunec that is `after layer K−1 drop P% of image by last-token-attn`.
 * The last row is the last prompt token for unpadded and left-padded batches (transformers.js's
 * default); right-padded batches would read a padding row, so prompts must be left-padded.
 */
import type { CriterionModule, ScoreContext } from "../criterion.js";
import { attentionOf, probabilities } from "../attention/attention-map.js";

export const lastTokenAttn: CriterionModule = {
  name: "last-token-attn",
  paddingSafe: true,
  summary: "mean over heads of the last prompt token's attention to each token (FastV, methods.md §14)",
  args: {},
  requiresSets: ["image"],
  needs:
    "attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention / GroupQueryAttention); a declared `image` token set; left-padded prompts",
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
      return b.reduceMean(b.slice(last, 3, prefix), [1, 2], 0); // [B,Np]
    };
    return { ok: { kind: "score", score } };
  },
};
