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
import { label, missAt, type Miss } from "./match.js";

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

const NORM_OPS = [...FUSED, ...SKIP].join(", ");

export function isSkipNormNode(n: NodeProto): boolean {
  return SKIP.has(n.opType);
}

/**
 * Why a node does not end a per-token norm, and how far matching got before it stopped: 0 when the
 * node is not norm-like at all (most nodes), 1 when it divides by a Sqrt, 2 when that Sqrt reads
 * an Add of ε, 3 when the Add reads a last-axis mean (so higher is nearer to a norm).
 */
export type NormMiss = Miss & { progress: number };
export type NormMatch = { ok: Norm } | NormMiss;

const cache = new WeakMap<Graph, Map<NodeProto, NormMatch>>();

/** The norm whose last node is `node`, or undefined. Memoised per graph. */
export function normAt(g: Graph, node: NodeProto): Norm | undefined {
  const m = matchNormAt(g, node);
  return "ok" in m ? m.ok : undefined;
}

/** The norm whose last node is `node`, or why `node` does not end one (memoised per graph). */
export function matchNormAt(g: Graph, node: NodeProto): NormMatch {
  let memo = cache.get(g);
  if (!memo) cache.set(g, (memo = new Map()));
  const hit = memo.get(node);
  if (hit !== undefined) return hit;
  const found = matchNorm(g, node);
  memo.set(node, found);
  return found;
}

function normMiss(why: string, n: NodeProto, progress: number): NormMiss {
  return { ...missAt(why, n), progress };
}

