/**
 * Presses: scores of a layer's KV-cache entries, per KV head (docs/kv-cache.md has each one's
 * source: repository, commit, file). Every score is [B, kvH, N] over the N entries the present
 * cache holds; the stage keeps the K' best per KV head (ties to the lower position). Entries a
 * method always keeps (SnapKV's window, TOVA's last token, H2O's and A2SF's recent ones) score
 * above every other entry of the example, so the top K' holds them whenever K' covers them.
 *
 * At decode steps the stage keeps every entry, so the scores computed there are never used; they
 * are built to have the right shape for any query length.
 */
import type { NodeBuilder } from "../builder.js";
import {
  ownPositions,
  type KvCriterionModule,
  type KvFacts,
  type KvScoreContext,
  type KvScorer,
} from "../kv/criterion.js";
import type { Prepared } from "../criterion.js";
import { evictable } from "../kv/site.js";

const FLOAT = 1;
const DOUBLE = 11;
const NEEDS_CACHE = "a layer with a KV cache (GroupQueryAttention, or plain attention over Concat(past, current))";
const NEEDS_ATTENTION = `${NEEDS_CACHE}, with its attention probabilities (recomputed from q and the cached keys, or the graph's own)`;

/** The layer must keep a cache prunec can evict (src/analysis/kv-cache.ts, passes/kv/site.ts). */
function cached(facts: KvFacts): Prepared<true> {
  const ok = evictable(facts.layer);
  return "why" in ok ? ok : { ok: true };
}

function press(score: (ctx: KvScoreContext) => string): (facts: KvFacts) => Prepared<KvScorer> {
  return (facts) => {
    const ok = cached(facts);
    return "why" in ok ? ok : { ok: { score } };
  };
}

/** [B, H, N] per query head → [B, kvH, N]: the mean (kvpress) or sum (A2SF) over each GQA group. */
function perKvHead(b: NodeBuilder, ctx: KvScoreContext, perHead: string, how: "mean" | "sum"): string {
  const { kvHeads, heads } = ctx;
  const grouped = b.op("Reshape", [perHead, b.int64([0, kvHeads, heads / kvHeads, -1], [4], "groups")], {}, "by_group");
  return b.reduce(how === "mean" ? "ReduceMean" : "ReduceSum", grouped, [2], 0);
}

/** Scores broadcast to every example and KV head: [B, kvH, N]. */
function overCache(b: NodeBuilder, ctx: KvScoreContext, scores: string, label: string): string {
  return b.op("Expand", [scores, b.slice(b.op("Shape", [ctx.keys]), 0, 0, 3)], {}, label);
}

/** float [N]: 0, 1, …, N−1. */
function positions(b: NodeBuilder, ctx: KvScoreContext): string {
  return b.op("Cast", [b.range(ctx.n, "positions")], { to: FLOAT });
}

/** Scores with the last `count` positions (int64 [1]) raised above every other entry of the example. */
function keepLast(b: NodeBuilder, ctx: KvScoreContext, scores: string, count: string, label: string): string {
  const top = b.op("Add", [b.reduce("ReduceMax", scores, [1, 2], 1), b.float([1], [], "one")], {}, `${label}_top`); // [B,1,1]
  const from = b.op("Cast", [b.op("Sub", [ctx.n, count])], { to: FLOAT }, `${label}_from`);
  const last = b.op("GreaterOrEqual", [positions(b, ctx), from], {}, label); // [N]
  return b.op("Where", [last, top, scores], {}, `${label}_kept`);
}

/** Column sums Σ_i P[h][i][j] of the call's causal probabilities: [B, H, N]. */
function columnSums(b: NodeBuilder, ctx: KvScoreContext, weights?: string): string {
  const p = ctx.probabilities();
  const weighted = weights ? b.op("Mul", [p, weights], {}, "weighted_rows") : p;
  return b.reduce("ReduceSum", weighted, [2], 0);
}

function intArg(ctx: KvScoreContext, name: string, fallback: number): number {
  const v = ctx.args[name];
  return typeof v === "number" ? v : fallback;
}

/** KnormPress: −‖k‖₂ of each cached (post-rotary) key: the shortest keys are kept. */
export const knorm: KvCriterionModule = {
  name: "knorm",
  targets: ["kv"],
  summary: "the negated L2 norm of each cached key (keeps the shortest keys)",
  args: {},
  needs: NEEDS_CACHE,
  reference: "NVIDIA/kvpress 8bb29b9 kvpress/presses/knorm_press.py",
  prepareKv: press(({ b, keys }) => b.op("Neg", [b.reduce("ReduceL2", keys, [3], 0)], {}, "minus_key_norm")),
};

