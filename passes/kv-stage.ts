/**
 * A KV-cache stage (`keep kv` / `drop kv`): the residual stream is left alone; in each planned
 * layer the present key and value (GroupQueryAttention's, or plain attention's Concat(past, k))
 * keep, per KV head, the K' entries the press scores best, in ascending position order:
 *
 *   N     = entries in the present cache (past + this call's tokens);
 *   K'    = at a call whose past is empty (prefill): the budget (max(1, ⌊N·c⌋) or the count);
 *           at any other call (decode steps): N, so every entry is kept;
 *   kept  = TopK(scores [B, kvH, N], K') re-sorted ascending  → int64 [B, kvH, K'];
 *   cache = GatherElements(present, kept) on the sequence axis → [B, kvH, K', head_size].
 *
 * The op attends over the full cache at that call (the press scores what it saw); only what is
 * stored for later calls is compressed. Keys are stored after rotary, so they keep their positions;
 * the next call's token gets its dense position from the host's position ids. How the layer then
 * reads its shorter cache (the host's mask counts the dense one) is per attention kind
 * (passes/kv/site.ts: GroupQueryAttention's sequence lengths and key bias, plain attention's mask
 * columns). In a left-padded batch (the host's `attention_mask`)
 * each example is scored as alone and never keeps a pad over a real entry; K' is the batch's.
 *
 * Pre:  plan validated by src/plan-kv.ts (every layer has a `cache` fact that passes/kv/site.ts's
 *       `evictable` accepts, rotary outside the op, the press's prepareKv ok).
 * Post: each layer's present outputs hold K' entries per KV head; the splice's ensures() held.
 */
import { attrInt, Graph, type GraphProto, type NodeProto, type TensorProto } from "../src/ir/graph.js";
import { int64Tensor, tabulate } from "../src/onnx/tensor.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import type { LayerCache } from "../src/analysis/kv-cache.js";
import { refreshFacts } from "../src/analysis/refresh.js";
import { shallowCopy } from "../src/ir/copy.js";
import type { KvPlan } from "../src/plan-types.js";
import type { KvScorer } from "./kv/criterion.js";
import { NodeBuilder } from "./builder.js";
import { create } from "@bufbuild/protobuf";
import { AttributeProtoSchema, AttributeProto_AttributeType, GraphProtoSchema } from "../src/onnx/gen/onnx_pb.js";
import { batchDim, valueInfo } from "../src/ir/value-info.js";
import { evictionSite, type EvictionSite } from "./kv/site.js";
import { denseName } from "./gather-tokens.js";
import { spliceLayers, type LayerSplice } from "./splice.js";
import { validityBias } from "./front-padding.js";
import { attentionMask, firstColumns, hostColumnsOf, type HostColumns } from "./host-mask.js";

const FLOAT = 1;
/** The largest budget table (entries) prunec writes; past it the count is computed in float64. */
const MAX_TABLE = 1 << 20;
const DOUBLE = 11;
const INT64 = 7;

/**
 * `--kv-state`: per evicted layer, `past_key_values.L.prunec_valid` (input) and
 * `present.L.prunec_valid` (output), float [batch, entries]: 1 for a slot later calls attend to,
 * 0 for a filler slot. At prefill each example keeps its own K'_b entries and the batch's cache
 * holds K' = max K'_b, the fillers first; a host feeds `present.*` back as `past_key_values.*`
 * (transformers.js's convention) and an empty [batch, 0] at the first call.
 */
export interface KvState {
  layer: number;
  past: string;
  present: string;
}

