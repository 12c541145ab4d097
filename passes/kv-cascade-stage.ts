/**
 * SpAtten's cascade while generating (`during decode keep kv C tokens by spatten`, methods.md §27,
 * the paper's equations): at EVERY call one set of at most C entries stays in all the stage's
 * layers. An entry's score is the attention it has received, summed over every head and query row
 * of every layer of the stage and over every call so far (no decay); the lowest leave, in every
 * layer at once ("pruned tokens disappear from all later layers and steps"). The score travels as
 * ONE state pair for the stage:
 *
 *   past_key_values.stageN.prunec_score  float [B, P]  (an empty [B, 0] at the first call)
 *   present.stageN.prunec_score          float [B, K'] (what the next call gets back)
 *
 * At a call with S new entries (T = P + S in every layer's dense cache):
 *
 *   r_l[b,j] = Σ_h Σ_i P_l[b,h,i,j]   (layer l's attention received, the press's score; pad rows 0)
 *   s        = [s_prev, 0…0] + Σ_l r_l;  pads (host-mask column 0 when they arrive) −1, kept −1
 *   kept     = the min(T, C) best of s, ties to the later entry, ascending   → int64 [B, K']
 *   cache_l  = GatherElements(present_l key/value, kept) for every layer l
 *
 * Each layer attends over its full cache before the eviction, as at every decode-time stage.
 *
 * Pre:  plan validated by src/plan-kv.ts (a count budget; the press's prepareKv ok on every layer;
 *       no stream stage above, no other KV stage on these layers).
 * Post: every layer's present key and value and the stage's score hold min(T, C) entries, the same
 *       positions in every layer and KV head.
 */
import { Graph, type GraphProto, type NodeProto } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import { refreshFacts } from "../src/analysis/refresh.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import type { KvPlan } from "../src/plan-types.js";
import { batchDim, valueInfo } from "../src/ir/value-info.js";
import { NodeBuilder } from "./builder.js";
import { evictionSite } from "./kv/site.js";
import { denseName } from "./gather-tokens.js";
import { callEntries, denseFloat, keptRows, readDenseCache, type KvStageResult } from "./kv-stage.js";
import { bestLatestFirst } from "./kv-decode-stage.js";
import { attentionMask, lastColumns } from "./host-mask.js";
import { splice } from "./splice.js";

const FLOAT = 1;

/** The state pair of a cascade stage's shared scores. */
export function cascadeState(stage: number): { past: string; present: string } {
  return { past: `past_key_values.stage${stage}.prunec_score`, present: `present.stage${stage}.prunec_score` };
}