/** StreamingLLMPress: the first `sinks` entries and the most recent ones (1 everywhere but [sinks, sinks + N − K')). */
export const streaming: KvCriterionModule = {
  name: "streaming",
  targets: ["kv"],
  summary: "attention sinks (the first entries) plus the most recent entries (StreamingLLM)",
  noSet:
    "StreamingLLM's scores depend on the count it keeps (sinks, then the most recent entries), not on the entries; restricted to a set they would describe no method",
  args: { sinks: { type: "integer", default: 4, doc: "entries at the start always kept" } },
  needs: NEEDS_CACHE,
  reference:
    "NVIDIA/kvpress 8bb29b9 kvpress/presses/streaming_llm_press.py; decode-time form mit-han-lab/streaming-llm 2e50426 streaming_llm/kv_cache.py",
  decode: (args) => ({ kind: "positional", sinks: Number(args["sinks"] ?? 4) }),
  prepareKv: press((ctx) => {
    const { b } = ctx;
    // In the example's own positions (left pads first: j − pads), over its own real entries.
    const sinks = b.int64([intArg(ctx, "sinks", 4)], [], "sinks");
    const own = ownPositions(b, ctx); // [B,1,N]
    const real = b.op("Sub", [ctx.n, ctx.padding], {}, "real_entries"); // [B,1,1]
    const prunedEnd = b.op("Add", [sinks, b.op("Sub", [real, ctx.kept])], {}, "pruned_end");
    const pruned = b.op(
      "And",
      [b.op("GreaterOrEqual", [own, sinks]), b.op("Less", [own, prunedEnd])],
      {},
      "between_sinks_and_recent",
    );
    const row = b.op("Where", [pruned, b.float([0], [], "zero"), b.float([1], [], "one")], {}, "streaming_scores"); // [B,1,N]
    return overCache(b, ctx, row, "every_head");
  }),
};

/** SnapKV's kernel, which kvpress needs odd (its pooled length matches only then). */
function oddKernel(facts: KvFacts): Prepared<number> {
  const kernel = Number(facts.args["kernel"] ?? 5);
  if (!(kernel >= 1 && kernel % 2 === 1))
    return { why: `the pooling kernel must be odd (kvpress pools to the same length only then), got ${kernel}` };
  return { ok: kernel };
}

/** SnapKV's scores (see `snapkv`), shared with PyramidKV. */
function snapkvScores(ctx: KvScoreContext, kernel: number): string {
  const { b } = ctx;
  const window = intArg(ctx, "window", 64);
  // Only the window's queries are computed: [B,H,w,N], normalized over all N keys.
  const p = ctx.windowProbabilities(window);
  const mean = b.op("Div", [b.reduce("ReduceSum", p, [2], 1), b.float([window], [], "window_size")], {}, "window_mean"); // [B,H,1,N]
  const prefix = b.op("Cast", [b.op("Sub", [ctx.n, b.int64([window], [1], "window_len")])], { to: FLOAT });
  const before = b.op("Cast", [b.op("Less", [positions(b, ctx), prefix])], { to: FLOAT }, "before_window"); // [N]
  const kept = b.op("Mul", [b.squeeze(mean, [2]), before], {}, "prefix_scores"); // [B,H,N], 0 on the window
  // avg_pool1d(kernel, stride 1, padding kernel/2, count_include_pad): zeros past the prefix, ÷ kernel.
  const flat = b.op("Reshape", [kept, b.int64([-1, 1, 0], [3], "pool_rows")], {}, "pool_input"); // [B·H,1,N]
  const half = Math.floor(kernel / 2);
  const pooled = b.op(
    "AveragePool",
    [flat],
    { kernel_shape: [kernel], pads: [half, half], strides: [1], count_include_pad: 1 },
    "pooled",
  );
  const back = b.op("Reshape", [pooled, b.op("Shape", [kept])], {}, "pooled_heads");
  const grouped = perKvHead(b, ctx, b.op("Mul", [back, before], {}, "pooled_prefix"), "mean"); // [B,kvH,N]
  return keepLast(b, ctx, grouped, b.int64([window], [1], "window_kept"), "window");
}

/**
 * SnapKVPress: the last `window` queries' attention (normalized over all N keys), averaged over
 * those queries, on the entries before the window; avg-pooled (kernel, zero padding counted);
 * averaged over the GQA group; the window's entries score above all.
 */
