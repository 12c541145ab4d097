/**
 * iga (TransPrune's instruction-guided attention, methods.md §5; liaolea/TransPrune,
 * llava/model/modeling_llama_transprune.py, `transprune_rank_drop`): after layer L, TransPrune
 * runs the NEXT layer's (L+1) input RMSNorm, q/k projections and rotary on the hidden states
 * leaving layer L, takes the instruction tokens' query rows (the prompt after the image span),
 * softmax(q·kᵀ/√d + causal/padding mask) in fp32, averages over heads, keeps the image columns,
 * averages over the instruction queries and normalises to sum 1 (÷ (Σ + 1e-8)).
 *
 * prunec clones layer L+1's own nodes: every node on a path from the stream leaving layer L to
 * layer L+1's softmax input (norm → q/k MatMuls → reshapes/transposes → rotary → repeat_kv →
 * q·kᵀ → scale → mask Add), inputs rewired to the stage's stream (before its gather), weights and
 * every tensor not computed from the stream (rotary tables, masks) shared. The clones are named
 * under the stage's prefix (`prunec/stageN/iga/next_layer/<original output>`). This is the map
 * layer L+1 would compute on the unpruned stream, with its own mask (causal + padding) and scale;
 * the key/value heads are repeated as the model repeats them (TransPrune's code multiplies the
 * un-repeated keys, which only works without GQA). Kept tokens keep their original positions
 * (prunec's rule), where TransPrune renumbers positions contiguously after each stage.
 *
 * Instruction queries: the spec declares them as `tokens instruction = after image` (required, as
 * the language's catalog has it); prunec computes that set in the graph from the image mask of
 * the stage (`of image`): each example's tokens after its last image token (a reverse CumSum),
 * minus padding from earlier per-example stages. (A criterion does not see the spec's sets, so an
 * `instruction` declared otherwise is still read as `after image`.)
 * Left padding sits before the image, so pads are never queries; prompts must be left-padded or
 * unpadded (right padding would make pads queries), as for last-token-attn. An example with no
 * image tokens has nothing to drop (its scores are 0).
 *
 * Behind com.microsoft.GroupQueryAttention (rotary outside the op, do_rotary = 0) the q and k
 * inputs are cloned (norm → projections → RotaryEmbedding) and the logits recomputed as
 * gqa-map.ts does (repeated key heads, the op's scale, causal mask, the current tokens' columns of
 * attention_bias), from the current keys only: a stage prunes at prefill, where the past is empty.
 *
 * Rejected: a stage at the model's last layer (no next layer), and a next layer whose q/k path
 * cannot be cloned: other fused attention (MultiHeadAttention, Attention), GroupQueryAttention
 * with rotary inside (do_rotary = 1), packed q/k/v, softcap or local windows.
 */
import type { CriterionModule, Prepared, ScoreContext, StageFacts } from "../criterion.js";
import type { NodeProto } from "../../src/ir/graph.js";
import { shallowCopy } from "../../src/ir/copy.js";
import { PrunecError } from "../../src/errors.js";
import { attentionOf, logits, type MaterializedAttention } from "../attention/attention-map.js";
import { gqaAttention, gqaLogits, type GqaAttention } from "../attention/gqa-map.js";

const FLOAT = 1;
const BOOL = 9;

/**
 * The layer after a stage's layer, as iga reads it: where its q/k path starts (the stream leaving
 * the stage's layer, `from`) and the attention it computes from there.
 */
export interface NextLayer {
  /** The stage's layer. */
  stage: number;
  index: number;
  from: string;
  attention: MaterializedAttention | GqaAttention;
}

