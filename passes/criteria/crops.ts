/**
 * crops(count) (HoloV, methods.md §9; `obananas/HoloV`, llava/model/utils.py: HoloV, lines 22–151,
 * and its Qwen2.5-VL copy qwen-model-HoloV/utils.py: HoloV, lines 43–198; docs/crops.md has the
 * line-by-line account). With a = the CLS query's attention to the N prunable tokens (mean over
 * heads, layer L), x = those tokens of the residual stream leaving layer L, and K = the stage's
 * static budget:
 *
 *   chunks   `count` contiguous runs of the tokens in raster order; the first N mod count are
 *            one token longer (utils.py:32–50: `patch_size + (1 if p < remainder else 0)`)
 *   per chunk of n ≥ 2 tokens:
 *            S = x̂·x̂ᵀ (x̂ = x/(‖x‖+1e-6)) with the diagonal zeroed; μ_i = Σ_j S_ij/(n−1);
 *            var_i = Σ_j (S_ij − μ_i)²/(n−1), the zeroed diagonal included;
 *            score_i = 1e3·a_i + 0.09·(var_i · mean|1e3·a| / (mean|var| + 1e-6));
 *            P_c = mean of its scores
 *   a chunk of 1 token: P_c = a_i, the raw attention (utils.py:61–65)
 *   budget   w = P/(ΣP + 1e-6); alloc_c = ⌊w_c·K⌋; the K − Σalloc left over go +1 to the chunks of
 *            largest w (utils.py:104–112)
 *   keep     in each chunk its alloc_c tokens of largest raw a; a chunk with alloc_c ≥ n keeps all
 *            n and the surplus alloc_c − n is lost (utils.py:116–127)
 *
 * HoloV then pads its output with zero rows (the Qwen copy: position −1) up to K. Here each example
 * keeps exactly the tokens HoloV keeps, Σ_c min(alloc_c, n_c) ≤ K of them: the count differs per
 * example, so the stage is lowered by the adaptive kind (passes/kinds/adaptive.ts: a batch pads to
 * its largest count, padding masked as keys below, exposed as −1). The scorer's `score` is 1 on the
 * kept tokens and 0 elsewhere, and `count` says how many there are, so the stage's TopK keeps
 * exactly them; kept tokens stay in ascending position order (HoloV's order inside a crop, by
 * attention, is not kept: the kept set is what matches).
 *
 * Ties (exact equal values) go to the lower index, as ONNX TopK does: among chunks for the
 * remainder, and among tokens inside a chunk. torch.topk leaves tie order unspecified.
 *
 * Emitted with static ops: the chunk layout is a compile-time constant of N and count, so the
 * per-chunk similarity is the N×N product masked to the block diagonal, per-chunk means are
 * MatMuls with a one-hot [N, count] matrix, the remainder is a rank test (TopK of a TopK), and the
 * rank of a token inside its chunk counts the chunk's tokens before it (larger a, or equal a at a
 * lower position: `rankInGroup`, passes/select-groups.ts, which `of each SET` uses for its spans).
 */
import type { CriterionModule, Prepared, ScoreContext, Scorer, StageFacts } from "../criterion.js";
import { attentionOf, clsRowScores, type Attention } from "../attention/attention-map.js";
import { rankInGroup } from "../select-groups.js";
import { clsUnavailable } from "./cls-attn.js";
import { tabulate } from "../../src/onnx/tensor.js";

/** float (onnx TensorProto.FLOAT) and int64. */
const FLOAT = 1;
const INT64 = 7;

/** HoloV's constants (utils.py:25, 84, 87–88; the Qwen copy's alpha = 1, beta = 0.09, power = 1 give the same). */
const ATTENTION_SCALE = 1e3;
const VARIANCE_WEIGHT = 0.09;
const EPS = 1e-6;

/**
 * Chunk sizes of n tokens cut into `count` contiguous chunks, as HoloV cuts them: ⌊n/count⌋ each,
 * and one more for the first n mod count chunks (utils.py:33–43).
 */
export function chunkSizes(n: number, count: number): number[] {
  const base = Math.floor(n / count);
  const extra = n % count;
  return Array.from({ length: count }, (_, c) => base + (c < extra ? 1 : 0));
}

interface CropsFacts {
  attention: Attention;
  /** Prunable tokens entering the stage. */
  n: number;
  sizes: number[];
}

