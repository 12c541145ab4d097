/**
 * A KV-cache stage (`keep kv` / `drop kv`): the residual stream is left alone; in each planned
 * layer the GroupQueryAttention's present key and value keep, per KV head, the K' entries the press
 * scores best, in ascending position order:
 *
 *   N     = entries in the present cache (past + this call's tokens);
 *   K'    = at a call whose past is empty (prefill): the budget (max(1, ⌊N·c⌋) or the count);
 *           at any other call (decode steps): N, so every entry is kept;
 *   kept  = TopK(scores [B, kvH, N], K') re-sorted ascending  → int64 [B, kvH, K'];
 *   cache = GatherElements(present, kept) on the sequence axis → [B, kvH, K', head_size].
 *
 * The op attends over the full cache at that call (the press scores what it saw); only what is
 * stored for later calls is compressed. Keys are stored after rotary, so they keep their positions;
 * the next call's token gets its dense position from the host's position ids. The layer's own
 * sequence lengths (total = its past + the call's tokens, seqlens_k = total − 1) and its key bias
 * (the first `total` columns) are rewritten per layer (passes/cached-attention.ts), since the host's
 * attention mask counts the dense cache. Written for batch 1 and unpadded batches; left-padded
 * batches keep each example's padding in its budget (not yet each example's batch-1 result).
 *
 * Pre:  plan validated by src/plan-kv.ts (every layer a GroupQueryAttention with present outputs,
 *       rotary outside the op, the press's prepareKv ok).
 * Post: each layer's present outputs hold K' entries per KV head; the splice's ensures() held.
 */
import { Graph, type GraphProto, type NodeProto, type TensorProto } from "../src/ir/graph.js";
import { int64Tensor } from "../src/onnx/tensor.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import { refreshFacts } from "../src/analysis/refresh.js";
import { shallowCopy } from "../src/ir/copy.js";
import type { KvPlan } from "../src/plan-types.js";
import { NodeBuilder } from "./builder.js";
import { create } from "@bufbuild/protobuf";
import { AttributeProtoSchema, AttributeProto_AttributeType, GraphProtoSchema } from "../src/onnx/gen/onnx_pb.js";
import { valueInfo } from "../src/ir/value-info.js";
import { evictionSite } from "./kv/site.js";
import { denseName } from "./gather-tokens.js";
import { splice } from "./splice.js";

const FLOAT = 1;
/** The largest budget table (entries) prunec writes; past it the count is computed in float64. */
const MAX_TABLE = 1 << 20;
const DOUBLE = 11;
const INT64 = 7;

export interface KvStageResult {
  graph: GraphProto;
  added: NodeProto[];
  /** Per layer: int64 [B, kvH, K'] kept positions (ascending), for --expose-indices. */
  indices: Map<number, string>;
}

