/**
 * Counts per example (`keep mass P%`, `keep above X`, `flowcut(adaptive: 1)`, `of SET`, a
 * criterion that counts itself within its budget (`crops`), and any stage after one of those):
 * each example keeps its own number of tokens; the batch pads to its largest count, and the
 * padding's key bias (`validBias`) masks it out of the later attention (passes/adaptive.ts).
 * When linear-attention layers follow, the padding goes first, as zero rows
 * (passes/front-padding.ts).
 */
import type { NodeBuilder } from "../builder.js";
import type { StagePlan } from "../../src/plan-types.js";
import { countPerExample, selectAdaptive } from "../adaptive.js";
import { attentionOf, clsRowScores } from "../attention/attention-map.js";
import type { SelectionModule } from "./kind.js";
import { paddingUnmaskable } from "../mask-recycle.js";
import { cachedAfter, firstCall, frontPaddingWhy, linearFollows, paddingMode, padsFirst } from "../front-padding.js";
import { shareDynamic } from "../amount.js";
import { rankInGroup } from "../select-groups.js";

/** onnx TensorProto element types. */
const FLOAT = 1;
const INT64 = 7;

export const adaptive: SelectionModule = {
  name: "adaptive",
  summary: "a count per example; TopK to the batch's largest count, the rest padding (−1 exposed, masked below)",
  check: (f) => {
    const p = f.perExample;
    if (!p) return undefined;
    const name = f.criterion.name;
    if (f.model.batchAxis === 1 && f.model.tokenAxis === 0) {
      return {
        why: "this stage's count differs per example, which pads the batch and masks the padding in later attention; prunec does that for batch-first residual streams only, and this model's is sequence-first [tokens, batch, hidden]",
        at: "amount",
      };
    }
    if (linearFollows(f.model, f.layer + 1)) {
      // Hybrid models: the padding goes in front as zero rows (passes/front-padding.ts).
      const why = frontPaddingWhy(f.model, f.layer + 1, f.prefix);
      if (why)
        return {
          why: `this stage's count differs per example, so batches pad to the largest count; before linear-attention layers prunec pads with zero rows in front of each example, but ${why}`,
          at: "amount",
        };
      const cached = cachedAfter(f.model, f.layer + 1);
      if (!cached.length)
        return {
          why: "this stage's count differs per example and linear-attention layers follow, so each example's padding rows come first, as zero rows, which is exact only while the recurrent states are zero (the first call); prunec tells the first call by the padding validity it carries with a later layer's KV cache, and no layer after this stage keeps one",
          at: "amount",
        };
      if (!f.kvState)
        return {
          why: `this stage's count differs per example and linear-attention layers follow, so each example's padding rows come first; layer ${cached[0]} keeps them in its KV cache, where later calls (decode steps) would attend to them, and the host's attention mask cannot say where they are: compile with --kv-state, which carries each cache slot's validity from call to call (past_key_values.stageN.prunec_valid → present.stageN.prunec_valid)`,
          at: "amount",
        };
      if (f.options.has("renumber"))
        return {
          why: "this stage's count differs per example and linear-attention layers follow, so each example's padding comes first, before its kept tokens; 'with renumber' would number the padding rows as tokens",
          at: "amount",
        };
    } else {
      const unmaskable = paddingUnmaskable(f.model, f.layer + 1);
      if (unmaskable)
        return {
          why: `this stage's count differs per example, so batches pad to the largest count and mask the padding in every later attention, but ${unmaskable}`,
          at: "amount",
        };
    }
    if (p.adaptive && p.drop) return { why: `${p.what}; write it with 'keep' ('keep ${p.keepText}')`, at: "amount" };
    if (p.flowcut && (p.drop || p.amount !== "count"))
      return {
        why: `${p.what}: give its target as 'keep K tokens' (FlowCut prunes adaptively down to K)`,
        at: "amount",
      };
    if (p.afterAdaptive && !f.criterion.paddingSafe)
      return {
        why: `${p.what}; ${name} reads all query tokens, which then include padding; use cls-attn, cls-attn-ensemble, flowcut or norm`,
        at: "criterion",
      };
    if (f.criterion.usesBudget && !p.own)
      return {
        why: `${p.what}; ${name} sizes its selection from the stage's budget, which must be one static count`,
        at: "criterion",
      };
    const mask = f.options.has("mask");
    if (f.scorer !== "score" || f.groups || f.fold || f.afterEncoder || (p.afterAdaptive && mask)) {
      return {
        why: `${p.what}, so it needs a stage that ranks single tokens by score${mask ? " (without 'with mask')" : ""}`,
        at: "amount",
      };
    }
    return undefined;
  },
  select: ({ b, plan, scores, ranked, state, model, scorer, ctx }) => {
    const amount = plan.adaptive;
    if (!amount) throw new Error("adaptive selection without an adaptive amount (checked by the plan)");
    const mode = paddingMode(model, plan.layer.index + 1);
    // Zero rows in front are exact only while the recurrent states are zero: at the first call.
    const first = mode === "front" ? firstCall(b, plan.stage) : undefined;
    const onlyFirst = (count: string, all: string) =>
      first ? b.op("Where", [first, count, all], {}, "prune_first_call_only") : count;
    const clsAttention = () => {
      const attention = attentionOf(plan.layer);
      if ("why" in attention)
        throw new Error(
          `internal: FlowCut's adaptive count after layer ${plan.layer.index} reads its CLS attention, but ${attention.why}`,
        );
      return clsRowScores(b, attention.ok, plan.prefix);
    };
    let sel: ReturnType<typeof selectAdaptive>;
    if (amount.kind === "criterion") {
      // The criterion counts itself (crops): its scores rank exactly that many first.
      if (scorer.kind !== "score" || !scorer.count)
        throw new Error(`internal: ${plan.criterion.name} has no count of its own (checked by the plan)`);
      // (Such a criterion reads a CLS row, which the hybrid models that pad in front do not have.)
      sel = selectAdaptive(b, ranked, scorer.count(ctx), plan.prefix);
    } else if (plan.ofSet?.each) {
      if (amount.kind !== "percent" && amount.kind !== "count")
        throw new Error(`'of each' with a ${amount.kind} amount (refused by the plan)`);
      const set = restrictToSet(b, plan, plan.ofSet, state.sets, state.validBias, scores);
      const spans = eachSpan(b, set, scores, amount);
      sel = selectAdaptive(b, spans.ranked, b.op("Add", [set.others, spans.count], {}, "kept_total"), plan.prefix);
    } else if (plan.ofSet) {
      const set = restrictToSet(b, plan, plan.ofSet, state.sets, state.validBias, scores);
      // An `across frames` criterion that counts its set itself (VLA-Pruner's warm-up keeps every member).
      const own = plan.criterion.frames?.counts && scorer.kind === "score" ? scorer.count?.(ctx) : undefined;
      const count =
        own ??
        onlyFirst(
          countPerExample(b, amount, {
            scores,
            ranked: set.setScores,
            real: set.members,
            clsAttention,
            minimum: 0,
          }),
          set.members,
        );
      // Tokens outside the set are all kept: they rank first.
      sel = selectAdaptive(b, set.ranked, b.op("Add", [set.others, count], {}, "kept_total"), plan.prefix);
    } else {
      const real = realCount(b, scores, state.validBias, plan.prefix, model.batchAxis === undefined);
      const count = onlyFirst(countPerExample(b, amount, { scores, ranked, real, clsAttention }), real);
      sel = selectAdaptive(b, ranked, count, plan.prefix);
    }
    // Padding rows go first where a linear-attention layer follows (as zero rows, checked by the
    // plan), and on a generating decoder without a set: each example's next token is read from its
    // last row, the criterion may drop the prompt's last token, and a padding row (a real token
    // ranked past the example's count, masked as keys) could then be last.
    const zeroed = mode !== "after";
    if (zeroed || (!plan.ofSet && cachedAfter(model, plan.layer.index + 1).length > 0)) {
      const front = padsFirst(b, sel);
      return {
        indices: front.indices,
        exposed: front.realIndices,
        counts: sel.counts,
        validBias: front.padBias,
        ...(zeroed ? { zeroRows: front.padRows } : {}),
        lowering: "index",
      };
    }
    return {
      indices: sel.indices,
      exposed: sel.realIndices,
      counts: sel.counts,
      validBias: sel.padBias,
      lowering: "index",
    };
  },
};