function prepare(facts: StageFacts): Prepared<Scorer> {
  const { model, layer, args, tokensIn, prefix } = facts;
  const cls = clsUnavailable(model);
  if (cls) return { why: cls };
  const count = Number(args["count"]);
  if (!(Number.isSafeInteger(count) && count >= 1))
    return { why: `count ${String(args["count"])} is not a positive integer: it is the number of chunks` };
  if (typeof tokensIn !== "number")
    return {
      why: `the token count is symbolic (${String(tokensIn)}); crops needs a static one (its chunks are cut at compile time)`,
    };
  const n = tokensIn - prefix;
  if (count > n)
    return {
      why: `count ${count} is more than the ${n} prunable tokens entering the stage: every chunk needs at least one token (crops(count: ${n}) makes one chunk per token)`,
    };
  const attention = attentionOf(layer);
  if ("why" in attention) return attention;
  const proven: CropsFacts = { attention: attention.ok, n, sizes: chunkSizes(n, count) };
  // The kept-token count is emitted with the scores; `count` hands it to the stage afterwards.
  let kept: string | undefined;
  return {
    ok: {
      kind: "score",
      score: (ctx) => {
        const out = emit(ctx, proven);
        kept = out.count;
        return out.keep;
      },
      count: () => {
        if (!kept) throw new Error("internal: crops' count was asked before its scores were emitted");
        return kept;
      },
    },
  };
}

/** The prunable tokens as float [B,N,D] (batch 1 for batch-less streams). */
function features(ctx: ScoreContext): string {
  const { b, model, stream, prefix } = ctx;
  const batched = model.batchAxis === undefined ? b.unsqueeze(stream, [0]) : stream;
  return b.op("Cast", [b.slice(batched, 1, prefix)], { to: FLOAT }, "features");
}

