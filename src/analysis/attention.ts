/**
 * Finding attention blocks. Anchor ops + parent paths, as in onnxruntime's transformers optimizer:
 * - unfused: a Softmax whose input comes (through scale/mask/cast ops) from a MatMul of two
 *   activations (Q·Kᵀ) and whose output (through casts) feeds a MatMul with an activation (P·V);
 * - fused: com.microsoft MultiHeadAttention / Attention / GroupQueryAttention (and packed variants);
 * - linear attention (gated delta nets and the like) shows up as a layer with no anchor at all,
 *   see layers.ts.
 */
import { type Graph, attrInt, type NodeProto } from "../ir/graph.js";
import { isOk, label, missAt, missAtTensor, okOf, type Match, type Miss } from "./match.js";

export type AttentionKind =
  | "matmul-softmax"
  | "MultiHeadAttention"
  | "Attention"
  | "GroupQueryAttention"
  | "PackedMultiHeadAttention";

export interface AttentionCore {
  kind: AttentionKind;
  /** The anchor node: the Softmax (unfused) or the fused attention op. */
  anchor: NodeProto;
  /** Tensor of the attention probabilities, when the graph materializes them (unfused only). */
  probs?: string;
  /** The Q·Kᵀ MatMul (unfused) and the P·V MatMul. */
  qk?: NodeProto;
  pv?: NodeProto;
  /** Query and key tensors as the core consumes them. */
  query: string;
  key?: string;
  /** num_heads attribute of fused ops. */
  heads?: number;
  kvHeads?: number;
  /** Fused ops that take rotary inside (do_rotary) or that are preceded by RotaryEmbedding nodes. */
  rotary: boolean;
}

const FUSED: ReadonlySet<string> = new Set([
  "MultiHeadAttention",
  "Attention",
  "GroupQueryAttention",
  "PackedMultiHeadAttention",
]);
/** Ops between Q·Kᵀ and Softmax in real exports: scaling, masks, casts, bias adds. */
const PRE_SOFTMAX: ReadonlySet<string> = new Set(["Add", "Div", "Mul", "Cast", "Where", "Sub", "Identity"]);
/** Ops between Softmax and P·V. */
const POST_SOFTMAX: ReadonlySet<string> = new Set(["Cast", "Dropout", "Identity"]);
const PRE_SOFTMAX_LIST = [...PRE_SOFTMAX].join(", ");
const POST_SOFTMAX_LIST = [...POST_SOFTMAX].join(", ");

/** True when `t` is computed from the graph's activations rather than only from weights. */
function isActivation(g: Graph, t: string): boolean {
  return activations(g).has(t);
}

const activationSets = new WeakMap<Graph, ReadonlySet<string>>();

/**
 * Every activation tensor of `g`: a non-constant graph input, or a non-constant output of a node
 * (not a Constant) with an activation input. A MatMul weight may be dequantized or transposed on
 * the fly; such chains end in initializers. One pass in topological order, once per graph (a
 * recursive walk per question is exponential on graphs whose paths branch and rejoin).
 */
function activations(g: Graph): ReadonlySet<string> {
  const cached = activationSets.get(g);
  if (cached) return cached;
  const set = new Set<string>();
  for (const t of g.inputs) if (!g.isConstant(t)) set.add(t);
  for (const n of g.order) {
    if (n.opType === "Constant" || !n.input.some((i) => i !== "" && set.has(i))) continue;
    for (const o of n.output) if (o && g.producer.get(o) === n && !g.isConstant(o)) set.add(o);
  }
  activationSets.set(g, set);
  return set;
}

/** Per graph, the result of a bounded walk by tensor and depth (each pair computed once: linear). */
function memo<T>(cache: WeakMap<Graph, Map<string, T>>, g: Graph, t: string, depth: number, compute: () => T): T {
  let m = cache.get(g);
  if (!m) cache.set(g, (m = new Map()));
  const key = `${depth}\u0000${t}`;
  const hit = m.get(key);
  if (hit !== undefined) return hit;
  const value = compute();
  m.set(key, value);
  return value;
}

const qkCache = new WeakMap<Graph, Map<string, Match<NodeProto>>>();
const pvCache = new WeakMap<Graph, Map<string, Match<NodeProto>>>();

