/**
 * A decode-time KV-cache stage (`during decode keep kv C tokens by h2o(recent) | a2sf(forget, recent)`):
 * each planned layer keeps at most C entries per KV head at EVERY call, prefill and decode steps,
 * scoring entries by the attention they have received, decayed (methods.md §25 H2O, §26 A2SF's
 * decode-time form; `by streaming(sinks)` ranks by position instead and carries nothing: see
 * positionalScores). The scores travel with the cache as a state pair:
 *
 *   past_key_values.L.prunec_score  float [B, kvH, P]  (an empty [B, kvH, 0] at the first call)
 *   present.L.prunec_score          float [B, kvH, K'] (what the next call gets back)
 *
 * At a call with S new entries (T = P + S in the dense present cache) and causal probabilities
 * P[b,h,i,j] of its S queries (pad query rows zero):
 *
 *   a[b,g,j] = Σ_{h ∈ group g} Σ_i λ^(S−1−i)·P[b,h,i,j]              (A2SF's row weights; H2O: λ = 1)
 *   s        = [λ^S·s_prev, 0…0] + a                                  (s_j(t) = Σ_{i≤t} λ^(t−i)·P[i,j])
 *   pads     : an entry whose host-mask column is 0 scores −1, and keeps −1 (scores are ≥ 0 else)
 *   kept     = the min(T, C) best of s with the last `recent` entries forced, ties to the LATER entry
 *              (A2SF drops the first minimum), ascending;
 *   cache    = GatherElements(present key/value/score, kept).
 *
 * The op attends over its full cache (past + new) before the eviction, as both references do. In a
 * left-padded batch each example keeps what it keeps alone: its pads score below every real entry,
 * leave first, and while the example has fewer real entries than C the ones it keeps sit first in
 * the cache, under the host mask's pad columns (the layer reads the mask's last T columns).
 *
 * Pre:  plan validated by src/plan-kv.ts (a count budget, a press with a decode form, no stream stage
 *       above the layer, no other KV stage on it).
 * Post: each layer's present key, value and score hold min(T, C) entries per KV head.
 */
import { Graph, type GraphProto, type NodeProto } from "../src/ir/graph.js";
import type { LayerCache } from "../src/analysis/kv-cache.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import type { KvPlan } from "../src/plan-types.js";
import { NodeBuilder } from "./builder.js";
import { evictionSite } from "./kv/site.js";
import { validityBias } from "./front-padding.js";
import { denseName } from "./gather-tokens.js";
import { attentionMask, firstColumns, lastColumns, type HostColumns } from "./host-mask.js";
import { spliceLayers, type LayerSplice } from "./splice.js";
import {
  branchIf,
  callEntries,
  fractionTable,
  pressSelection,
  denseFloat,
  evictedLayer,
  keptRows,
  readDenseCache,
  sortedAscending,
  layerSplice,
  stageFacts,
  withState,
  type KvStageResult,
  type KvState,
} from "./kv-stage.js";

const FLOAT = 1;
const INT64 = 7;

/** The state pair of layer `l`'s decode-time scores. */
export function scoreState(l: number): KvState {
  return { layer: l, past: `past_key_values.${l}.prunec_score`, present: `present.${l}.prunec_score` };
}

