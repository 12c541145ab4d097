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
import { Graph, type GraphProto, type NodeProto } from "../src/ir/graph.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import { refreshFacts } from "../src/analysis/refresh.js";
import { shallowCopy } from "../src/ir/copy.js";
import type { KvPlan } from "../src/plan-types.js";
import { NodeBuilder } from "./builder.js";
import { gqaAttention, gqaLogits } from "./attention/gqa-map.js";
import { rewriteCachedAttention } from "./cached-attention.js";
import { denseName } from "./gather-tokens.js";
import { splice } from "./splice.js";

const FLOAT = 1;
const DOUBLE = 11;
const INT64 = 7;

export interface KvStageResult {
  graph: GraphProto;
  added: NodeProto[];
  /** Per layer: int64 [B, kvH, K'] kept positions (ascending), for --expose-indices. */
  indices: Map<number, string>;
}

export function applyKvStage(proto: GraphProto, dense: TransformerInfo, plan: KvPlan, opset: number): KvStageResult {
  let graph = proto;
  const added: NodeProto[] = [];
  const indices = new Map<number, string>();
  for (const planned of plan.layers) {
    const g = new Graph(graph);
    const model = refreshFacts(dense, g);
    const layer = model.layers[planned.index];
    const core = layer?.core;
    const presentKey = core?.anchor.output[1];
    const presentValue = core?.anchor.output[2];
    if (!layer || !core || !presentKey || !presentValue)
      throw new Error(`stage ${plan.stage}: layer ${planned.index} lost its KV cache (checked by the plan)`);
    const b = new NodeBuilder(`prunec/stage${plan.stage}/${plan.criterion.name}/layer${layer.index}`, opset);
    // The op now writes the dense cache under /dense; the gathered one takes the present names.
    const renamed = new Map([
      [presentKey, denseName(presentKey)],
      [presentValue, denseName(presentValue)],
    ]);
    const attention = gqaAttention(layer, core, `layer ${layer.index}'s GroupQueryAttention`);
    if ("why" in attention) throw new Error(`stage ${plan.stage}: ${attention.why} (checked by the plan)`);
    // The layer reads its own (shorter) cache at later calls: its sequence lengths and key bias
    // follow its past. The press reads the rewired op too (its bias then fits any call's cache).
    const replaced = rewriteCachedAttention(b, model, dense, layer.index, undefined, layer.index);
    const rewired = replaced.get(core.anchor) ?? core.anchor;
    const gqa = {
      ...attention.ok,
      node: shallowCopy(rewired, { output: rewired.output.map((o) => renamed.get(o) ?? o) }),
    };
    const keys = b.op("Cast", [denseName(presentKey)], { to: FLOAT }, "cached_keys"); // [B,kvH,N,D]
    const n = b.slice(b.op("Shape", [keys]), 0, 2, 3); // int64 [1]
    const past = core.anchor.input[3]
      ? b.slice(b.op("Shape", [core.anchor.input[3]]), 0, 2, 3)
      : b.int64([0], [1], "no_past");
    const prefill = b.op("Equal", [past, b.int64([0], [1], "zero")], {}, "is_prefill");
    const prepared = plan.criterion.prepareKv({ model, layer, args: plan.args });
    if ("why" in prepared) throw new Error(`stage ${plan.stage}: ${prepared.why} (checked by the plan)`);
    const own = plan.budget.kind === "fraction" ? prepared.ok.budget?.(b, n, plan.budget.value) : undefined;
    const kept = b.op("Where", [prefill, own ?? budget(b, plan, n), n], {}, "kept_count");
    let probs: string | undefined;
    const scores = prepared.ok.score({
      b,
      args: plan.args,
      gqa,
      keys,
      n,
      kept,
      probabilities: () => (probs ??= b.op("Softmax", [gqaLogits(b, gqa, "all")], { axis: -1 }, "probabilities")),
    });
    const [, best] = b.opN("TopK", [scores, kept], 2, { axis: 2, largest: 1, sorted: 1 }); // [B,kvH,K']
    // Ascending positions: TopK of −position (exact in fp32 below 2^24 entries).
    const [minus] = b.opN("TopK", [b.op("Neg", [b.op("Cast", [best!], { to: FLOAT })]), kept], 2, {
      axis: 2,
      largest: 1,
      sorted: 1,
    });
    const ascending = b.op("Cast", [b.op("Neg", [minus!])], { to: INT64 }, "kept_positions"); // [B,kvH,K']
    indices.set(layer.index, ascending);
    const rows = b.op(
      "Expand",
      [
        b.unsqueeze(ascending, [3]),
        b.op("Concat", [b.op("Shape", [ascending]), b.slice(b.op("Shape", [keys]), 0, 3, 4)], { axis: 0 }),
      ],
      {},
      "kept_rows",
    ); // [B,kvH,K',D]
    b.rename(b.op("GatherElements", [denseName(presentKey), rows], { axis: 2 }, "kept_keys"), presentKey);
    b.rename(b.op("GatherElements", [denseName(presentValue), rows], { axis: 2 }, "kept_values"), presentValue);
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

/** int64 [1]: K' at prefill for N entries (int64 [1]). */
function budget(b: NodeBuilder, plan: KvPlan, n: string): string {
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
