/**
 * A layer's KV cache: which graph outputs carry its present key and value (past + this call's
 * entries, [batch, kv_heads, T, head_size]), which graph inputs its past, and, behind plain
 * attention, which operands of the pre-softmax chain carry the host's mask over the key columns.
 * Two shapes are recognised, the two transformers.js / torch exports write:
 *
 *   com.microsoft.GroupQueryAttention with present key/value outputs (the op concatenates);
 *   plain attention: present = Concat(past, k) on the sequence axis, a graph output, read by the
 *     Q·Kᵀ MatMul through shape-only ops (repeat_kv: Unsqueeze, Expand, Reshape; Transpose), and
 *     likewise the value by P·V.
 *
 * A layer that matches neither gets the reason (`cacheWhy`); prunec never evicts a cache it did not
 * prove is the layer's own. Facts are tensor names only, so they stay true across stages.
 */
import { type Graph, attrInt, type NodeProto } from "../ir/graph.js";
import type { AttentionCore } from "./attention.js";
import type { ShapeMap } from "./dims.js";

export interface LayerCache {
  attention: "GroupQueryAttention" | "matmul-softmax";
  /** Graph outputs: the layer's present key and value [B, kvH, T, D]. */
  presentKey: string;
  presentValue: string;
  /** Graph inputs: the past the present extends (absent when the op takes none). */
  pastKey?: string;
  pastValue?: string;
  kvHeads?: number;
  /**
   * Plain attention: tensors added to (or selected into) the logits between Q·Kᵀ and Softmax
   * whose last axis runs over the key columns (the host's causal + padding mask). When the cache
   * is shorter than the host's mask, the layer reads their last T columns.
   */
  maskOperands?: string[];
}

/** Ops between a cached tensor and the attention MatMul that only move or repeat its entries. */
const SHAPE_ONLY: ReadonlySet<string> = new Set([
  "Transpose",
  "Reshape",
  "Expand",
  "Unsqueeze",
  "Squeeze",
  "Identity",
  "Cast",
]);
/** Ops between Q·Kᵀ and Softmax (attention.ts's PRE_SOFTMAX). */
const PRE_SOFTMAX: ReadonlySet<string> = new Set(["Add", "Div", "Mul", "Cast", "Where", "Sub", "Identity"]);

export type CacheMatch = { ok: LayerCache } | { why: string };

export function layerCache(g: Graph, shapes: ShapeMap, core: AttentionCore | undefined): CacheMatch {
  if (!core) return { why: "the layer has no attention" };
  if (core.kind === "GroupQueryAttention") {
    const n = core.anchor;
    if (!n.output[1] || !n.output[2])
      return { why: `its GroupQueryAttention (node '${n.name}') has no present key/value output` };
    const cache: LayerCache = { attention: "GroupQueryAttention", presentKey: n.output[1], presentValue: n.output[2] };
    if (n.input[3]) cache.pastKey = n.input[3];
    if (n.input[4]) cache.pastValue = n.input[4];
    if (core.kvHeads) cache.kvHeads = core.kvHeads;
    return { ok: cache };
  }
  if (core.kind !== "matmul-softmax" || !core.qk || !core.pv || !core.probs)
    return {
      why: `its attention is ${core.kind}; prunec evicts caches behind GroupQueryAttention and plain MatMul-Softmax attention`,
    };
  const key = concatenatedCache(g, core.qk.input[1], "key", "Q·Kᵀ");
  if ("why" in key) return key;
  const value = concatenatedCache(g, core.pv.input[1], "value", "P·V");
  if ("why" in value) return value;
  const shape = shapes.get(key.ok.present);
  const kvHeads = shape?.[1];
  if (shape?.length !== 4 || typeof kvHeads !== "number")
    return {
      why: `its present key '${key.ok.present}' is not [batch, kv_heads, T, head_size] with a static kv_heads (${shape ? `[${shape.join(", ")}]` : "shape unknown"})`,
    };
  const maskOperands = logitOperands(g, shapes, core);
  if ("why" in maskOperands) return maskOperands;
  return {
    ok: {
      attention: "matmul-softmax",
      presentKey: key.ok.present,
      presentValue: value.ok.present,
      pastKey: key.ok.past,
      pastValue: value.ok.past,
      kvHeads,
      maskOperands: maskOperands.ok,
    },
  };
}

