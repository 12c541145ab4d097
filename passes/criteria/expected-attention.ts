/**
 * ExpectedAttentionPress (kvpress @ 8bb29b9, kvpress/presses/expected_attention_press.py and
 * kvpress/utils.py `get_prerope_query_states`; docs/kv-cache.md): the attention that queries still
 * to come are expected to pay each cached entry, modelled from the prompt's own queries.
 *
 *   1. The pre-RoPE queries (after q_norm where the model has one) of positions n_sink … N − 1:
 *      their mean μ and covariance Σ (÷ (N − n_sink)), per query head.
 *   2. The rotation averaged over the next n_future positions, R̄ = mean_p (cos_p·I + sin_p·P) for
 *      p = N … N + n_future − 1 (HF's full-width rotate-half rotary); μ ← μR̄ᵀ, Σ ← R̄ΣR̄ᵀ.
 *   3. Per key k (sinks excluded): μ·k/√d + kᵀΣk/(2d), a softmax over the non-sink keys, the mean
 *      over the GQA group, then (score + ε)·‖v‖₂.
 *   4. The first n_sink entries score above every other entry (kvpress pads them with max + 1).
 *
 * In a left-padded batch each example is as alone: its statistics use its own queries from its
 * own position n_sink on, its future positions start at its own length, its sinks are its first
 * real entries. The rotation comes from the model's own rotary tables: their frequencies where the
 * tables prove to be cos/sin(p·θ) (passes/kv/rotary-frequencies.ts; positions past the table's end
 * then rotate as HF's rotary computes them), else their rows read in the graph (averagedRotary).
 */
import type { ArgValue } from "../../grammar/ir.js";
import type { Prepared } from "../criterion.js";
import { ownPositions, type KvCriterionModule, type KvScoreContext } from "../kv/criterion.js";
import type { QueryRotary } from "../../src/analysis/rotary.js";
import { rotaryFrequencies, rotaryTables, type RotaryTables } from "../kv/rotary-frequencies.js";
import type { NodeBuilder } from "../builder.js";
import { evictable } from "../kv/site.js";

const FLOAT = 1;

/** An `on` / `off` argument. */
function onOff(args: Readonly<Record<string, ArgValue>>, name: string): Prepared<boolean> {
  const v = String(args[name] ?? "on");
  if (v === "on" || v === "off") return { ok: v === "on" };
  return { why: `${name} is 'on' or 'off', got '${v}'` };
}

interface Expected {
  rotary: QueryRotary;
  /** The frequencies (recovered and proven), or the table's rows read in the graph (why not the frequencies). */
  rotation: { kind: "frequencies"; theta: number[] } | { kind: "table"; tables: RotaryTables; why: string };
  headSize: number;
  future: number;
  sinks: number;
  covariance: boolean;
  vnorm: boolean;
  epsilon: number;
}

/** The rotate-half pairing P of kvpress's `apply_avg_rope` (D × D, row-major): P[h+i][i] = 1, P[i][h+i] = −1. */
function rotateHalfMatrix(d: number): number[] {
  const h = d / 2;
  const p = new Array<number>(d * d).fill(0);
  for (let i = 0; i < h; i++) {
    p[(h + i) * d + i] = 1;
    p[i * d + h + i] = -1;
  }
  return p;
}

function identity(d: number): number[] {
  const m = new Array<number>(d * d).fill(0);
  for (let i = 0; i < d; i++) m[i * d + i] = 1;
  return m;
}

/**
 * float [B, D/2] each: mean over p = n_b … n_b + n_future − 1 of cos/sin of the rotary at p. From
 * the frequencies when the table proved to be cos/sin(p·θ) (exact past its end, as HF computes);
 * else the model's own table rows (any scaling the table holds), a position past its last row
 * reading that row: the model cannot run there, and kvpress's HF rotary would extrapolate.
 */
function averagedRotary(b: NodeBuilder, ctx: KvScoreContext, e: Expected): { Cos: string; Sin: string } {
  const half = e.headSize / 2;
  const own = b.op("Sub", [ctx.n, ctx.padding], {}, "own_length"); // int64 [B,1,1]
  if (e.rotation.kind === "frequencies") {
    const start = b.op("Cast", [own], { to: FLOAT }, "future_start"); // [B,1,1]
    const future = b.float(
      Array.from({ length: e.future }, (_, i) => i),
      [1, e.future, 1],
      "future_steps",
    );
    const angles = b.op(
      "Mul",
      [b.op("Add", [start, future]), b.float(e.rotation.theta, [half], "rotary_frequencies")],
      {},
      "future_angles",
    ); // [B,F,D/2]
    const mean = (op: "Cos" | "Sin") => b.reduce("ReduceMean", b.op(op, [angles]), [1], 0); // [B,D/2]
    return { Cos: mean("Cos"), Sin: mean("Sin") };
  }
  const { tables } = e.rotation;
  const rows = b.op(
    "Min",
    [
      b.op("Add", [
        b.squeeze(own, [2]),
        b.int64(
          Array.from({ length: e.future }, (_, i) => i),
          [1, e.future],
          "future_steps",
        ),
      ]),
      b.int64([tables.rows - 1], [], "last_row"),
    ],
    {},
    "future_rows",
  ); // int64 [B,F]
  const mean = (table: string, op: string) => {
    let gathered = b.op("Cast", [b.op("Gather", [table, rows], { axis: 0 })], { to: FLOAT }, `future_${op}`); // [B,F,cols]
    if (tables.columns !== half) gathered = b.slice(gathered, 2, 0, half); // HF's full table: its first half
    return b.reduce("ReduceMean", gathered, [1], 0); // [B,D/2]
  };
  return { Cos: mean(e.rotary.cos, "cos"), Sin: mean(e.rotary.sin, "sin") };
}

