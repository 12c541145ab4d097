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
import { isSkipNormNode, matchNormAt, normAt, normsReading, type Norm, type NormMiss } from "./norms.js";
import {
  capped,
  isOk,
  label,
  look,
  missAt,
  missAtTensor,
  missText,
  okOf,
  plainMiss,
  type Match,
  type Miss,
  type Step,
} from "./match.js";

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

/** The per-token-norm-like node nearest to matching that a walk passed (`NormMiss.progress` ≥ 1), for explanations. */
export interface NearNorm {
  miss?: NormMiss;
}

/**
 * Norms met walking backwards from `t`, nearest first (bounded: blocks are small). The walk stops
 * at each norm (the block starts there) except those whose node is in `through`. Given `near`, it
 * also keeps the node passed that came nearest to being a norm (the first of the furthest).
 */
function normsAbove(
  g: Graph,
  t: string,
  through: ReadonlySet<NodeProto> = new Set(),
  limit = 500,
  near?: NearNorm,
): Norm[] {
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
    const match = matchNormAt(g, p);
    const norm = "ok" in match ? match.ok : undefined;
    if (norm && !through.has(p)) {
      if (!found.some((f) => f.node === p)) found.push(norm);
      continue; // the block starts here; do not walk into the previous block
    }
    if (near && !("ok" in match) && match.progress > 0 && match.progress > (near.miss?.progress ?? 0))
      near.miss = match;
    for (const i of dataInputs(p)) if (i && !g.isConstant(i)) queue.push(i);
  }
  return found;
}

const normsText = (norms: readonly Norm[]) =>
  capped(
    norms.map((n) => label(n.node)),
    3,
  );

function preNorm(g: Graph, core: AttentionCore, near?: NearNorm): Match<Norm> {
  if (!core.key) {
    const norm = normsAbove(g, core.query, undefined, undefined, near)[0];
    return norm ? { ok: norm } : missAtTensor("no per-token norm above the attention's input", core.query);
  }
  // Norms on one path only (per-head q_norm / k_norm) are walked through, a few levels at most.
  const through = new Set<NodeProto>();
  let fromQ: Norm[] = [];
  let fromK: Norm[] = [];
  for (let round = 0; round < 3; round++) {
    fromQ = normsAbove(g, core.query, through, undefined, near);
    fromK = normsAbove(g, core.key, through, undefined, near);
    const shared = fromQ.find((n) => fromK.some((k) => k.node === n.node));
    if (shared) return { ok: shared };
    const before = through.size;
    for (const n of [...fromQ, ...fromK]) if (n.form !== "skip") through.add(n.node);
    if (through.size === before) return noSharedNorm(core, fromQ, fromK);
  }
  return noSharedNorm(core, fromQ, fromK, " (after walking through 3 levels of norms on one path only)");
}

function noSharedNorm(core: AttentionCore, fromQ: readonly Norm[], fromK: readonly Norm[], after = ""): Miss {
  if (!fromQ.length) return missAtTensor("no per-token norm above the query", core.query);
  if (!fromK.length) return missAtTensor("no per-token norm above the key", core.key!);
  return missAt(
    `the query path meets ${normsText(fromQ)} and the key path ${normsText(fromK)}: no norm is shared by both${after}`,
    fromQ[0]!.node,
  );
}

/** The norm (fused or decomposed) that is the only reader of `t`, if any. */
export function soleNormOf(g: Graph, t: string): Norm | undefined {
  const readers = g.consumersOf(t);
  const norm = normsReading(g, t)[0];
  return norm && readers.length && readers.every((r) => norm.nodes.includes(r)) ? norm : undefined;
}

/** `soleNormOf`, or why `t` is not read by one norm alone (its readers, capped). */
function matchSoleNorm(g: Graph, t: string): Match<Norm> {
  const norm = soleNormOf(g, t);
  if (norm) return { ok: norm };
  return missAtTensor(`the sum is not read by one per-token norm alone; its readers: ${readersText(g, t)}`, t);
}

function readersText(g: Graph, t: string): string {
  const readers = g.consumersOf(t);
  return readers.length ? capped(readers.map(label)) : `none${g.outputs.has(t) ? " (a graph output)" : ""}`;
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
      if (!pair?.includes(t)) return false;
      const other = pair[0] === t ? pair[1] : pair[0];
      return other !== t && computedBy(g, other, branch);
    })
    .sort((a, b) => g.position(a) - g.position(b));
  return adds[0];
}

/** `residualAdd`, or why there is none: `t`'s readers (capped), none of which adds the branch to it. */
function matchResidualAdd(g: Graph, t: string, branch: NodeProto, stream: string, what: string): Match<NodeProto> {
  const add = residualAdd(g, t, branch);
  if (add) return { ok: add };
  return missAtTensor(
    `no Add (or Skip norm) sums ${stream} with ${what} (computed from ${label(branch)}); ${stream}'s readers: ${readersText(g, t)}`,
    t,
  );
}