export function applyKvDecodeStage(
  proto: GraphProto,
  dense: TransformerInfo,
  plan: KvPlan,
  opset: number,
  /** Output each call's kept slots per layer (--expose-indices). */
  expose: boolean,
  /** Per layer, the host-mask columns its cache lines up with below stream stages (passes/host-mask.ts). */
  streamAbove: (layer: number) => HostColumns | undefined = () => undefined,
): KvStageResult {
  const decode = plan.decode;
  if (!decode) throw new Error(`stage ${plan.stage}: not a decode-time stage (checked by the plan)`);
  const added: NodeProto[] = [];
  const indices = new Map<number, string>();
  const hostMask = attentionMask(proto);
  // A composed prefill stage's K'(N) table, added with the first layer that reads it.
  const press = plan.prefill;
  const tableName = press && `prunec/stage${plan.stage}/prefill_press_budget_table`;
  const table = press && tableName ? fractionTable(press.plan, Graph.of(proto), tableName) : undefined;
  let tableAdded = false;
  // Only accumulated attention travels between calls; StreamingLLM's rule reads positions.
  const states = new Map<number, KvState>();
  let graph = proto;
  if (decode.kind === "received")
    for (const planned of plan.layers) {
      const state = scoreState(planned.index);
      graph = withState(graph, "input", state.past, [planned.cache?.kvHeads], planned.index);
      states.set(planned.index, state);
    }
  // Every layer is built against the stage's input graph and spliced at once (spliceLayers).
  const { g, model } = stageFacts(graph, dense);
  const parts: LayerSplice[] = [];
  for (const planned of plan.layers) {
    const state = states.get(planned.index);
    const { layer, cache, renamed } = evictedLayer(model, plan, planned.index);
    const { presentKey, presentValue } = cache;
    const b = new NodeBuilder(`prunec/stage${plan.stage}/${plan.criterion.name}/decode/layer${layer.index}`, opset);
    // Below a stream stage the cache no longer lines up with the host's mask: the layer's pads are
    // its leading ones at the prefill (passes/host-mask.ts says which columns) and, later, the slots
    // whose carried score is −1. They are masked through a slot bias instead of the host's columns.
    const columns = streamAbove(layer.index);
    const below = columns && state ? padSlots(b, g, cache, layer, hostMask, state.past, columns) : undefined;
    const site = evictionSite(b, g, model, dense, layer, cache, below ? "none" : "last", below?.bias);
    const replaced = readDenseCache(g, site.replaced, renamed);
    const { heads, kvHeads } = site;
    const keys = denseFloat(b, graph, presentKey, "cached_keys");
    const t = b.slice(b.op("Shape", [keys]), 0, 2, 3); // int64 [1]: T
    const s = below?.s ?? callEntries(b, g, cache, layer); // int64 [1]: S
    // With a prefill stage composed on this layer: what its press keeps at the prefill competes.
    let allowed: { mask: string; count: string } | undefined;
    if (press?.layers.includes(layer.index)) {
      const then = new NodeBuilder(`${b.prefix}/prefill_press`, opset);
      const { best, kept: pressKept } = pressSelection(then, {
        plan: press.plan,
        model,
        g,
        layer,
        site,
        graph,
        keys,
        presentValue,
        n: t,
        hostMask,
        columns,
        table: table?.name,
      });
      const slots = then.slice(then.op("Shape", [keys]), 0, 0, 3); // [B,kvH,T]
      const chosen = then.op(
        "ScatterElements",
        [
          then.op("ConstantOfShape", [slots], {}, "not_kept"),
          best,
          then.op("Expand", [then.float([1], [], "kept"), then.op("Shape", [best])]),
        ],
        { axis: 2 },
        "press_kept",
      );
      const all = new NodeBuilder(`${b.prefix}/no_press`, opset);
      const every = all.op(
        "Expand",
        [all.float([1], [], "every"), all.slice(all.op("Shape", [keys]), 0, 0, 3)],
        {},
        "every_entry",
      );
      const past = cache.pastKey ? b.slice(b.op("Shape", [cache.pastKey]), 0, 2, 3) : b.int64([0], [1], "no_past");
      const isPrefill = b.op(
        "And",
        [b.op("Equal", [past, b.int64([0], [1], "zero")]), b.op("Greater", [t, b.int64([0], [1], "none")])],
        {},
        "prefill_now",
      );
      const { outs } = branchIf(
        b,
        isPrefill,
        { builder: then, outputs: [chosen, pressKept], name: "prefill_press" },
        { builder: all, outputs: [every, all.op("Identity", [t], {}, "every_count")], name: "no_press" },
        [
          [FLOAT, 3],
          [INT64, 1],
        ],
      );
      allowed = { mask: outs[0]!, count: outs[1]! };
      if (table && !tableAdded) {
        b.initializers.push(table);
        tableAdded = true;
      }
    }
    let scored: Scored;
    if (decode.kind === "received") {
      if (!state) throw new Error(`layer ${layer.index}: accumulated scores without their state pair`);
      const { forget, recent } = decode;
      scored = receivedScores(b, {
        site,
        hostMask,
        t,
        s,
        heads,
        kvHeads,
        forget,
        recent,
        past: state.past,
        allowed: allowed?.mask,
        fresh: below?.fresh,
      });
    } else if (decode.kind === "positional") scored = positionalScores(b, { hostMask, t, keys, sinks: decode.sinks });
    else throw new Error(`stage ${plan.stage}: a cascade is lowered by passes/kv-cascade-stage.ts`);
    const forced = scored.scores;
    // min(T, C) per KV head, ties to the later entry: TopK of the reversed slots, mapped back.
    let kept = b.op("Min", [t, b.int64([decode.budget], [1], "budget")], {}, "kept_count");
    if (allowed) kept = b.op("Min", [kept, allowed.count], {}, "within_press");
    const ascending = bestLatestFirst(b, forced, t, kept); // [B,kvH,K']
    const rows = keptRows(b, ascending, keys);
    b.op("GatherElements", [denseName(presentKey), rows], { axis: 2 }, "kept_keys");
    b.nodes.at(-1)!.output[0] = presentKey;
    b.op("GatherElements", [denseName(presentValue), rows], { axis: 2 }, "kept_values");
    b.nodes.at(-1)!.output[0] = presentValue;
    if (state) {
      b.op("GatherElements", [scored.carried, ascending], { axis: 2 }, "kept_scores");
      b.nodes.at(-1)!.output[0] = state.present;
    }
    if (expose) indices.set(layer.index, ascending);
    parts.push(
      layerSplice(`stage ${plan.stage} (during decode ${plan.text} by ${plan.criterion.name}, layer ${layer.index})`, {
        cache,
        renamed,
        b,
        replaced,
      }),
    );
    added.push(...b.nodes);
  }
  graph = spliceLayers(graph, `stage ${plan.stage} (during decode ${plan.text} by ${plan.criterion.name})`, parts);
  for (const planned of plan.layers) {
    const state = states.get(planned.index);
    if (state) graph = withState(graph, "output", state.present, [planned.cache?.kvHeads], planned.index);
  }
  return { graph, added, indices, states: [...states.values()] };
}

