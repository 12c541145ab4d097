/**
 * A `merge` stage: ToMe's bipartite soft matching (facebookresearch/ToMe, tome/merge.py:
 * bipartite_soft_matching + merge_wavg; methods.md §16) on the residual stream leaving a layer.
 *
 *   metric  k̄ = the layer's keys averaged over heads [B,N,D] (passes/criteria/similarity.ts),
 *           normalised to unit length (the norm clamped at 1e-12, so a zero key gives cosine 0
 *           where ToMe's plain division gives NaN);
 *   halves  A = tokens at even positions, B = odd positions, over ALL tokens (CLS is A's first);
 *   scores  S = Â·B̂ᵀ [B,|A|,|B|]; the rows of protected A tokens (the special prefix: CLS at 0)
 *           and the columns of protected B tokens (a second prefix token, e.g. DeiT's distillation
 *           token at 1) are −∞, so they never merge and nothing merges into them;
 *   match   each A token's best B: ReduceMax + ArgMax (the first maximum on ties, as torch.max);
 *           the r A tokens with the highest best score merge (TopK; ties at the r-th place go to
 *           the lower A position, where torch's unstable argsort leaves the order unspecified);
 *   merge   size-weighted means including the destination: x_b' = Σ size·x / Σ size over b and
 *           the A tokens merged into it (merge_wavg); the new sizes are those sums. With
 *           `similarity(weighted: 0)`, AIM's unweighted mean (LaVi-Lab/AIM,
 *           llava/model/token_merge.py: scatter_reduce(mean), include_self): each token once,
 *           whatever its size (differs from ToMe's only after an earlier merge); sizes still sum.
 *
 * Where: ToMe merges inside every block, between the attention residual add and the MLP, with that
 * block's keys. `after layer L merge` merges the stream leaving layer L (after its MLP), with layer
 * L's keys: the same matching and means, one MLP later (a stage acts on the stream between layers,
 * like every prunec stage). test/reference/tome.ts computes the same.
 *
 * Lowering: no ScatterElements reduction (TensorRT and WebGPU lack them). The merge is a one-hot
 * matrix product: M [B, N−r, N] with M[i,j] = size_j when token j lands in output token i, then
 * x' = (M·x) / (M·1) and size' = M·1. Exact in fp32 up to the summation order of the MatMul (the
 * zero entries add exactly); the sizes are sums of small integers, exact.
 *
 * Output order: the surviving tokens (every B token and the unmerged A tokens) in their original
 * order, the positions prunec's keep stages use too; ToMe concatenates [unmerged A, B]. Only
 * position-dependent ops after the stage could tell the two apart (ViTs add positions at the
 * embedding only), with one exception that prunec follows: a LATER merge splits ToMe's sequence,
 * not position order, into A and B. So a merge stage read by a later one also writes each
 * survivor's place in ToMe's output (`prunec/stage<N>/similarity/tome_order`: [unm, dst], unm
 * sorted by A index with a class token, in edge order without one, and [unm[0], dst[0], unm[1:],
 * dst[1:]] with a distillation token), and the later stage first gathers keys, stream and sizes
 * into that order. A B token's merged value sits at the B token's position. The exposed indices
 * (`--expose-indices`) are those positions, numbered as the stage's input tokens.
 *
 * Sizes: the stage writes its output sizes as `prunec/stage<N>/similarity/sizes` (float [B, N−r]);
 * a later merge stage weighs by them (plan.merge.sizesFrom). With `similarity(proportional: 1)`,
 * log(size) is added to the attention logits of every later layer (ToMe's proportional attention,
 * tome/patch/timm.py: ToMeAttention): as a key bias [B,1,1,N'] named
 * `prunec/stage<N>/similarity/log_size_keys`, carried (gathered) by later keep/drop stages like
 * any per-token side tensor and replaced by the next merge stage's own.
 *
 * Pre:  plan validated by src/plan-merge.ts (static token count, 1 ≤ r ≤ ⌊(N − prefix)/2⌋,
 *       batch-first stream, readable keys).
 * Post: as for keep stages (passes/prune-stage.ts): every consumer of the layer's residual sees
 *       the N − r merged tokens, side tensors follow the surviving positions, stale value_info is
 *       dropped, constant Reshape shapes holding N at the token axis are retargeted.
 */
