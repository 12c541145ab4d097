/**
 * Per-token norms, fused or decomposed into primitive ops.
 *
 * Exporters write a norm three ways:
 * - a fused op: LayerNormalization (opset ≥ 17), com.microsoft SimplifiedLayerNormalization,
 *   RMSNormalization (opset 23), or the Skip… forms that fold in a residual add;
 * - LayerNorm decomposed (PyTorch at opset < 17):
 *     m = ReduceMean(x), d = Sub(x, m), v = ReduceMean(Pow(d, 2)), s = Sqrt(Add(v, ε)),
 *     y = Div(d, s) [· γ] [+ β]
 * - RMSNorm decomposed (LLaMA-style modules at any opset):
 *     v = ReduceMean(Pow(x, 2)), s = Sqrt(Add(v, ε)),
 *     y = x · Reciprocal(s) | Div(x, s) | x · Div(1, s) [· γ]
 * Every reduction must be over the last axis only (a norm over hidden, per token): that is what
 * lets a stage gather tokens on either side of it.
 *
 * `normAt(g, node)` says whether `node` is the LAST node of such a norm, and if so returns its
 * input and output. Matching is local (a bounded number of producer look-ups), so callers may ask
 * about every node of a walk.
 */
import { attr, attrInt, type Graph, type NodeProto } from "../ir/graph.js";

export type NormForm = "fused" | "skip" | "layernorm-decomposed" | "rmsnorm-decomposed";

export interface Norm {
  form: NormForm;
  /** The node writing the norm's output (for decomposed norms, its last op). */
  node: NodeProto;
  /** The per-token stream normalized (for Skip norms: output 3, the residual sum). */
  input: string;
  /** The normalized stream. */
  output: string;
  /** The scale γ, when the norm has one (a constant; its element type is the stream's). */
  scale?: string;
  /** Every node of a decomposed norm (the fused op alone otherwise). */
  nodes: NodeProto[];
}

const FUSED: ReadonlySet<string> = new Set(["LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"]);
const SKIP: ReadonlySet<string> = new Set(["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"]);

export function isSkipNormNode(n: NodeProto): boolean {
  return SKIP.has(n.opType);
}

const cache = new WeakMap<Graph, Map<NodeProto, Norm | null>>();

/** The norm whose last node is `node`, or undefined. Memoised per graph. */
export function normAt(g: Graph, node: NodeProto): Norm | undefined {
  let memo = cache.get(g);
  if (!memo) cache.set(g, (memo = new Map()));
  const hit = memo.get(node);
  if (hit !== undefined) return hit ?? undefined;
  const found = matchNorm(g, node) ?? null;
  memo.set(node, found);
  return found ?? undefined;
}

function matchNorm(g: Graph, node: NodeProto): Norm | undefined {
  if (FUSED.has(node.opType) && node.input[0] && node.output[0]) {
    return withScale({ form: "fused", node, input: node.input[0], output: node.output[0], nodes: [node] }, node.input[1]);
  }
  if (SKIP.has(node.opType) && node.output[0]) {
    return withScale({ form: "skip", node, input: node.output[3] ?? "", output: node.output[0], nodes: [node] }, node.input[2]);
  }
  if (node.domain !== "" || !node.output[0]) return undefined;
  // Optional affine tail: [Add β] after [Mul γ], each with one constant operand.
  const nodes: NodeProto[] = [];
  let cur: NodeProto | undefined = node;
  let scale: string | undefined;
  if (cur.opType === "Add") {
    const a = affine(g, cur);
    if (!a) return undefined;
    nodes.push(cur);
    cur = g.producer.get(a.activation);
    if (cur?.opType === "Mul") {
      const m = affine(g, cur);
      if (m && isNormCore(g, g.producer.get(m.activation))) {
        nodes.push(cur);
        scale = m.constant;
        cur = g.producer.get(m.activation);
      }
    }
  } else if (cur.opType === "Mul") {
    const m = affine(g, cur);
    if (m && isNormCore(g, g.producer.get(m.activation))) {
      nodes.push(cur);
      scale = m.constant;
      cur = g.producer.get(m.activation);
    }
  }
  if (!cur) return undefined;
  const core = normCore(g, cur);
  if (!core) return undefined;
  const norm: Norm = { form: core.form, node, input: core.input, output: node.output[0], nodes: [...nodes, ...core.nodes] };
  if (scale) norm.scale = scale;
  return norm;
}

function withScale(n: Norm, scale: string | undefined): Norm {
  if (scale) n.scale = scale;
  return n;
}

/** A binary op with exactly one constant operand. */
function affine(g: Graph, n: NodeProto): { activation: string; constant: string } | undefined {
  if (n.input.length !== 2) return undefined;
  const [a, b] = n.input as [string, string];
  if (g.isConstant(b) && !g.isConstant(a)) return { activation: a, constant: b };
  if (g.isConstant(a) && !g.isConstant(b)) return { activation: b, constant: a };
  return undefined;
}

