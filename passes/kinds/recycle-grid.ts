/**
 * `with recycle(grid: a)`: VFlowOpt's grid-group recycling (`sihany077/VFlowOpt` @ 129eeef,
 * llava_qwen_training_free.py lines 570–626; planned by src/plan-recycle.ts; docs/language.md).
 *
 *   - the K − m best-scored prunable tokens are kept (m = ⌊Np/a²⌋, K the stage's budget): the
 *     authors drop the reduce + m lowest by an ascending sort, which is this TopK's complement;
 *   - every dropped token lies in the grid cell (⌊row/a⌋, ⌊col/a⌋) of its patch; each cell holding
 *     dropped tokens writes their score-weighted mean (weights normalised to sum 1 in the cell)
 *     into its best-scored dropped member, which is kept at its own position;
 *   - the kept tokens are taken in position order (the authors' boolean mask).
 *
 * The count is K − m + (cells holding dropped tokens), per example: the batch pads to its largest
 * count as every per-example stage does (passes/adaptive.ts `selectAdaptive`, padding masked below).
 * Everything is dense and static-shaped: cell membership is a constant [Np, Np] matrix, the
 * representative is the dropped token no other dropped token of its cell beats (pairwise, so no
 * ArgMax and no int64 arithmetic besides TopK's indices).
 */
import { PrunecError } from "../../src/errors.js";
import type { NodeBuilder } from "../builder.js";
import { selectAdaptive } from "../adaptive.js";
import { streamElemType } from "../retarget.js";
import type { SelectionModule, StageSetup } from "./kind.js";
import { tabulate } from "../../src/onnx/tensor.js";

/** onnx TensorProto element types. */
const FLOAT = 1;
const INT64 = 7;

export const recycleGrid: SelectionModule = {
  name: "recycle-grid",
  summary:
    "TopK(K − m), then one kept token per grid cell holding dropped ones, carrying their score-weighted mean; padding as for per-example counts",
  select: (s) => {
    const { b, plan, ranked, scores } = s;
    const grid = plan.adaptive;
    if (grid?.kind !== "grid") throw new Error("internal: grid recycling without a planned grid");
    if (s.normalized)
      throw new PrunecError(
        "apply",
        `'with recycle(grid: ${grid.size})' after layer ${plan.layer.index}: the stream leaves the layer through a fused skip normalization, whose normalized output would not carry the recycled rows`,
      );
    const n = grid.cells.length;
    // 1 at the K − m best (TopK: ties to the lower position).
    const [, best] = b.opN("TopK", [ranked, b.int64([grid.keep - grid.extra], [1], "top_count")], 2, {
      axis: -1,
      largest: 1,
      sorted: 1,
    });
    const zeros = b.op("Mul", [scores, b.float([0], [], "zero")], {}, "zeros"); // [B,Np]
    const ones = b.op("Add", [b.op("Gather", [zeros, b.int64([0])], { axis: 1 }), b.float([1], [], "one")]); // [B,1]
    const onesK = b.op("Expand", [ones, b.op("Shape", [best!])], {}, "ones_k");
    const top = b.op("ScatterElements", [zeros, best!, onesK], { axis: 1 }, "top_kept"); // [B,Np]
    const dropped = b.op("Sub", [b.float([1], [], "one"), top], {}, "grid_dropped");
    const same = b.float(sameCell(grid.cells), [n, n], "same_cell");
    const rep = representatives(b, ranked, dropped, same, n);
    const source = withMergedRows(s, scores, dropped, rep, same);
    // Kept: the top tokens and the representatives; they rank first, then position order.
    const key = b.op("Add", [top, rep], {}, "grid_kept");
    const count = b.reduce("ReduceSum", b.op("Cast", [key], { to: INT64 }), [1], 1); // [B,1]
    const sel = selectAdaptive(b, key, count, plan.prefix);
    return {
      indices: sel.indices,
      exposed: sel.realIndices,
      counts: sel.counts,
      validBias: sel.padBias,
      source,
      lowering: "index",
    };
  },
};