function score(ctx: KvScoreContext, e: Expected): string {
  const { b, heads, kvHeads } = ctx;
  const d = e.headSize;
  const group = heads / kvHeads;
  // The call's pre-RoPE queries, [B,H,S,D] (S = N: only a prefill evicts).
  const split =
    e.rotary.layout === "tokens,heads·dims"
      ? b.op(
          "Transpose",
          [b.op("Reshape", [e.rotary.query, b.int64([0, 0, heads, d], [4], "query_heads")])],
          { perm: [0, 2, 1, 3] },
          "heads_first",
        )
      : e.rotary.query;
  const q = b.op("Cast", [split], { to: FLOAT }, "prerope_queries");
  const own = ownPositions(b, ctx); // int64 [B,1,N]
  const sinks = b.int64([e.sinks], [], "sinks");
  const afterSinks = b.op("GreaterOrEqual", [own, sinks], {}, "after_sinks"); // [B,1,N]
  const rows = b.unsqueeze(b.op("Cast", [afterSinks], { to: FLOAT }), [3]); // [B,1,S,1]
  // N − n_sink queries per example (at least 1: a prompt of sinks only has no statistics, and keeps its sinks).
  const counted = b.op("Sub", [b.op("Sub", [ctx.n, ctx.padding]), sinks], {}, "statistics_queries"); // [B,1,1]
  const count = b.unsqueeze(
    b.op("Max", [b.op("Cast", [counted], { to: FLOAT }), b.float([1], [], "at_least_one")]),
    [3],
  ); // [B,1,1,1]
  const mean = b.op("Div", [b.reduce("ReduceSum", b.op("Mul", [q, rows]), [2], 1), count], {}, "query_mean"); // [B,H,1,D]
  // R̄ per example: cos/sin averaged over p = n_b … n_b + n_future − 1 (HF's full width).
  const halves = averagedRotary(b, ctx, e);
  const averaged = (op: "Cos" | "Sin") => {
    const m = halves[op];
    return b.unsqueeze(b.op("Concat", [m, m], { axis: 1 }, `mean_${op.toLowerCase()}`), [1]); // [B,1,D]
  };
  // kvpress's cos.unsqueeze(1)·I + sin.unsqueeze(1)·P: column c scaled by cos_c / sin_c.
  const rotation = b.unsqueeze(
    b.op(
      "Add",
      [
        b.op("Mul", [b.float(identity(d), [d, d], "identity"), averaged("Cos")]),
        b.op("Mul", [b.float(rotateHalfMatrix(d), [d, d], "rotate_half"), averaged("Sin")]),
      ],
      {},
      "averaged_rotation",
    ),
    [1],
  ); // [B,1,D,D]
  const transposed = b.op("Transpose", [rotation], { perm: [0, 1, 3, 2] }, "averaged_rotation_t");
  const mu = b.op("MatMul", [mean, transposed], {}, "rotated_mean"); // [B,H,1,D]
  // Keys per KV head against their query group: [B,kvH,1,N,D] and [B,kvH,G,1,D].
  const keys = b.unsqueeze(ctx.keys, [2]);
  const muGroups = b.op("Reshape", [mu, b.int64([0, kvHeads, group, 1, d], [5], "mean_groups")]);
  let logits = b.op(
    "Div",
    [
      b.squeeze(b.op("MatMul", [muGroups, b.op("Transpose", [keys], { perm: [0, 1, 2, 4, 3] })]), [3]),
      b.float([Math.sqrt(d)], [], "sqrt_d"),
    ],
    {},
    "mean_logits",
  ); // [B,kvH,G,N]
  if (e.covariance) {
    const centered = b.op("Mul", [b.op("Sub", [q, mean]), rows], {}, "centered_queries");
    const cov = b.op(
      "Div",
      [b.op("MatMul", [b.op("Transpose", [centered], { perm: [0, 1, 3, 2] }), centered]), count],
      {},
      "query_covariance",
    ); // [B,H,D,D]
    const rotated = b.op("MatMul", [b.op("MatMul", [rotation, cov]), transposed], {}, "rotated_covariance");
    const covGroups = b.op("Reshape", [rotated, b.int64([0, kvHeads, group, d, d], [5], "covariance_groups")]);
    const quadratic = b.reduce("ReduceSum", b.op("Mul", [b.op("MatMul", [keys, covGroups]), keys]), [4], 0); // [B,kvH,G,N]
    logits = b.op("Add", [logits, b.op("Div", [quadratic, b.float([2 * d], [], "two_d")])], {}, "expected_logits");
  }
  // Softmax over the non-sink keys (the example's pads are not keys either).
  const keysCounted = b.unsqueeze(afterSinks, [1]); // [B,1,1,N]
  const masked = b.op("Where", [keysCounted, logits, b.float([-1e30], [], "not_a_key")], {}, "non_sink_logits");
  let scores = b.reduce("ReduceMean", b.op("Softmax", [masked], { axis: -1 }, "expected_attention"), [2], 0); // [B,kvH,N]
  if (e.vnorm)
    scores = b.op(
      "Mul",
      [b.op("Add", [scores, b.float([e.epsilon], [], "epsilon")]), b.reduce("ReduceL2", ctx.values(), [3], 0)],
      {},
      "times_value_norm",
    );
  // The example's first n_sink entries above all of its others.
  const sink = b.op(
    "And",
    [b.op("Not", [afterSinks]), b.op("GreaterOrEqual", [own, b.int64([0], [], "first_real")])],
    {},
    "sink_entries",
  );
  const top = b.op("Add", [b.reduce("ReduceMax", scores, [1, 2], 1), b.float([1], [], "one")], {}, "sinks_top"); // [B,1,1]
  return b.op("Where", [sink, top, scores], {}, "sinks_kept");
}

