/**
 * ttv (TransPrune's token transition variation, methods.md §5; liaolea/TransPrune,
 * llava/model/modeling_llama_transprune.py, `compute_transf_weight`): for the attention and the
 * MLP sub-block of a layer, u = the sub-block's normed input (its pre-norm's output) and v = the
 * sub-block's output before the residual add:
 *   w = (‖v‖ / ‖u‖) · softmax over tokens of (1 − cos(u, v))
 * The layer's value is w_attn + w_mlp; the values of the layers are summed, and the image tokens'
 * scores are normalised to sum 1 (÷ (Σ + 1e-8)).
 *
 * Layers: TransPrune accumulates layers 7–12 (1-based; the `accmulating_layer_list`) across its
 * stages. prunec reads the stage's layer, or `ttv(layers: A..B)` summing layers A..B, which must
 * lie within the layers that saw this stage's tokens (firstLayer..stage layer, as for
 * cls-attn-ensemble).
 *
 * TransPrune scores image tokens (`drop P% of image by ttv`, normalised over the image tokens);
 * without `of SET` ttv scores every prunable token (normalised over them), so it also runs in
 * encoders and after them; the normalisation does not change a single criterion's ranking.
 *
 * The softmax runs over each example's tokens in the stream (TransPrune's exp-sum runs over the
 * whole [batch, sequence] tensor: at its batch size of 1, the example's tokens). Prompt padding is
 * part of the stream and of that sum (prunec cannot tell prompt pads from tokens in the stream), so
 * a padded example's scores differ slightly from its unpadded ones; padding left by earlier
 * per-example stages (the key bias) is excluded. u and v are found from the residual block: the
 * pre-norm's output and the branch operand of the attention residual Add; the post-attention
 * norm (the norm reading the mid-block stream) and the branch operand of the MLP residual Add.
 */
import type { CriterionModule, Prepared, ScoreContext, StageFacts } from "../criterion.js";
import type { ResidualBlock } from "../../src/analysis/residual.js";
import { PrunecError } from "../../src/errors.js";
import { normsReading } from "../../src/analysis/norms.js";
import { igaScores, imageMembers, nextLayerOf, normalisedOver } from "./iga.js";

const FLOAT = 1;

/** The `layers` argument as written, or undefined (the stage's layer). */
function writtenRange(facts: StageFacts): [number, number] | undefined {
  const v = facts.args["layers"];
  return Array.isArray(v) ? v : undefined;
}

/** A layer ttv sums: its pre-norm residual block with a plain norm. */
export interface TtvLayer {
  index: number;
  residual: ResidualBlock;
}

/** The layers ttv sums, or why it cannot. */
export function ttvLayers(facts: StageFacts): Prepared<TtvLayer[]> {
  if (facts.model.batchAxis !== 0 || facts.model.tokenAxis !== 1)
    return { why: "ttv reads a batch-first [batch, sequence, hidden] residual stream" };
  const written = writtenRange(facts) ?? [facts.layer.index, facts.layer.index];
  const count = facts.model.layers.length;
  const text = `${written[0]}..${written[1]}`;
  const outside = written.find((l) => l < -count || l >= count);
  if (outside !== undefined)
    return {
      why: `layer ${outside} of layers ${text} is out of range: the model has ${count} layers (0..${count - 1}, or -1..-${count} from the end)`,
    };
  const [lo, hi] = written.map((l) => (l < 0 ? count + l : l)) as [number, number];
  const stage = facts.layer.index;
  if (lo > hi) return { why: `layers ${text} is empty; write the range from its first to its last layer` };
  if (lo < facts.firstLayer)
    return {
      why: `layers ${text} starts at layer ${lo}, which saw different tokens: an earlier stage pruned after layer ${facts.firstLayer - 1}, so the range must lie within ${facts.firstLayer}..${stage}`,
    };
  if (hi > stage)
    return {
      why: `layers ${text} ends at layer ${hi}, which has not run when this stage selects after layer ${stage}; the range must lie within ${facts.firstLayer}..${stage}`,
    };
  const layers: TtvLayer[] = [];
  for (const l of facts.model.layers.slice(lo, hi + 1)) {
    const res = l.residual;
    if (!res)
      return {
        why: `the residual block of layer ${l.index} (pre-norm → attention → Add → norm → MLP → Add) could not be found`,
      };
    if (res.layout !== "pre-norm")
      return {
        why: `layer ${l.index} is a post-norm block (its norms follow the residual adds); ttv reads pre-norm sub-blocks`,
      };
    if (res.norm.form === "skip")
      return {
        why: `layer ${l.index}'s pre-norm is a fused ${res.norm.node.opType} (node '${res.norm.node.name}'); ttv reads the sub-blocks' inputs and outputs around plain norms and residual Adds`,
      };
    layers.push({ index: l.index, residual: res });
  }
  return { ok: layers };
}