export function applyKvStage(
  proto: GraphProto,
  dense: TransformerInfo,
  plan: KvPlan,
  opset: number,
  /** Output each layer's kept positions (--expose-indices); otherwise decode steps skip building them. */
  expose: boolean,
): KvStageResult {
  let graph = proto;
  const added: NodeProto[] = [];
  const indices = new Map<number, string>();
  // Counts as fractions of N: one table for the stage (the first layer's splice adds it).
  const limit = plan.budget.kind === "fraction" ? maxPositions(new Graph(proto)) : undefined;
  const table = limit !== undefined && limit <= MAX_TABLE ? `prunec/stage${plan.stage}/kv_budget_table` : undefined;
  let tableAdded = false;
  for (const planned of plan.layers) {
    const g = new Graph(graph);
    const model = refreshFacts(dense, g);
    const layer = model.layers[planned.index];
    const cache = layer?.cache;
    if (!layer || !cache)
      throw new Error(`stage ${plan.stage}: layer ${planned.index} lost its KV cache (checked by the plan)`);
    const { presentKey, presentValue } = cache;
    const b = new NodeBuilder(`prunec/stage${plan.stage}/${plan.criterion.name}/layer${layer.index}`, opset);
    // The layer now writes the dense cache under /dense; the gathered one takes the present names.
    const renamed = new Map([
      [presentKey, denseName(presentKey)],
      [presentValue, denseName(presentValue)],
    ]);
    // The layer reads its own (shorter) cache at later calls (per attention kind: passes/kv/site.ts).
    const site = evictionSite(b, g, model, dense, layer, cache);
    // The layer's own readers of its present key/value (plain attention's repeat_kv, shapes) attend
    // this call's dense cache; only the graph outputs (what later calls get) are the evicted one.
    const replaced = new Map(site.replaced);
    for (const t of [presentKey, presentValue])
      for (const reader of g.consumersOf(t)) {
        const base = replaced.get(reader) ?? reader;
        replaced.set(reader, shallowCopy(base, { input: base.input.map((i) => renamed.get(i) ?? i) }));
      }
    // float [B,kvH,N,D]; no Cast of a float cache (onnxruntime drops it and warns that the
    // branches' reads of it cannot be renamed).
    const elem = elemTypeOf(graph, presentKey);
    const keys =
      elem === FLOAT ? denseName(presentKey) : b.op("Cast", [denseName(presentKey)], { to: FLOAT }, "cached_keys");
    const n = b.slice(b.op("Shape", [keys]), 0, 2, 3); // int64 [1]
    const past = cache.pastKey ? b.slice(b.op("Shape", [cache.pastKey]), 0, 2, 3) : b.int64([0], [1], "no_past");
    const prefill = b.op("Equal", [past, b.int64([0], [1], "zero")], {}, "is_prefill");
    const prepared = plan.criterion.prepareKv({ model, layer, args: plan.args });
    if ("why" in prepared) throw new Error(`stage ${plan.stage}: ${prepared.why} (checked by the plan)`);
    // Only a prefill evicts; decode steps keep every entry and skip the press's work (an If).
    const t = new NodeBuilder(`${b.prefix}/evict`, opset);
    const own = plan.budget.kind === "fraction" ? prepared.ok.budget?.(t, n, plan.budget.value) : undefined;
    const kept = own ?? budget(t, plan, n, table);
    let probs: string | undefined;
    const scores = prepared.ok.score({
      b: t,
      args: plan.args,
      heads: site.heads,
      kvHeads: site.kvHeads,
      keys,
      n,
      kept,
      probabilities: () => (probs ??= site.probabilities(t)),
      windowProbabilities: (window) => site.windowProbabilities(t, window),
    });
    const [, best] = t.opN("TopK", [scores, kept], 2, { axis: 2, largest: 1, sorted: 1 }); // [B,kvH,K']
    // Ascending positions: TopK of −position (exact in fp32 below 2^24 entries).
    const [minus] = t.opN("TopK", [t.op("Neg", [t.op("Cast", [best!], { to: FLOAT })]), kept], 2, {
      axis: 2,
      largest: 1,
      sorted: 1,
    });
    const ascending = t.op("Cast", [t.op("Neg", [minus!])], { to: INT64 }, "kept_positions"); // [B,kvH,K']
    const rows = t.op(
      "Expand",
      [
        t.unsqueeze(ascending, [3]),
        t.op("Concat", [t.op("Shape", [ascending]), t.slice(t.op("Shape", [keys]), 0, 3, 4)], { axis: 0 }),
      ],
      {},
      "kept_rows",
    ); // [B,kvH,K',D]
    const evicted = [
      t.op("GatherElements", [denseName(presentKey), rows], { axis: 2 }, "kept_keys"),
      t.op("GatherElements", [denseName(presentValue), rows], { axis: 2 }, "kept_values"),
      ...(expose ? [ascending] : []),
    ];
    const e = new NodeBuilder(`${b.prefix}/keep_all`, opset);
    const keptAll = [
      e.op("Identity", [denseName(presentKey)], {}, "all_keys"),
      e.op("Identity", [denseName(presentValue)], {}, "all_values"),
    ];
    if (expose)
      keptAll.push(
        e.op(
          "Expand",
          [e.unsqueeze(e.range(n, "positions"), [0, 1]), e.slice(e.op("Shape", [keys]), 0, 0, 3)],
          {},
          "all_positions",
        ), // [B,kvH,N]
      );
    // The condition reads the cache's length, so the If comes after the op in any topological order.
    const cond = b.op("And", [prefill, b.op("Greater", [n, b.int64([0], [1], "none")])], {}, "evict_now");
    const types = [elem, elem, INT64];
    const branch = (builder: NodeBuilder, outs: string[], name: string) =>
      create(GraphProtoSchema, {
        name: `${b.prefix}/${name}`,
        node: builder.nodes,
        initializer: builder.initializers,
        output: outs.map((o, i) =>
          valueInfo(
            o,
            types[i]!,
            i < 2 ? [undefined, undefined, undefined, undefined] : [undefined, undefined, undefined],
          ),
        ),
      });
    if (table && !own && !tableAdded && plan.budget.kind === "fraction" && limit !== undefined) {
      b.initializers.push(budgetTable(table, plan.budget.value, limit));
      tableAdded = true;
    }
    const outs = b.opN("If", [cond], evicted.length);
    const ifNode = b.nodes.at(-1)!;
    ifNode.attribute.push(
      create(AttributeProtoSchema, {
        name: "then_branch",
        type: AttributeProto_AttributeType.GRAPH,
        g: branch(t, evicted, "evict"),
      }),
      create(AttributeProtoSchema, {
        name: "else_branch",
        type: AttributeProto_AttributeType.GRAPH,
        g: branch(e, keptAll, "keep_all"),
      }),
    );
    // The If writes the present names (its first two outputs); the positions keep theirs.
    ifNode.output[0] = presentKey;
    ifNode.output[1] = presentValue;
    if (expose && outs[2]) indices.set(layer.index, outs[2]);
    graph = splice(graph, {
      label: `stage ${plan.stage} (${plan.text} by ${plan.criterion.name}, layer ${layer.index})`,
      after: presentKey,
      rename: renamed,
      nodes: b.nodes,
      initializers: b.initializers,
      replaced,
      // The present outputs' declared shapes held the dense length.
      staleInfo: new Set([presentKey, presentValue]),
    });
    added.push(...b.nodes);
  }
  return { graph, added, indices };
}

