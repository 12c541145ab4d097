/**
 * spatten (SpAtten's cascade token pruning, methods.md §27; HPCA'21, no official code of the
 * algorithm: the paper's equations): every token's importance is the attention it has received,
 * s_j += Σ_h Σ_i P_l[h,i,j], accumulated over every layer from 0 on; tokens pruned at a stage leave
 * the stream for all later layers, and the survivors keep their running score. A stage after layer
 * L keeps the prunable tokens with the largest s.
 *
 * Head stages (`keep heads … by spatten`) rank heads by Σ|O_h| instead (the `heads` hook,
 * lowered by passes/head-stage.ts).
 *
 * In prunec the running score is the stage's `cumulative` (passes/criterion.ts): this stage sums
 * the layers it sees (firstLayer..L) onto what the previous spatten stage left, gathered with its
 * kept tokens (StreamState.cumulative). Every earlier stream stage must be spatten too, or the
 * sum would miss layers (the planner refuses it with `cascade`).
 */
import type { CriterionModule, Prepared, ScoreContext } from "../criterion.js";
import { attentionOf, probabilities, type Attention } from "../attention/attention-map.js";

/** The attention of layers firstLayer..L, or why one cannot be read. */
function layersSeen(facts: {
  model: ScoreContext["model"];
  layer: { index: number };
  firstLayer: number;
}): Prepared<Attention[]> {
  const out: Attention[] = [];
  for (const l of facts.model.layers.slice(facts.firstLayer, facts.layer.index + 1)) {
    const attention = attentionOf(l);
    if ("why" in attention) return { why: `it sums every layer's attention, and ${attention.why}` };
    out.push(attention.ok);
  }
  return { ok: out };
}

export const spatten: CriterionModule = {
  name: "spatten",
  // `keep kv` stages use its KV form (kv-presses.ts spattenKv), registered under this name.
  targets: ["stream", "heads", "kv"],
  summary:
    "attention each token has received, summed over heads, queries and every layer so far, carried from stage to stage (SpAtten's cascade); for heads, the magnitude of each head's output",
  args: {},
  // Cascade head pruning: a head's importance is Σ|O_h|, its attention output's magnitude over
  // every query row and channel, summed over layers from 0 (the paper's equations, §27).
  heads: {
    layerScore: (b, output) => b.reduce("ReduceSum", b.op("Abs", [output], {}, "head_magnitude"), [2, 3], 0),
  },
  needs:
    "attention probabilities in every layer up to the stage (MatMul + Softmax, or recomputed behind fused attention)",
  cascade:
    "SpAtten's running score starts at layer 0 and follows the kept tokens from stage to stage, so every earlier stage on the stream must be spatten too",
  prepare(facts) {
    const layers = layersSeen(facts);
    if ("why" in layers) return layers;
    // One running score per stage context (score and cumulative read the same nodes).
    const running = new WeakMap<ScoreContext, string>();
    const total = (ctx: ScoreContext): string => {
      const known = running.get(ctx);
      if (known) return known;
      const { b } = ctx;
      let sum = ctx.cumulative;
      for (const attention of layers.ok) {
        const received = b.reduce("ReduceSum", probabilities(b, attention, "all"), [1, 2], 0); // [B,N]
        sum = sum ? b.op("Add", [sum, received], {}, "running_score") : received;
      }
      if (!sum) throw new Error(`spatten after layer ${facts.layer.index}: no layer to sum`);
      running.set(ctx, sum);
      return sum;
    };
    return {
      ok: {
        kind: "score",
        score: (ctx) => ctx.b.slice(total(ctx), 1, ctx.prefix), // [B,Np]
        cumulative: total,
      },
    };
  },
};