/**
 * int64 [B,·,K']: the slots of the `kept` (int64 [1]) best of `scores` [B,·,T] along axis 2, ties
 * to the later slot (A2SF drops the first minimum): TopK of the reversed slots, mapped back, ascending.
 */
export function bestLatestFirst(b: NodeBuilder, scores: string, t: string, kept: string): string {
  const reversed = b.op(
    "Slice",
    [
      scores,
      b.int64([-1], [1], "last"),
      b.int64([Number.MIN_SAFE_INTEGER], [1], "before_first"),
      b.int64([2], [1], "slot_axis"),
      b.int64([-1], [1], "backwards"),
    ],
    {},
    "latest_first",
  );
  const [, best] = b.opN("TopK", [reversed, kept], 2, { axis: 2, largest: 1, sorted: 1 });
  const slotsKept = b.op("Sub", [b.op("Sub", [t, b.int64([1], [1], "one_slot")]), best!], {}, "kept_slots");
  return sortedAscending(b, slotsKept, kept);
}

interface Scored {
  /** float [B,kvH,T]: what TopK ranks (forced entries highest, pads lowest). */
  scores: string;
  /** float [B,kvH,T]: what the next call gets back for the kept entries (accumulated attention, pads −1). */
  carried: string;
}

/** H2O / A2SF: accumulated received attention, decayed by λ per query step; the last `recent` forced. */
function receivedScores(
  b: NodeBuilder,
  x: {
    site: { probabilities(t: NodeBuilder): string };
    hostMask: string | undefined;
    t: string;
    s: string;
    heads: number;
    kvHeads: number;
    forget: number;
    recent: number;
    past: string;
    /**
     * float [B,kvH,T]: 1 on the entries that may stay (a composed prefill press's at the prefill,
     * every one else); the recent window is the last `recent` of them, the rest rank below pads.
     */
    allowed?: string | undefined;
    /** float [B,S]: which of this call's entries are real, when the host mask's last columns do not say (`padSlots`). */
    fresh?: string | undefined;
  },
): Scored {
  const { s, t, heads, kvHeads, forget } = x;
  // This call's entries: real unless the host's mask column says pad (its last S columns).
  const fresh =
    x.fresh ??
    (x.hostMask ? b.op("Cast", [lastColumns(b, x.hostMask, s)], { to: FLOAT }, "new_entries_real") : undefined); // [B,S]
  // Received attention: the S query rows weighted λ^(S−1−i) (pad rows zero), summed over rows and the group.
  const probs = x.site.probabilities(b); // [B,H,S,T]
  const sFloat = b.op("Cast", [s], { to: FLOAT });
  const ages = b.op(
    "Sub",
    [b.op("Sub", [sFloat, b.float([1], [1], "one")]), b.op("Cast", [b.range(s, "rows")], { to: FLOAT })],
    {},
    "row_ages",
  ); // [S]
  let weights = b.op("Pow", [b.float([forget], [], "forget"), ages], {}, "row_weights"); // [S]
  weights = b.unsqueeze(weights, [0, 1, 3]); // [1,1,S,1]
  if (fresh) weights = b.op("Mul", [weights, b.unsqueeze(fresh, [1, 3])], {}, "real_rows"); // [B,1,S,1]
  const received = b.reduce("ReduceSum", b.op("Mul", [probs, weights]), [2], 0); // [B,H,T]
  const grouped = b.reduce(
    "ReduceSum",
    b.op("Reshape", [received, b.int64([0, kvHeads, heads / kvHeads, -1], [4], "groups")]),
    [2],
    0,
  ); // [B,kvH,T]
  // The carried scores, decayed by λ^S, then 0 for the new entries.
  const previous = b.op("Mul", [x.past, b.op("Pow", [b.float([forget], [], "forget_again"), sFloat])], {}, "decayed"); // [B,kvH,P]
  const newZeros = b.op(
    "ConstantOfShape",
    [b.op("Concat", [b.slice(b.op("Shape", [grouped]), 0, 0, 2), s], { axis: 0 })],
    {},
    "new_entries",
  ); // [B,kvH,S] of 0
  let scores = b.op("Add", [b.op("Concat", [previous, newZeros], { axis: 2 }), grouped], {}, "accumulated");
  // Pads: −1 from the call that brought them, kept at −1.
  const wasPad = b.op("Less", [x.past, b.float([0], [], "zero")], {}, "was_pad"); // [B,kvH,P]
  const newPad = fresh
    ? b.op(
        "Expand",
        [b.unsqueeze(b.op("Less", [fresh, b.float([0.5], [], "half")]), [1]), b.op("Shape", [newZeros])],
        {},
        "new_pad",
      )
    : b.op("Cast", [newZeros], { to: 9 }, "no_new_pad");
  scores = b.op(
    "Where",
    [b.op("Concat", [wasPad, newPad], { axis: 2 }), b.float([-1], [], "pad_score"), scores],
    {},
    "pads_below",
  );
  if (x.allowed) {
    // The last `recent` of the entries that may stay are kept whatever their score; the others leave first.
    const may = b.op("Greater", [x.allowed, b.float([0.5], [], "half")], {}, "may_stay");
    const fromEnd = b.op("CumSum", [x.allowed, b.int64([2], [], "slot_axis")], { reverse: 1 }, "allowed_from_end");
    const recentOnes = b.op(
      "And",
      [may, b.op("LessOrEqual", [fromEnd, b.float([x.recent], [], "recent")])],
      {},
      "recent_allowed",
    );
    const forced = b.op(
      "Where",
      [recentOnes, b.float([3e38], [], "always"), b.op("Where", [may, scores, b.float([-2], [], "not_kept")])],
      {},
      "recent_kept",
    );
    return { scores: forced, carried: scores };
  }
  // The last `recent` entries are kept whatever their score.
  const position = b.op("Cast", [b.range(t, "slots")], { to: FLOAT }); // [T]
  const recentFrom = b.op("Cast", [b.op("Sub", [t, b.int64([x.recent], [1], "recent")])], { to: FLOAT });
  const forced = b.op(
    "Where",
    [b.op("GreaterOrEqual", [position, recentFrom]), b.float([3e38], [], "always"), scores],
    {},
    "recent_kept",
  );
  return { scores: forced, carried: scores };
}