/** The element type a graph output or value_info declares for `name` (float32 when none does). */
function elemTypeOf(g: GraphProto, name: string): number {
  const v = [...g.output, ...g.valueInfo].find((x) => x.name === name);
  return v?.type?.value.case === "tensorType" ? v.type.value.value.elemType : FLOAT;
}

/**
 * The most positions the model can encode: the rows of a rotary cos cache (RotaryEmbedding's or
 * GroupQueryAttention's own), or undefined when the graph has none.
 */
function maxPositions(g: Graph): number | undefined {
  let most: number | undefined;
  for (const n of g.proto.node) {
    const cache =
      n.opType === "RotaryEmbedding" ? n.input[2] : n.opType === "GroupQueryAttention" ? n.input[7] : undefined;
    const t = cache ? g.initializers.get(cache) : undefined;
    const rows = t?.dims[0] !== undefined ? Number(t.dims[0]) : undefined;
    if (rows !== undefined && rows > 0) most = Math.max(most ?? 0, rows);
  }
  return most;
}

/** int64 [L+1]: max(1, int(N·c)) for N = 0..L, in float64 as kvpress computes it. */
function budgetTable(name: string, c: number, limit: number): TensorProto {
  return int64Tensor(
    name,
    Array.from({ length: limit + 1 }, (_, n) => Math.max(1, Math.trunc(n * c))),
  );
}

/** int64 [1]: K' at prefill for N entries (int64 [1]). */
function budget(b: NodeBuilder, plan: KvPlan, n: string, table?: string): string {
  // A table of K'(N) for every length the model can hold, computed here as Python would: exact,
  // and int64 only (onnxruntime-web's WebGPU build has no float64 kernels, not even on its CPU EP).
  if (table && plan.budget.kind === "fraction") return b.op("Gather", [table, n], { axis: 0 }, "budget");
  const one = b.int64([1], [1], "at_least_one");
  if (plan.budget.kind === "count") {
    const k = b.int64([plan.budget.value], [1], "budget");
    return plan.budget.drop
      ? b.op("Max", [b.op("Sub", [n, k]), one], {}, "after_drop")
      : b.op("Min", [k, n], {}, "at_most_n");
  }
  // int(N·c) as Python computes it: the product in float64, truncated.
  const product = b.op(
    "Mul",
    [b.op("Cast", [n], { to: DOUBLE }), b.double([plan.budget.value], [], "keep_fraction")],
    {},
    "n_times_fraction",
  );
  return b.op("Max", [b.op("Cast", [b.op("Floor", [product])], { to: INT64 }), one], {}, "budget");
}