/** The layer after `facts.layer` whose attention iga reads, or why iga cannot read it. */
export function nextLayerOf({ model, layer }: Pick<StageFacts, "model" | "layer">): Prepared<NextLayer> {
  const next = model.layers[layer.index + 1];
  if (!next)
    return {
      why: `iga reads the next layer's attention (layer ${layer.index + 1}), but layer ${layer.index} is the model's last; use a stage at an earlier layer`,
    };
  if (model.batchAxis !== 0 || model.tokenAxis !== 1)
    return { why: "iga reads a batch-first [batch, sequence, hidden] residual stream" };
  if (!layer.residual || !next.residual || next.residual.input !== layer.residual.output) {
    return {
      why: `the residual stream from layer ${layer.index} into layer ${next.index}'s pre-norm could not be found`,
    };
  }
  const at = { stage: layer.index, index: next.index, from: layer.residual.output };
  const core = next.core;
  if (core && !core.probs) {
    const where = `layer ${next.index}'s fused com.microsoft.${core.kind} (node '${core.anchor.name}')`;
    if (core.kind !== "GroupQueryAttention")
      return {
        why: `${where}: iga clones the next layer's norm, q/k path and rotary up to an explicit q·kᵀ MatMul + Softmax or a GroupQueryAttention`,
      };
    const gqa = gqaAttention(next, core, where);
    if ("why" in gqa) return { why: `iga clones the next layer's norm, q/k path and rotary, but ${gqa.why}` };
    return { ok: { ...at, attention: gqa.ok } };
  }
  const attention = attentionOf(next);
  if ("why" in attention) return { why: `iga reads the next layer's attention, but ${attention.why}` };
  // A core without materialized probabilities was handled above: this is MatMul + Softmax.
  if (attention.ok.kind !== "materialized")
    return {
      why: `iga reads the next layer's attention, but layer ${next.index}'s probabilities are not materialized`,
    };
  return { ok: { ...at, attention: attention.ok } };
}

/** The `image` set's membership [B,N] (bool) over the stage's stream, or a rejection. */
export function imageMembers(ctx: ScoreContext, criterion: string): string {
  if (ctx.ofSet?.name !== "image") {
    throw new PrunecError(
      "apply",
      `${criterion} after layer ${ctx.layer.index} scores image tokens: use it as 'drop P% of image by ${criterion}' (with 'tokens image = input NAME')`,
    );
  }
  return ctx.sets?.get("image") ?? ctx.b.op("Cast", [ctx.ofSet.input], { to: BOOL }, "image_mask");
}

/**
 * Clones the nodes computing `targets` (tensors of layer L+1) from the stream leaving layer L,
 * reading `ctx.stream` instead; returns each target's clone.
 */
function cloneFromStream(ctx: ScoreContext, next: NextLayer, targets: string[]): string[] {
  const { graph: g, b } = ctx;
  const r = next.from;
  const fromStream = g.descendants(r);
  const cone = new Set<NodeProto>();
  const stack = [...targets];
  while (stack.length) {
    const p = g.producer.get(stack.pop()!);
    if (!p || cone.has(p) || !fromStream.has(p)) continue;
    cone.add(p);
    for (const i of p.input) if (i) stack.push(i);
  }
  if (!cone.size || ![...cone].some((n) => n.input.includes(r))) {
    throw new PrunecError(
      "apply",
      `iga after layer ${next.stage}: layer ${next.index}'s attention inputs (${targets.map((t) => `'${t}'`).join(", ")}) are not computed from the stream leaving layer ${next.stage}`,
    );
  }
  const ordered = [...cone].sort((x, y) => g.position(x) - g.position(y));
  const at = `${b.prefix}/next_layer/`;
  const rename = new Map<string, string>([[r, ctx.stream]]);
  for (const n of ordered) for (const o of n.output) if (o) rename.set(o, at + o);
  for (const n of ordered) {
    b.nodes.push(
      shallowCopy(n, {
        name: at + (n.name || n.output[0]!),
        input: n.input.map((i) => rename.get(i) ?? i),
        output: n.output.map((o) => rename.get(o) ?? o),
      }),
    );
  }
  return targets.map((t) => rename.get(t)!);
}

/**
 * Layer L+1's attention logits [B,H,N,N] on the stage's stream: the clone of its softmax input
 * (unfused attention), or GroupQueryAttention's recomputed logits from cloned q and k (rotary
 * outside the op), with only the current tokens' columns of its attention_bias.
 */
