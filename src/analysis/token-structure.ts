/**
 * What prunec must be able to prove about the token structure before it gathers tokens, checked
 * once per model; a model that fails is refused with the reason, never pruned on a guess.
 *
 * - The residual stream holds tokens on ONE axis: [batch, tokens, hidden], sequence-first
 *   [tokens, batch, hidden], or batch-less [tokens, hidden]. Swin-style streams are [B, H, W, C]:
 *   their tokens form a grid over two axes.
 * - Every attention attends over the stream's tokens: its key count is the stream's token count.
 *   Windowed attention (Swin's window partition by Reshape/Transpose, with Roll for shifted
 *   windows) attends within groups of tokens: dropping tokens would break the partition.
 * - Every layer has the same hidden size and token count (no patch merging between stages).
 */
import { dataInputs, type Graph, type NodeProto } from "../ir/graph.js";
import type { Dim, ShapeMap } from "./dims.js";
import type { LayerInfo } from "./transformer.js";

const fmt = (s: readonly Dim[] | undefined) => (s ? `[${s.map((d) => String(d)).join(", ")}]` : "[?]");

/** The nearest node between the stream and the attention's query that splits tokens into windows (a rank ≥ 5 layout op), if any. */
function windowPartition(g: Graph, shapes: ShapeMap, layer: LayerInfo): NodeProto | undefined {
  const core = layer.core;
  const stop = layer.residual?.input;
  if (!core) return undefined;
  const seen = new Set<string>();
  const queue = [core.query];
  let found: NodeProto | undefined;
  for (let head = 0; head < queue.length && head < 400; head++) {
    const t = queue[head]!;
    if (seen.has(t) || t === stop) continue;
    seen.add(t);
    const p = g.producer.get(t);
    if (!p) continue;
    if ((p.opType === "Reshape" || p.opType === "Transpose") && (shapes.get(p.output[0]!)?.length ?? 0) >= 5) found = p;
    for (const i of dataInputs(p)) if (i && !g.isConstant(i)) queue.push(i);
  }
  return found;
}

/** Why the token structure cannot be proven, or undefined when it can. */
export function tokenStructureProblem(
  g: Graph,
  shapes: ShapeMap,
  layers: readonly LayerInfo[],
  tokens: Dim | undefined,
  hidden: number | undefined,
): string | undefined {
  const first = layers.find((l) => l.residual);
  if (!first?.residual) return undefined;
  const stream = shapes.get(first.residual.input);
  const windows = layers.map((l) => windowPartition(g, shapes, l)).find((n) => n !== undefined);
  const windowed = windows ? `; its attention runs inside windows (window partition at node '${windows.name}')` : "";
  if (stream && stream.length > 3) {
    return `the residual stream entering layer ${first.index} ('${first.residual.input}') is ${fmt(stream)}: its tokens lie on ${stream.length - 2} axes (a spatial grid, as in Swin)${windowed}; prunec gathers tokens along one axis of a [batch, tokens, hidden] stream`;
  }
  for (const l of layers) {
    const input = l.residual ? shapes.get(l.residual.input) : undefined;
    const width = input?.at(-1);
    if (typeof width === "number" && typeof hidden === "number" && width !== hidden) {
      return `the hidden size changes from ${hidden} to ${width} at layer ${l.index} (patch merging between stages); prunec prunes a stream of one width`;
    }
    const keys = l.core?.probs ? shapes.get(l.core.probs)?.at(-1) : undefined;
    if (typeof keys === "number" && typeof tokens === "number" && keys !== tokens) {
      const w = windowPartition(g, shapes, l);
      const where = w ? `: it attends within windows (window partition at node '${w.name}')` : "";
      return `layer ${l.index}'s attention ('${l.core!.anchor.name}') has ${keys} keys per query, but the residual stream has ${tokens} tokens${where}; dropping tokens would break its partition`;
    }
  }
  return undefined;
}
