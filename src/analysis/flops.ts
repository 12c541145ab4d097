/**
 * A FLOPs model of the transformer layers, for "ideal speedup" figures: per layer, the work that
 * scales with the token count N (every weight matmul: 2·in·out per token) and the work that scales
 * with N² (Q·Kᵀ and P·V: 2·2·N²·hidden). Work outside the layers (patch embedding, head) is counted
 * as the same for dense and pruned models: it happens before the first stage or on one token.
 */
import type { Graph, NodeProto } from "../ir/graph.js";
import { attrInt } from "../ir/graph.js";
import type { TransformerInfo } from "./transformer.js";

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
    const inside = g.ancestors(l.residual.output);
    const after = g.descendants(l.residual.input);
    let perToken = 0;
    for (const n of inside) if (after.has(n)) perToken += weightFlops(g, n);
    return { layer: l.index, perToken, perPair: 4 * hidden };
  });
}

/** Total layer FLOPs for one example given the tokens each layer processes. */
export function totalFlops(costs: LayerCost[], tokens: number[]): number {
  return costs.reduce((sum, c, i) => {
    const n = tokens[i] ?? 0;
    return sum + c.perToken * n + c.perPair * n * n;
  }, 0);
}