/**
 * An Einsum that is a batched matrix product over the last two axes, with the same leading
 * (batch, head) letters on all three terms: `Lxy,Lyz->Lxz` ("plain", MatMul's algebra, as P·V is
 * written: `bhqk,bhkd->bhqd`) or `Lxy,Lzy->Lxz` ("transposed": the second operand transposed, as
 * Q·Kᵀ is written: `bhqd,bhkd->bhqk`). Anything else (ellipses, diagonals, other contractions)
 * is not read as attention.
 */
export function einsumProduct(n: NodeProto): "plain" | "transposed" | undefined {
  if (n.opType !== "Einsum" || n.domain !== "" || n.input.length !== 2) return undefined;
  const eq = n.attribute.find((a) => a.name === "equation")?.s;
  const m = eq ? /^([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)$/.exec(new TextDecoder().decode(eq).replace(/\s+/g, "")) : null;
  if (!m) return undefined;
  const [a, b, c] = [m[1]!, m[2]!, m[3]!];
  const lead = a.slice(0, -2);
  if (
    a.length < 3 ||
    b.length !== a.length ||
    c.length !== a.length ||
    b.slice(0, -2) !== lead ||
    c.slice(0, -2) !== lead
  )
    return undefined;
  const [x, y] = [a.at(-2)!, a.at(-1)!];
  const letters = new Set([...lead, x, y]);
  if (letters.size !== lead.length + 2) return undefined;
  const z = c.at(-1)!;
  if (c.at(-2) !== x || letters.has(z)) return undefined;
  if (b.at(-2) === y && b.at(-1) === z) return "plain";
  if (b.at(-2) === z && b.at(-1) === y) return "transposed";
  return undefined;
}

/** Levels walked above the Softmax for Q·Kᵀ (depth 0 is the Softmax's input) and below it for P·V. */
const QK_DEPTH = 6;
const PV_DEPTH = 4;

function findQk(g: Graph, t: string, depth = 0): Match<NodeProto> {
  return memo(qkCache, g, t, depth, () => qkAbove(g, t, depth));
}

function qkAbove(g: Graph, t: string, depth: number): Match<NodeProto> {
  const p = g.producer.get(t);
  if (!p)
    return missAtTensor(`the walk up reached ${g.inputs.has(t) ? "a graph input" : "a tensor no node computes"}`, t);
  if (depth > QK_DEPTH) return missAtTensor(`no MatMul within ${QK_DEPTH + 1} ops above the Softmax`, t);
  if (p.opType === "MatMul" || einsumProduct(p) !== undefined) {
    const weight = p.input.find((i) => !isActivation(g, i));
    if (weight === undefined) return { ok: p };
    return missAt(
      `${label(p)} multiplies ${weight ? `'${weight}', which is computed from weights only` : "an empty input"} (Q·Kᵀ multiplies two activations)`,
      p,
    );
  }
  if (p.opType === "Einsum") return missAt(`${label(p)} is not a batched matrix product over the last two axes`, p);
  if (!PRE_SOFTMAX.has(p.opType))
    return missAt(
      `${label(p)} is neither a MatMul of two activations (Q·Kᵀ) nor an op seen between Q·Kᵀ and Softmax (${PRE_SOFTMAX_LIST})`,
      p,
    );
  let first: Miss | undefined;
  for (const i of p.input) {
    if (!i || !isActivation(g, i)) continue;
    const found = findQk(g, i, depth + 1);
    if (isOk(found)) return found;
    first ??= found;
  }
  return first ?? missAt(`${label(p)} reads no activation`, p);
}

function findPv(g: Graph, t: string, depth = 0): Match<NodeProto> {
  return memo(pvCache, g, t, depth, () => pvBelow(g, t, depth));
}

function pvBelow(g: Graph, t: string, depth: number): Match<NodeProto> {
  if (depth > PV_DEPTH) return missAtTensor(`no MatMul within ${PV_DEPTH + 1} ops below the Softmax`, t);
  let first: Miss | undefined;
  for (const c of g.consumersOf(t)) {
    if (
      (c.opType === "MatMul" || einsumProduct(c) === "plain") &&
      c.input[0] === t &&
      c.input[1] &&
      isActivation(g, c.input[1])
    )
      return { ok: c };
    if (POST_SOFTMAX.has(c.opType) && c.output[0]) {
      const found = findPv(g, c.output[0], depth + 1);
      if (isOk(found)) return found;
      first ??= found;
    } else first ??= notPv(g, c, t);
  }
  return first ?? missAtTensor(`nothing reads the probabilities${g.outputs.has(t) ? " (a graph output)" : ""}`, t);
}

/** Why a reader `c` of the probabilities `t` is not P·V. */
function notPv(_g: Graph, c: NodeProto, t: string): Miss {
  if (c.opType === "MatMul" || einsumProduct(c) === "plain") {
    if (c.input[0] !== t)
      return missAt(`${label(c)} takes the probabilities as its second operand (P·V takes them first)`, c);
    return missAt(
      `${label(c)} multiplies the probabilities by ${c.input[1] ? `'${c.input[1]}', which is computed from weights only` : "nothing"} (P·V multiplies them by V, an activation)`,
      c,
    );
  }
  if (c.opType === "Einsum")
    return missAt(`${label(c)} is not a plain batched matrix product over the last two axes (P·V)`, c);
  return missAt(
    `${label(c)} is neither the P·V MatMul nor an op seen between Softmax and P·V (${POST_SOFTMAX_LIST})`,
    c,
  );
}

/** Ops exporters put between a RotaryEmbedding and the attention op (head reshapes). */
const LAYOUT_OPS: ReadonlySet<string> = new Set(["Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Identity"]);

function rotaryAbove(g: Graph, t: string, depth = 0): boolean {
  const p = g.producer.get(t);
  if (!p || depth > 4) return false;
  if (p.opType === "RotaryEmbedding") return true;
  return LAYOUT_OPS.has(p.opType) && p.input[0] !== undefined && rotaryAbove(g, p.input[0], depth + 1);
}

/** A Softmax the anchor search considers (default domain, with an input and an output). */
export function isSoftmaxCandidate(n: NodeProto): boolean {
  return n.opType === "Softmax" && n.domain === "" && !!n.input[0] && !!n.output[0];
}

/**
 * The unfused attention anchored at Softmax `n` (a candidate), or why `n` is not one: no Q·Kᵀ
 * above it (and where the walk up stopped), or no P·V below it (and where the walk down stopped).
 */
export function matchSoftmaxAttention(g: Graph, n: NodeProto): Match<AttentionCore> {
  const qk = findQk(g, n.input[0]!);
  if (!isOk(qk)) return { ...qk, why: `no Q·Kᵀ (a MatMul of two activations) above it: ${qk.why}` };
  const pv = findPv(g, n.output[0]!);
  if (!isOk(pv)) return { ...pv, why: `no P·V (a MatMul of the probabilities by an activation) below it: ${pv.why}` };
  return {
    ok: {
      kind: "matmul-softmax",
      anchor: n,
      probs: n.output[0]!,
      qk: qk.ok,
      pv: pv.ok,
      query: qk.ok.input[0]!,
      key: qk.ok.input[1]!,
      rotary: false,
    },
  };
}

/** Every Softmax candidate that is not an attention anchor, with why (graph order). */
export function softmaxMisses(g: Graph): { softmax: NodeProto; miss: Miss }[] {
  const out: { softmax: NodeProto; miss: Miss }[] = [];
  for (const n of g.order) {
    if (!isSoftmaxCandidate(n)) continue;
    const m = matchSoftmaxAttention(g, n);
    if (!isOk(m)) out.push({ softmax: n, miss: m });
  }
  return out;
}

export function findAttentionCores(g: Graph): AttentionCore[] {
  const cores: AttentionCore[] = [];
  for (const n of g.order) {
    if (isSoftmaxCandidate(n)) {
      const core = okOf(matchSoftmaxAttention(g, n));
      if (core) cores.push(core);
    } else if (n.domain === "com.microsoft" && FUSED.has(n.opType)) {
      const core: AttentionCore = {
        kind: n.opType as AttentionKind,
        anchor: n,
        query: n.input[0]!,
        heads: attrInt(n, "num_heads", 0) || undefined,
        rotary: attrInt(n, "do_rotary", 0) === 1,
      };
      const kvHeads = attrInt(n, "kv_num_heads", 0);
      if (kvHeads) core.kvHeads = kvHeads;
      // Attention (not MHA) takes the hidden state and does its own projection: no separate key.
      if (n.opType !== "Attention" && n.input[1]) core.key = n.input[1];
      if (!core.rotary) core.rotary = [core.query, core.key].some((t) => t !== undefined && rotaryAbove(g, t));
      cores.push(core);
    }
  }
  return cores;
}