/** The (u, v) pairs of a layer's attention and MLP sub-blocks, found in the current graph. */
function subBlocks(ctx: ScoreContext, layer: TtvLayer): { u: string; v: string }[] {
  const g = ctx.graph;
  const res = layer.residual;
  const fail = (what: string): never => {
    throw new PrunecError(
      "apply",
      `ttv after layer ${ctx.layer.index}: ${what} in layer ${layer.index}; ttv reads plain norms and residual Adds`,
    );
  };
  const branch = (sum: string, residual: string, which: string): string => {
    const add = g.producer.get(sum);
    if (add?.opType !== "Add" || add.input.length !== 2 || !add.input.includes(residual))
      return fail(`the ${which} residual Add producing '${sum}' was not found`);
    return add.input[0] === residual ? add.input[1]! : add.input[0]!;
  };
  const post = normsReading(g, res.mid)[0];
  if (!post) return fail(`no norm reads the stream after the attention residual ('${res.mid}')`);
  return [
    { u: res.norm.output, v: branch(res.mid, res.input, "attention") },
    { u: post.output, v: branch(res.output, res.mid, "MLP") },
  ];
}

/** w [B,N] = (‖v‖/‖u‖) · softmax over the stream's real tokens of (1 − cos(u, v)). */
function transition(ctx: ScoreContext, u0: string, v0: string): string {
  const { b, keyBias } = ctx;
  const u = b.op("Cast", [u0], { to: FLOAT }, "u_fp32");
  const v = b.op("Cast", [v0], { to: FLOAT }, "v_fp32");
  const nu = b.reduce("ReduceL2", u, [2], 0);
  const nv = b.reduce("ReduceL2", v, [2], 0);
  const dot = b.reduce("ReduceSum", b.op("Mul", [u, v]), [2], 0);
  const cos = b.op("Div", [dot, b.op("Max", [b.op("Mul", [nu, nv]), b.float([1e-8], [], "cos_eps")])], {}, "cosine");
  let e = b.op("Exp", [b.op("Sub", [b.float([1], [], "one"), cos])], {}, "exp_variation");
  if (keyBias)
    e = b.op(
      "Mul",
      [e, b.op("Cast", [b.op("Equal", [keyBias, b.float([0], [], "zero_bias")])], { to: FLOAT })],
      {},
      "real_only",
    );
  const soft = b.op("Div", [e, b.reduce("ReduceSum", e, [1], 1)], {}, "softmax_tokens");
  return b.op("Mul", [b.op("Div", [nv, nu], {}, "length_ratio"), soft], {}, "transition");
}

/** TTV scores [B,N] over the stream's tokens (prefix included), normalised over `member` (or all prunable tokens). */
export function ttvScores(ctx: ScoreContext, layers: TtvLayer[], member: string | undefined): string {
  const parts = layers.flatMap((l) => subBlocks(ctx, l).map(({ u, v }) => transition(ctx, u, v)));
  const sum = parts.slice(1).reduce((acc, w) => ctx.b.op("Add", [acc, w], {}, "sum_blocks"), parts[0]!);
  return normalisedOver(ctx, sum, member);
}

export const ttv: CriterionModule = {
  name: "ttv",
  paddingSafe: true,
  summary:
    "token transition variation: (‖v‖/‖u‖)·softmax(1 − cos(u, v)) of the attention and MLP sub-blocks, summed over layers (TransPrune TTV, methods.md §5)",
  args: {
    layers: { type: "range", optional: true, doc: "first..last layer summed (inclusive; default: the stage's layer)" },
  },
  needs:
    "pre-norm blocks with plain norms and residual Adds (not fused Skip…Normalization); a batch-first residual stream",
  prepare(facts) {
    const layers = ttvLayers(facts);
    if ("why" in layers) return layers;
    const score = (ctx: ScoreContext): string => {
      // `of SET` (TransPrune: `of image`): normalised over the set's tokens; otherwise over all prunable tokens.
      const member = ctx.ofSet
        ? (ctx.sets?.get(ctx.ofSet.name) ?? ctx.b.op("Cast", [ctx.ofSet.input], { to: 9 }, "set_mask"))
        : undefined;
      return ctx.b.slice(ttvScores(ctx, layers.ok, member), 1, ctx.prefix);
    };
    return { ok: { kind: "score", score } };
  },
};

/** TransPrune's selection score: TTV + IGA, each normalised over the image tokens. */
export const transprune: CriterionModule = {
  name: "transprune",
  paddingSafe: true,
  summary: "TransPrune's score: ttv + iga, each normalised to sum 1 over the image tokens (methods.md §5)",
  args: {
    layers: {
      type: "range",
      optional: true,
      doc: "first..last layer whose TTV is summed (inclusive; default: the stage's layer)",
    },
  },
  requiresSets: ["image", "instruction"],
  needs: "what ttv and iga need (`tokens instruction = after image` for iga's queries)",
  prepare(facts) {
    const layers = ttvLayers(facts);
    if ("why" in layers) return layers;
    const next = nextLayerOf(facts);
    if ("why" in next) return next;
    const score = (ctx: ScoreContext): string => {
      const image = imageMembers(ctx, "transprune");
      const both = ctx.b.op(
        "Add",
        [ttvScores(ctx, layers.ok, image), igaScores(ctx, next.ok, image)],
        {},
        "ttv_plus_iga",
      );
      return ctx.b.slice(both, 1, ctx.prefix);
    };
    return { ok: { kind: "score", score } };
  },
};