export const snapkv: KvCriterionModule = {
  name: "snapkv",
  targets: ["kv"],
  summary: "the last window of queries' mean attention, pooled, mean over the GQA group; the window kept",
  args: {
    window: { type: "integer", default: 64, doc: "observation window: the last queries, always kept" },
    kernel: { type: "integer", default: 5, doc: "odd average-pooling kernel over positions" },
  },
  needs: NEEDS_ATTENTION,
  reference: "NVIDIA/kvpress 8bb29b9 kvpress/presses/snapkv_press.py",
  prepareKv: (facts) => {
    const kernel = oddKernel(facts);
    return "why" in kernel ? kernel : press((ctx) => snapkvScores(ctx, kernel.ok))(facts);
  },
};

/** ObservedAttentionPress (kvpress): column sums ÷ (N − j), the queries that see entry j; group mean. */
export const observed: KvCriterionModule = {
  name: "observed",
  targets: ["kv"],
  summary: "attention each entry received, ÷ the number of queries that see it, mean over the GQA group",
  args: {},
  needs: NEEDS_ATTENTION,
  reference: "NVIDIA/kvpress 8bb29b9 kvpress/presses/observed_attention_press.py",
  prepareKv: press((ctx) => {
    const { b } = ctx;
    const seen = b.op("Sub", [b.op("Cast", [ctx.n], { to: FLOAT }), positions(b, ctx)], {}, "queries_seeing");
    return perKvHead(b, ctx, b.op("Div", [columnSums(b, ctx), seen], {}, "observed"), "mean");
  }),
};

/** H2O at prefill: unnormalized column sums (heavy hitters), mean over the GQA group; the `recent` last kept. */
export const h2o: KvCriterionModule = {
  name: "h2o",
  targets: ["kv"],
  summary: "heavy hitters (attention received, not normalized) plus the most recent entries (H2O)",
  args: { recent: { type: "integer", default: 0, doc: "the last entries always kept" } },
  needs: NEEDS_ATTENTION,
  reference: "FMInference/H2O ac75c2a h2o_hf/utils_real_drop/modify_llama.py",
  decode: (args) => ({ kind: "received", forget: 1, recent: Number(args["recent"] ?? 0) }),
  prepareKv: press((ctx) => {
    const { b } = ctx;
    const heavy = perKvHead(b, ctx, columnSums(b, ctx), "mean");
    return keepLast(b, ctx, heavy, b.int64([intArg(ctx, "recent", 0)], [1], "recent"), "recent");
  }),
};

/** TOVAPress: the last query's attention averaged over all heads (the same set for every KV head); the last entry kept. */
export const tova: KvCriterionModule = {
  name: "tova",
  targets: ["kv"],
  summary: "the last query's attention, mean over all heads; the last entry kept (TOVA)",
  args: {},
  needs: NEEDS_ATTENTION,
  reference: "NVIDIA/kvpress 8bb29b9 kvpress/presses/tova_press.py",
  prepareKv: press((ctx) => {
    const { b } = ctx;
    const p = ctx.probabilities();
    const last = b.op("Gather", [p, b.int64([-1], [], "last_query")], { axis: 2 }, "last_row"); // [B,H,N]
    const mean = b.reduce("ReduceMean", last, [1], 1); // [B,1,N]
    const every = overCache(b, ctx, mean, "every_head");
    return keepLast(b, ctx, every, b.int64([1], [1], "one_last"), "last");
  }),
};

/** A2SF at prefill: query i weighted by forget^(N−1−i), column sums summed over the GQA group; the `recent` last kept. */
export const a2sf: KvCriterionModule = {
  name: "a2sf",
  targets: ["kv"],
  summary: "attention received with a forgetting factor over query age, summed over the GQA group, plus recent entries",
  args: {
    forget: { type: "number", default: 1, doc: "forgetting factor λ per query step (1: H2O's accumulation)" },
    recent: { type: "integer", default: 16, doc: "the last entries always kept" },
  },
  needs: NEEDS_ATTENTION,
  reference:
    "Dirac-Notation/A2SF 00a617f attention.py, policies/a2sf.py; decode-time form a4360f1 utils_real_drop/modify_llama.py",
  decode: (args) => ({ kind: "received", forget: Number(args["forget"] ?? 1), recent: Number(args["recent"] ?? 16) }),
  prepareKv: press((ctx) => {
    const { b } = ctx;
    const forget = Number(ctx.args["forget"] ?? 1);
    const p = ctx.probabilities();
    const s = b.slice(b.op("Shape", [p]), 0, 2, 3);
    // Row i weighs forget^(S − 1 − i): the newest query 1.
    const age = b.op("Cast", [b.op("Sub", [b.op("Sub", [s, b.int64([1], [1], "one_step")]), b.range(s, "ages")])], {
      to: FLOAT,
    });
    const weights = b.unsqueeze(b.op("Pow", [b.float([forget], [], "forget"), age], {}, "row_weights"), [0, 1, 3]); // [1,1,S,1]
    const acc = perKvHead(b, ctx, columnSums(b, ctx, weights), "sum");
    return keepLast(b, ctx, acc, b.int64([intArg(ctx, "recent", 16)], [1], "recent"), "recent");
  }),
};

