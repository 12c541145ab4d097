/**
 * A layer's query rotary: where the query is before rotary (the pre-RoPE query) and which constant
 * cos/sin tables rotate it. Expected attention (kvpress's ExpectedAttentionPress) models the queries
 * still to come from the statistics of the pre-RoPE queries and the rotation at future positions,
 * so it needs both. Three shapes are recognised, the ones exports write:
 *
 *   GroupQueryAttention with do_rotary=1: the op's own query input, its cos/sin caches (inputs 7, 8);
 *   GroupQueryAttention reading a com.microsoft RotaryEmbedding's output (what passes/explicit-rotary.ts
 *     writes, and exporters that rotate outside the op): that node's input and caches;
 *   plain attention: the query of Q·Kᵀ (through scalar scaling and casts) is
 *     `x·C + rotate_half(x)·S`, C and S rows of a constant table gathered by a graph input
 *     (torch exports of HF's `cos_cached[position_ids]`, the half table repeated or the full one).
 *
 * Only rotate-half rotary over the whole head (HF's convention, the one kvpress writes its averaged
 * rotation for) is accepted; anything else gets the reason. Facts are tensor names only; reading the
 * tables (and recovering the frequencies from them) is left to the press that needs it.
 */
import { type Graph, attr, attrInt, type NodeProto } from "../ir/graph.js";
import type { AttentionCore } from "./attention.js";
import type { Dim, ShapeMap } from "./dims.js";

export interface QueryRotary {
  /**
   * The query before rotary: `[batch, seq, heads·head_size]` ("tokens,heads·dims", what fused ops
   * read) or `[batch, heads, seq, head_size]` ("heads,tokens,dims", plain attention).
   */
  query: string;
  layout: "tokens,heads·dims" | "heads,tokens,dims";
  /** Constant tables whose row p holds cos/sin(p·θ_i), i < head_size/2 ("half"), or that half twice ("full", HF's `cat(freqs, freqs)`). */
  cos: string;
  sin: string;
  form: "half" | "full";
  /** Where the rotation is (a node's name, for messages). */
  node: string;
}

export type RotaryMatch = { ok: QueryRotary } | { why: string };

const CONTRIB = "com.microsoft";

/** The query rotary of a layer's attention `core`; `values` are the constant int tensors shape inference computed. */
export function queryRotary(g: Graph, shapes: ShapeMap, values: Map<string, Dim[]>, core: AttentionCore): RotaryMatch {
  if (core.kind === "GroupQueryAttention") return fusedQueryRotary(g, core.anchor);
  if (core.kind === "matmul-softmax" && core.qk) return plainQueryRotary(g, shapes, values, core.qk);
  return { why: `its attention is ${core.kind}, whose query rotary prunec does not trace` };
}

function fusedQueryRotary(g: Graph, n: NodeProto): RotaryMatch {
  const where = `GroupQueryAttention '${n.name}'`;
  if (!n.input[1]) return { why: `${where} reads packed QKV; its pre-rotary query is not a tensor of its own` };
  if (attrInt(n, "do_rotary", 0) === 1) {
    if (attrInt(n, "rotary_interleaved", 0) !== 0)
      return { why: `${where} rotates interleaved pairs; kvpress's averaged rotation is rotate-half` };
    return tables(g, {
      query: n.input[0]!,
      layout: "tokens,heads·dims",
      cos: n.input[7],
      sin: n.input[8],
      node: n.name,
    });
  }
  const r = g.producer.get(n.input[0]!);
  if (r?.opType !== "RotaryEmbedding" || r.domain !== CONTRIB)
    return {
      why: `the query of ${where} does not come from a com.microsoft RotaryEmbedding (nor does the op rotate it)`,
    };
  const at = `RotaryEmbedding '${r.name}'`;
  if (attrInt(r, "interleaved", 0) !== 0)
    return { why: `${at} rotates interleaved pairs; kvpress's averaged rotation is rotate-half` };
  const scale = attr(r, "scale");
  if (scale && scale.f !== 1) return { why: `${at} scales positions by ${scale.f}` };
  if (attrInt(r, "is_packed_batching", 0) !== 0) return { why: `${at} reads packed batches` };
  return tables(g, { query: r.input[0]!, layout: "tokens,heads·dims", cos: r.input[2], sin: r.input[3], node: r.name });
}

function tables(
  g: Graph,
  found: Omit<QueryRotary, "cos" | "sin" | "form"> & { cos?: string; sin?: string },
): RotaryMatch {
  const { cos, sin } = found;
  if (!cos || !sin || !g.isConstant(cos) || !g.isConstant(sin))
    return { why: `the cos/sin caches of '${found.node}' are not constant tables` };
  return { ok: { ...found, cos, sin, form: "half" } };
}

/** Ops between the rotated query and Q·Kᵀ that scale it by a constant or change its type. */
function belowScaling(g: Graph, t: string): string {
  for (let steps = 0; steps < 4; steps++) {
    const p = g.producer.get(t);
    const scalar = (i: string | undefined) => i !== undefined && g.isConstant(i) && (g.constant(i)?.length ?? 0) === 1;
    if (p && (p.opType === "Cast" || p.opType === "Identity")) t = p.input[0]!;
    else if (p && (p.opType === "Mul" || p.opType === "Div") && scalar(p.input[1])) t = p.input[0]!;
    else if (p && p.opType === "Mul" && scalar(p.input[0])) t = p.input[1]!;
    else break;
  }
  return t;
}