import { Graph, type NodeProto } from "../src/ir/graph.js";
import { TensorProto_DataType as DT } from "../src/onnx/gen/onnx_pb.js";
import { NodeBuilder } from "./builder.js";
import { denseName } from "./gather-tokens.js";
import { findSideInputs, gatherSideInputs, type TokenAxes } from "./carry-tokens.js";
import { addKeyBias } from "./mask-recycle.js";
import { splice } from "./splice.js";
import { restoreBelow } from "./restore.js";
import { headMeanKeys, keysOf } from "./attention/keys.js";
import { prunedStreamInfo, retargetShapeConstants, streamElemType } from "./retarget.js";
import { refreshFacts } from "../src/analysis/refresh.js";
import type { StageLowering } from "./kinds/kind.js";
import type { StagePlan } from "../src/plan-types.js";
import { tabulate } from "../src/onnx/tensor.js";

const FLOAT = DT.FLOAT;

/** The tensor a merge stage writes its output token sizes to. */
export function sizesName(stage: number): string {
  return `prunec/stage${stage}/similarity/sizes`;
}

/** The proportional-attention key bias log(size) [B,1,1,N'] of a merge stage. */
export function logSizeKeysName(stage: number): string {
  return `prunec/stage${stage}/similarity/log_size_keys`;
}

/** The rank [B, N'] of each surviving token (in position order) in ToMe's output sequence. */
export function orderName(stage: number): string {
  return `prunec/stage${stage}/similarity/tome_order`;
}

/**
 * ToMe's sequence from an earlier merge's ranks [B,N] (position order): perm [B,N] int64, the
 * position of the token at each place of the sequence, and the same as float.
 */
function tomeSequence(b: NodeBuilder, ranks: string, n: number): { perm: string; position: string } {
  const [, perm] = b.opN("TopK", [ranks, b.int64([n], [1], "tokens_in")], 2, { axis: 1, largest: 0, sorted: 1 });
  return { perm: perm!, position: b.op("Cast", [perm!], { to: FLOAT }, "sequence_positions") };
}

/**
 * Each survivor's place in ToMe's output (tome/merge.py, merge): `[unm, dst]`, where dst is every B
 * token in sequence order and unm the unmerged A tokens, sorted by A index when there is a class
 * token (prefix ≥ 1) and in edge order (best score descending, ties to the lower A index, as the
 * TopK that picked the merged ones) when there is none; with a distillation token (prefix 2) ToMe
 * writes `[unm[0], dst[0], unm[1:], dst[1:]]`. Returned in the survivors' order (position order).
 */
function tomeRanks(
  b: NodeBuilder,
  m: { mergedA: string; best: string; survivors: string; n: number; r: number; prefix: number },
): string {
  const { n, r, prefix } = m;
  const na = Math.ceil(n / 2);
  const nb = Math.floor(n / 2);
  const kept = na - r;
  let rankA: string;
  if (prefix > 0) {
    const unmerged = b.op("Sub", [b.float([1], [], "one_rank"), m.mergedA], {}, "unmerged_a");
    rankA = b.op("CumSum", [unmerged, b.int64([1], [], "a_axis")], { exclusive: 1 }, "unmerged_before");
    // Distillation token: unm[0] (CLS) keeps place 0, dst[0] takes place 1, the rest shift by one.
    if (prefix === 2)
      rankA = b.op(
        "Add",
        [
          rankA,
          b.float(
            Array.from({ length: na }, (_, i) => (i === 0 ? 0 : 1)),
            [na],
            "after_distill",
          ),
        ],
        {},
        "rank_a_distill",
      );
  } else {
    // Edge order: A tokens with a higher best score, or an equal one at a lower index, come first.
    const col = b.unsqueeze(m.best, [1]); // [B,1,|A|]: a'
    const row = b.unsqueeze(m.best, [2]); // [B,|A|,1]: a
    const lower = b.float(
      tabulate(na * na, (k) => (k % na < Math.floor(k / na) ? 1 : 0)),
      [na, na],
      "lower_index",
    );
    const ahead = b.op(
      "Add",
      [
        b.op("Cast", [b.op("Greater", [col, row])], { to: FLOAT }),
        b.op("Mul", [b.op("Cast", [b.op("Equal", [col, row])], { to: FLOAT }), lower]),
      ],
      {},
      "ahead_in_edges",
    );
    rankA = b.op("Sub", [b.reduce("ReduceSum", ahead, [2], 0), b.float([r], [], "r_merged")], {}, "edge_rank");
  }
  const rankB = b.float(
    Array.from({ length: nb }, (_, j) => (prefix === 2 ? (j === 0 ? 1 : kept + j) : kept + j)),
    [1, nb],
    "rank_b",
  );
  // Interleave A and B ranks back into sequence places (A at even, B at odd).
  const batchRows = b.slice(b.op("Shape", [m.mergedA], {}, "batch_rows"), 0, 0, 1);
  const rankBFull = b.op(
    "Expand",
    [rankB, b.op("Concat", [batchRows, b.int64([nb], [1], "b_count")], { axis: 0 })],
    {},
    "rank_b_batch",
  );
  const padded =
    na > nb ? b.op("Pad", [rankBFull, b.int64([0, 0, 0, 1], [4], "pad_b")], {}, "rank_b_padded") : rankBFull;
  const stacked = b.op("Concat", [b.unsqueeze(rankA, [2]), b.unsqueeze(padded, [2])], { axis: 2 }, "rank_ab");
  const places = b.slice(b.op("Reshape", [stacked, b.int64([0, -1], [2], "flat_ranks")]), 1, 0, n); // [B,N]
  return b.op("GatherElements", [places, m.survivors], { axis: 1 }, "survivor_ranks");
}