export function applyKvCascadeStage(
  proto: GraphProto,
  dense: TransformerInfo,
  plan: KvPlan,
  opset: number,
  /** Output each call's kept slots per layer (--expose-indices). */
  expose: boolean,
): KvStageResult {
  if (plan.decode?.kind !== "cascade") throw new Error(`stage ${plan.stage}: not a cascade (checked by the plan)`);
  const budget = plan.decode.budget;
  const state = cascadeState(plan.stage);
  const batch = batchDim(proto) ?? "batch";
  const graph = shallowCopy(proto, {
    input: [...proto.input, valueInfo(state.past, FLOAT, [batch, `prunec_stage${plan.stage}_past`])],
  });
  const g = Graph.of(graph);
  const model = refreshFacts(dense, g);
  const hostMask = attentionMask(graph);
  const b = new NodeBuilder(`prunec/stage${plan.stage}/${plan.criterion.name}/decode`, opset);
  // Every layer's renames and rewired nodes, applied in one splice (layers are disjoint).
  const renamed = new Map<string, string>();
  const replaced = new Map<NodeProto, NodeProto>();
  const layers: { presentKey: string; presentValue: string; keys: string; index: number }[] = [];
  let total: string | undefined;
  let t: string | undefined;
  let s: string | undefined;
  let fresh: string | undefined;
  for (const planned of plan.layers) {
    const layer = model.layers[planned.index];
    const cache = layer?.cache;
    if (!layer || !cache)
      throw new Error(`stage ${plan.stage}: layer ${planned.index} lost its KV cache (checked by the plan)`);
    const c = new NodeBuilder(`${b.prefix}/layer${layer.index}`, opset);
    const site = evictionSite(c, g, model, dense, layer, cache, "last");
    const own = new Map([
      [cache.presentKey, denseName(cache.presentKey)],
      [cache.presentValue, denseName(cache.presentValue)],
    ]);
    for (const [k, v] of readDenseCache(g, site.replaced, own)) replaced.set(k, v);
    for (const [k, v] of own) renamed.set(k, v);
    const keys = denseFloat(c, graph, cache.presentKey, "cached_keys");
    // T and S are the same in every layer (one set of entries): read from the first.
    t ??= c.slice(c.op("Shape", [keys]), 0, 2, 3);
    s ??= callEntries(c, g, cache, layer);
    // This call's entries: real unless the host's mask column says pad (its last S columns).
    fresh ??= hostMask ? c.op("Cast", [lastColumns(c, hostMask, s)], { to: FLOAT }, "new_entries_real") : undefined; // [B,S]
    const prepared = plan.criterion.prepareKv({ model, graph: g, layer, args: plan.args });
    if ("why" in prepared) throw new Error(`stage ${plan.stage}: ${prepared.why} (checked by the plan)`);
    const realRows = fresh ? c.unsqueeze(fresh, [1, 3]) : undefined; // [B,1,S,1]
    let probs: string | undefined;
    let keptConst: string | undefined;
    let noPadding: string | undefined;
    const received = prepared.ok.score({
      b: c,
      args: plan.args,
      heads: site.heads,
      kvHeads: site.kvHeads,
      keys,
      values: () => denseFloat(c, graph, cache.presentValue, "cached_values"),
      n: t,
      // Read by presses that need them (a getter: no unused initializer otherwise).
      get kept() {
        keptConst ??= c.int64([budget], [1, 1, 1], "budget");
        return keptConst;
      },
      get padding() {
        noPadding ??= c.int64([0], [1, 1, 1], "no_padding");
        return noPadding;
      },
      probabilities: () => {
        probs ??= site.probabilities(c);
        return realRows ? c.op("Mul", [probs, realRows], {}, "real_query_rows") : probs;
      },
      windowProbabilities: () => {
        throw new Error(`stage ${plan.stage}: ${plan.criterion.name} reads every query row`);
      },
    }); // [B,kvH,T], the same for every KV head
    const layerScore = c.squeeze(c.slice(received, 1, 0, 1), [1]); // [B,T]
    total = total ? c.op("Add", [total, layerScore], {}, "over_layers") : layerScore;
    layers.push({ presentKey: cache.presentKey, presentValue: cache.presentValue, keys, index: layer.index });
    b.nodes.push(...c.nodes);
    b.initializers.push(...c.initializers);
  }
  if (!total || !t || !s) throw new Error(`stage ${plan.stage}: no layer to evict (checked by the plan)`);

  // The carried scores, then 0 for the new entries; pads −1 from the call that brought them.
  const newZeros = b.op(
    "ConstantOfShape",
    [b.op("Concat", [b.slice(b.op("Shape", [total]), 0, 0, 1), s], { axis: 0 })],
    {},
    "new_entries",
  ); // [B,S]
  let scores = b.op("Add", [b.op("Concat", [state.past, newZeros], { axis: 1 }), total], {}, "accumulated"); // [B,T]
  const wasPad = b.op("Less", [state.past, b.float([0], [], "zero")], {}, "was_pad");
  const newPad = fresh
    ? b.op("Less", [fresh, b.float([0.5], [], "half")], {}, "new_pad")
    : b.op("Cast", [newZeros], { to: 9 }, "no_new_pad");
  scores = b.op(
    "Where",
    [b.op("Concat", [wasPad, newPad], { axis: 1 }), b.float([-1], [], "pad_score"), scores],
    {},
    "pads_below",
  ); // [B,T]
  const kept = b.op("Min", [t, b.int64([budget], [1], "budget")], {}, "kept_count");
  const slots = b.squeeze(bestLatestFirst(b, b.unsqueeze(scores, [1]), t, kept), [1]); // [B,K']
  b.op("GatherElements", [scores, slots], { axis: 1 }, "kept_scores");
  b.nodes.at(-1)!.output[0] = state.present;
  const indices = new Map<number, string>();
  for (const l of layers) {
    const c = new NodeBuilder(`${b.prefix}/layer${l.index}/evict`, opset);
    // The same slots in every KV head: [B,kvH,K'].
    const perHead = c.op(
      "Expand",
      [
        c.unsqueeze(slots, [1]),
        c.op("Concat", [c.slice(c.op("Shape", [l.keys]), 0, 0, 2), c.op("Shape", [kept])], { axis: 0 }),
      ],
      {},
      "every_kv_head",
    );
    const rows = keptRows(c, perHead, l.keys);
    c.op("GatherElements", [denseName(l.presentKey), rows], { axis: 2 }, "kept_keys");
    c.nodes.at(-1)!.output[0] = l.presentKey;
    c.op("GatherElements", [denseName(l.presentValue), rows], { axis: 2 }, "kept_values");
    c.nodes.at(-1)!.output[0] = l.presentValue;
    if (expose) indices.set(l.index, perHead);
    b.nodes.push(...c.nodes);
    b.initializers.push(...c.initializers);
  }
  const spliced = splice(graph, {
    label: `stage ${plan.stage} (during decode ${plan.text} by ${plan.criterion.name}, layers ${layers.map((l) => l.index).join(", ")})`,
    // Renames happen at the producers; the nodes' final place comes from the topological sort.
    after: layers[0]!.presentKey,
    rename: renamed,
    nodes: b.nodes,
    initializers: b.initializers,
    replaced,
    // The present outputs' declared shapes held the dense length.
    staleInfo: new Set(layers.flatMap((l) => [l.presentKey, l.presentValue])),
  });
  const out = shallowCopy(spliced, {
    output: [...spliced.output, valueInfo(state.present, FLOAT, [batch, `prunec_stage${plan.stage}_cache`])],
  });
  return { graph: out, added: b.nodes, indices, states: [] };
}
