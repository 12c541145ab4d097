/**
 * A FLOPs model of the transformer layers, for "ideal speedup" figures: per layer, the work that
 * scales with the token count N (every weight matmul: 2·in·out per token) and the work that scales
 * with N² (Q·Kᵀ and P·V: 2·2·N²·hidden). Work outside the layers (patch embedding, head) is counted
 * once, from the dense shapes, as the same for dense and pruned models: it happens before the first
 * stage (embedding) or, for a CLS classifier, on one token (head).
 */
import type { Graph, NodeProto } from "../ir/graph.js";
import { attrInt, dataInputs } from "../ir/graph.js";
import type { TransformerInfo } from "./transformer.js";
import type { ShapeMap } from "./dims.js";

export interface LayerCost {
  layer: number;
  /** FLOPs per token of the layer's weight matmuls. */
  perToken: number;
  /** FLOPs per token pair of attention (Q·Kᵀ and P·V). */
  perPair: number;
}

function weightFlops(g: Graph, n: NodeProto): number {
  const weightDims = (name: string | undefined) => (name ? g.constantTensor(name)?.dims.map(Number) : undefined);
  switch (n.opType) {
    case "MatMul":
    case "MatMulInteger": {
      const w = weightDims(n.input[1]);
      return w && w.length === 2 ? 2 * w[0]! * w[1]! : 0;
    }
    case "Gemm": {
      const w = weightDims(n.input[1]);
      return w && w.length === 2 ? 2 * w[0]! * w[1]! : 0;
    }
    case "MatMulNBits":
      return 2 * attrInt(n, "K", 0) * attrInt(n, "N", 0);
    default:
      return 0;
  }
}

export function layerCosts(g: Graph, info: TransformerInfo): LayerCost[] {
  return info.layers.map((l) => {
    const hidden = info.hidden ?? 0;
    if (!l.residual) return { layer: l.index, perToken: 0, perPair: 0 };
    let perToken = 0;
    for (const n of between(g, l.residual.input, l.residual.output)) perToken += weightFlops(g, n);
    return { layer: l.index, perToken, perPair: 4 * hidden };
  });
}

/**
 * The nodes computed from `from` that `to` depends on: descendants(from) ∩ ancestors(to), found
 * between the two producers' positions in topological order (nodes outside that window cannot be
 * in both), so all layers together cost about one pass over the graph, not one per layer.
 */
function between(g: Graph, from: string, to: string): NodeProto[] {
  const top = g.producer.get(from);
  const bottom = g.producer.get(to);
  if (!bottom) return [];
  const lo = top ? g.position(top) : -1;
  const hi = g.position(bottom);
  const up = new Set<NodeProto>();
  const stack: string[] = [to];
  while (stack.length) {
    const p = g.producer.get(stack.pop()!);
    if (!p || up.has(p) || g.position(p) <= lo) continue;
    up.add(p);
    for (const i of dataInputs(p)) if (i) stack.push(i);
  }
  const found: NodeProto[] = [];
  const down = new Set<NodeProto>();
  const queue = [...g.consumersOf(from)];
  while (queue.length) {
    const n = queue.pop()!;
    if (down.has(n) || g.position(n) > hi) continue;
    down.add(n);
    if (up.has(n)) found.push(n);
    for (const o of n.output) for (const c of g.consumersOf(o)) queue.push(c);
  }
  return found;
}

/** FLOPs of one layer for one example processing `n` tokens. */
export function layerFlops(c: LayerCost, n: number): number {
  return c.perToken * n + c.perPair * n * n;
}

/** Total layer FLOPs for one example given the tokens each layer processes. */
export function totalFlops(costs: LayerCost[], tokens: number[]): number {
  return costs.reduce((sum, c, i) => sum + layerFlops(c, tokens[i] ?? 0), 0);
}

/** Elements per example of a tensor (the batch axis counts 1); undefined if a size is symbolic. */
function perExample(shapes: ShapeMap, t: string | undefined, batchAxis: number | undefined): number | undefined {
  const s = t ? shapes.get(t) : undefined;
  if (!s) return undefined;
  let n = 1;
  for (let i = 0; i < s.length; i++) {
    const d = s[i]!;
    if (i === batchAxis) continue;
    if (typeof d !== "number") return undefined;
    n *= d;
  }
  return n;
}

/** FLOPs per example of the Conv and weight-matmul nodes outside the transformer layers. */
export function outsideFlops(g: Graph, info: TransformerInfo): number {
  const first = info.layers.find((l) => l.residual)?.residual;
  const last = [...info.layers].reverse().find((l) => l.residual)?.residual;
  if (!first || !last) return 0;
  const outside = [...g.ancestors(first.input), ...g.descendants(last.output)];
  let total = 0;
  for (const n of outside) {
    const outElems = perExample(info.shapes, n.output[0], info.batchAxis);
    if (outElems === undefined) continue;
    if (n.opType === "Conv") {
      const w = n.input[1] ? g.constantTensor(n.input[1])?.dims.map(Number) : undefined;
      if (w) total += 2 * outElems * w.slice(1).reduce((a, b) => a * b, 1);
    } else {
      const perRow = weightFlops(g, n); // 2·in·out
      const w = n.input[1] ? g.constantTensor(n.input[1])?.dims.map(Number) : undefined;
      const out =
        n.opType === "MatMulNBits"
          ? attrInt(n, "N", 0)
          : w
            ? n.opType === "Gemm" && attrInt(n, "transB", 0)
              ? w[0]!
              : w[1]!
            : 0;
      if (perRow && out) total += perRow * (outElems / out);
    }
  }
  return total;
}
