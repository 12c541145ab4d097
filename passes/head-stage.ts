/**
 * A head stage (`after layer L keep heads P% by spatten`, SpAtten's cascade head pruning,
 * methods.md §27): each example ranks the heads left by its score summed over layers first..L
 * (SpAtten: Σ|O_h|, the magnitude of each head's attention output P·V), plus what the previous
 * head stage carried, and keeps the best K. Layers L+1..until then compute attention for the kept
 * heads only:
 *
 *   q', kᵀ', v' = the kept heads of Q·Kᵀ's two inputs and P·V's value input   [B, K, ·, ·]
 *   o'          = softmax(q'kᵀ' …) v'                                           [B, K, N, d]
 *   o           = o' spread back over the H heads, the pruned ones 0            [B, H, N, d]
 *
 * so the merge of heads and the output projection read the layout they always did, and a pruned
 * head contributes nothing, as in SpAtten where it has left the layer. Each example keeps its own
 * heads (a gather per example). Head ids are the dense model's, ascending.
 *
 * Pre:  plan validated by src/plan-heads.ts (every layer MatMul + Softmax attention whose head
 *       axis is third from the end, no KV cache, logits' side tensors shared by all heads).
 * Post: layers L+1..until compute K heads; the splice's ensures() held.
 */
import { Graph, type GraphProto, type NodeProto } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import { refreshFacts } from "../src/analysis/refresh.js";
import type { LayerInfo, TransformerInfo } from "../src/analysis/transformer.js";
import type { HeadPlan } from "../src/plan-types.js";
import { NodeBuilder } from "./builder.js";
import { splice } from "./splice.js";

const INT64 = 7;
const BOOL = 9;

export interface HeadStageResult {
  graph: GraphProto;
  added: NodeProto[];
  /** int64 [B, K]: the dense model's ids of the heads each example keeps, ascending. */
  kept: string;
  /** float [B, K]: their running scores (what the next head stage adds its layers to). */
  score: string;
  /** Per rewritten layer: its kept heads' P·V output o' in the layer's layout, K heads (what the next stage sums). */
  outputs: Map<number, { tensor: string; layout: Layout }>;
  /** Heads in those outputs. */
  keep: number;
}

type Layout = NonNullable<LayerInfo["probsLayout"]>;

/** [B·H, X, Y] (batch-major, as exporters flatten it: b·H + h) as [B, H, X, Y]. */
function splitHeads(b: NodeBuilder, heads: number, t: string): string {
  const shape = b.op("Concat", [b.int64([-1, heads], [2], "batch_heads"), b.slice(b.op("Shape", [t]), 0, 1)], {
    axis: 0,
  });
  return b.op("Reshape", [t, shape], {}, "by_head");
}

/** A per-head tensor of the layer's layout as [B, H, X, Y] (for the scores). */
function byHead(b: NodeBuilder, layout: Layout, heads: number, t: string): string {
  switch (layout) {
    case "batch,heads,q,k":
      return t;
    case "batch*heads,q,k":
      return splitHeads(b, heads, t);
    case "heads,q,k":
      return b.unsqueeze(t, [0]);
  }
}

/**
 * A per-head tensor of the layer's layout as [B·H, X, Y] (batch-major), and back: heads are
 * gathered on that one axis with a small index ([B·K]) instead of a full-size GatherElements one.
 */
function flat(b: NodeBuilder, layout: Layout, t: string): string {
  if (layout !== "batch,heads,q,k") return t; // [B·H, X, Y] already, or [H, X, Y] (one example)
  const shape = b.op("Concat", [b.int64([-1], [1], "flat_heads"), b.slice(b.op("Shape", [t]), 0, 2)], { axis: 0 });
  return b.op("Reshape", [t, shape], {}, "flat_heads");
}
function unflat(b: NodeBuilder, layout: Layout, heads: number, t: string): string {
  return layout === "batch,heads,q,k" ? splitHeads(b, heads, t) : t;
}