/**
 * PyramidKVPress: SnapKV's scores with a budget per layer, more in lower layers (get_layer_budget,
 * float64 and Python's round half to even, as the code computes it; methods.md §24).
 */
export const pyramidkv: KvCriterionModule = {
  name: "pyramidkv",
  targets: ["kv"],
  fractionOnly: true,
  noSet: "PyramidKV's per-layer budgets are fractions of the whole cache, not of a set",
  summary: "SnapKV's scores with a per-layer budget that shrinks with depth (PyramidKV)",
  args: {
    window: { type: "integer", default: 64, doc: "observation window: the last queries, always kept" },
    kernel: { type: "integer", default: 5, doc: "odd average-pooling kernel over positions" },
    beta: { type: "number", default: 20, doc: "ratio of the top layer's budget to the bottom one's (≥ 1)" },
  },
  needs: `${NEEDS_ATTENTION}; 2 or more layers`,
  reference: "NVIDIA/kvpress 8bb29b9 kvpress/presses/pyramidkv_press.py",
  prepareKv: (facts) => {
    const kernel = oddKernel(facts);
    if ("why" in kernel) return kernel;
    const beta = Number(facts.args["beta"] ?? 20);
    if (!(beta >= 1)) return { why: `beta must be at least 1 (kvpress asserts it), got ${beta}` };
    const layers = facts.model.layers.length;
    if (layers < 2) return { why: "PyramidKV's ramp divides by the layer count − 1, and the model has one layer" };
    const cached = press((ctx) => snapkvScores(ctx, kernel.ok))(facts);
    if ("why" in cached) return cached;
    const window = Number(facts.args["window"] ?? 64);
    const index = facts.layer.index;
    return {
      ok: {
        score: cached.ok.score,
        budgetAt: (n, fraction) => pyramidBudget(n, fraction, window, beta, layers, index),
        budget: (b, n, fraction) => {
          const nd = b.op("Cast", [n], { to: DOUBLE }, "n_double");
          const w = b.double([window], [], "window");
          const two = b.double([2], [], "two");
          const capped = b.op(
            "Sub",
            [b.op("Add", [w, b.op("Mul", [nd, b.double([fraction], [], "fraction")])]), w],
            {},
            "cap_minus_window",
          );
          const low = b.op("Div", [capped, b.double([beta], [], "beta")], {}, "min_budget");
          const high = b.op("Sub", [b.op("Mul", [capped, two]), low], {}, "max_budget");
          const room = b.op("Sub", [nd, w], {}, "room");
          const over = b.op("GreaterOrEqual", [high, room], {}, "over_room");
          const max = b.op("Where", [over, room, high], {}, "max_capped");
          const min = b.op("Where", [over, b.op("Sub", [b.op("Mul", [capped, two]), room]), low], {}, "min_capped");
          const ordered = b.op(
            "And",
            [
              b.op("And", [b.op("GreaterOrEqual", [nd, max]), b.op("GreaterOrEqual", [max, min])]),
              b.op("GreaterOrEqual", [min, w]),
            ],
            {},
            "ramp_applies",
          );
          const step = b.op(
            "Div",
            [b.op("Sub", [max, min]), b.double([layers - 1], [], "layers_minus_one")],
            {},
            "step",
          );
          const ramp = b.op("Sub", [max, b.op("Mul", [b.double([index], [], "layer"), step])], {}, "ramp");
          const fallback = b.op("Mul", [nd, b.double([fraction], [], "fraction_again")], {}, "n_times_fraction");
          const chosen = b.op("Round", [b.op("Where", [ordered, ramp, fallback])], {}, "layer_budget");
          return b.op("Max", [b.op("Cast", [chosen], { to: 7 }), b.int64([1], [1], "at_least_one")], {}, "budget");
        },
      },
    };
  },
};

