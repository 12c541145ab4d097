/**
 * similarity (ToMe, methods.md §16): the criterion of `merge` stages. It does not rank tokens for
 * `keep`/`drop`; src/plan-merge.ts plans `merge ... by similarity` and passes/merge-stage.ts
 * emits the bipartite soft matching and the size-weighted merge. This module holds what the
 * criterion reads from the model: the layer's keys, averaged over heads (ToMe's metric,
 * `k.mean(1)` in tome/patch/timm.py: ToMeAttention).
 *
 * Where the keys are:
 * - MatMul + Softmax exports: the Q·Kᵀ MatMul's right input, which is Kᵀ in the layer's per-head
 *   layout: [B·H,D,N] (torchvision, heads batch-major), [B,H,D,N], or [H,D,N] (batch-less). A
 *   MatMul giving [.., q, k] takes its keys as [.., D, N] whatever the exporter did before it, and
 *   any scale an exporter folded into k is a positive constant, which cosine similarity ignores.
 * - com.microsoft.MultiHeadAttention: the op's key input [B,N,H·D] (plus bias[W:2W] when the op
 *   has the packed q|k|v bias), split into heads.
 */
import { keysOf } from "../attention/keys.js";
import type { CriterionModule } from "../criterion.js";

function notAScore(): never {
  throw new Error(
    "similarity is used with 'merge' (src/plan-merge.ts plans it, passes/merge-stage.ts emits it); it has no keep/drop scores",
  );
}

export const similarity: CriterionModule = {
  name: "similarity",
  summary:
    "`merge` only: ToMe's bipartite soft matching on the layer's keys (mean over heads, cosine); each merged token is the size-weighted mean of its sources, sizes carried to later merges (ToMe, methods.md §16)",
  args: {
    proportional: {
      type: "integer",
      default: 0,
      doc: "1: add log(token size) to the attention logits of every later layer (ToMe's proportional attention); 0: off",
    },
    weighted: {
      type: "integer",
      default: 1,
      doc: "1: ToMe's size-weighted mean; 0: AIM's unweighted mean, the destination and each source counted once whatever its size (LaVi-Lab/AIM llava/model/token_merge.py: scatter_reduce 'mean'); sizes are still carried",
    },
  },
  needs:
    "keys (MatMul + Softmax exports, or MultiHeadAttention's key input); a static token count; a batch-first stream",
  // The merge stage reads the keys itself (passes/merge-stage.ts, keysOf): here they are only proven readable.
  prepare(facts) {
    const keys = keysOf(facts.layer);
    if ("why" in keys) return keys;
    return { ok: { kind: "score", score: notAScore } };
  },
};
