/**
 * pagerank (AIM's weighted PageRank `get_importance`, methods.md §8; Zero-TPrune's I-stage, §12):
 *   M = softmax(logits / τ) per head over the keys, where logits is the layer's softmax input;
 *   d ← (1/N)·1 over all N tokens (CLS included); `iterations` times d ← d·M (d_j = Σ_i d_i M[i,j]);
 *   score = sqrt(mean over heads of d²), read at the prunable keys.
 *
 * AIM (`LaVi-Lab/AIM`, other_packages/LLaVA-PruMerge/modeling_llama.py: get_importance) runs it on
 * the LLM's attention logits after the causal mask was added (masked entries at the dtype's minimum,
 * so M is lower-triangular), with damping d = 0 and the uniform start `ones(B,H,1,N)/N`. A ViT has no
 * causal mask: we take the softmax input exactly as the model computes it, so whatever additive mask
 * or bias the model applies is included and nothing else is added; M is then dense.
 *
 * Lowering: the first step from the uniform start is (1/N)·column sums of M, i.e. the mean over
 * the query axis (no constant of the runtime size N needed); the remaining steps are unrolled
 * MatMuls [B,H,1,N]·[B,H,N,N].
 */
import type { CriterionModule, ScoreContext } from "../criterion.js";
import { attentionOf, logits, type Attention } from "../attention/attention-map.js";

const MAX_ITERATIONS = 100;

function settings(args: Readonly<Record<string, unknown>>): { iterations: number; temperature: number } {
  return { iterations: Number(args["iterations"] ?? 5), temperature: Number(args["temperature"] ?? 0.1) };
}

/** float32's lowest finite value, the mask value exports use. */
const FLOAT_MIN = -3.4028234663852886e38;
/** Logits at or below this are masks, not scores. */
const MASKED_ROW = -1e8;

export const pagerank: CriterionModule = {
  name: "pagerank",
  summary: "weighted PageRank over the attention graph, RMS over heads (AIM / Zero-TPrune, methods.md §8 and §12)",
  args: {
    iterations: { type: "integer", default: 5, doc: "power iterations, 1 to 100 (each unrolled into the graph)" },
    temperature: { type: "number", default: 0.1, doc: "softmax temperature of the logits" },
  },
  needs:
    "attention logits (the softmax input of MatMul + Softmax, or recomputed behind MultiHeadAttention); no CLS needed",
  prepare({ layer, args }) {
    const { iterations, temperature } = settings(args);
    if (!(iterations >= 1)) return { why: `iterations must be at least 1, got ${iterations}` };
    // Each iteration is unrolled into the graph as one MatMul.
    if (iterations > MAX_ITERATIONS)
      return {
        why: `iterations must be at most ${MAX_ITERATIONS} (each is one MatMul unrolled into the graph), got ${iterations}`,
      };
    if (!(temperature > 0)) return { why: `temperature must be greater than 0, got ${temperature}` };
    const attention = attentionOf(layer);
    if ("why" in attention) return attention;
    return { ok: { kind: "score", score: (ctx) => pagerankScores(ctx, attention.ok, iterations, temperature) } };
  },
};

/** The PageRank scores [B,Np] of the prunable tokens. */
function pagerankScores(
  { b, prefix }: ScoreContext,
  attention: Attention,
  iterations: number,
  temperature: number,
): string {
  const l = logits(b, attention);
  // Mask values (finfo.min) overflow to −inf when sharpened: clamp, so a row stays finite.
  const scaled = b.op(
    "Max",
    [b.op("Div", [l, b.float([temperature], [], "temperature")], {}, "sharpen"), b.float([FLOAT_MIN], [], "finfo_min")],
    {},
    "clamped",
  );
  // A query row with no allowed key (a padding token: every logit at a mask value) has no
  // transitions: its row is zero, so padding adds nothing and each example ranks as at batch 1.
  const live = b.op(
    "Cast",
    [b.op("Greater", [b.reduce("ReduceMax", l, [-1], 1), b.float([MASKED_ROW], [], "masked_row")], {}, "has_key")],
    { to: 1 },
  );
  const m = b.op("Mul", [b.op("Softmax", [scaled], { axis: -1 }, "transition"), live], {}, "live_transition"); // [B,H,N,N], rows sum to 1 (0 for padding)
  let d = b.reduceMean(m, [2], 1); // (1/N)·1 · M: [B,H,1,N]
  for (let i = 1; i < iterations; i++) d = b.op("MatMul", [d, m], {}, "power_step");
  const meanSquare = b.reduceMean(b.op("Mul", [d, d], {}, "square"), [1, 2], 0); // [B,N]
  return b.slice(b.op("Sqrt", [meanSquare], {}, "rms_heads"), 1, prefix);
}
