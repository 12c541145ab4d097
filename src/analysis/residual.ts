/**
 * The residual stream around one attention core, for pre-norm transformer blocks:
 *   x_in ──norm──► attention ──► (+ x_in) = x_mid ──norm──► MLP ──► (+ x_mid) = x_out
 * The norm is the one shared by the query and key paths (so q_norm/k_norm are not mistaken for it).
 */
import type { Graph, NodeProto } from "../ir/graph.js";
import type { AttentionCore } from "./attention.js";

const NORMS: ReadonlySet<string> = new Set([
  "LayerNormalization",
  "SimplifiedLayerNormalization",
  "SkipLayerNormalization",
  "SkipSimplifiedLayerNormalization",
  "RMSNormalization",
]);

export interface ResidualBlock {
  norm: NodeProto;
  /** Residual stream entering the block (the pre-norm's input). */
  input: string;
  /** After the attention residual add. */
  mid: string;
  /** Leaving the block (after the MLP residual add). */
  output: string;
}

/** Norm nodes met walking backwards from `t`, nearest first (bounded: blocks are small). */
function normsAbove(g: Graph, t: string, limit = 500): NodeProto[] {
  const found: NodeProto[] = [];
  const seen = new Set<string>();
  const queue = [t];
  let steps = 0;
  while (queue.length && steps++ < limit) {
    const cur = queue.shift()!;
    if (seen.has(cur)) continue;
    seen.add(cur);
    const p = g.producer.get(cur);
    if (!p) continue;
    if (NORMS.has(p.opType)) {
      found.push(p);
      continue; // the block starts here; do not walk into the previous block
    }
    for (const i of p.input) if (i && !g.isConstant(i)) queue.push(i);
  }
  return found;
}

function preNorm(g: Graph, core: AttentionCore): NodeProto | undefined {
  const fromQ = normsAbove(g, core.query);
  if (!core.key) return fromQ[0];
  const fromK = new Set(normsAbove(g, core.key));
  return fromQ.find((n) => fromK.has(n));
}

/** True when `t` is computed from `source` (a bounded breadth-first walk back: the path is short). */
function dependsOn(g: Graph, t: string, source: string, limit = 1000): boolean {
  const seen = new Set<string>();
  const queue = [t];
  for (let head = 0; head < queue.length && seen.size < limit; head++) {
    const cur = queue[head]!;
    if (cur === source) return true;
    if (seen.has(cur)) continue;
    seen.add(cur);
    const p = g.producer.get(cur);
    if (p) for (const i of p.input) if (i && !g.isConstant(i)) queue.push(i);
  }
  return false;
}

/** The earliest Add consuming `t` whose other operand is computed from `branchOut`. */
function residualAdd(g: Graph, t: string, branchOut: string): NodeProto | undefined {
  const adds = g
    .consumersOf(t)
    .filter((c) => {
      if (c.opType !== "Add" || c.input.length !== 2) return false;
      const other = c.input[0] === t ? c.input[1]! : c.input[0]!;
      return other !== t && dependsOn(g, other, branchOut);
    })
    .sort((a, b) => g.position(a) - g.position(b));
  return adds[0];
}

export function findResidualBlock(g: Graph, core: AttentionCore): ResidualBlock | undefined {
  const norm = preNorm(g, core);
  if (!norm || norm.opType.startsWith("Skip")) return undefined; // fused add+norm: see the decoder issue
  const input = norm.input[0];
  const coreOut = core.pv?.output[0] ?? core.anchor.output[0];
  if (!input || !coreOut) return undefined;
  const addMid = residualAdd(g, input, coreOut);
  const mid = addMid?.output[0];
  if (!mid) return undefined;
  // The MLP branch is computed from x_mid; the second residual add consumes x_mid directly.
  const addOut = residualAdd(g, mid, mid);
  const output = addOut?.output[0];
  if (!output) return undefined;
  return { norm, input, mid, output };
}