/**
 * float [B, N]: the position each input token (in position order) landed at: an A token's
 * destination (its own, or its partner's when merged), a B token's own position. The A/B halves are
 * places of ToMe's sequence (`seq`, after an earlier merge) or of position order.
 */
function landing(
  b: NodeBuilder,
  destA: string,
  seq: { perm: string; position: string } | undefined,
  n: number,
): string {
  const na = Math.ceil(n / 2);
  const nb = Math.floor(n / 2);
  const batchRows = b.slice(b.op("Shape", [destA]), 0, 0, 1);
  const ownB = seq
    ? everyOther(b, seq.position, 1, "b_own_positions")
    : b.op(
        "Expand",
        [
          b.float(
            Array.from({ length: nb }, (_, j) => 2 * j + 1),
            [1, nb],
            "b_own_positions",
          ),
          b.op("Concat", [batchRows, b.int64([nb], [1], "b_count")], { axis: 0 }),
        ],
        {},
        "b_own_batch",
      ); // [B,|B|]
  const padded = na > nb ? b.op("Pad", [ownB, b.int64([0, 0, 0, 1], [4], "pad_b")], {}, "b_own_padded") : ownB;
  const stacked = b.op("Concat", [b.unsqueeze(destA, [2]), b.unsqueeze(padded, [2])], { axis: 2 }, "landing_ab");
  const inOrder = b.slice(b.op("Reshape", [stacked, b.int64([0, -1], [2], "flat_landing")]), 1, 0, n); // [B,N] by place
  // Places of ToMe's sequence back to positions: the token at place s is at position perm[s].
  return seq ? b.op("ScatterElements", [inOrder, seq.perm, inOrder], { axis: 1 }, "landing_by_position") : inOrder;
}

/** U [B, N_in, N_out] (the stream's element type): 1 where input position p landed in output row i (at `positions[i]`). */
function unmergeMatrix(b: NodeBuilder, positions: string, landed: string, elemType: number): string {
  const rows = b.unsqueeze(b.op("Cast", [positions], { to: FLOAT }), [1]); // [B,1,N_out]
  return b.op("Cast", [b.op("Equal", [b.unsqueeze(landed, [2]), rows])], { to: elemType }, "unmerge_matrix");
}

/** x[:, start::2] along axis 1. */
function everyOther(b: NodeBuilder, x: string, start: 0 | 1, label: string): string {
  return b.op(
    "Slice",
    [x, b.int64([start]), b.int64([Number.MAX_SAFE_INTEGER]), b.int64([1]), b.int64([2])],
    {},
    label,
  );
}