export const expectedAttention: KvCriterionModule = {
  name: "expected-attn",
  targets: ["kv"],
  summary:
    "attention the next queries are expected to pay (pre-RoPE query mean and covariance, rotary averaged over future positions) × ‖v‖",
  args: {
    future: {
      type: "integer",
      default: 512,
      doc: "future positions the rotation is averaged over (n_future_positions)",
    },
    sinks: { type: "integer", default: 4, doc: "first entries always kept and left out of the statistics (n_sink)" },
    covariance: {
      type: "identifier",
      default: "on",
      doc: "`on`: use the queries' covariance (use_covariance); `off`: the mean only",
    },
    vnorm: {
      type: "identifier",
      default: "on",
      doc: "`on`: (score + epsilon)·‖v‖₂ (use_vnorm); `off`: the attention alone",
    },
    epsilon: { type: "number", default: 0, doc: "added to each score before the value norm" },
  },
  needs:
    "a layer with a KV cache whose query is rotated (rotate-half, the whole head) by constant cos/sin tables: GroupQueryAttention's own or a RotaryEmbedding's, or x·cos + rotate_half(x)·sin before Q·Kᵀ",
  reference: "NVIDIA/kvpress 8bb29b9 kvpress/presses/expected_attention_press.py, kvpress/utils.py",
  noStreamBelow:
    "expected attention rotates its statistics to the positions after the prompt; a stream stage above the layer leaves its cache shorter than the prompt",
  prepareKv: (facts) => {
    const ok = evictable(facts.layer);
    if ("why" in ok) return ok;
    const { layer, graph, args } = facts;
    const covariance = onOff(args, "covariance");
    if ("why" in covariance) return covariance;
    const vnorm = onOff(args, "vnorm");
    if ("why" in vnorm) return vnorm;
    const future = Number(args["future"] ?? 512);
    const sinks = Number(args["sinks"] ?? 4);
    if (!(future >= 1)) return { why: `future must be at least 1, got ${future}` };
    if (!(sinks >= 0)) return { why: `sinks must be at least 0, got ${sinks}` };
    const rotary = layer.queryRotary;
    if (!rotary) return { why: `layer ${layer.index}'s query rotary: ${layer.queryRotaryWhy ?? "no attention"}` };
    const headSize = facts.model.shapes.get(ok.ok.cache.presentKey)?.[3] ?? layer.headSize;
    if (typeof headSize !== "number" || headSize % 2 !== 0)
      return { why: `layer ${layer.index}'s head size is not a known even number` };
    const tables = rotaryTables(graph, rotary, headSize);
    if ("why" in tables) return { why: `layer ${layer.index}: ${tables.why}` };
    const theta = rotaryFrequencies(graph, rotary, tables.ok);
    const e: Expected = {
      rotary,
      rotation:
        "why" in theta
          ? { kind: "table", tables: tables.ok, why: theta.why }
          : { kind: "frequencies", theta: theta.ok },
      headSize,
      future,
      sinks,
      covariance: covariance.ok,
      vnorm: vnorm.ok,
      epsilon: Number(args["epsilon"] ?? 0),
    };
    return { ok: { score: (ctx) => score(ctx, e) } };
  },
};