/** The stream a residual add writes: the Add's output, or the Skip norm's output 3 ("" when omitted). */
function sumOf(n: NodeProto): string {
  return isSkipNorm(n) ? (n.output[SKIP_SUM_OUTPUT] ?? "") : (n.output[0] ?? "");
}

/** A name for an omitted Skip-norm sum output that no tensor of the graph uses. */
function freshSumName(g: Graph, n: NodeProto): string {
  const base = `${n.name || n.output[0] || "skip_norm"}/input_skip_bias_sum`;
  const taken = (s: string) => g.producer.has(s) || g.initializers.has(s) || g.inputs.has(s) || g.consumers.has(s);
  let name = base;
  for (let k = 1; taken(name); k++) name = `${base}_${k}`;
  return name;
}

const addFound = (n: NodeProto) => `${label(n)} writes '${sumOf(n)}'`;

/**
 * The block around a given pre-norm and the node computing the mixer's output (an attention core's
 * P·V MatMul or fused op, a linear-attention layer's control-flow node).
 */
export function residualBlockFrom(g: Graph, norm: Norm, branch: NodeProto): ResidualBlock | undefined {
  return okOf(matchBlockFrom(g, norm, branch));
}

/** `residualBlockFrom`, or why not and where; steps into `trace` when given. */
export function matchBlockFrom(g: Graph, norm: Norm, branch: NodeProto, trace?: Step[]): Match<ResidualBlock> {
  const input = norm.input;
  if (!input)
    return look(
      trace,
      "x_in (the stream the pre-norm reads)",
      missAt(`${label(norm.node)} omits its output ${SKIP_SUM_OUTPUT} (the residual sum)`, norm.node),
      () => "",
    );
  trace?.push({ looked: "x_in (the stream the pre-norm reads)", found: `'${input}'` });
  const addMid = look(
    trace,
    "attention residual Add (x_in + attention)",
    matchResidualAdd(g, input, branch, "x_in", "the attention output"),
    addFound,
  );
  if (!isOk(addMid)) return addMid;
  const mid = sumOf(addMid.ok);
  if (!mid)
    return missAt(`${label(addMid.ok)} omits its output ${SKIP_SUM_OUTPUT} (the residual sum x_mid)`, addMid.ok);
  // The MLP branch is computed from x_mid's node; the second residual add consumes x_mid directly.
  const addOut = look(
    trace,
    "MLP residual Add (x_mid + MLP)",
    matchResidualAdd(g, mid, addMid.ok, "x_mid", "the MLP output"),
    (n) => (isSkipNorm(n) && !sumOf(n) ? `${label(n)} (its output ${SKIP_SUM_OUTPUT}, the sum, omitted)` : addFound(n)),
  );
  if (!isOk(addOut)) return addOut;
  const layout = "pre-norm";
  const out = addOut.ok;
  if (!isSkipNorm(out))
    return out.output[0]
      ? { ok: { layout, norm, input, mid, output: out.output[0] } }
      : missAt(`${label(out)} has no output`, out);
  const sum = sumOf(out);
  if (sum) return { ok: { layout, norm, input, mid, output: sum, outputNorm: out } };
  return { ok: { layout, norm, input, mid, output: freshSumName(g, out), outputNorm: out, outputMissing: true } };
}

export function findResidualBlock(g: Graph, core: AttentionCore): ResidualBlock | undefined {
  return okOf(matchResidualBlock(g, core));
}

/**
 * The residual block around an attention core (pre-norm first, then post-norm), or why neither
 * matched: both reasons, with where each stopped. Given `trace`, records each step looked for.
 */
export function matchResidualBlock(g: Graph, core: AttentionCore, trace?: Step[]): Match<ResidualBlock> {
  const branch = core.pv ?? core.anchor;
  const near: NearNorm | undefined = trace ? {} : undefined;
  const norm = look(
    trace,
    "pre-norm (a per-token norm shared by the query and key paths)",
    preNorm(g, core, near),
    (n) => `${label(n.node)} (${n.form})`,
  );
  if (near?.miss)
    trace!.push({
      looked: "nearer per-token norm (the norm-like node passed on the way up that came closest)",
      miss: plainMiss(near.miss),
    });
  const pre = isOk(norm) ? matchBlockFrom(g, norm.ok, branch, trace) : norm;
  if (isOk(pre)) return pre;
  const post = postNormBlock(g, core, branch, trace);
  if (isOk(post)) return post;
  return { ...plainMiss(post), why: `${missText(pre)}; as a post-norm block: ${post.why}` };
}

/**
 * Post-norm: the attention reads x_in itself (no norm between them); the residual Add sums x_in
 * with the attention branch and a norm is its only reader; the MLP reads that norm's output and
 * its residual Add is read only by the block's second norm, whose output leaves the block.
 */