export function applyHeadStage(
  proto: GraphProto,
  dense: TransformerInfo,
  plan: HeadPlan,
  opset: number,
  previous: HeadStageResult | undefined,
): HeadStageResult {
  const g = Graph.of(proto);
  const model = refreshFacts(dense, g);
  const b = new NodeBuilder(`prunec/stage${plan.stage}/${plan.criterion.name}/heads`, opset);
  const facts = (index: number) => {
    const layer = model.layers[index];
    const core = layer?.core;
    if (!layer || !core?.qk || !core.pv || !layer.probsLayout)
      throw new Error(`stage ${plan.stage}: layer ${index} lost its MatMul + Softmax attention (checked by the plan)`);
    return { layer, qk: core.qk, pv: core.pv, layout: layer.probsLayout };
  };

  // The score: each layer's per-head score, over the heads left, on top of what was carried.
  let total = previous?.score;
  for (let l = plan.first; l <= plan.layer.index; l++) {
    // A layer the previous stage rewrote holds its K heads' output; the others all H.
    const carried = previous?.outputs.get(l);
    let output: string;
    if (carried && previous) output = byHead(b, carried.layout, previous.keep, carried.tensor);
    else {
      const { pv, layout } = facts(l);
      output = byHead(b, layout, plan.heads, pv.output[0]!);
    }
    const score = plan.criterion.heads.layerScore(b, output); // [B, H']
    total = total ? b.op("Add", [total, score], {}, "running_score") : score;
  }
  if (!total) throw new Error(`stage ${plan.stage}: no layer to score`);
  const k = b.int64([plan.keep], [1], "kept_heads");
  const [, best] = b.opN("TopK", [total, k], 2, { axis: -1, largest: 1, sorted: 1 });
  // Ascending positions among the heads left (so ids stay ascending), then the dense ids.
  const [ascending] = b.opN("TopK", [best!, k], 2, { axis: -1, largest: 0, sorted: 1 });
  const kept = previous ? b.op("GatherElements", [previous.kept, ascending!], { axis: 1 }, "head_ids") : ascending!;
  const score = b.op("GatherElements", [total, ascending!], { axis: 1 }, "kept_score");

  // Rows of the [B·H, ·, ·] view: example b's kept head k is row b·H + kept[b,k]; dense head h of
  // example b reads row b·K + (its slot among the kept), or B·K, a zero row, when pruned.
  const examples = b.slice(b.op("Shape", [kept]), 0, 0, 1); // int64 [1]: B
  const first = (width: number, label: string) =>
    b.unsqueeze(b.op("Mul", [b.range(examples, "examples"), b.int64([width], [], label)]), [1]); // [B,1]
  const keptRows = b.op(
    "Reshape",
    [b.op("Add", [first(plan.heads, "heads"), kept]), b.int64([-1], [1], "flat")],
    {},
    "kept_rows",
  ); // [B·K]
  const hit = b.op(
    "Equal",
    [
      b.unsqueeze(kept, [2]),
      b.int64(
        Array.from({ length: plan.heads }, (_, h) => h),
        [1, 1, plan.heads],
        "head_ids",
      ),
    ],
    {},
    "is_kept",
  ); // [B, K, H]
  const slot = b.int64(
    Array.from({ length: plan.keep }, (_, i) => i),
    [1, plan.keep, 1],
    "slots",
  );
  const isKept = b.op("Cast", [b.reduce("ReduceMax", b.op("Cast", [hit], { to: INT64 }), [1], 0)], { to: BOOL }); // [B,H]
  const keptSlot = b.op("Add", [
    first(plan.keep, "kept"),
    b.reduce("ReduceSum", b.op("Where", [hit, slot, b.int64([0], [], "zero")]), [1], 0),
  ]); // [B,H]
  const zeroRow = b.op("Mul", [examples, b.int64([plan.keep], [1], "kept_per_example")], {}, "zero_row"); // [1]: B·K
  const sourceRows = b.op(
    "Reshape",
    [b.op("Where", [isKept, keptSlot, zeroRow], {}, "source"), b.int64([-1], [1], "flat_again")],
    {},
    "source_rows",
  ); // [B·H]

  const replaced = new Map<NodeProto, NodeProto>();
  const outputs = new Map<number, { tensor: string; layout: Layout }>();
  for (let l = plan.layer.index + 1; l <= plan.until; l++) {
    const { qk, pv, layout } = facts(l);
    const c = new NodeBuilder(`${b.prefix}/layer${l}`, opset);
    const gather = (t: string) =>
      unflat(c, layout, plan.keep, c.op("Gather", [flat(c, layout, t), keptRows], { axis: 0 }, "kept_heads"));
    const o = pv.output[0]!;
    const oKept = `${o}/kept_heads`;
    replaced.set(qk, shallowCopy(qk, { input: [gather(qk.input[0]!), gather(qk.input[1]!)] }));
    replaced.set(pv, shallowCopy(pv, { input: [pv.input[0]!, gather(pv.input[1]!)], output: [oKept] }));
    outputs.set(l, { tensor: oKept, layout });
    // The pruned heads' outputs are a zero row after the B·K kept ones.
    const rows = flat(c, layout, oKept); // [B·K, N, d]
    const zeroShape = c.op("Concat", [c.int64([1], [1], "one_row"), c.slice(c.op("Shape", [rows]), 0, 1)], { axis: 0 });
    let zeros = c.op("ConstantOfShape", [zeroShape], {}, "pruned_heads");
    if (opset >= 15) zeros = c.op("CastLike", [zeros, rows]);
    const withZero = c.op("Concat", [rows, zeros], { axis: 0 }, "with_zero_row");
    c.rename(unflat(c, layout, plan.heads, c.op("Gather", [withZero, sourceRows], { axis: 0 }, "every_head")), o);
    b.nodes.push(...c.nodes);
    b.initializers.push(...c.initializers);
  }
  const graph = splice(proto, {
    label: `stage ${plan.stage} (heads)`,
    nodes: b.nodes,
    initializers: b.initializers,
    replaced,
  });
  return { graph, added: b.nodes, kept, score, outputs, keep: plan.keep };
}
