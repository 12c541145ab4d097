/**
 * Two ways a stage can treat the tokens it does not keep, instead of dropping them:
 *
 * `with mask` (AIM's reference behaviour): nothing is removed; every attention in the layers after
 * the stage gets an additive bias of −1e9 on the dropped keys, so kept tokens never attend to them
 * (exp underflows to exactly 0 in fp32). Shapes stay static and nothing gets faster; at the kept
 * positions the model computes what the gather lowering does.
 *
 * `with recycle` (VFlowOpt / SparseVLM style): the dropped tokens are aggregated into one extra
 * token, their score-weighted mean (scores clipped at 0), appended after the kept ones.
 */
import type { NodeProto } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import type { NodeBuilder } from "./builder.js";

const MASKED = 1e9;

/** float [B, N]: 1 at the kept positions `indices` (int64 [B, K]), 0 elsewhere; N = the stream's token count. */
export function keptOneHot(b: NodeBuilder, indices: string, stream: string, tokenAxis: number): string {
  const n = b.slice(b.op("Shape", [stream]), 0, tokenAxis, tokenAxis + 1);
  const positions = b.range(n, "positions"); // [N]
  const hits = b.op("Equal", [b.unsqueeze(indices, [2]), positions], {}, "is_kept"); // [B,K,N]
  return b.reduce("ReduceMax", b.op("Cast", [hits], { to: 1 }), [1], 0); // [B,N]
}

/** Additive attention bias [B, N]: 0 at kept tokens, −1e9 at dropped ones. */
export function maskBias(b: NodeBuilder, kept: string): string {
  return b.op(
    "Mul",
    [b.op("Sub", [kept, b.float([1], [], "one_f")]), b.float([MASKED], [], "masked")],
    {},
    "mask_bias",
  );
}

/** Why a layer's attention cannot take the mask, or undefined. */
export function maskUnavailable(model: TransformerInfo, from: number): string | undefined {
  for (const l of model.layers.slice(from)) {
    const core = l.core;
    if (!core) return `layer ${l.index} has no attention prunec can mask (${l.kind})`;
    if (core.probs && !l.probsLayout) return `the attention layout of layer ${l.index} could not be determined`;
    if (l.probsLayout === "batch*heads,q,k" && !l.heads) return headsUnknown(l.index);
    if (!core.probs && core.kind !== "MultiHeadAttention")
      return `layer ${l.index}'s fused com.microsoft.${core.kind} takes no additive attention bias prunec can extend`;
  }
  return undefined;
}

/** Logits folded as [batch·heads, q, k] are unfolded by the head count to add a per-example key bias. */
const headsUnknown = (layer: number): string =>
  `the number of heads of layer ${layer} could not be determined (its attention logits fold batch and heads together)`;

/** Why padding tokens could not be masked out of the layers from `from` on (cached GQA layers can), or undefined. */
export function paddingUnmaskable(model: TransformerInfo, from: number): string | undefined {
  for (const l of model.layers.slice(from)) {
    const core = l.core;
    if (!core) return `layer ${l.index} (${l.kind}) has no attention to mask`;
    if (l.probsLayout === "batch*heads,q,k" && !l.heads) return headsUnknown(l.index);
    if (!core.probs && core.kind !== "MultiHeadAttention" && core.kind !== "GroupQueryAttention")
      return `layer ${l.index}'s fused com.microsoft.${core.kind} takes no additive attention bias prunec can extend`;
  }
  return undefined;
}

/**
 * Add a key bias `keys` [B,1,1,N] to the attention logits of layers `from`..`until` (masks:
 * −1e9 on dropped or padding keys; ToMe's proportional attention: log(size)). Unfused layers: the
 * Softmax input, laid out as the layer's probabilities; MultiHeadAttention: its attention_bias
 * input (`resolve` maps it to the copy the stage gathered, if any). Cached GroupQueryAttention
 * layers get their bias with the per-layer rewrite (cached-attention.ts). Returns node → replacement.
 */