/** int64 [B,1]: prunable tokens of each example that are not padding from an earlier adaptive stage. */
function realCount(
  b: NodeBuilder,
  scores: string,
  validBias: string | undefined,
  prefix: number,
  batchless: boolean,
): string {
  if (validBias) {
    const real = b.op("Equal", [b.slice(validBias, 1, prefix), b.float([0], [], "zero_bias")], {}, "is_real");
    return b.reduce("ReduceSum", b.op("Cast", [real], { to: 7 }), [1], 1);
  }
  const shape = b.op("Shape", [scores]);
  const n = b.unsqueeze(b.slice(shape, 0, 1, 2), [0]); // [1,1]
  if (batchless) return n;
  return b.op("Expand", [n, b.op("Concat", [b.slice(shape, 0, 0, 1), b.int64([1])], { axis: 0 })], {}, "real_count"); // [B,1]
}

/**
 * `of SET`: which prunable tokens are set members (and not padding from an earlier stage), how
 * many each example has, how many other real tokens it has, and the ranking that keeps every
 * non-member first (members by score, padding last).
 */
function restrictToSet(
  b: NodeBuilder,
  plan: StagePlan,
  ofSet: { name: string; input: string },
  sets: ReadonlyMap<string, string>,
  validBias: string | undefined,
  scores: string,
) {
  const member = b.slice(b.op("Cast", [sets.get(ofSet.name) ?? ofSet.input], { to: 9 }, "set_mask"), 1, plan.prefix); // [B,Np]
  const big = b.float([1e9], [], "big");
  const count = (t: string) => b.reduce("ReduceSum", b.op("Cast", [t], { to: 7 }), [1], 1); // [B,1]
  // Padding left by an earlier per-example stage is neither a member nor another token.
  const isReal = validBias
    ? b.op("Equal", [b.slice(validBias, 1, plan.prefix), b.float([0], [], "zero_bias")], {}, "is_real")
    : undefined;
  const memberReal = isReal ? b.op("And", [member, isReal], {}, "member_real") : member;
  const otherReal = isReal ? b.op("And", [b.op("Not", [member]), isReal], {}, "other_real") : b.op("Not", [member]);
  const others = isReal ? b.op("Where", [isReal, big, b.op("Neg", [big])]) : big;
  const ranked = b.op("Where", [memberReal, scores, others], {}, "set_first");
  const setScores = b.op("Where", [memberReal, scores, b.op("Neg", [big])], {}, "set_scores");
  return { members: count(memberReal), others: count(otherReal), ranked, setScores, memberReal, otherRank: others };
}