export interface KvStageResult {
  graph: GraphProto;
  added: NodeProto[];
  /** The state pairs added (`carryState`). */
  states: KvState[];
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
  /**
   * Per layer, which host-mask columns its cache lines up with below the stream stages above it
   * (passes/host-mask.ts), or undefined where no stream stage acts above it.
   */
  streamAbove: (layer: number) => HostColumns | undefined = () => undefined,
  /**
   * Carry each evicted layer's slot validity from call to call (`--kv-state`), so that every
   * example of a padded batch keeps its own count: see `KvState`.
   */
  carryState = false,
): KvStageResult {
  const added: NodeProto[] = [];
  const indices = new Map<number, string>();
  // Counts as fractions of N: one table for the stage (the first layer's splice adds it).
  const limit = plan.budget.kind === "fraction" ? maxPositions(Graph.of(proto)) : undefined;
  const table = limit !== undefined && limit <= MAX_TABLE ? `prunec/stage${plan.stage}/kv_budget_table` : undefined;
  let tableAdded = false;
  const hostMask = attentionMask(proto);
  const states = new Map<number, KvState>();
  let graph = proto;
  if (carryState)
    for (const { index } of plan.layers) {
      const state = {
        layer: index,
        past: `past_key_values.${index}.prunec_valid`,
        present: `present.${index}.prunec_valid`,
      };
      graph = withState(graph, "input", state.past, [], index);
      states.set(index, state);
    }
  // Every layer is built against the stage's input graph and spliced at once (spliceLayers).
  const { g, model } = stageFacts(graph, dense);
  const parts: LayerSplice[] = [];
  for (const planned of plan.layers) {
    const state = states.get(planned.index);
    const { layer, cache, renamed } = evictedLayer(model, plan, planned.index);
    // Below stream stages: which host-mask columns the layer's entries line up with.
    const columns = streamAbove(layer.index);
    const { presentKey, presentValue } = cache;
    const b = new NodeBuilder(`prunec/stage${plan.stage}/${plan.criterion.name}/layer${layer.index}`, opset);
    // With the state: every slot of this call's cache (the past's validity, then the call's entries).
    const validAll = state ? allSlots(b, state.past, callEntries(b, g, cache, layer)) : undefined;
    // The layer reads its own (shorter) cache at later calls (per attention kind: passes/kv/site.ts).
    const site = evictionSite(b, g, model, dense, layer, cache, columns === "first" ? "first" : "last", validAll?.bias);
    const replaced = readDenseCache(g, site.replaced, renamed);
    const elem = elemTypeOf(graph, presentKey);
    const keys = denseFloat(b, graph, presentKey, "cached_keys");
    const n = b.slice(b.op("Shape", [keys]), 0, 2, 3); // int64 [1]
    const past = cache.pastKey ? b.slice(b.op("Shape", [cache.pastKey]), 0, 2, 3) : b.int64([0], [1], "no_past");
    const prefill = b.op("Equal", [past, b.int64([0], [1], "zero")], {}, "is_prefill");
    const prepared = plan.criterion.prepareKv({ model, graph: g, layer, args: plan.args });
    if ("why" in prepared) throw new Error(`stage ${plan.stage}: ${prepared.why} (checked by the plan)`);
    // Only a prefill evicts; decode steps keep every entry and skip the press's work (an If).
    const t = new NodeBuilder(`${b.prefix}/evict`, opset);
    // A press's own budget (PyramidKV's) replaces the stage's table; with the state it is per example.
    const pressBudget = plan.budget.kind === "fraction" && !!(prepared.ok.budgetAt || prepared.ok.budget);
    const own = pressBudget && !state ? ownBudget(b, t, prepared.ok, n, plan, layer.index, limit) : undefined;
    // Left padding: each example is scored as it would be alone (its pads' query rows carry no
    // attention, its positions count from its first real entry) and never keeps a pad over a real
    // entry; the count K' is the batch's (shapes are shared).
    const pads = padding(t, hostMask, n, columns);
    // Each example's real entries, where counts are per example (a set, or the state).
    const real = plan.ofSet || state ? realEntries(t, n, keys, pads) : undefined;
    const set = plan.ofSet && real ? setEntries(t, plan, plan.ofSet.input, n, pads, real, table) : undefined;
    // With the state each example counts its own real entries (K'_b), the cache holds the largest.
    const perExample =
      state && !set && real ? ownCounts(t, prepared.ok, plan, layer.index, limit, real, table) : undefined;
    const counts = set?.perExample ?? perExample;
    const kept = state && counts ? largest(t, counts) : (set?.kept ?? own ?? budget(t, plan, n, table));
    // What each example keeps: its own count with the state, else the batch's.
    const keptArg = state && counts ? t.unsqueeze(counts, [1, 2]) : kept;
    const scores = pressScores(t, {
      plan,
      scorer: prepared.ok,
      site,
      graph,
      keys,
      presentValue,
      n,
      kept: keptArg,
      pads,
      set,
    });
    const [, best] = t.opN("TopK", [scores, kept], 2, { axis: 2, largest: 1, sorted: 1 }); // [B,kvH,K']
    let ascending: string;
    let validity: { slots: string; sorted: string } | undefined;
    if (state && counts) {
      // Ranks past the example's own K'_b are fillers; they go first, then the kept entries, each
      // in ascending position order (the key: position, + N for a kept entry).
      const rank = t.unsqueeze(t.range(kept, "ranks"), [0, 1]); // [1,1,K']
      const owned = t.op("Less", [rank, t.unsqueeze(counts, [1, 2])], {}, "own_entries"); // [B,1,K']
      const key = t.op(
        "Add",
        [
          t.op("Cast", [best!], { to: FLOAT }),
          t.op("Mul", [t.op("Cast", [owned], { to: FLOAT }), t.op("Cast", [n], { to: FLOAT })]),
        ],
        {},
        "fillers_first",
      );
      const [, order] = t.opN("TopK", [t.op("Neg", [key]), kept], 2, { axis: 2, largest: 1, sorted: 1 });
      ascending = t.op("GatherElements", [best!, order!], { axis: 2 }, "kept_positions"); // [B,kvH,K']
      validity = fillersFirst(t, kept, counts);
    } else {
      ascending = sortedAscending(t, best!, kept);
    }
    const rows = keptRows(t, ascending, keys);
    const evicted = [
      t.op("GatherElements", [denseName(presentKey), rows], { axis: 2 }, "kept_keys"),
      t.op("GatherElements", [denseName(presentValue), rows], { axis: 2 }, "kept_values"),
      // Exposed positions: −1 for a filler slot.
      ...(expose
        ? [
            validity
              ? t.op("Where", [validity.sorted, ascending, t.int64([-1], [], "filler")], {}, "kept_or_filler")
              : ascending,
          ]
        : []),
      ...(validity ? [validity.slots] : []),
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
    if (validAll) keptAll.push(e.op("Identity", [validAll.slots], {}, "all_slots_valid"));
    // The condition reads the cache's length, so the If comes after the op in any topological order.
    const cond = b.op("And", [prefill, b.op("Greater", [n, b.int64([0], [1], "none")])], {}, "evict_now");
    // Output types and ranks: keys, values, [positions], [validity].
    const kinds: [number, number][] = [
      [elem, 4],
      [elem, 4],
      ...(expose ? [[INT64, 3] as [number, number]] : []),
      ...(state ? [[FLOAT, 2] as [number, number]] : []),
    ];
    if (table && !pressBudget && !tableAdded && plan.budget.kind === "fraction" && limit !== undefined) {
      b.initializers.push(budgetTable(table, plan.budget.value, limit));
      tableAdded = true;
    }
    const { outs, node: ifNode } = branchIf(
      b,
      cond,
      { builder: t, outputs: evicted, name: "evict" },
      { builder: e, outputs: keptAll, name: "keep_all" },
      kinds,
    );
    // The If writes the present names (its first two outputs, and the validity last); the positions keep theirs.
    ifNode.output[0] = presentKey;
    ifNode.output[1] = presentValue;
    if (state) ifNode.output[ifNode.output.length - 1] = state.present;
    if (expose && outs[2]) indices.set(layer.index, outs[2]);
    parts.push(
      layerSplice(`stage ${plan.stage} (${plan.text} by ${plan.criterion.name}, layer ${layer.index})`, {
        cache,
        renamed,
        b,
        replaced,
      }),
    );
    added.push(...b.nodes);
  }
  graph = spliceLayers(graph, `stage ${plan.stage} (${plan.text} by ${plan.criterion.name})`, parts);
  for (const state of states.values()) graph = withState(graph, "output", state.present, [], state.layer);
  return { graph, added, indices, states: [...states.values()] };
}

/**
 * An If node on `cond` (added to `b`) whose branches are the nodes of two builders, each returning
 * its `outputs` (types and ranks `kinds`). Returns the If's outputs and the node.
 */
export function branchIf(
  b: NodeBuilder,
  cond: string,
  then: { builder: NodeBuilder; outputs: string[]; name: string },
  otherwise: { builder: NodeBuilder; outputs: string[]; name: string },
  kinds: readonly [number, number][],
): { outs: string[]; node: NodeProto } {
  const branch = (x: typeof then) =>
    create(GraphProtoSchema, {
      name: `${b.prefix}/${x.name}`,
      node: x.builder.nodes,
      initializer: x.builder.initializers,
      output: x.outputs.map((o, i) => valueInfo(o, kinds[i]![0], new Array<undefined>(kinds[i]![1]).fill(undefined))),
    });
  const outs = b.opN("If", [cond], then.outputs.length);
  const node = b.nodes.at(-1)!;
  node.attribute.push(
    create(AttributeProtoSchema, { name: "then_branch", type: AttributeProto_AttributeType.GRAPH, g: branch(then) }),
    create(AttributeProtoSchema, {
      name: "else_branch",
      type: AttributeProto_AttributeType.GRAPH,
      g: branch(otherwise),
    }),
  );
  return { outs, node };
}

/**
 * A press's scores of the N entries at a prefill, float [B,kvH,N]: pad query rows carry no
 * attention, pads rank below everything, and with `of SET` every real entry outside the set ranks
 * above it (kept). `kept` is what the press is told each example keeps.
 */
function pressScores(
  t: NodeBuilder,
  x: {
    plan: KvPlan;
    scorer: KvScorer;
    site: EvictionSite;
    graph: GraphProto;
    keys: string;
    presentValue: string;
    n: string;
    kept: string;
    pads: Padding | undefined;
    set?: { columns: string } | undefined;
  },
): string {
  const { pads, site } = x;
  let probs: string | undefined;
  const realRows = (p: string, window?: number) =>
    pads ? t.op("Mul", [p, window ? t.slice(pads.rows, 2, -window) : pads.rows], {}, "real_query_rows") : p;
  const raw = x.scorer.score({
    b: t,
    args: x.plan.args,
    heads: site.heads,
    kvHeads: site.kvHeads,
    keys: x.keys,
    values: () => denseFloat(t, x.graph, x.presentValue, "cached_values"),
    n: x.n,
    kept: x.kept,
    padding: pads?.count ?? t.int64([0], [1, 1, 1], "no_padding"),
    probabilities: () => (probs ??= realRows(site.probabilities(t))),
    windowProbabilities: (window) => realRows(site.windowProbabilities(t, window), window),
  });
  // `of SET`: the other real entries are always kept; pads below everything.
  const inSet = x.set
    ? t.op("Where", [x.set.columns, raw, t.float([Number.POSITIVE_INFINITY], [], "outside_set")], {}, "set_competes")
    : raw;
  return pads
    ? t.op("Where", [pads.columns, inSet, t.float([Number.NEGATIVE_INFINITY], [], "pad_score")], {}, "pads_last")
    : inSet;
}

/**
 * What a prefill press keeps of a call's N entries (meaningful at the prefill; a decode-time stage
 * on the same layer builds it in its prefill branch): int64 [B,kvH,K1] in score order, and K1
 * (int64 [1]), the press's budget. Only plain budgets: no `of SET`, no per-example state, no
 * press-own budget (checked by the plan).
 */
export function pressSelection(
  t: NodeBuilder,
  x: {
    plan: KvPlan;
    model: TransformerInfo;
    g: Graph;
    layer: TransformerInfo["layers"][number];
    site: EvictionSite;
    graph: GraphProto;
    keys: string;
    presentValue: string;
    n: string;
    hostMask: string | undefined;
    /** Which host-mask columns the layer's cache lines up with, below stream stages. */
    columns?: HostColumns | undefined;
    /** The stage's K'(N) table (`fractionTable`), when it has one. */
    table?: string | undefined;
  },
): { best: string; kept: string } {
  const prepared = x.plan.criterion.prepareKv({ model: x.model, graph: x.g, layer: x.layer, args: x.plan.args });
  if ("why" in prepared) throw new Error(`stage ${x.plan.stage}: ${prepared.why} (checked by the plan)`);
  const pads = padding(t, x.hostMask, x.n, x.columns);
  const kept = budget(t, x.plan, x.n, x.table);
  const scores = pressScores(t, { ...x, scorer: prepared.ok, kept, pads });
  const [, best] = t.opN("TopK", [scores, kept], 2, { axis: 2, largest: 1, sorted: 1 });
  return { best: best!, kept };
}

/**
 * The facts a KV stage's layers are built from: the analysis's, resolved again in the stage's
 * input graph (earlier stages rewired nodes), and that graph's index. Every layer of the stage
 * reads these; their splices are applied together (spliceLayers), so no layer sees another's.
 */
export function stageFacts(graph: GraphProto, dense: TransformerInfo): { g: Graph; model: TransformerInfo } {
  const g = Graph.of(graph);
  return { g, model: refreshFacts(dense, g) };
}

/**
 * Layer `index` of a KV stage: its facts, its cache, and `renamed`: the layer now writes its dense
 * cache under /dense, and the evicted one takes the present names.
 */
export function evictedLayer(
  model: TransformerInfo,
  plan: KvPlan,
  index: number,
): {
  layer: TransformerInfo["layers"][number];
  cache: LayerCache;
  renamed: Map<string, string>;
} {
  const layer = model.layers[index];
  const cache = layer?.cache;
  if (!layer || !cache) throw new Error(`stage ${plan.stage}: layer ${index} lost its KV cache (checked by the plan)`);
  const renamed = new Map([
    [cache.presentKey, denseName(cache.presentKey)],
    [cache.presentValue, denseName(cache.presentValue)],
  ]);
  return { layer, cache, renamed };
}

/**
 * The graph with one side of a state pair declared, float [batch, ...middle, prunec_layerL_past]
 * as an input (before the layers are built: they read it), or [..., prunec_layerL_cache] as an
 * output (after the stage's splice, which writes it).
 */
export function withState(
  graph: GraphProto,
  side: "input" | "output",
  name: string,
  middle: (number | undefined)[],
  layer: number,
): GraphProto {
  const dims = [batchDim(graph) ?? "batch", ...middle, `prunec_layer${layer}_${side === "input" ? "past" : "cache"}`];
  const declared = valueInfo(name, FLOAT, dims);
  return shallowCopy(
    graph,
    side === "input" ? { input: [...graph.input, declared] } : { output: [...graph.output, declared] },
  );
}

/**
 * float: the layer's dense cache tensor `name` (under /dense), cast only when not float already
 * (onnxruntime drops a float-to-float Cast and warns that the branches' reads of it cannot be renamed).
 */
export function denseFloat(b: NodeBuilder, graph: GraphProto, name: string, label: string): string {
  return elemTypeOf(graph, name) === FLOAT ? denseName(name) : b.op("Cast", [denseName(name)], { to: FLOAT }, label);
}

/**
 * The layer's own readers of its present key/value (plain attention's repeat_kv, shapes) attend
 * this call's dense cache (`renamed`: present → /dense); only the graph outputs (what later calls
 * get) are the evicted one. Returns `replaced` grown by those readers.
 */
export function readDenseCache(
  g: Graph,
  replacedBySite: ReadonlyMap<NodeProto, NodeProto>,
  renamed: ReadonlyMap<string, string>,
): Map<NodeProto, NodeProto> {
  const replaced = new Map(replacedBySite);
  for (const t of renamed.keys())
    for (const reader of g.consumersOf(t)) {
      const base = replaced.get(reader) ?? reader;
      replaced.set(reader, shallowCopy(base, { input: base.input.map((i) => renamed.get(i) ?? i) }));
    }
  return replaced;
}

/** int64 [B,kvH,K']: kept positions (int64, any order) in ascending order: TopK of −position (exact in fp32 below 2^24 entries). */
export function sortedAscending(b: NodeBuilder, positions: string, kept: string): string {
  const [minus] = b.opN("TopK", [b.op("Neg", [b.op("Cast", [positions], { to: FLOAT })]), kept], 2, {
    axis: 2,
    largest: 1,
    sorted: 1,
  });
  return b.op("Cast", [b.op("Neg", [minus!])], { to: INT64 }, "kept_positions");
}

/** int64 [B,kvH,K',D]: each kept position repeated over the head size, for GatherElements on the cache. */
export function keptRows(b: NodeBuilder, ascending: string, keys: string): string {
  return b.op(
    "Expand",
    [
      b.unsqueeze(ascending, [3]),
      b.op("Concat", [b.op("Shape", [ascending]), b.slice(b.op("Shape", [keys]), 0, 3, 4)], { axis: 0 }),
    ],
    {},
    "kept_rows",
  ); // [B,kvH,K',D]
}

/**
 * One layer's part of its stage's splice: the eviction goes right after its present key, and the
 * layer writes its dense cache under `renamed`'s names.
 */
export function layerSplice(
  label: string,
  x: {
    cache: LayerCache;
    renamed: ReadonlyMap<string, string>;
    b: NodeBuilder;
    replaced: ReadonlyMap<NodeProto, NodeProto>;
  },
): LayerSplice {
  const { presentKey, presentValue } = x.cache;
  return {
    label,
    after: presentKey,
    rename: x.renamed,
    nodes: x.b.nodes,
    initializers: x.b.initializers,
    replaced: x.replaced,
    // The present outputs' declared shapes held the dense length.
    staleInfo: new Set([presentKey, presentValue]),
  };
}

/**
 * `--kv-state`: the validity of every slot this call's cache holds, float [B,T] (`slots`: the
 * past's, then 1 for each of the call's entries) and the bias it gives the logits, float [B,1,1,T]
 * (0, or −1e9 on a filler slot).
 */
function allSlots(b: NodeBuilder, past: string, fresh: string): { slots: string; bias: string } {
  const pastShape = b.op("Shape", [past]);
  const ones = b.op(
    "Expand",
    [b.float([1], [], "valid"), b.op("Concat", [b.slice(pastShape, 0, 0, 1), fresh], { axis: 0 })],
    {},
    "call_entries_valid",
  );
  const slots = b.op("Concat", [past, ones], { axis: 1 }, "slots_valid"); // [B,T]
  return { slots, bias: b.unsqueeze(validityBias(b, slots, "filler_bias", "filler_bias"), [1, 2]) };
}

/**
 * int64 [1]: how many entries this call adds to the layer's cache, read from what the layer
 * concatenates (not from the present cache, which the layer computes after its bias).
 */
export function callEntries(
  b: NodeBuilder,
  g: Graph,
  cache: LayerCache,
  layer: { index: number; core?: { anchor: NodeProto } },
): string {
  if (cache.attention === "GroupQueryAttention") {
    const q = layer.core?.anchor.input[0];
    if (!q) throw new Error(`layer ${layer.index}: GroupQueryAttention without a query (checked by the analysis)`);
    return b.slice(b.op("Shape", [q]), 0, 1, 2); // q [B,S,H·D]
  }
  const current = g.producer.get(cache.presentKey)?.input[1];
  if (!current)
    throw new Error(`layer ${layer.index}: the cache's Concat lost its current key (checked by the analysis)`);
  return b.slice(b.op("Shape", [current]), 0, 2, 3); // k [B,kvH,S,D]
}

/** int64 [B]: each example's own K'_b, from its real entries (all N without padding), at most all of them. */
function ownCounts(
  b: NodeBuilder,
  scorer: KvScorer,
  plan: KvPlan,
  layer: number,
  limit: number | undefined,
  real: string,
  table: string | undefined,
): string {
  const counts =
    (plan.budget.kind === "fraction" ? ownBudget(b, b, scorer, real, plan, layer, limit) : undefined) ??
    budget(b, plan, real, table);
  return b.op("Min", [counts, real], {}, "own_counts");
}

/** int64 [B]: each example's real entries (all N without padding). */
function realEntries(b: NodeBuilder, n: string, keys: string, pads: Padding | undefined): string {
  return pads ? pads.real : b.op("Expand", [n, b.slice(b.op("Shape", [keys]), 0, 0, 1)]);
}

/** int64 [1]: the largest of per-example counts [B], at least 1. */
function largest(b: NodeBuilder, counts: string): string {
  return b.op("Max", [b.reduce("ReduceMax", counts, [0], 1), b.int64([1], [1], "at_least_one")], {}, "largest_count");
}

/**
 * With K' slots and each example's own count K'_b [B]: `slots` float [B,K'] (1 from slot K' − K'_b
 * on: the fillers come first) and `sorted` bool [B,1,K'] (the same, per KV head broadcast).
 */
function fillersFirst(b: NodeBuilder, kept: string, counts: string): { slots: string; sorted: string } {
  const slot = b.unsqueeze(b.range(kept, "slots"), [0]); // [1,K']
  const first = b.unsqueeze(b.op("Sub", [kept, counts], {}, "fillers"), [1]); // [B,1]
  const valid = b.op("GreaterOrEqual", [slot, first], {}, "slot_valid"); // [B,K']
  return { slots: b.op("Cast", [valid], { to: FLOAT }, "valid_slots"), sorted: b.unsqueeze(valid, [1]) };
}

/**
 * At prefill the first N columns of the host's mask say which of the N entries are real (left
 * padding puts each example's pads first, in the layer's cache too; below stream stages without a
 * set, the last N: passes/host-mask.ts): `columns` bool [B,1,N],
 * `rows` float [B,1,N,1] (1 on real queries), `count` int64 [B,1,1] (leading pads).
 */
function padding(
  b: NodeBuilder,
  mask: string | undefined,
  n: string,
  columns: HostColumns = "first",
): Padding | undefined {
  if (!mask) return undefined;
  const real = hostColumnsOf(b, mask, n, columns); // bool [B,N]
  const asFloat = b.op("Cast", [real], { to: FLOAT });
  const realCount = b.reduce("ReduceSum", b.op("Cast", [real], { to: INT64 }), [1], 0); // [B]
  return {
    columns: b.unsqueeze(real, [1]),
    rows: b.unsqueeze(asFloat, [1, 3]),
    count: b.unsqueeze(b.op("Sub", [n, realCount], {}, "leading_pads"), [1, 2]),
    real: realCount,
  };
}

/** What `padding` reads from the host's mask at prefill. */
interface Padding {
  /** bool [B,1,N]: real entries. */
  columns: string;
  /** float [B,1,N,1]: 1 on real query rows. */
  rows: string;
  /** int64 [B,1,1]: leading pads. */
  count: string;
  /** int64 [B]: real entries. */
  real: string;
}

/**
 * `of SET` at prefill: `columns` bool [B,1,N] (the set's real entries, from the first N columns
 * of the set's input) and K' int64 [1]: each example keeps its other real entries and the budget
 * of its set entries (at most all of them); K' is the largest example's, as with padding.
 */
function setEntries(
  b: NodeBuilder,
  plan: KvPlan,
  input: string,
  n: string,
  pads: Padding | undefined,
  /** int64 [B]: each example's real entries. */
  real: string,
  table: string | undefined,
): { columns: string; kept: string; perExample: string } {
  const marked = firstColumns(b, input, n); // bool [B,N]
  const columns = pads
    ? b.op("And", [b.unsqueeze(marked, [1]), pads.columns], {}, "set_entries")
    : b.unsqueeze(marked, [1]);
  const inSet = b.reduce("ReduceSum", b.op("Cast", [columns], { to: INT64 }), [1, 2], 0); // [B]
  const ofSet = b.op("Min", [inSet, budget(b, plan, inSet, table)], {}, "set_budget");
  const perExample = b.op("Add", [b.op("Sub", [real, inSet]), ofSet], {}, "kept_per_example"); // [B]
  return { columns, kept: largest(b, perExample), perExample };
}

/** The element type a graph output or value_info declares for `name` (float32 when none does). */
export function elemTypeOf(g: GraphProto, name: string): number {
  const v = [...g.output, ...g.valueInfo].find((x) => x.name === name);
  return v?.type?.value.case === "tensorType" ? v.type.value.value.elemType : FLOAT;
}

/**
 * The most positions the model can encode: the rows of a rotary cos cache (RotaryEmbedding's or
 * GroupQueryAttention's own, or a constant [positions, d] table gathered by a position-ids input,
 * as torch exports rotary), or undefined when the graph has none.
 */
function maxPositions(g: Graph): number | undefined {
  let most: number | undefined;
  for (const n of g.proto.node) {
    const cache =
      n.opType === "RotaryEmbedding"
        ? n.input[2]
        : n.opType === "GroupQueryAttention"
          ? n.input[7]
          : n.opType === "Gather" && n.input[1] === "position_ids" && attrInt(n, "axis", 0) === 0
            ? n.input[0]
            : undefined;
    const t = cache ? g.constantTensor(cache) : undefined;
    // A gathered table is [positions, d]; anything else is not a rotary table.
    if (n.opType === "Gather" && t?.dims.length !== 2) continue;
    const rows = t?.dims[0] !== undefined ? Number(t.dims[0]) : undefined;
    if (rows !== undefined && rows > 0) most = Math.max(most ?? 0, rows);
  }
  return most;
}

/**
 * A press's own budget (PyramidKV's per-layer ramp), int64 [1]: from a per-layer table the press
 * computes here when N is bounded (the table goes to `b`, the stage's initializers), else from the
 * press's float64 graph form; undefined when the press has none.
 */
function ownBudget(
  b: NodeBuilder,
  t: NodeBuilder,
  scorer: KvScorer,
  n: string,
  plan: KvPlan,
  layer: number,
  limit: number | undefined,
): string | undefined {
  if (plan.budget.kind !== "fraction") return undefined;
  const c = plan.budget.value;
  if (scorer.budgetAt && limit !== undefined && limit <= MAX_TABLE) {
    const name = `prunec/stage${plan.stage}/layer${layer}/kv_budget_table`;
    b.initializers.push(
      int64Tensor(
        name,
        tabulate(limit + 1, (m) => scorer.budgetAt!(m, c)),
      ),
    );
    return t.op("Gather", [name, n], { axis: 0 }, "layer_budget");
  }
  return scorer.budget?.(t, n, c);
}

/**
 * A fraction budget's K'(N) table named `name`, for every N the model's rotary tables allow (what
 * the stage's prefill reads instead of float64 ops), or undefined when N is unbounded or too large.
 */
export function fractionTable(plan: KvPlan, g: Graph, name: string): TensorProto | undefined {
  if (plan.budget.kind !== "fraction") return undefined;
  const limit = maxPositions(g);
  return limit !== undefined && limit <= MAX_TABLE ? budgetTable(name, plan.budget.value, limit) : undefined;
}

/** int64 [L+1]: max(1, int(N·c)) for N = 0..L, in float64 as kvpress computes it. */
function budgetTable(name: string, c: number, limit: number): TensorProto {
  return int64Tensor(
    name,
    tabulate(limit + 1, (n) => Math.max(1, Math.trunc(n * c))),
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
