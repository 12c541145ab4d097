/**
 * diversity (DivPrune, methods.md §3) and k-center (ToDRE stage 1, methods.md §11): criteria that
 * pick the kept set themselves by greedy max-min (farthest-point) selection. Both return the picked
 * prunable positions in ascending order (`select`).
 *
 * Features: the prunable tokens (prefix excluded) of the residual stream leaving the stage's layer.
 * DivPrune runs on the projected LLM input embeddings of LLaVA; here a stage's own tokens are the
 * features, whatever layer it acts after.
 *
 * diversity, as `vbdi/divprune` (LLaVA/llava/model/llava_arch.py: DivPrune) computes it:
 *   D = 1 − X̂·X̂ᵀ with X̂ = x/‖x‖ (cosine distance);
 *   seed  s0 = argmax_j secondsmallest_i D[i,j]  (torch.topk(D, 2, dim=0, largest=False).values[1]:
 *              the smallest of a column is the self-distance, so this is the distance of j's nearest
 *              other token: the token whose nearest neighbour is farthest);
 *   step  d_j = min_{s∈S} D[s,j] (recomputed from the selected rows each step: the running min);
 *         S += argmax_j d_j; torch.argmax takes the first maximum, as ONNX ArgMax does with
 *         select_last_index = 0.
 *   Where we differ, in degenerate inputs only:
 *   - Zero vectors: the reference divides by ‖x‖ with no epsilon, so a zero token makes a NaN row and
 *     column that poison every later min (torch.argmax then returns a NaN's index). We clamp the norm
 *     at 1e-12 (torch.nn.functional.normalize's eps): a zero token has cosine 0 — distance 1 — to
 *     every token; tokens with a norm above 1e-12 are normalised exactly as before.
 *   - Re-picks: the reference never masks the selected tokens; their d is their self-distance
 *     1 − x̂·x̂ (0 up to one rounding error, either sign), so when every remaining d is ≤ that (exact
 *     or near duplicates of selected tokens) it picks a selected token again and keeps a duplicate.
 *     Here the self-distances are −∞, so a selected token is never picked again: the pick is the
 *     first unselected token of largest d (with all remaining d = 0, the lowest such position). With
 *     the diagonal at −∞ the seed's "second smallest" is the smallest distance to another token,
 *     which is the reference's value whenever the self-distance is its column's smallest.
 *
 * k-center (no public ToDRE code; methods.md: "treat it as DivPrune-style farthest-point selection"):
 *   Gonzalez's greedy k-center, the textbook 2-approximation, on the Euclidean distance between the
 *   raw tokens (a metric, which the guarantee needs and 1 − cos is not; the token norm counts, so
 *   high-norm outlier tokens are covered). Squared distances give the same picks (min and argmax
 *   commute with squaring) and need no Sqrt. The greedy start can be any token; we take the token
 *   nearest the mean of the prunable tokens (first on ties): a central token that covers the bulk of
 *   the tokens, independent of their order, and the same rule as `uniform`, whose farthest-point
 *   order on the patch grid starts at the cell nearest the centre. Then d_j = min_{s∈S} ‖x_j − x_s‖²,
 *   S += argmax_j d_j (first maximum), k − 1 times. The tokens are centred on their mean first
 *   (distances do not change) so that ‖x_i‖² + ‖x_j‖² − 2·x_i·x_j cancels less in fp32.
 *
 * Both distance matrices are made exactly symmetric (Min(D, Dᵀ)): the seed's ties between mutual
 * nearest neighbours are then exact and go to the lower position on every provider, whatever order
 * its MatMul accumulates in. The diagonal is set to −∞ (Where on a token-equality mask), so that
 * d = Min(d, D[i]) also marks the pick i as taken: one GatherND row and one Min per step.
 *
 * Lowerings (exact, batch > 1: ArgMax per example along the last axis, GatherND batch_dims = 1):
 * - target cpu: an ONNX Loop of k − 1 iterations carrying the running-min vector d [B,Np], the picks
 *   as a scan output [k−1, B, 1];
 * - target webgpu: the same k − 1 steps unrolled (onnxruntime-web's WebGPU EP has no Loop kernel).
 * The picks (seed first) are sorted ascending with TopK(largest = 0), as passes/select-topk.ts does.
 */
import { TensorProto_DataType as DT } from "../../src/onnx/gen/onnx_pb.js";
import type { NodeBuilder } from "../builder.js";
import type { CriterionModule, ScoreContext } from "../criterion.js";
import { argmax, row, selectionLoop } from "../max-min-loop.js";

const NEEDS = "a static token count (the greedy selection runs a fixed number of steps)";

/** The prunable tokens as float [B,Np,D] (batch 1 for batch-less streams). */
function features(ctx: ScoreContext): string {
  const { b, model, stream, prefix } = ctx;
  const batched = model.batchAxis === undefined ? b.unsqueeze(stream, [0]) : stream;
  const tokens = b.slice(batched, 1, prefix);
  return b.op("Cast", [tokens], { to: DT.FLOAT }, "features");
}