export const applyMergeStage: StageLowering = (proto, dense, densePlan, state, options) => {
  const g = Graph.of(proto);
  // Earlier stages rewired some nodes (new objects, same names): read the current ones.
  const model = refreshFacts(dense, g);
  const layer = model.layers[densePlan.layer.index];
  const residual = layer?.residual;
  const merge = densePlan.merge;
  if (!layer || !residual || !merge || model.tokens === undefined)
    throw new Error(`stage ${densePlan.stage}: a merge stage needs the layer's residual stream (checked by the plan)`);
  const plan: StagePlan = { ...densePlan, layer };
  const { r, sizesFrom, proportional } = merge;
  if (typeof plan.tokensIn !== "number" || model.batchAxis !== 0 || model.tokenAxis !== 1)
    throw new Error("merge stages need a static token count and a batch-first stream (checked by the plan)");
  const n = plan.tokensIn;
  const out = n - r;
  const prefix = plan.prefix;
  const rName = residual.output;
  const b = new NodeBuilder(`prunec/stage${plan.stage}/similarity`, options.opset);
  const stream = denseName(rName);

  // With `with restore` the nodes below the restore point see every token again: they are not the stage's.
  const restored = plan.restore ? restoreBelow(g, dense, plan.restore.at) : new Set<NodeProto>();
  const belowNodes = new Set([...g.descendants(rName)].filter((x) => !restored.has(x)));
  const below = new Set([...belowNodes].flatMap((x) => x.output));
  below.add(rName);
  const sides = findSideInputs(
    { graph: g, shapes: model.shapes, carried: state.carried, denseTokens: model.tokens, batched: true },
    belowNodes,
    below,
  );

  // ToMe's token sequence: after an earlier merge, ToMe holds [unmerged A, B], not position order;
  // this merge splits that sequence into A (even) and B (odd), so the tokens are first put in it.
  const seq = sizesFrom !== undefined ? tomeSequence(b, orderName(sizesFrom), n) : undefined;
  const inSeq = (t: string, label: string) =>
    seq ? b.op("GatherND", [t, b.unsqueeze(seq.perm, [2])], { batch_dims: 1 }, label) : t;

  // Matching on the keys (fp32): A = even, B = odd places of the sequence.
  const na = Math.ceil(n / 2);
  const nb = Math.floor(n / 2);
  const proven = keysOf(plan.layer);
  if ("why" in proven)
    throw new Error(`internal: merge after layer ${plan.layer.index} was planned, but ${proven.why}`);
  const keys = headMeanKeys(b, proven.ok); // [B,N,D]
  const metric = inSeq(b.unitRows(keys, 2, 1e-12, "key_norm", "unit_keys"), "tome_order_keys");
  const a = everyOther(b, metric, 0, "keys_a");
  const bk = everyOther(b, metric, 1, "keys_b");
  let scores = b.op("MatMul", [a, b.op("Transpose", [bk], { perm: [0, 2, 1] })], {}, "similarity"); // [B,|A|,|B|]
  const protectedA = Math.ceil(prefix / 2);
  const protectedB = Math.floor(prefix / 2);
  if (protectedA > 0)
    scores = b.op(
      "Add",
      [
        scores,
        b.float(
          Array.from({ length: na }, (_, i) => (i < protectedA ? -Infinity : 0)),
          [1, na, 1],
          "protect_rows",
        ),
      ],
      {},
      "protected_a",
    );
  if (protectedB > 0)
    scores = b.op(
      "Add",
      [
        scores,
        b.float(
          Array.from({ length: nb }, (_, i) => (i < protectedB ? -Infinity : 0)),
          [1, 1, nb],
          "protect_cols",
        ),
      ],
      {},
      "protected_b",
    );
  const best = b.reduce("ReduceMax", scores, [2], 0); // [B,|A|]
  const partnerIdx = b.op("ArgMax", [scores], { axis: 2, keepdims: 0 }, "best_partner"); // [B,|A|], first maximum
  // Position order reads the partner as a float place (2·idx + 1); ToMe order gathers positions by index.
  const partner = seq ? undefined : b.op("Cast", [partnerIdx], { to: FLOAT });
  const [, src] = b.opN("TopK", [best, b.int64([r], [1], "r")], 2, { axis: 1, largest: 1, sorted: 1 }); // [B,r] merged A rows
  const isMerged = b.op(
    "Equal",
    [
      b.unsqueeze(b.op("Cast", [src!], { to: FLOAT }), [2]),
      b.float(
        Array.from({ length: na }, (_, i) => i),
        [na],
        "a_rows",
      ),
    ],
    {},
    "is_src",
  );
  const mergedA = b.reduce("ReduceMax", b.op("Cast", [isMerged], { to: FLOAT }), [1], 0); // [B,|A|] 1 = merged away

  // Where each token lands, as an original position: A token a at its own position, or at its
  // partner's. In position order (no earlier merge) A's places are 2a and B's 2j + 1.
  let destA: string;
  let destB: string;
  let order: () => string;
  if (seq) {
    const posA = everyOther(b, seq.position, 0, "a_positions");
    const posB = everyOther(b, seq.position, 1, "b_positions_flat");
    const partnerPos = b.op("GatherElements", [posB, partnerIdx], { axis: 1 }, "partner_position");
    destA = b.op("Add", [posA, b.op("Mul", [mergedA, b.op("Sub", [partnerPos, posA])])], {}, "a_destination"); // [B,|A|]
    destB = b.unsqueeze(posB, [1]); // [B,1,|B|]
    order = () => b.op("Neg", [seq.position], {}, "minus_positions");
  } else {
    const evenPos = b.float(
      Array.from({ length: na }, (_, i) => 2 * i),
      [na],
      "a_positions",
    );
    const partnerPos = b.op(
      "Add",
      [b.op("Mul", [partner!, b.float([2], [], "two")]), b.float([1], [], "one")],
      {},
      "partner_position",
    );
    destA = b.op("Add", [evenPos, b.op("Mul", [mergedA, b.op("Sub", [partnerPos, evenPos])])], {}, "a_destination"); // [B,|A|]
    destB = b.float(
      Array.from({ length: nb }, (_, i) => 2 * i + 1),
      [1, 1, nb],
      "b_positions",
    );
    order = () =>
      b.float(
        Array.from({ length: n }, (_, i) => -i),
        [n],
        "minus_positions",
      );
  }

  // Surviving positions, ascending: TopK of −position, merged A tokens pushed below every survivor.
  const interleaved = b.op(
    "Pad",
    [b.unsqueeze(mergedA, [2]), b.int64([0, 0, 0, 0, 0, 1], [6], "pads")],
    {},
    "merged_and_b",
  ); // [B,|A|,2]
  const mergedAll = b.slice(b.op("Reshape", [interleaved, b.int64([0, -1], [2], "flat")]), 1, 0, n); // [B,N] over the sequence
  const key = b.op("Sub", [order(), b.op("Mul", [mergedAll, b.float([2 * n], [], "push_down")])], {}, "survivor_key");
  const [, survivors] = b.opN("TopK", [key, b.int64([out], [1], "tokens_out")], 2, { axis: 1, largest: 1, sorted: 1 }); // int64 [B,N−r], places in the sequence
  const positions = seq
    ? b.op("GatherElements", [seq.perm, survivors!], { axis: 1 }, "survivor_positions")
    : survivors!;

  // One-hot merge matrix over the tokens in [A, B] order, weighted by the incoming sizes.
  const rows = b.unsqueeze(b.op("Cast", [positions], { to: FLOAT }), [2]); // [B,N−r,1]
  let toA = b.op("Cast", [b.op("Equal", [rows, b.unsqueeze(destA, [1])])], { to: FLOAT }, "lands_a"); // [B,N−r,|A|]
  let toB = b.op("Cast", [b.op("Equal", [rows, destB])], { to: FLOAT }, "lands_b"); // [B,N−r,|B|]
  const oneHot = [toA, toB];
  if (sizesFrom !== undefined) {
    const sizes = seq
      ? b.op("GatherElements", [sizesName(sizesFrom), seq.perm], { axis: 1 }, "tome_order_sizes")
      : sizesName(sizesFrom); // [B,N]
    toA = b.op("Mul", [toA, b.unsqueeze(everyOther(b, sizes, 0, "sizes_a"), [1])], {}, "weigh_a");
    toB = b.op("Mul", [toB, b.unsqueeze(everyOther(b, sizes, 1, "sizes_b"), [1])], {}, "weigh_b");
  }
  const weights = b.op("Concat", [toA, toB], { axis: 2 }, "merge_matrix"); // [B,N−r,N]
  // AIM's unweighted mean counts each token once; the carried sizes still sum (below).
  const meanWeights =
    merge.unweighted && sizesFrom !== undefined ? b.op("Concat", oneHot, { axis: 2 }, "unweighted_matrix") : weights;
  const elemType = streamElemType(g, residual) ?? FLOAT;
  const x = elemType === FLOAT ? stream : b.op("Cast", [stream], { to: FLOAT }, "stream_fp32");
  const xs = inSeq(x, "tome_order_stream");
  const xab = b.op(
    "Concat",
    [everyOther(b, xs, 0, "stream_a"), everyOther(b, xs, 1, "stream_b")],
    { axis: 1 },
    "stream_ab",
  ); // [B,N,C]
  const total = b.reduce("ReduceSum", weights, [2], 1); // [B,N−r,1]: the new sizes
  const count = meanWeights === weights ? total : b.reduce("ReduceSum", meanWeights, [2], 1);
  let merged = b.op("Div", [b.op("MatMul", [meanWeights, xab], {}, "weighted_sum"), count], {}, "weighted_mean");
  if (elemType !== FLOAT) merged = b.op("Cast", [merged], { to: elemType }, "stream_type");
  const sizes = b.rename(b.squeeze(total, [2]), sizesName(plan.stage)); // [B,N−r]
  if (merge.feedsMerge)
    b.rename(tomeRanks(b, { mergedA, best, survivors: survivors!, n, r, prefix }), orderName(plan.stage));

  // Side tensors read below the stage follow the surviving positions; an earlier merge stage's
  // log-size key bias is replaced by this stage's.
  const previousBias = proportional && sizesFrom !== undefined ? logSizeKeysName(sizesFrom) : undefined;
  const gathered = gatherSideInputs(
    b,
    sides.filter((s) => s.tensor !== previousBias),
    positions,
    true,
    () => b.int64([n], [1], "tokens_in"),
  );
  const carried = new Map<string, TokenAxes>(
    [...sides]
      .filter((s) => s.tensor !== previousBias)
      .map((s) => [gathered.get(s.tensor)!, { axes: s.axes, rank: s.rank }]),
  );
  let rewired = new Map<NodeProto, NodeProto>();
  if (proportional) {
    const keyBias = b.rename(b.unsqueeze(b.op("Log", [sizes], {}, "log_size"), [1, 2]), logSizeKeysName(plan.stage)); // [B,1,1,N−r]
    carried.set(keyBias, { axes: [3], rank: 4 });
    if (previousBias) gathered.set(previousBias, keyBias);
    // ToMe's proportional attention: log(size) on the keys of every later layer.
    else
      rewired = addKeyBias(b, model, plan.layer.index + 1, keyBias, {
        label: "proportional",
        // Layers after the restore point see every token, each its own size again.
        ...(plan.restore ? { until: plan.restore.at } : {}),
        resolve: (t) => gathered.get(t) ?? t,
      });
  }

  // `with restore`: tomesd's unmerge reads where each input token landed (passes/restore.ts).
  const restore = plan.restore
    ? {
        kind: "unmerge" as const,
        at: plan.restore.at,
        assign: unmergeMatrix(b, positions, landing(b, destA, seq, n), elemType),
      }
    : undefined;
  b.rename(merged, rName);
  const graph = splice(proto, {
    label: `stage ${plan.stage} (merge after layer ${plan.layer.index})`,
    after: rName,
    rename: new Map([[rName, stream]]),
    nodes: b.nodes,
    initializers: b.initializers,
    replaced: rewired,
    sides: { gathered, belowNodes },
    retarget: (nodes) => retargetShapeConstants(g, nodes, below, plan, model),
    staleInfo: below,
    info: prunedStreamInfo(proto, model, plan, rName, elemType),
  });
  const record = {
    indices: positions,
    lowering: "index" as const,
    ...(restore ? { restore } : {}),
    ...(options.target === "webgpu"
      ? { loweringNote: "merge stages have one lowering (one-hot MatMul; TopK indices)" }
      : {}),
  };
  return { graph, effect: { tokens: plan.tokensOut, added: b.nodes, record, carried, sets: new Map() } };
};
