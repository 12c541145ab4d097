/**
 * The residual stream around one attention core (or one linear-attention mixer), for pre-norm
 * transformer blocks. Two forms are recognized, and may mix within one model:
 *
 * Plain (Add + norm):
 *   x_in ──norm──► attention ──► Add(x_in, ·) = x_mid ──norm──► MLP ──► Add(x_mid, ·) = x_out
 *
 * Skip (onnxruntime's fused add+norm, com.microsoft Skip[Simplified]LayerNormalization, as the
 * transformers.js / onnxruntime-genai decoders write it): each residual add is fused with the norm
 * that follows it. The node `Skip(input, skip[, gamma, bias])` writes
 *   output 0: norm(input + skip [+ bias]), output 1/2: mean / inv_std_var (training only),
 *   output 3: input_skip_bias_sum = input + skip [+ bias], i.e. the residual stream itself.
 * So layer L reads as
 *   Skip_a(x_mid[L-1], mlp[L-1]) ─ out 3 ─► x_in ─────────────────────────────┐
 *                                └ out 0 ─► attention ──► Skip_b(x_in, ·) ─ out 3 ─► x_mid ──┐
 *                                                            └ out 0 ─► MLP ──► Skip_c(x_mid, ·)
 * where Skip_a is layer L's pre-norm (for layer 0 usually a plain norm on the embeddings), Skip_b
 * the post-attention norm, and Skip_c the next layer's pre-norm (for the last layer, the model's
 * final norm). The residual stream leaving layer L is Skip_c's output 3.
 *
 * The pre-norm is the norm shared by the query and key paths; per-head q_norm / k_norm that sit on
 * one path only (Gemma-3, Qwen3) are walked through.
 */
import { dataInputs, type Graph, type NodeProto } from "../ir/graph.js";
import type { AttentionCore } from "./attention.js";
import { isSkipNormNode, normAt, normsReading, type Norm } from "./norms.js";

/** Index of a Skip…Normalization's `input_skip_bias_sum` output (the residual stream). */
export const SKIP_SUM_OUTPUT = 3;

export function isSkipNorm(n: NodeProto): boolean {
  return isSkipNormNode(n);
}

export interface ResidualBlock {
  /**
   * Where the block's norms sit. `pre-norm`: x_in → norm → attention → Add(x_in) → norm → MLP →
   * Add (GPT/ViT/LLaMA). `post-norm`: x_in → attention → Add(x_in) → norm → MLP → Add → norm
   * (BERT, `nn.TransformerEncoderLayer(norm_first=False)`): the stream leaving the block is the
   * second norm's output, which every later reader (next layer's q/k/v and residual) takes.
   */
  layout: "pre-norm" | "post-norm";
  /**
   * Pre-norm: the block's pre-norm (its output feeds the attention / mixer). Plain form: a norm
   * (fused or decomposed) reading `input`. Skip form: the Skip…Normalization that adds the previous
   * layer's MLP output to its stream; `input` is its output 3. (Its input 1 is then the skip
   * operand, not the scale: the scale is input 2.)
   * Post-norm: the norm after the attention residual add (its output is `mid`).
   */
  norm: Norm;
  /**
   * Residual stream entering the block: the plain pre-norm's input, or the Skip pre-norm's output 3.
   * Layer 0's is the embeddings (a graph input or the embedding node's output).
   */
  input: string;
  /** After the attention residual add: the Add's output, the post-attention Skip norm's output 3, or (post-norm) the norm of the sum. */
  mid: string;
  /**
   * Leaving the block, after the MLP residual add: the Add's output, or output 3 of the Skip norm
   * that adds the MLP output to `mid` (the next layer's pre-norm, or the final norm), or (post-norm)
   * the norm of that sum.
   * Every consumer of `output` reads the stream after this layer. In the Skip form that is not
   * every reader of the stream: see `outputNorm`. When `outputMissing` is set, the tensor is not in
   * the graph yet.
   */
  output: string;
  /**
   * Skip form only: the fused add+norm whose output 3 is `output`. Its output 0 is the same
   * stream normalized, read by the next layer's attention / mixer (or by the LM head after the
   * final norm): it holds one row per token too, so a stage that gathers `output` must give
   * output 0's readers the kept rows as well (gather output 0 with the same indices, which equals
   * normalizing the gathered stream since the norm is per token; or split the node into Add +
   * norm). Renaming output 3 alone leaves the next layer's attention on the dense tokens.
   */
  outputNorm?: NodeProto;
  /**
   * Skip form only: the exporter omitted `outputNorm`'s optional output 3 (nothing read the sum,
   * as for the final norm). `output` is then a fresh name, unused in the graph, that a stage must
   * first add to `outputNorm` as its output 3 (padding outputs 1 and 2 with "").
   */
  outputMissing?: boolean;
}

