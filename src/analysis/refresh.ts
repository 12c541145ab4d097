/**
 * Analysis facts that stay true across stages. `TransformerInfo` is computed once, on the dense
 * graph; its facts name tensors, and some hold the node objects that matched (attention anchors,
 * Q·Kᵀ / P·V MatMuls, norms). A stage replaces the nodes it rewires by copies (same name, same
 * outputs, or the stage's result taking an output's name), so before each stage every node-valued
 * fact is resolved again in the current graph: the node writing its first output when it has the
 * same op and name, else (a stage renamed that output to `<name>/dense`) the node of that name. Tensor-valued facts need nothing:
 * stages keep every name the analysis recorded (the gathered stream takes the residual's name).
 *
 * Shapes (`shapes`, `tokens`) stay the dense model's: what each stage's plan recorded as its token
 * counts is what describes the pruned stream (see StreamState).
 */
import type { Graph, NodeProto } from "../ir/graph.js";
import type { LayerInfo, TransformerInfo } from "./transformer.js";
import type { Norm } from "./norms.js";

/** The facts of `model` with every node replaced by the node of the same role in `g`. */
export function refreshFacts(model: TransformerInfo, g: Graph): TransformerInfo {
  let byName: Map<string, NodeProto> | undefined;
  const named = (name: string) => {
    if (!byName) {
      byName = new Map();
      for (const n of g.proto.node) if (n.name && !byName.has(n.name)) byName.set(n.name, n);
    }
    return byName.get(name);
  };
  // The same role: same op and name (a stage's gather may now write the output a matched node wrote).
  const same = (a: NodeProto | undefined, n: NodeProto): a is NodeProto =>
    a !== undefined && a.opType === n.opType && a.domain === n.domain && a.name === n.name;
  const now = (n: NodeProto): NodeProto => {
    const byOutput = g.producer.get(n.output[0] ?? "");
    if (same(byOutput, n)) return byOutput;
    const byNodeName = n.name ? named(n.name) : undefined;
    return same(byNodeName, n) ? byNodeName : n;
  };
  const norm = (x: Norm): Norm => ({ ...x, node: now(x.node), nodes: x.nodes.map(now) });
  const layers = model.layers.map((l): LayerInfo => {
    const out: LayerInfo = { ...l };
    if (l.core) {
      out.core = { ...l.core, anchor: now(l.core.anchor) };
      if (l.core.qk) out.core.qk = now(l.core.qk);
      if (l.core.pv) out.core.pv = now(l.core.pv);
    }
    if (l.residual) {
      out.residual = { ...l.residual, norm: norm(l.residual.norm) };
      if (l.residual.outputNorm) out.residual.outputNorm = now(l.residual.outputNorm);
    }
    return out;
  });
  return { ...model, layers };
}