/** float [Np·Np]: 1 where tokens i and j lie in the same grid cell. */
function sameCell(cells: readonly number[]): number[] {
  return cells.flatMap((ci) => cells.map((cj) => (ci === cj ? 1 : 0)));
}

/**
 * float [B,Np]: 1 at each cell's representative, the dropped token no other dropped token of its
 * cell beats. VFlowOpt's argmax takes the first maximum in the ascending sort's order, in which
 * equal scores put the higher position first (the order whose cut TopK's lower-position ties give),
 * so on equal scores the higher position wins.
 */
function representatives(b: NodeBuilder, ranked: string, dropped: string, same: string, n: number): string {
  const si = b.unsqueeze(ranked, [2]); // [B,Np,1]: the contender i
  const sj = b.unsqueeze(ranked, [1]); // [B,1,Np]: the token j
  const higher = b.float(
    tabulate(n * n, (k) => (Math.floor(k / n) > k % n ? 1 : 0)),
    [n, n],
    "higher_position",
  );
  const greater = b.op("Cast", [b.op("Greater", [si, sj])], { to: FLOAT }, "scores_higher");
  const tie = b.op("Mul", [b.op("Cast", [b.op("Equal", [si, sj])], { to: FLOAT }), higher], {}, "tie_higher");
  const beats = b.op("Add", [greater, tie], {}, "beats"); // [B,Np,Np], 0 or 1
  const rivals = b.op("Mul", [b.op("Mul", [beats, same]), b.unsqueeze(dropped, [2])], {}, "dropped_rivals");
  const beaten = b.reduce("ReduceMax", rivals, [1], 0); // [B,Np]
  return b.op("Mul", [dropped, b.op("Sub", [b.float([1], [], "one"), beaten])], {}, "cell_representative");
}

/**
 * The stage's input stream [B,N,D] with each representative's row replaced by its cell's merged
 * row Σ_j w_j x_j, w_j = s_j / Σ_cell s_j over the cell's dropped tokens (the raw scores, as the
 * authors weigh by attention; a cell whose scores sum to 0 gives a 0 row instead of their NaN).
 */
function withMergedRows(s: StageSetup, scores: string, dropped: string, rep: string, same: string): string {
  const { b, plan } = s;
  const elemType = streamElemType(s.g, s.residual);
  const cast = elemType !== undefined && elemType !== FLOAT;
  const stream = cast ? b.op("Cast", [s.stream], { to: FLOAT }, "stream_f32") : s.stream;
  const prefixRows = b.op("Slice", [s.stream, b.int64([0]), b.int64([plan.prefix]), b.int64([1])], {}, "special_rows");
  const patches = b.slice(stream, 1, plan.prefix); // [B,Np,D]
  const weighed = b.unsqueeze(b.op("Mul", [scores, dropped], {}, "dropped_scores"), [1]); // [B,1,Np]
  const members = b.op("Mul", [same, weighed], {}, "cell_scores"); // [B,Np,Np]: row i = i's cell
  const total = b.reduce("ReduceSum", members, [2], 1); // [B,Np,1]
  const safe = b.op(
    "Where",
    [b.op("Equal", [total, b.float([0], [], "zero")]), b.float([1], [], "one"), total],
    {},
    "cell_total",
  );
  const weights = b.op("Div", [members, safe], {}, "cell_weights");
  const merged = b.op("MatMul", [weights, patches], {}, "cell_mean"); // [B,Np,D]
  const isRep = b.op("Cast", [b.unsqueeze(rep, [2])], { to: 9 }, "is_representative");
  let rows = b.op("Where", [isRep, merged, patches], {}, "recycled_rows");
  if (cast) rows = b.op("Cast", [rows], { to: elemType }, "recycled_rows_cast");
  return b.op("Concat", [prefixRows, rows], { axis: 1 }, "stream_recycled");
}
