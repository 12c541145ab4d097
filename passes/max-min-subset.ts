/**
 * DivPrune's greedy max-min selection restricted to a candidate subset per example, with a count
 * per example (VLA-Pruner's min-redundancy filtering, `_redundancy_minization` in
 * `MINT-SJTU/VLA-Pruner` @ fa5bfed, modeling_llama.py lines 950–971, run on the candidates U only).
 *
 * Over the candidates' features x (rows of U, ascending positions, as torch.unique returns them):
 *   D = 1 − x̂·x̂ᵀ (x̂ = x/‖x‖; the norm clamped at 1e-12 as passes/criteria/diversity.ts does);
 *   seed  = argmax_j of the second smallest D[i, j] over i ∈ U (the smallest is j's self-distance);
 *   step  d_j = min over the picks s of D[s, j]; pick argmax_j d_j (the first maximum, so the lowest
 *         position on ties, as torch.argmax over U's ascending order); k_b picks for example b.
 * Non-candidates are never picked (−∞ columns) and never count in the seed's minimum (+∞ rows); a
 * picked token's own column goes to −∞ (the −∞ diagonal), so it is never picked again: where the
 * authors' code re-picks a token (every remaining d ≤ its self-distance, near-duplicate features)
 * this takes the next one, as passes/criteria/diversity.ts documents for DivPrune.
 *
 * Lowering: an ONNX Loop of max_b(k_b) − 1 iterations (a run-time trip count) carrying the running
 * min [B,N]; each example keeps its first k_b picks.
 */
import { TensorProto_DataType as DT } from "../src/onnx/gen/onnx_pb.js";
import type { NodeBuilder } from "./builder.js";
import { argmax, row, selectionLoop } from "./max-min-loop.js";

/**
 * bool [B,N]: the tokens picked among `candidates` (bool [B,N]) by greedy max-min on the cosine
 * distance of `features` (float [B,N,D]), `count` (int64 [B,1]) picks per example; each example's
 * count must be below its candidates' (the caller keeps every candidate otherwise).
 */
export function maxMinSubset(b: NodeBuilder, features: string, candidates: string, count: string): string {
  const unit = b.unitRows(features, 2, 1e-12, "feature_norm", "feature_unit");
  const cos = b.op("MatMul", [unit, b.op("Transpose", [unit], { perm: [0, 2, 1] })], {}, "cosine");
  const d = b.op("Sub", [b.float([1], [], "one"), cos], {}, "cosine_distance");
  // Exactly symmetric (ties between mutual neighbours are then exact on every provider), −∞ diagonal.
  const sym = b.op("Min", [d, b.op("Transpose", [d], { perm: [0, 2, 1] })], {}, "symmetric");
  const n = b.slice(b.op("Shape", [features]), 0, 1, 2); // int64 [1]
  const positions = b.op("Cast", [b.range(n, "positions")], { to: DT.FLOAT }, "positions_float"); // [N]
  const self = b.op("Equal", [b.unsqueeze(positions, [1]), b.unsqueeze(positions, [0])], {}, "self"); // [N,N]
  const minusInf = b.float([-Infinity], [], "minus_inf");
  const dist = b.op("Where", [self, minusInf, sym], {}, "distances"); // [B,N,N]
  // Seed: each candidate's distance to its nearest other candidate (rows outside U at +∞).
  const others = b.op("Where", [b.unsqueeze(candidates, [1]), dist, b.float([Infinity], [], "inf")], {}, "to_others");
  const [nearest] = b.opN("TopK", [others, b.int64([2], [1], "two")], 2, { axis: -1, largest: 0, sorted: 1 });
  const seedScore = b.op("Where", [candidates, b.squeeze(b.slice(nearest!, 2, 1, 2), [2]), minusInf], {}, "seed_score");
  const seed = argmax(b, seedScore, "seed"); // [B,1]
  const d0 = b.op("Where", [candidates, row(b, dist, seed), minusInf], {}, "candidates_only"); // [B,N]
  // Every example runs max(k) − 1 steps; its own first k picks count.
  const most = b.reduce("ReduceMax", count, [0, 1], 0); // int64 scalar
  const steps = b.op("Max", [b.op("Sub", [most, b.int64([1], [], "one_step")]), b.int64([0], [], "none")], {}, "steps");
  const picks = b.op("Concat", [seed, selectionLoop(b, dist, d0, steps)], { axis: 1 }, "picks"); // [B,T]
  const t = b.range(b.slice(b.op("Shape", [picks]), 0, 1, 2), "pick_order"); // [T]
  const valid = b.op("Less", [b.unsqueeze(t, [0]), count], {}, "pick_counts"); // [B,T]
  const hit = b.op(
    "And",
    [b.op("Equal", [b.unsqueeze(picks, [2]), b.range(n, "columns")], {}, "pick_column"), b.unsqueeze(valid, [2])],
    {},
    "counted_pick",
  ); // [B,T,N]
  const any = b.reduce("ReduceMax", b.op("Cast", [hit], { to: DT.FLOAT }), [1], 0); // [B,N]
  return b.op("Greater", [any, b.float([0], [], "zero")], {}, "picked");
}