function isNormCore(g: Graph, n: NodeProto | undefined): boolean {
  return n !== undefined && normCore(g, n) !== undefined;
}

/**
 * The normalizing division: Div(d, s), Mul(d, Reciprocal(s)) or Mul(d, Div(1, s)), where
 * s = Sqrt(ReduceMean(Pow(d, 2)) + ε) and d is x (RMSNorm) or x − ReduceMean(x) (LayerNorm).
 */
function normCore(g: Graph, n: NodeProto): { form: NormForm; input: string; nodes: NodeProto[] } | undefined {
  let numerator: string | undefined;
  let inv: NodeProto | undefined;
  let sqrt: NodeProto | undefined;
  if (n.opType === "Div" && n.input.length === 2) {
    numerator = n.input[0];
    sqrt = g.producer.get(n.input[1]!);
  } else if (n.opType === "Mul" && n.input.length === 2) {
    for (const [num, other] of [[n.input[0]!, n.input[1]!], [n.input[1]!, n.input[0]!]] as const) {
      const p = g.producer.get(other);
      if (p?.opType === "Reciprocal" || (p?.opType === "Div" && isScalar(g, p.input[0], 1))) {
        numerator = num;
        inv = p;
        sqrt = g.producer.get(p.opType === "Reciprocal" ? p.input[0]! : p.input[1]!);
        break;
      }
    }
  }
  if (!numerator || sqrt?.opType !== "Sqrt") return undefined;
  const addEps = g.producer.get(sqrt.input[0]!);
  if (addEps?.opType !== "Add") return undefined;
  const eps = affine(g, addEps);
  if (!eps) return undefined;
  const meanSq = g.producer.get(eps.activation);
  if (!meanSq || !isLastAxisMean(g, meanSq)) return undefined;
  const square = g.producer.get(meanSq.input[0]!);
  const squared = square && squareOf(g, square);
  if (squared !== numerator) return undefined;
  const nodes = [n, ...(inv ? [inv] : []), sqrt, addEps, meanSq, square!];
  // LayerNorm centres first: the numerator is x − ReduceMean(x).
  const sub = g.producer.get(numerator);
  if (sub?.opType === "Sub" && sub.input.length === 2) {
    const mean = g.producer.get(sub.input[1]!);
    if (mean && isLastAxisMean(g, mean) && mean.input[0] === sub.input[0]) {
      return { form: "layernorm-decomposed", input: sub.input[0]!, nodes: [...nodes, sub, mean] };
    }
  }
  return { form: "rmsnorm-decomposed", input: numerator, nodes };
}

/** x for Pow(x, 2) or Mul(x, x). */
function squareOf(g: Graph, n: NodeProto): string | undefined {
  if (n.opType === "Pow" && isScalar(g, n.input[1], 2)) return n.input[0];
  if (n.opType === "Mul" && n.input.length === 2 && n.input[0] === n.input[1]) return n.input[0];
  return undefined;
}

function isScalar(g: Graph, t: string | undefined, value: number): boolean {
  const v = t ? g.constant(t) : undefined;
  return v !== undefined && v.length === 1 && v[0] === value;
}

/** ReduceMean over the last axis only, keeping it (axes as attribute before opset 18, input after). */
function isLastAxisMean(g: Graph, n: NodeProto): boolean {
  if (n.opType !== "ReduceMean") return false;
  if (attrInt(n, "keepdims", 1) === 0) return false;
  const axesAttr = attr(n, "axes");
  const axes = axesAttr ? axesAttr.ints.map(Number) : n.input[1] ? g.constant(n.input[1]) : undefined;
  return axes !== undefined && axes.length === 1 && axes[0] === -1;
}

/**
 * The norms (fused or decomposed, not Skip) that normalize `t`, nearest first. A decomposed norm's
 * last node lies a few ops past its readers of `t`, so the walk goes forward a bounded distance.
 */
export function normsReading(g: Graph, t: string, limit = 64): Norm[] {
  const found: Norm[] = [];
  const queue: NodeProto[] = [...g.consumersOf(t)];
  const seen = new Set<NodeProto>();
  for (let i = 0; i < queue.length && i < limit; i++) {
    const n = queue[i]!;
    if (seen.has(n)) continue;
    seen.add(n);
    const norm = normAt(g, n);
    if (norm && norm.form !== "skip" && norm.input === t) {
      found.push(widest(g, norm));
      continue;
    }
    for (const o of n.output) for (const c of g.consumersOf(o)) queue.push(c); // not push(...): a tensor may have more readers than a call takes arguments
  }
  return found;
}

/** A decomposed norm's core also matches without its affine tail: take the tail when it follows. */
function widest(g: Graph, norm: Norm): Norm {
  let cur = norm;
  for (;;) {
    const next = g.consumersOf(cur.output);
    const wider = next.length === 1 ? normAt(g, next[0]!) : undefined;
    if (!wider || wider.input !== cur.input) return cur;
    cur = wider;
  }
}