function counts(ctx: ScoreContext, name: string): { n: number; keep: number } {
  if (ctx.tokens === undefined || ctx.keep === undefined)
    throw new Error(`${name} needs a static token count (checked by the plan)`);
  return { n: ctx.tokens - ctx.prefix, keep: ctx.keep };
}

/** Exactly symmetric distances [B,N,N] with −∞ on the diagonal (a token's distance to itself). */
function maskedDistances(b: NodeBuilder, d: string, n: number): string {
  const sym = b.op("Min", [d, b.op("Transpose", [d], { perm: [0, 2, 1] })], {}, "symmetric");
  const positions = [...Array(n).keys()];
  const self = b.op(
    "Equal",
    [b.float(positions, [n, 1], "row_positions"), b.float(positions, [1, n], "col_positions")],
    {},
    "self",
  );
  return b.op("Where", [self, b.float([-Infinity], [], "minus_inf"), sym], {}, "distances");
}

/**
 * Greedy max-min from `seed` (int64 [B,1]) over `dist` ([B,N,N], −∞ diagonal): k picks in total,
 * returned as ascending int64 [B,k].
 */
function greedyMaxMin(b: NodeBuilder, dist: string, seed: string, k: number, target: ScoreContext["target"]): string {
  let picks: string;
  if (k === 1) {
    picks = seed;
  } else if (target === "webgpu") {
    const all = [seed];
    let d = row(b, dist, seed);
    for (let t = 1; t < k; t++) {
      const i = argmax(b, d, "pick");
      all.push(i);
      if (t < k - 1) d = b.op("Min", [d, row(b, dist, i)], {}, "running_min");
    }
    picks = b.op("Concat", all, { axis: 1 }, "picks");
  } else {
    const d0 = row(b, dist, seed);
    picks = b.op("Concat", [seed, selectionLoop(b, dist, d0, b.int64([k - 1], [], "steps"))], { axis: 1 }, "picks");
  }
  const [ascending] = b.opN("TopK", [picks, b.int64([k], [1], "k")], 2, { axis: -1, largest: 0, sorted: 1 });
  return ascending!;
}

/** DivPrune: greedy max-min on the cosine distance, seeded by the token whose nearest neighbour is farthest. */
function diversitySelect(ctx: ScoreContext): string {
  const { b } = ctx;
  const { n, keep } = counts(ctx, "diversity");
  const x = features(ctx);
  const unit = b.unitRows(x, 2, 1e-12, "norm", "unit");
  const cos = b.op("MatMul", [unit, b.op("Transpose", [unit], { perm: [0, 2, 1] })], {}, "cosine");
  const dist = maskedDistances(b, b.op("Sub", [b.float([1], [], "one"), cos], {}, "cosine_distance"), n);
  // Second smallest of each column = smallest of its row (D is symmetric, its diagonal −∞).
  const [nearest] = b.opN("TopK", [dist, b.int64([2], [1], "two")], 2, { axis: -1, largest: 0, sorted: 1 });
  const seed = argmax(b, b.squeeze(b.slice(nearest!, 2, 1, 2), [2]), "seed");
  return greedyMaxMin(b, dist, seed, keep, ctx.target);
}

/** Gonzalez k-center on the squared Euclidean distance, seeded by the token nearest the mean. */
function kCenterSelect(ctx: ScoreContext): string {
  const { b } = ctx;
  const { n, keep } = counts(ctx, "k-center");
  const x = features(ctx);
  const centred = b.op("Sub", [x, b.reduceMean(x, [1], 1)], {}, "centred");
  const sq = b.reduce("ReduceSum", b.op("Mul", [centred, centred], {}, "square"), [2], 0); // [B,N] = ‖x_j − mean‖²
  const seed = b.op("ArgMin", [sq], { axis: 1, keepdims: 1, select_last_index: 0 }, "seed"); // nearest the mean
  const gram = b.op("MatMul", [centred, b.op("Transpose", [centred], { perm: [0, 2, 1] })], {}, "gram");
  const sums = b.op("Add", [b.unsqueeze(sq, [2]), b.unsqueeze(sq, [1])], {}, "norm_sums");
  const d2 = b.op(
    "Sub",
    [sums, b.op("Mul", [gram, b.float([2], [], "two")], {}, "twice_gram")],
    {},
    "squared_distance",
  );
  return greedyMaxMin(b, maskedDistances(b, d2, n), seed, keep, ctx.target);
}

export const diversity: CriterionModule = {
  name: "diversity",
  summary:
    "greedy max-min cosine-distance selection on the layer's output tokens: seed = the token whose nearest neighbour is farthest, then the token farthest from the kept ones (DivPrune, methods.md §3)",
  args: {},
  needs: NEEDS,
  prepare: () => ({ ok: { kind: "select", select: diversitySelect } }),
};

export const kCenter: CriterionModule = {
  name: "k-center",
  summary:
    "greedy farthest-point (Gonzalez k-center) selection on the Euclidean distance between the layer's output tokens, starting at the token nearest their mean (ToDRE, methods.md §11)",
  args: {},
  needs: NEEDS,
  prepare: () => ({ ok: { kind: "select", select: kCenterSelect } }),
};