/** float [B,N] 1/0 on the tokens HoloV keeps, and int64 [B,1] how many each example keeps. */
function emit(ctx: ScoreContext, { attention, n, sizes }: CropsFacts): { keep: string; count: string } {
  const { b, prefix, keep: budget } = ctx;
  if (budget === undefined) throw new Error("crops needs a static budget (checked by the plan)");
  const chunks = sizes.length;
  const chunkOf = sizes.flatMap((s, c) => Array<number>(s).fill(c));
  const same = (i: number, j: number) => chunkOf[i] === chunkOf[j];
  const matrix = (f: (i: number, j: number) => boolean, label: string) =>
    b.float(
      tabulate(n * n, (k) => (f(Math.floor(k / n), k % n) ? 1 : 0)),
      [n, n],
      label,
    );
  const block = matrix(same, "same_chunk");
  const offDiagonal = matrix((i, j) => i !== j && same(i, j), "same_chunk_others");
  const oneHot = b.float(
    tabulate(n * chunks, (k) => (chunkOf[Math.floor(k / chunks)] === k % chunks ? 1 : 0)),
    [n, chunks],
    "chunk_one_hot",
  );
  const sizesF = b.float(sizes, [chunks], "chunk_sizes");
  // n − 1 per token (1 for one-token chunks, whose variance is never read: it is 0 over 1 here).
  const others = b.float(
    chunkOf.map((c) => Math.max(1, sizes[c]! - 1)),
    [n],
    "chunk_others",
  );
  const chunkIndex = b.int64(chunkOf, [n], "chunk_of");
  const perChunkMean = (t: string, label: string) => b.op("Div", [b.op("MatMul", [t, oneHot]), sizesF], {}, label); // [B,N] → [B,chunks]

  // Attention: the CLS row, mean over heads, over the prunable keys (clip_encoder.py:37–40, llava_arch.py:143).
  const a = clsRowScores(b, attention, prefix); // [B,N]

  // Cosine-similarity variance inside each chunk (utils.py:69–81).
  const x = features(ctx);
  const norms = b.op("Add", [b.reduce("ReduceL2", x, [2], 1), b.float([EPS], [], "eps")], {}, "norm_eps");
  const unit = b.op("Div", [x, norms], {}, "normalized");
  const sim = b.op("MatMul", [unit, b.op("Transpose", [unit], { perm: [0, 2, 1] })], {}, "cosine"); // [B,N,N]
  const masked = b.op("Mul", [sim, offDiagonal], {}, "in_chunk_no_diagonal");
  const mean = b.op("Div", [b.reduce("ReduceSum", masked, [2], 1), b.unsqueeze(others, [1])], {}, "similarity_mean");
  const dev = b.op("Mul", [b.op("Sub", [masked, mean]), block], {}, "deviation");
  const variance = b.op(
    "Div",
    [b.reduce("ReduceSum", b.op("Mul", [dev, dev]), [2], 0), others],
    {},
    "similarity_variance",
  ); // [B,N]

  // Token scores and chunk scores (utils.py:84–95).
  const scaled = b.op("Mul", [a, b.float([ATTENTION_SCALE], [], "attention_scale")], {}, "attention_scaled");
  const scaling = b.op(
    "Div",
    [
      perChunkMean(b.op("Abs", [scaled]), "mean_abs_attention"),
      b.op("Add", [perChunkMean(b.op("Abs", [variance]), "mean_abs_variance"), b.float([EPS], [], "eps")]),
    ],
    {},
    "variance_scaling",
  ); // [B,chunks]
  const varianceScaled = b.op(
    "Mul",
    [variance, b.op("Gather", [scaling, chunkIndex], { axis: 1 }, "token_scaling")],
    {},
    "variance_scaled",
  );
  const tokenScores = b.op(
    "Add",
    [scaled, b.op("Mul", [b.float([VARIANCE_WEIGHT], [], "variance_weight"), varianceScaled])],
    {},
    "token_scores",
  );
  let chunkScores = perChunkMean(tokenScores, "chunk_scores");
  if (sizes.some((s) => s === 1)) {
    // A one-token chunk scores its raw attention (utils.py:61–65).
    const single = b.op(
      "Cast",
      [
        b.float(
          sizes.map((s) => (s === 1 ? 1 : 0)),
          [chunks],
          "single",
        ),
      ],
      { to: 9 },
    );
    chunkScores = b.op("Where", [single, perChunkMean(a, "raw_attention"), chunkScores], {}, "chunk_scores_single");
  }

  // Budget per chunk (utils.py:104–112): floor of the share, then +1 to the largest shares.
  const total = b.op("Add", [b.reduce("ReduceSum", chunkScores, [1], 1), b.float([EPS], [], "eps")], {}, "total");
  const weights = b.op("Div", [chunkScores, total], {}, "weights");
  const floors = b.op(
    "Cast",
    [b.op("Floor", [b.op("Mul", [weights, b.float([budget], [], "budget")])])],
    { to: INT64 },
    "allocated",
  );
  const remaining = b.op(
    "Sub",
    [b.int64([budget], [1, 1], "budget_int"), b.reduce("ReduceSum", floors, [1], 1)],
    {},
    "remaining",
  ); // [B,1]
  const all = b.int64([chunks], [1], "chunks");
  const [, order] = b.opN("TopK", [weights, all], 2, { axis: 1, largest: 1, sorted: 1 });
  const [, rank] = b.opN("TopK", [order!, all], 2, { axis: 1, largest: 0, sorted: 1 }); // chunk c's place by weight
  const bonus = b.op("Cast", [b.op("Less", [rank!, remaining])], { to: INT64 }, "remainder_bonus");
  const alloc = b.op("Add", [floors, bonus], {}, "allocation"); // [B,chunks]

  // Inside a chunk: the alloc_c tokens of largest raw attention; all of them when alloc_c ≥ n_c
  // (utils.py:116–127). rank_i = the chunk's tokens before i (larger a, or equal a and lower).
  const asFloat = (t: string) => b.op("Cast", [t], { to: FLOAT });
  const within = rankInGroup(b, a, block, n); // [B,N]
  const tokenAlloc = asFloat(b.op("Gather", [alloc, chunkIndex], { axis: 1 }, "token_allocation"));
  const kept = b.op("Less", [within, tokenAlloc], {}, "kept");
  const count = b.reduce("ReduceSum", b.op("Cast", [kept], { to: INT64 }), [1], 1); // [B,1]
  return { keep: asFloat(kept), count };
}

export const crops: CriterionModule = {
  name: "crops",
  usesBudget: true,
  ownCount:
    "crops keeps a number of tokens that depends on the input (a crop's budget beyond its size is lost, as in HoloV)",
  summary:
    "per-crop budgets over contiguous raster chunks: chunk weights from CLS attention and in-chunk cosine-similarity variance, ⌊w·K⌋ plus the remainder to the heaviest chunks, TopK of raw attention inside each; a chunk's surplus over its size is lost (HoloV, methods.md §9; docs/crops.md)",
  args: {
    count: {
      type: "integer",
      default: 16,
      doc: "number of chunks: contiguous runs in token order, the first N mod count one token longer; at most the prunable tokens",
    },
  },
  needs:
    "a CLS token; attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention); a static token count; a batch-first stream (the count differs per example)",
  prepare,
};