/**
 * StreamingLLM: the example's first `sinks` real entries, then the most recent. A slot's pad status
 * is the host mask's column under it (the cache's T slots sit under the mask's last T columns: pads
 * leave first and the ones kept stay in front), so nothing is carried between calls.
 */
function positionalScores(
  b: NodeBuilder,
  x: { hostMask: string | undefined; t: string; keys: string; sinks: number },
): Scored {
  const slot = b.op("Cast", [b.range(x.t, "slots")], { to: FLOAT }); // [T]: later = higher
  if (!x.hostMask) {
    const sink = b.op("Less", [slot, b.float([x.sinks], [], "sinks")], {}, "sink_slots");
    const scores = b.op("Where", [sink, b.float([3e38], [], "always"), slot], {}, "sinks_then_recent"); // [T]
    const every = b.op("Expand", [scores, b.slice(b.op("Shape", [x.keys]), 0, 0, 3)], {}, "every_head");
    return { scores: every, carried: every };
  }
  const real = b.op("Cast", [lastColumns(b, x.hostMask, x.t)], { to: FLOAT }, "slot_real"); // [B,T]
  const rank = b.op("Sub", [b.op("CumSum", [real, b.int64([1], [], "slot_axis")]), real], {}, "real_before"); // [B,T]
  const sink = b.op(
    "And",
    [b.op("Greater", [real, b.float([0.5], [], "half")]), b.op("Less", [rank, b.float([x.sinks], [], "sinks")])],
    {},
    "sink_slots",
  );
  let scores = b.op("Where", [sink, b.float([3e38], [], "always"), b.op("Mul", [real, slot])], {}, "sinks_then_recent");
  scores = b.op(
    "Where",
    [b.op("Less", [real, b.float([0.5], [], "half_again")]), b.float([-1], [], "pad_score"), scores],
    {},
    "pads_below",
  ); // [B,T]
  const every = b.op("Expand", [b.unsqueeze(scores, [1]), b.slice(b.op("Shape", [x.keys]), 0, 0, 3)], {}, "every_head");
  return { scores: every, carried: every };
}