function postNormBlock(g: Graph, core: AttentionCore, branch: NodeProto, trace?: Step[]): Match<ResidualBlock> {
  // Asked per candidate (not by collecting every ancestor of the query per layer: quadratic in depth).
  const feedsAttention = (p: NodeProto | undefined) => p !== undefined && g.dependsOn(core.query, p);
  // x_in: the operand of an Add after the attention that the query path is computed from.
  const addMid = firstAddAfter(g, branch, (other) => {
    const p = g.producer.get(other);
    if (g.isConstant(other)) return false;
    return (feedsAttention(p) && !computedBy(g, other, branch)) || g.inputs.has(other);
  });
  const looked = "post-norm: attention residual Add (x_in + attention, x_in read by the attention itself)";
  if (!addMid)
    return look(
      trace,
      looked,
      missAt(
        `no Add within ${FIRST_ADD_LIMIT} nodes below ${label(branch)} sums the attention output with a tensor the attention's input is computed from`,
        branch,
      ),
      () => "",
    );
  const input = addMid.input.find((i) => i && !computedBy(g, i, branch));
  if (!input || (!g.inputs.has(input) && !feedsAttention(g.producer.get(input))))
    return look(
      trace,
      looked,
      missAt(`${label(addMid)} sums no operand that feeds the attention and is not computed from it`, addMid),
      () => "",
    );
  trace?.push({ looked, found: `${label(addMid)} (x_in '${input}')` });
  const norm = look(
    trace,
    "post-norm: norm after the attention Add (its only reader)",
    matchSoleNorm(g, addMid.output[0]!),
    (n) => `${label(n.node)} writes x_mid '${n.output}'`,
  );
  if (!isOk(norm)) return norm;
  const mid = norm.ok.output;
  const addOut = look(
    trace,
    "post-norm: MLP residual Add (x_mid + MLP)",
    matchResidualAdd(g, mid, norm.ok.node, "x_mid", "the MLP output"),
    (n) => label(n),
  );
  if (!isOk(addOut)) return addOut;
  if (isSkipNorm(addOut.ok) || !addOut.ok.output[0])
    return missAt(
      `${label(addOut.ok)} is ${isSkipNorm(addOut.ok) ? "a Skip norm (a pre-norm form)" : "without an output"}`,
      addOut.ok,
    );
  const outNorm = look(
    trace,
    "post-norm: norm after the MLP Add (its only reader)",
    matchSoleNorm(g, addOut.ok.output[0]),
    (n) => `${label(n.node)} writes x_out '${n.output}'`,
  );
  if (!isOk(outNorm)) return outNorm;
  return { ok: { layout: "post-norm", norm: norm.ok, input, mid, output: outNorm.ok.output } };
}

/** Nodes `firstAddAfter` visits at most. */
const FIRST_ADD_LIMIT = 64;

/** The first two-input Add downstream of `from` (bounded walk) one of whose operands passes `isResidual`. */
function firstAddAfter(
  g: Graph,
  from: NodeProto,
  isResidual: (operand: string) => boolean,
  limit = FIRST_ADD_LIMIT,
): NodeProto | undefined {
  const queue: NodeProto[] = [from];
  const seen = new Set<NodeProto>();
  for (let i = 0; i < queue.length && i < limit; i++) {
    const n = queue[i]!;
    if (seen.has(n)) continue;
    seen.add(n);
    if (
      n !== from &&
      n.opType === "Add" &&
      n.domain === "" &&
      n.input.length === 2 &&
      n.input.some((x) => x && isResidual(x))
    )
      return n;
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
export function findLinearResidualBlock(
  g: Graph,
  mixer: NodeProto,
  layerNodes: readonly NodeProto[],
): ResidualBlock | undefined {
  return okOf(matchLinearResidualBlock(g, mixer, layerNodes));
}

/** `findLinearResidualBlock`, or why not: the first norm tried and where its block did not close. */
export function matchLinearResidualBlock(
  g: Graph,
  mixer: NodeProto,
  layerNodes: readonly NodeProto[],
  trace?: Step[],
): Match<ResidualBlock> {
  const norms = layerNodes.flatMap((n) => normAt(g, n) ?? []).sort((a, b) => g.position(a.node) - g.position(b.node));
  let first: { miss: Miss; steps: Step[] } | undefined;
  for (const norm of norms) {
    if (g.position(norm.node) > g.position(mixer)) break;
    const steps: Step[] = [
      {
        looked: "pre-norm (a norm of the layer before its recurrent mixer)",
        found: `${label(norm.node)} (${norm.form})`,
      },
    ];
    const block = matchBlockFrom(g, norm, mixer, trace ? steps : undefined);
    if (isOk(block)) {
      if (trace) for (const st of steps) trace.push(st);
      return block;
    }
    first ??= { miss: { ...block, why: `with pre-norm ${label(norm.node)}: ${block.why}` }, steps };
  }
  if (first) {
    if (trace) for (const st of first.steps) trace.push(st);
    return first.miss;
  }
  return look(
    trace,
    "pre-norm (a norm of the layer before its recurrent mixer)",
    missAt(
      `none of the layer's ${norms.length} per-token norms comes before its recurrent mixer ${label(mixer)}`,
      mixer,
    ),
    () => "",
  );
}