export function addKeyBias(
  b: NodeBuilder,
  model: TransformerInfo,
  from: number,
  keys: string,
  options: {
    label: string;
    until?: number;
    resolve?: (tensor: string) => string;
    /** Linear-attention layers: `skip` where the padding is zero rows in front (passes/front-padding.ts). */
    linear?: "skip" | "refuse";
  },
): Map<NodeProto, NodeProto> {
  const out = new Map<NodeProto, NodeProto>();
  const resolve = options.resolve ?? ((t: string) => t);
  for (const l of model.layers.slice(from, (options.until ?? model.layers.length - 1) + 1)) {
    if (l.kind === "linear-attention" && options.linear === "skip") continue;
    const core = l.core;
    if (!core)
      throw new Error(
        `layer ${l.index} (${l.kind}) has no attention core to add the ${options.label} key bias to (checked by the plan)`,
      );
    if (core.kind === "GroupQueryAttention") continue;
    const anchor = core.anchor;
    const label = `${options.label}_layer${l.index}`;
    if (core.probs) {
      // `keys` itself is what every Add reads, so a later stage finds it as a side tensor and gathers it.
      const logits = anchor.input[0]!;
      let biased: string;
      if (l.probsLayout === "heads,q,k")
        biased = b.op("Add", [logits, b.squeeze(keys, [1, 2])], {}, label); // [1,N] against [H,N,N]
      else if (l.probsLayout === "batch*heads,q,k") {
        // Heads folded batch-major into axis 0: unfold to [B,H,N,N], add, fold back.
        const heads = l.heads;
        if (heads === undefined) throw new Error(`${options.label}: ${headsUnknown(l.index)} (checked by the plan)`);
        const unfolded = b.op(
          "Reshape",
          [b.unsqueeze(logits, [1]), b.int64([-1, heads, 0, 0], [4], "heads_shape")],
          {},
          "unfold_heads",
        );
        biased = b.op("Reshape", [b.op("Add", [unfolded, keys], {}, label), b.op("Shape", [logits])], {}, "fold_heads");
      } else biased = b.op("Add", [logits, keys], {}, label);
      out.set(anchor, shallowCopy(anchor, { input: [biased, ...anchor.input.slice(1)] }));
    } else {
      const existing = anchor.input[5];
      // attention_bias must be [B|1, H|1, S, N]: without one, the key bias is expanded over the S query rows.
      const rows = b.slice(b.op("Shape", [anchor.input[0]!]), 0, 1, 2);
      const full = existing
        ? b.op("Add", [resolve(existing), keys], {}, label)
        : b.op("Expand", [keys, b.op("Concat", [b.int64([1, 1]), rows, b.int64([1])], { axis: 0 })], {}, label);
      const inputs = [...anchor.input];
      while (inputs.length < 6) inputs.push("");
      inputs[5] = full;
      out.set(anchor, shallowCopy(anchor, { input: inputs }));
    }
  }
  return out;
}

/**
 * The recycled token [B,1,D] (or [1,D] batch-less): Σ_j w_j x_j over the dropped prunable tokens,
 * w = relu(s)·dropped / Σ relu(s)·dropped. `kept` is [B,N] (keptOneHot), `scores` [B,Np].
 */
export function recycledToken(
  b: NodeBuilder,
  stream: string,
  scores: string,
  kept: string,
  prefix: number,
  batched: boolean,
): string {
  const dropped = b.op("Sub", [b.float([1], [], "one_f"), b.slice(kept, 1, prefix)], {}, "dropped"); // [B,Np]
  const weights = b.op("Mul", [b.op("Relu", [scores]), dropped], {}, "recycle_weights");
  const total = b.op(
    "Max",
    [b.reduce("ReduceSum", weights, [1], 1), b.float([1e-30], [], "tiny")],
    {},
    "recycle_total",
  );
  const w = b.op("Div", [weights, total], {}, "recycle_share"); // [B,Np]
  const tokens = b.slice(stream, batched ? 1 : 0, prefix); // [B,Np,D] or [Np,D]
  if (batched) return b.op("MatMul", [b.unsqueeze(w, [1]), tokens], {}, "recycled_token"); // [B,1,D]
  return b.op("MatMul", [w, tokens], {}, "recycled_token"); // [1,D]
}