/**
 * Below a stream stage: which of this call's S entries are real, float [B,S] (at the prefill the
 * host mask's columns that line up with the stream stages' kept rows, `columns`, passes/host-mask.ts;
 * at a decode step its last S), and the slot bias float [B,1,1,T] the layer attends with: −1e9 on a pad, i.e. a past
 * slot whose carried score is −1 (the same in every KV head: pads rank last in each, and each
 * keeps the same count) or a new pad entry.
 */
function padSlots(
  b: NodeBuilder,
  g: Graph,
  cache: LayerCache,
  layer: TransformerInfo["layers"][number],
  hostMask: string | undefined,
  past: string,
  columns: HostColumns,
): { fresh: string | undefined; bias: string; s: string } {
  const s = callEntries(b, g, cache, layer);
  let fresh: string | undefined;
  if (hostMask) {
    const asFloat = (t: string) => b.op("Cast", [t], { to: FLOAT });
    if (columns === "first") {
      const pastLength = b.slice(b.op("Shape", [past]), 0, 2, 3);
      const prefill = b.op("Equal", [pastLength, b.int64([0], [1], "no_past")], {}, "is_prefill");
      const first = asFloat(firstColumns(b, hostMask, s));
      fresh = b.op("Where", [prefill, first, asFloat(lastColumns(b, hostMask, s))], {}, "new_entries_real");
    } else {
      // Below stages without a set the prefill's entries line up with the last columns too.
      fresh = asFloat(lastColumns(b, hostMask, s));
    }
  }
  const pastReal = b.op(
    "Cast",
    [b.op("GreaterOrEqual", [b.squeeze(b.slice(past, 1, 0, 1), [1]), b.float([0], [], "zero")])],
    { to: FLOAT },
    "past_real",
  ); // [B,P]
  const newReal =
    fresh ??
    b.op(
      "Expand",
      [b.float([1], [], "real"), b.op("Concat", [b.slice(b.op("Shape", [past]), 0, 0, 1), s], { axis: 0 })],
      {},
      "all_real",
    );
  const real = b.op("Concat", [pastReal, newReal], { axis: 1 }, "slots_real"); // [B,T]
  return { fresh, bias: b.unsqueeze(validityBias(b, real, "pad_bias", "pad_slots"), [1, 2]), s };
}