/** Python's round(): halves to the even neighbour (ONNX Round does the same). */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * kvpress's get_layer_budget for layer `index` of `layers`, N entries, kept fraction c: the ramp
 * from max to min over the layers when it fits (n ≥ max ≥ min ≥ window), else round(N·c); at least 1.
 * The graph form (`budget` above) computes the same float64 steps for lengths past the table.
 */
function pyramidBudget(n: number, c: number, window: number, beta: number, layers: number, index: number): number {
  const capped = window + n * c - window;
  let min = capped / beta;
  let max = capped * 2 - min;
  if (max >= n - window) {
    max = n - window;
    min = capped * 2 - max;
  }
  const ordered = n >= max && max >= min && min >= window;
  const chosen = ordered ? max - index * ((max - min) / (layers - 1)) : n * c;
  return Math.max(1, roundHalfEven(chosen));
}

/** The hash behind `random` on the cache: h = (j·A + g·B + seed·C + D) mod P, exact in int64 and in float32 (P < 2^24). */
export const RANDOM_HASH = { A: 9765625, B: 7368787, C: 4194301, D: 1234567, P: 16777213 } as const;

/**
 * `random` on the cache: uniform-looking scores from a seeded hash of (KV head, position), the same
 * in every layer (kvpress's RandomPress re-seeds its generator at every layer's call, so with a seed
 * every layer keeps the same set; torch's stream itself cannot be reproduced in a graph).
 */
export const randomKv: KvCriterionModule = {
  name: "random",
  targets: ["kv"],
  summary: "a seeded hash of (KV head, position): a random baseline, the same set in every layer",
  args: { seed: { type: "integer", default: 0, doc: "seed of the hash" } },
  needs: NEEDS_CACHE,
  reference: "NVIDIA/kvpress 8bb29b9 kvpress/presses/random_press.py (structure: a fresh seeded draw per layer)",
  prepareKv: press((ctx) => {
    const { b } = ctx;
    const { A, B, C, D, P } = RANDOM_HASH;
    const seed = intArg(ctx, "seed", 0);
    const kvHeads = ctx.kvHeads;
    // The example's own positions: the same set as alone.
    const pos = ownPositions(b, ctx); // [B,1,N]
    const heads = b.int64(
      Array.from({ length: kvHeads }, (_, g) => g * B + seed * C + D),
      [kvHeads, 1],
      "head_terms",
    );
    const h = b.op(
      "Mod",
      [b.op("Add", [b.op("Mul", [pos, b.int64([A], [], "a")]), heads]), b.int64([P], [], "p")],
      { fmod: 0 },
      "hash",
    );
    const scores = b.op("Cast", [h], { to: FLOAT }, "random_scores"); // [B,kvH,N]
    return overCache(b, ctx, scores, "every_example");
  }),
};

/** The presses of this file, in the order the docs list them (passes/registry.ts adds the ones with files of their own). */
/**
 * SpAtten's cascade token pruning during generation (methods.md §27; HPCA'21, the paper's
 * equations: there is no public code of the cascade): an entry's importance is the attention it
 * has received, Σ over every head and query of every layer of the stage and over every call; one set
 * of entries stays in all those layers (passes/kv-cascade-stage.ts sums this score over them and
 * carries it between calls).
 */
export const spattenKv: KvCriterionModule = {
  name: "spatten",
  targets: ["kv"],
  summary:
    "SpAtten's cascade while generating: attention received, summed over every head, query, layer of the stage and call; one set of entries for all those layers",
  args: {},
  needs: NEEDS_ATTENTION,
  reference:
    "SpAtten (HPCA'21) cascade token pruning, the paper's equations (mit-han-lab/spatten a0f1388 has no cascade code)",
  decode: () => ({ kind: "cascade" }),
  decodeOnly:
    "its KV form keeps one set of entries for all its layers at every call, with the scores carried between calls: write 'during decode keep kv K tokens by spatten'",
  // This call's attention received from every query row and head ([B, kvH, N], the same for each KV head).
  prepareKv: press((ctx) => {
    const { b } = ctx;
    const received = b.unsqueeze(b.reduce("ReduceSum", ctx.probabilities(), [1, 2], 0), [1]); // [B,1,N]
    return overCache(b, ctx, received, "received_by_every_head");
  }),
};

export const KV_PRESSES_HERE: readonly KvCriterionModule[] = [
  knorm,
  streaming,
  snapkv,
  pyramidkv,
  observed,
  h2o,
  tova,
  a2sf,
  randomKv,
  spattenKv,
];