/**
 * Norms met walking backwards from `t`, nearest first (bounded: blocks are small). The walk stops
 * at each norm (the block starts there) except those whose node is in `through`.
 */
function normsAbove(g: Graph, t: string, through: ReadonlySet<NodeProto> = new Set(), limit = 500): Norm[] {
  const found: Norm[] = [];
  const seen = new Set<string>();
  const queue = [t];
  let steps = 0;
  for (let head = 0; head < queue.length && steps++ < limit; head++) {
    const cur = queue[head]!;
    if (seen.has(cur)) continue;
    seen.add(cur);
    const p = g.producer.get(cur);
    if (!p) continue;
    const norm = normAt(g, p);
    if (norm && !through.has(p)) {
      if (!found.some((f) => f.node === p)) found.push(norm);
      continue; // the block starts here; do not walk into the previous block
    }
    for (const i of dataInputs(p)) if (i && !g.isConstant(i)) queue.push(i);
  }
  return found;
}

function preNorm(g: Graph, core: AttentionCore): Norm | undefined {
  if (!core.key) return normsAbove(g, core.query)[0];
  // Norms on one path only (per-head q_norm / k_norm) are walked through, a few levels at most.
  const through = new Set<NodeProto>();
  for (let round = 0; round < 3; round++) {
    const fromQ = normsAbove(g, core.query, through);
    const fromK = normsAbove(g, core.key, through);
    const shared = fromQ.find((n) => fromK.some((k) => k.node === n.node));
    if (shared) return shared;
    const before = through.size;
    for (const n of [...fromQ, ...fromK]) if (n.form !== "skip") through.add(n.node);
    if (through.size === before) return undefined;
  }
  return undefined;
}

/** The norm (fused or decomposed) that is the only reader of `t`, if any. */
export function soleNormOf(g: Graph, t: string): Norm | undefined {
  const readers = g.consumersOf(t);
  const norm = normsReading(g, t)[0];
  return norm && readers.length && readers.every((r) => norm.nodes.includes(r)) ? norm : undefined;
}

/** True when `t` is computed by `node` (directly or through other nodes; a bounded walk back). */
function computedBy(g: Graph, t: string, node: NodeProto, limit = 1000): boolean {
  const seen = new Set<string>();
  const queue = [t];
  for (let head = 0; head < queue.length && seen.size < limit; head++) {
    const cur = queue[head]!;
    if (seen.has(cur)) continue;
    seen.add(cur);
    const p = g.producer.get(cur);
    if (!p) continue;
    if (p === node) return true;
    for (const i of dataInputs(p)) if (i && !g.isConstant(i)) queue.push(i);
  }
  return false;
}

/** The two summed operands of a residual add: a 2-input Add, or a Skip norm's input and skip. */
function summands(n: NodeProto): [string, string] | undefined {
  if (n.opType === "Add" && n.domain === "" && n.input.length === 2) return [n.input[0]!, n.input[1]!];
  if (isSkipNorm(n) && n.input[0] && n.input[1]) return [n.input[0], n.input[1]];
  return undefined;
}

/**
 * The earliest residual add (Add or Skip norm) summing `t` with a branch computed by `branch`
 * (node-based: in the Skip form the branch starts from a sibling output of the node writing `t`).
 */
function residualAdd(g: Graph, t: string, branch: NodeProto): NodeProto | undefined {
  const adds = g
    .consumersOf(t)
    .filter((c) => {
      const pair = summands(c);
      if (!pair || !pair.includes(t)) return false;
      const other = pair[0] === t ? pair[1] : pair[0];
      return other !== t && computedBy(g, other, branch);
    })
    .sort((a, b) => g.position(a) - g.position(b));
  return adds[0];
}

/** The stream a residual add writes: the Add's output, or the Skip norm's output 3 ("" when omitted). */
function sumOf(n: NodeProto): string {
  return isSkipNorm(n) ? n.output[SKIP_SUM_OUTPUT] ?? "" : n.output[0] ?? "";
}

/** A name for an omitted Skip-norm sum output that no tensor of the graph uses. */
function freshSumName(g: Graph, n: NodeProto): string {
  const base = `${n.name || n.output[0] || "skip_norm"}/input_skip_bias_sum`;
  const taken = (s: string) => g.producer.has(s) || g.initializers.has(s) || g.inputs.has(s) || g.consumers.has(s);
  let name = base;
  for (let k = 1; taken(name); k++) name = `${base}_${k}`;
  return name;
}