function nextLogits(ctx: ScoreContext, next: NextLayer): string {
  const { b } = ctx;
  const attention = next.attention;
  if (attention.kind === "materialized") {
    const [cloned] = cloneFromStream(ctx, next, [attention.logits]);
    // The same attention with the clone as its softmax input: attention-map's layout conversion reads it.
    return logits(b, { ...attention, logits: cloned! });
  }
  const n = attention.node;
  const [q, k] = cloneFromStream(ctx, next, [n.input[0]!, n.input[1]!]);
  const input = [q!, k!, ...n.input.slice(2)];
  if (n.input[10]) {
    // attention_bias [B|1, 1|H, S, T]: the current tokens' columns (T = S at prefill).
    const s = b.slice(b.op("Shape", [q!]), 0, 1, 2);
    input[10] = b.op(
      "Slice",
      [n.input[10], b.op("Neg", [s]), b.int64([Number.MAX_SAFE_INTEGER], [1], "end"), b.int64([3], [1], "key_axis")],
      {},
      "current_bias",
    );
  }
  // Without its present-key output the recompute reads the (cloned) current keys only.
  return gqaLogits(b, { ...attention, node: shallowCopy(n, { input, output: [n.output[0]!] }) });
}

/** s / (Σ over the set's tokens of s + 1e-8), per example: s, member [B,N]. */
export function normalisedOver(ctx: ScoreContext, s: string, member: string | undefined): string {
  const { b } = ctx;
  const inSet = member
    ? b.op("Mul", [s, b.op("Cast", [member], { to: FLOAT }, "member_f")], {}, "set_part")
    : b.slice(s, 1, ctx.prefix);
  const total = b.op("Add", [b.reduce("ReduceSum", inSet, [1], 1), b.float([1e-8], [], "eps")], {}, "sum_eps");
  return b.op("Div", [s, total], {}, "normalised");
}

/** IGA scores [B,N] over the stream's tokens (prefix included), normalised over the image tokens. */
export function igaScores(ctx: ScoreContext, next: NextLayer, image: string): string {
  const { b, keyBias } = ctx;
  let s = b.op("Cast", [nextLogits(ctx, next)], { to: FLOAT }, "next_logits_fp32"); // [B,H,N,N]
  if (keyBias) s = b.op("Add", [s, b.unsqueeze(keyBias, [1, 2])], {}, "key_bias");
  const probs = b.op("Softmax", [s], { axis: -1 }, "next_probs");
  const heads = b.reduceMean(probs, [1], 0); // [B,N,N]
  // Instruction queries: no image token at or after the position (reverse cumulative count).
  const img = b.op("Cast", [image], { to: FLOAT }, "image_f");
  const rest = b.op("CumSum", [img, b.int64([1], [], "token_axis")], { reverse: 1 }, "images_from_here");
  let instruction = b.op("Cast", [b.op("Equal", [rest, b.float([0], [], "zero")])], { to: FLOAT }, "instruction");
  if (keyBias)
    instruction = b.op(
      "Mul",
      [instruction, b.op("Cast", [b.op("Equal", [keyBias, b.float([0], [], "zero_bias")])], { to: FLOAT })],
      {},
      "real_instruction",
    );
  const count = b.op("Max", [b.reduce("ReduceSum", instruction, [1], 1), b.float([1], [], "one")], {}, "queries");
  const weights = b.op("Div", [instruction, count], {}, "query_weights"); // [B,N]
  const cols = b.squeeze(b.op("MatMul", [b.unsqueeze(weights, [1]), heads], {}, "instruction_attention"), [1]); // [B,N]
  return normalisedOver(ctx, cols, image);
}

export const iga: CriterionModule = {
  name: "iga",
  paddingSafe: true,
  summary:
    "instruction-guided attention: the next layer's norm, q/k and rotary on the stream, instruction queries' mean attention to each image token (TransPrune IGA, methods.md §5)",
  args: {},
  requiresSets: ["image", "instruction"],
  needs:
    "a next layer whose pre-norm reads this layer's output, with MatMul + Softmax attention or GroupQueryAttention (rotary inside the op is first moved out of it); a batch-first decoder; a declared `image` token set used as `of image` and `tokens instruction = after image`; left-padded or unpadded prompts",
  prepare(facts) {
    const next = nextLayerOf(facts);
    if ("why" in next) return next;
    return {
      ok: {
        kind: "score",
        score: (ctx) => ctx.b.slice(igaScores(ctx, next.ok, imageMembers(ctx, "iga")), 1, ctx.prefix),
      },
    };
  },
};