function matchNorm(g: Graph, node: NodeProto): NormMatch {
  if (FUSED.has(node.opType) && node.input[0] && node.output[0]) {
    return {
      ok: withScale(
        { form: "fused", node, input: node.input[0], output: node.output[0], nodes: [node] },
        node.input[1],
      ),
    };
  }
  if (SKIP.has(node.opType) && node.output[0]) {
    return {
      ok: withScale(
        { form: "skip", node, input: node.output[3] ?? "", output: node.output[0], nodes: [node] },
        node.input[2],
      ),
    };
  }
  if (node.domain !== "" || !node.output[0])
    return normMiss(
      `${label(node)} is not a norm op (${NORM_OPS}) nor a default-domain op ending a decomposed norm`,
      node,
      0,
    );
  // Optional affine tail: [Add β] after [Mul γ], each with one constant operand.
  const nodes: NodeProto[] = [];
  let cur: NodeProto | undefined = node;
  let scale: string | undefined;
  if (cur.opType === "Add") {
    const a = affine(g, cur);
    if (!a) return normMiss(`${label(node)} does not have exactly one constant operand (a norm's β)`, node, 0);
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
  if (!cur) return normMiss(`nothing computes the activation that ${label(node)} shifts by β`, node, 0);
  const core = normCore(g, cur);
  if (!("ok" in core)) return core;
  const norm: Norm = {
    form: core.ok.form,
    node,
    input: core.ok.input,
    output: node.output[0],
    nodes: [...nodes, ...core.ok.nodes],
  };
  if (scale) norm.scale = scale;
  return { ok: norm };
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
  return n !== undefined && "ok" in normCore(g, n);
}

/**
 * The normalizing division: Div(d, s), Mul(d, Reciprocal(s)) or Mul(d, Div(1, s)), where
 * s = Sqrt(ReduceMean(Pow(d, 2)) + ε) and d is x (RMSNorm) or x − ReduceMean(x) (LayerNorm).
 */
function normCore(g: Graph, n: NodeProto): { ok: { form: NormForm; input: string; nodes: NodeProto[] } } | NormMiss {
  let numerator: string | undefined;
  let inv: NodeProto | undefined;
  let sqrt: NodeProto | undefined;
  if (n.opType === "Div" && n.input.length === 2) {
    numerator = n.input[0];
    sqrt = g.producer.get(n.input[1]!);
  } else if (n.opType === "Mul" && n.input.length === 2) {
    for (const [num, other] of [
      [n.input[0]!, n.input[1]!],
      [n.input[1]!, n.input[0]!],
    ] as const) {
      const p = g.producer.get(other);
      if (p?.opType === "Reciprocal" || (p?.opType === "Div" && isScalar(g, p.input[0], 1))) {
        numerator = num;
        inv = p;
        sqrt = g.producer.get(p.opType === "Reciprocal" ? p.input[0]! : p.input[1]!);
        break;
      }
    }
  }
  if (!numerator)
    return normMiss(`${label(n)} is not a normalizing division (Div, or Mul by a Reciprocal or Div(1, ·))`, n, 0);
  if (sqrt?.opType !== "Sqrt")
    return normMiss(
      `${label(n)} divides by ${sqrt ? `the output of ${label(sqrt)}` : "a tensor no node computes"}, not by a Sqrt`,
      n,
      0,
    );
  const addEps = g.producer.get(sqrt.input[0]!);
  if (addEps?.opType !== "Add")
    return normMiss(
      `${label(sqrt)} under ${label(n)} reads ${addEps ? `${label(addEps)}, not an Add of ε` : "a tensor no node computes"}`,
      sqrt,
      1,
    );
  const eps = affine(g, addEps);
  if (!eps) return normMiss(`${label(addEps)} under ${label(sqrt)} does not add one constant ε`, addEps, 1);
  const meanSq = g.producer.get(eps.activation);
  const notMean = meanSq ? lastAxisMeanProblem(g, meanSq) : "nothing computes it";
  if (!meanSq || notMean)
    return normMiss(
      `${meanSq ? label(meanSq) : `'${eps.activation}'`} under Sqrt(· + ε) is not a mean over the last axis alone: ${notMean}`,
      meanSq ?? addEps,
      2,
    );
  const square = g.producer.get(meanSq.input[0]!);
  const squared = square && squareOf(g, square);
  if (squared !== numerator) {
    const why = !square
      ? `nothing computes the input of ${label(meanSq)}`
      : squared === undefined
        ? `${label(square)} under ${label(meanSq)} is not a square (Pow(x, 2) or Mul(x, x))`
        : `${label(meanSq)} averages the square of '${squared}', but ${label(n)} divides '${numerator}'`;
    return normMiss(why, square ?? meanSq, 3);
  }
  const nodes = [n, ...(inv ? [inv] : []), sqrt, addEps, meanSq, square!];
  // LayerNorm centres first: the numerator is x − ReduceMean(x).
  const sub = g.producer.get(numerator);
  if (sub?.opType === "Sub" && sub.input.length === 2) {
    const mean = g.producer.get(sub.input[1]!);
    if (mean && isLastAxisMean(g, mean) && mean.input[0] === sub.input[0]) {
      return { ok: { form: "layernorm-decomposed", input: sub.input[0]!, nodes: [...nodes, sub, mean] } };
    }
  }
  return { ok: { form: "rmsnorm-decomposed", input: numerator, nodes } };
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
  return lastAxisMeanProblem(g, n) === undefined;
}

/** Why `n` is not a ReduceMean over the last axis alone that keeps it, or undefined when it is. */
function lastAxisMeanProblem(g: Graph, n: NodeProto): string | undefined {
  if (n.opType !== "ReduceMean") return `it is a ${n.opType}, not a ReduceMean`;
  if (attrInt(n, "keepdims", 1) === 0) return "it drops the reduced axis (keepdims=0)";
  const axesAttr = attr(n, "axes");
  const axes = axesAttr ? axesAttr.ints.map(Number) : n.input[1] ? g.constant(n.input[1]) : undefined;
  if (axes === undefined)
    return n.input[1] ? `its axes ('${n.input[1]}') are not a constant` : "it reduces every axis (no axes given)";
  if (axes.length === 1 && axes[0] === -1) return undefined;
  return `it reduces axes [${axes.slice(0, 8).join(", ")}${axes.length > 8 ? ", …" : ""}], not [-1] (a norm over each token's features)`;
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