/**
 * The block around a given pre-norm and the node computing the mixer's output (an attention core's
 * P·V MatMul or fused op, a linear-attention layer's control-flow node).
 */
export function residualBlockFrom(g: Graph, norm: Norm, branch: NodeProto): ResidualBlock | undefined {
  const input = norm.input;
  if (!input) return undefined;
  const addMid = residualAdd(g, input, branch);
  const mid = addMid ? sumOf(addMid) : "";
  if (!addMid || !mid) return undefined;
  // The MLP branch is computed from x_mid's node; the second residual add consumes x_mid directly.
  const addOut = residualAdd(g, mid, addMid);
  if (!addOut) return undefined;
  const layout = "pre-norm";
  if (!isSkipNorm(addOut)) return addOut.output[0] ? { layout, norm, input, mid, output: addOut.output[0] } : undefined;
  const sum = sumOf(addOut);
  if (sum) return { layout, norm, input, mid, output: sum, outputNorm: addOut };
  return { layout, norm, input, mid, output: freshSumName(g, addOut), outputNorm: addOut, outputMissing: true };
}

export function findResidualBlock(g: Graph, core: AttentionCore): ResidualBlock | undefined {
  const norm = preNorm(g, core);
  const branch = core.pv ?? core.anchor;
  return (norm ? residualBlockFrom(g, norm, branch) : undefined) ?? postNormBlock(g, core, branch);
}

/**
 * Post-norm: the attention reads x_in itself (no norm between them); the residual Add sums x_in
 * with the attention branch and a norm is its only reader; the MLP reads that norm's output and
 * its residual Add is read only by the block's second norm, whose output leaves the block.
 */
function postNormBlock(g: Graph, core: AttentionCore, branch: NodeProto): ResidualBlock | undefined {
  // Asked per candidate (not by collecting every ancestor of the query per layer: quadratic in depth).
  const feedsAttention = (p: NodeProto | undefined) => p !== undefined && g.dependsOn(core.query, p);
  // x_in: the operand of an Add after the attention that the query path is computed from.
  const addMid = firstAddAfter(g, branch, (other) => {
    const p = g.producer.get(other);
    if (g.isConstant(other)) return false;
    return (feedsAttention(p) && !computedBy(g, other, branch)) || g.inputs.has(other);
  });
  if (!addMid) return undefined;
  const input = addMid.input.find((i) => i && !computedBy(g, i, branch));
  if (!input || (!g.inputs.has(input) && !feedsAttention(g.producer.get(input)))) return undefined;
  const norm = soleNormOf(g, addMid.output[0]!);
  if (!norm) return undefined;
  const mid = norm.output;
  const addOut = residualAdd(g, mid, norm.node);
  if (!addOut || isSkipNorm(addOut) || !addOut.output[0]) return undefined;
  const outNorm = soleNormOf(g, addOut.output[0]);
  if (!outNorm) return undefined;
  return { layout: "post-norm", norm, input, mid, output: outNorm.output };
}

/** The first two-input Add downstream of `from` (bounded walk) one of whose operands passes `isResidual`. */
function firstAddAfter(g: Graph, from: NodeProto, isResidual: (operand: string) => boolean, limit = 64): NodeProto | undefined {
  const queue: NodeProto[] = [from];
  const seen = new Set<NodeProto>();
  for (let i = 0; i < queue.length && i < limit; i++) {
    const n = queue[i]!;
    if (seen.has(n)) continue;
    seen.add(n);
    if (n !== from && n.opType === "Add" && n.domain === "" && n.input.length === 2 && n.input.some((x) => x && isResidual(x))) return n;
    // Shape arithmetic is not the activation path.
    if (n.opType === "Shape" || n.opType === "Size") continue;
    for (const o of n.output) for (const c of g.consumersOf(o)) queue.push(c); // not push(...): a tensor may have more readers than a call takes arguments
  }
  return undefined;
}

/**
 * A linear-attention layer (recurrent state in control flow, no attention anchor): its mixer is
 * the stateful node `mixer`; its pre-norm is the first of the layer's norms (in graph order) around
 * which a residual block closes. Control-flow bodies read outer tensors implicitly, so the mixer's
 * inputs are not followed; the residual adds are found from the mixer's output instead.
 */
export function findLinearResidualBlock(g: Graph, mixer: NodeProto, layerNodes: readonly NodeProto[]): ResidualBlock | undefined {
  const norms = layerNodes.flatMap((n) => normAt(g, n) ?? []).sort((a, b) => g.position(a.node) - g.position(b.node));
  for (const norm of norms) {
    if (g.position(norm.node) > g.position(mixer)) break;
    const block = residualBlockFrom(g, norm, mixer);
    if (block) return block;
  }
  return undefined;
}