/**
 * `of each SET` (CATP's per-image budget, methods.md §33): every contiguous span of the set (one
 * image of a multi-image prompt) keeps its own share or count of its tokens, the best by score
 * (ties to the lower position), as `of SET` would on that span alone. Spans are runs of members;
 * a token's rank is counted among its own span's members (pairwise, [B, N, N]). Returns the
 * ranking that puts every other token first, then the span-kept members, and the per-example count.
 */
function eachSpan(
  b: NodeBuilder,
  set: ReturnType<typeof restrictToSet>,
  scores: string,
  amount: { kind: "percent" | "count"; value: number; drop: boolean },
): { ranked: string; count: string } {
  const m = b.op("Cast", [set.memberReal], { to: FLOAT }, "member_float"); // [B,N]
  // A span starts at a member whose left neighbour is not one.
  const left = b.op(
    "Pad",
    [b.op("Slice", [m, b.int64([0]), b.int64([-1]), b.int64([1])]), b.int64([0, 1, 0, 0], [4], "shift_right")],
    {},
    "left_member",
  );
  const starts = b.op("Mul", [m, b.op("Sub", [b.float([1], [], "one"), left])], {}, "span_starts");
  const span = b.op("Mul", [b.op("CumSum", [starts, b.int64([1], [], "token_axis")]), m], {}, "span_id"); // [B,N], 0 off the set
  const pair = (t: string) => [b.unsqueeze(t, [2]), b.unsqueeze(t, [1])] as const; // [B,N,1], [B,1,N]
  const [si, sj] = pair(span);
  const [mi, mj] = pair(m);
  const same = b.op(
    "Mul",
    [b.op("Mul", [b.op("Cast", [b.op("Equal", [si, sj])], { to: FLOAT }), mi]), mj],
    {},
    "same_span",
  ); // [B,N,N]
  const size = b.op("Cast", [b.reduce("ReduceSum", same, [2], 0)], { to: INT64 }, "span_size"); // [B,N]
  const rank = rankInGroup(b, scores, same); // [B,N]
  let keep: string;
  if (amount.kind === "percent") {
    const share = shareDynamic(b, size, amount.value);
    keep = amount.drop ? b.op("Sub", [size, share], {}, "span_remaining") : share;
  } else {
    const k = b.int64([amount.value], [1, 1], "span_tokens");
    keep = amount.drop ? b.op("Max", [b.op("Sub", [size, k]), b.int64([0], [1, 1], "none")]) : b.op("Min", [size, k]);
  }
  const kept = b.op(
    "And",
    [set.memberReal, b.op("Less", [rank, b.op("Cast", [keep], { to: FLOAT })])],
    {},
    "span_kept",
  );
  const count = b.reduce("ReduceSum", b.op("Cast", [kept], { to: INT64 }), [1], 1); // [B,1]
  const big = b.float([1e9], [], "big");
  const member = b.op("Where", [kept, b.float([0], [], "kept_member"), b.op("Neg", [big])], {}, "span_rank");
  return { ranked: b.op("Where", [set.memberReal, member, set.otherRank], {}, "each_span_first"), count };
}