/** Walking up from what the attention MatMul reads to `Concat(past, current)`, a graph output. */
function concatenatedCache(
  g: Graph,
  start: string | undefined,
  what: string,
  matmul: string,
): { ok: { present: string; past: string } } | { why: string } {
  let t = start;
  for (let steps = 0; t && steps < 16; steps++) {
    const n = g.producer.get(t);
    if (!n) break;
    if (n.opType === "Concat") {
      const axis = attrInt(n, "axis", 0);
      const past = n.input[0];
      if (n.input.length !== 2 || (axis !== 2 && axis !== -2))
        return {
          why: `the ${what} ${matmul} reads comes from Concat '${n.name}', not a two-input Concat on axis 2 (past, current)`,
        };
      if (!past || !g.inputs.has(past))
        return {
          why: `the ${what} ${matmul} reads is Concat '${n.name}', whose first input is not a graph input (the past ${what})`,
        };
      if (!g.outputs.has(t))
        return {
          why: `the ${what} ${matmul} reads is Concat '${n.name}', whose output '${t}' is not a graph output (the present ${what})`,
        };
      return { ok: { present: t, past } };
    }
    if (!SHAPE_ONLY.has(n.opType)) break;
    t = n.input[0];
  }
  return {
    why: `no cached ${what}: walking up from what ${matmul} reads (through ${[...SHAPE_ONLY].join(", ")}) found no Concat of a past input and the current ${what}`,
  };
}

/**
 * The nodes between Q·Kᵀ and Softmax, Softmax's side first, each with the input that carries the
 * logits (`chain`); undefined when the logits reach Softmax through another op. The other inputs
 * of these nodes are what the analysis calls the mask operands.
 */
export function logitChain(
  g: Graph,
  qk: NodeProto,
  softmax: NodeProto,
): { node: NodeProto; chain: string }[] | undefined {
  const end = qk.output[0];
  if (!end) return undefined;
  // The tensors the logits flow through: down from Q·Kᵀ through pre-softmax ops.
  const onPath = new Set([end]);
  let frontier = [end];
  for (let depth = 0; depth < 16 && frontier.length; depth++) {
    const next: string[] = [];
    for (const t of frontier)
      for (const c of g.consumersOf(t))
        if (PRE_SOFTMAX.has(c.opType))
          for (const o of c.output)
            if (o && !onPath.has(o)) {
              onPath.add(o);
              next.push(o);
            }
    frontier = next;
  }
  const steps: { node: NodeProto; chain: string }[] = [];
  let t = softmax.input[0];
  for (let k = 0; t && t !== end && k < 16; k++) {
    const n = g.producer.get(t);
    // Where(cond, x, y): the chain is one of x / y; the condition and the other branch are masks.
    const chain = n && PRE_SOFTMAX.has(n.opType) ? n.input.find((i) => i && onPath.has(i)) : undefined;
    if (!n || !chain) return undefined;
    steps.push({ node: n, chain });
    t = chain;
  }
  return t === end ? steps : undefined;
}

/** The activation operands joined to the logits between Q·Kᵀ and Softmax (the mask). */
function logitOperands(g: Graph, shapes: ShapeMap, core: AttentionCore): { ok: string[] } | { why: string } {
  const chain = logitChain(g, core.qk!, core.anchor);
  if (!chain)
    return {
      why: `the logits reach Softmax '${core.anchor.name}' through something other than ${[...PRE_SOFTMAX].join(", ")}`,
    };
  const operands: string[] = [];
  for (const { node: n, chain: c } of chain)
    for (const i of n.input) {
      if (!i || i === c || g.isConstant(i)) continue;
      const rank = shapes.get(i)?.length;
      if (rank === undefined)
        return {
          why: `the shape of '${i}', joined to the logits by '${n.name}', is unknown (is it a mask over the key columns?)`,
        };
      // Scalars (a scale computed from a shape) have no key axis.
      if (rank > 0) operands.push(i);
    }
  return { ok: operands };
}