function plainQueryRotary(g: Graph, shapes: ShapeMap, values: Map<string, Dim[]>, qk: NodeProto): RotaryMatch {
  const q = belowScaling(g, qk.input[0]!);
  const add = g.producer.get(q);
  const not = `the query of Q·Kᵀ '${qk.name}' ('${q}') is not x·cos + rotate_half(x)·sin`;
  if (add?.opType !== "Add") return { why: `${not}: it comes from ${add ? `${add.opType} '${add.name}'` : "no node"}` };
  const [m0, m1] = add.input.map((i) => g.producer.get(i));
  if (m0?.opType !== "Mul" || m1?.opType !== "Mul")
    return { why: `${not}: Add '${add.name}' does not sum two products` };
  const reasons: string[] = [];
  for (const [cosMul, sinMul] of [
    [m0, m1],
    [m1, m0],
  ] as const) {
    for (const [xi, ci] of [
      [0, 1],
      [1, 0],
    ] as const)
      for (const [ri, si] of [
        [0, 1],
        [1, 0],
      ] as const) {
        const x = cosMul.input[xi]!;
        const half = rotateHalfOf(g, shapes, values, sinMul.input[ri]!);
        if ("why" in half) {
          reasons.push(half.why);
          continue;
        }
        if (half.ok !== x) continue;
        const cos = gatheredTable(g, shapes, cosMul.input[ci]!);
        const sin = gatheredTable(g, shapes, sinMul.input[si]!);
        if ("why" in cos) return { why: `${not}: ${cos.why}` };
        if ("why" in sin) return { why: `${not}: ${sin.why}` };
        if (cos.ok.indices !== sin.ok.indices)
          return { why: `${not}: its cos and sin rows are gathered by different tensors` };
        if (cos.ok.form !== sin.ok.form) return { why: `${not}: its cos and sin rows are not the same width` };
        const { table: cosTable, form } = cos.ok;
        return {
          ok: { query: x, layout: "heads,tokens,dims", cos: cosTable, sin: sin.ok.table, form, node: add.name },
        };
      }
  }
  return { why: `${not}: ${reasons[0] ?? "neither product reads rotate_half of the other's input"}` };
}

const lastAxis = (a: number | undefined, rank: number) => a === -1 || a === rank - 1;

/** `Concat(Neg(x[..., h:]), x[..., :h])` on the last axis, h = half the head: x, or why not. */
function rotateHalfOf(
  g: Graph,
  shapes: ShapeMap,
  values: Map<string, Dim[]>,
  t: string,
): { ok: string } | { why: string } {
  const c = g.producer.get(t);
  if (c?.opType !== "Concat" || c.input.length !== 2) return { why: `'${t}' is not a two-input Concat (rotate_half)` };
  const neg = g.producer.get(c.input[0]!);
  const low = g.producer.get(c.input[1]!);
  const high = neg?.opType === "Neg" ? g.producer.get(neg.input[0]!) : undefined;
  if (high?.opType !== "Slice" || low?.opType !== "Slice")
    return { why: `Concat '${c.name}' is not [−x[..., h:], x[..., :h]] (rotate_half)` };
  const x = high.input[0]!;
  const shape = shapes.get(x);
  const d = shape?.at(-1);
  if (!shape || typeof d !== "number" || d % 2 !== 0)
    return { why: `the rotated query '${x}' has no known even head size` };
  if (low.input[0] !== x || !lastAxis(attrInt(c, "axis", 0), shape.length))
    return { why: `Concat '${c.name}' does not join two halves of one tensor on its last axis` };
  const h = d / 2;
  const slice = (s: NodeProto, from: number, to: number): boolean => {
    const [starts, ends, axes, steps] = [1, 2, 3, 4].map((i) => (s.input[i] ? values.get(s.input[i]!) : undefined));
    const end = ends?.[0];
    return (
      starts?.length === 1 &&
      starts[0] === from &&
      typeof end === "number" &&
      (end === to || (to === d && end >= d)) &&
      (axes === undefined ? shape.length === 1 : axes.length === 1 && lastAxis(axes[0] as number, shape.length)) &&
      (steps === undefined || (steps.length === 1 && steps[0] === 1))
    );
  };
  if (!slice(high, h, d) || !slice(low, 0, h))
    return { why: `the slices of rotate_half Concat '${c.name}' are not x[..., ${h}:] and x[..., :${h}]` };
  return { ok: x };
}

/** A constant table's rows gathered by a graph input (and Unsqueezed), the half table possibly repeated. */
function gatheredTable(
  g: Graph,
  shapes: ShapeMap,
  t: string,
): { ok: { table: string; indices: string; form: "half" | "full" } } | { why: string } {
  let n = g.producer.get(t);
  while (n && (n.opType === "Unsqueeze" || n.opType === "Cast" || n.opType === "Identity"))
    n = g.producer.get(n.input[0]!);
  let form: "half" | "full" = "full";
  if (n?.opType === "Concat" && n.input.length === 2 && n.input[0] === n.input[1]) {
    const rank = shapes.get(n.output[0]!)?.length;
    if (rank === undefined || !lastAxis(attrInt(n, "axis", 0), rank))
      return { why: `Concat '${n.name}' does not repeat the table's half on its last axis` };
    form = "half";
    n = g.producer.get(n.input[0]!);
  }
  if (n?.opType !== "Gather" || attrInt(n, "axis", 0) !== 0)
    return { why: `'${t}' is not a row of a cos/sin table gathered by position` };
  const [table, indices] = n.input;
  if (!table || !g.isConstant(table)) return { why: `the table Gather '${n.name}' reads is not constant` };
  if (!indices || !g.inputs.has(indices))
    return { why: `Gather '${n.name}' indexes its table by '${indices}', not a graph input` };
  return { ok: { table, indices, form } };
}
