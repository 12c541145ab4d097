/**
 * text-attn (SparseVLM, methods.md §15; Gumpest/SparseVLMs v1.5/v2.0,
 * llava/model/language_model/modelling_sparse_llama.py and score.py):
 *
 * - Raters, once, on the layer-0 input embeddings E (the residual stream entering layer 0):
 *   V = the image tokens, T = the text after the image span; m = mean over V of softmax over T of
 *   V·Tᵀ (no scaling); raters = {t ∈ T : m_t > mean_T(m)}. SparseVLM finds them with `where`;
 *   here they are a 0/1 mask over positions (masked softmax and masked means, static shapes).
 *   When no text token qualifies (one text token, or all m equal) SparseVLM averages over an empty
 *   set (NaN scores); prunec lets every text token rate instead.
 * - Score at the stage's layer: s_j = mean over heads, mean over raters r of P[r, j] (the layer's
 *   causal attention probabilities). The stage (`of image`) ranks only the image columns.
 *
 * "Text after the image span" is read from the image set's model input: the non-image tokens
 * after each example's last image token. Left padding sits before the image, so pads are never
 * raters; prompts must be left-padded or unpadded (right padding would make pads text).
 * Later stages see the same raters: they are the tail of the sequence, which `of image` stages
 * never shorten, so the rater mask of the dense positions is cut to the stream's last N tokens.
 * Earlier stages must therefore drop only image tokens.
 */
import type { CriterionModule, ScoreContext } from "../criterion.js";
import { PrunecError } from "../../src/errors.js";
import { attentionOf, probabilities, type Attention } from "../attention/attention-map.js";

const FLOAT = 1;
const BOOL = 9;

export const textAttn: CriterionModule = {
  name: "text-attn",
  // Raters are text tokens, which `of image` stages never drop or pad (padding repeats dropped
  // image tokens, which sit before the text), and the padding keys are masked at this layer.
  paddingSafe: true,
  summary:
    "mean over heads and over relevant text raters of their attention to each image token; raters: text after the image whose mean softmax similarity to the image embeddings is above the text mean (SparseVLM, methods.md §15)",
  args: {},
  requiresSets: ["image"],
  needs:
    "attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention / GroupQueryAttention); a batch-first decoder; a declared `image` token set used as `of image`; left-padded or unpadded prompts; earlier stages dropping only image tokens",
  prepare({ model, layer }) {
    const attention = attentionOf(layer);
    if ("why" in attention) return attention;
    if (model.batchAxis !== 0 || model.tokenAxis !== 1)
      return { why: "text-attn reads a batch-first [batch, sequence, hidden] residual stream" };
    const embeddings = model.layers[0]?.residual?.input;
    if (!embeddings)
      return {
        why: "text-attn reads the input embeddings (the residual stream entering layer 0), which could not be found",
      };
    return { ok: { kind: "score", score: (ctx) => score(ctx, attention.ok, embeddings) } };
  },
};

/** Scores [B,Np]: the raters' mean attention to each token; `embeddings` is the stream entering layer 0. */
function score(ctx: ScoreContext, attention: Attention, embeddings: string): string {
  const { b, layer, prefix } = ctx;
  if (ctx.ofSet?.name !== "image") {
    throw new PrunecError(
      "apply",
      `text-attn after layer ${layer.index} scores image tokens against the text after them: use it as 'drop P% of image by text-attn'`,
    );
  }
  const raters = raterWeights(ctx, ctx.ofSet.input, embeddings); // [B,N]
  const perHead = probabilities(b, attention, "all"); // [B,H,N,N]
  const heads = b.reduceMean(perHead, [1], 0); // [B,N,N]
  const scores = b.op("MatMul", [b.unsqueeze(raters, [1]), heads], {}, "rater_attention"); // [B,1,N]
  return b.slice(b.squeeze(scores, [1]), 1, prefix); // [B,Np]
}

/**
 * float [B,N]: 1/|raters| at each rater of the stream entering the stage, 0 elsewhere (all zero
 * when the example has no text after its image).
 */
function raterWeights(ctx: ScoreContext, imageInput: string, embeddings: string): string {
  const { b } = ctx;
  const image = b.op("Cast", [imageInput], { to: BOOL }, "image_mask"); // [B,N0]
  const imageF = b.op("Cast", [image], { to: FLOAT }, "image_f");
  const zero = b.float([0], [], "zero");
  const one = b.float([1], [], "one");
  // Text = non-image tokens after the last image token (cumulative image count = total, > 0).
  const seen = b.op("CumSum", [imageF, b.int64([1], [], "seq_axis")], {}, "images_so_far");
  const total = b.reduce("ReduceSum", imageF, [1], 1); // [B,1]
  const after = b.op("And", [b.op("Equal", [seen, total]), b.op("Greater", [seen, zero])], {}, "after_image");
  const text = b.op("And", [after, b.op("Not", [image])], {}, "text"); // [B,N0]
  const textF = b.op("Cast", [text], { to: FLOAT }, "text_f");

  // m_t = mean over image rows of softmax over text columns of E·Eᵀ.
  const e = b.op("Cast", [embeddings], { to: FLOAT }, "embeddings"); // [B,N0,D]
  const sim = b.op("MatMul", [e, b.op("Transpose", [e], { perm: [0, 2, 1] })], {}, "similarity"); // [B,N0,N0]
  const colBias = b.unsqueeze(
    b.op("Mul", [b.op("Sub", [textF, one]), b.float([1e9], [], "big")], {}, "text_columns"),
    [1],
  ); // [B,1,N0]
  const soft = b.op("Softmax", [b.op("Add", [sim, colBias])], { axis: -1 }, "over_text");
  const imageRows = b.op("Div", [imageF, b.op("Max", [total, one])], {}, "image_rows"); // [B,N0]
  const m = b.squeeze(b.op("MatMul", [b.unsqueeze(imageRows, [1]), soft], {}, "relevance"), [1]); // [B,N0]
  const textCount = b.reduce("ReduceSum", textF, [1], 1);
  const mean = b.op(
    "Div",
    [b.reduce("ReduceSum", b.op("Mul", [m, textF]), [1], 1), b.op("Max", [textCount, one])],
    {},
    "mean_relevance",
  );
  const strict = b.op("And", [b.op("Greater", [m, mean]), text], {}, "relevant");
  const anyStrict = b.op(
    "Greater",
    [b.reduce("ReduceSum", b.op("Cast", [strict], { to: FLOAT }), [1], 1), zero],
    {},
    "any_relevant",
  );
  const raters = b.op(
    "Cast",
    [b.op("Or", [strict, b.op("And", [text, b.op("Not", [anyStrict])])], {}, "raters")],
    { to: FLOAT },
    "raters_f",
  ); // [B,N0]

  // The stream's tokens: the last N of the dense positions (stages before dropped only image tokens).
  const n = b.slice(b.op("Shape", [ctx.stream]), 0, 1, 2); // [1]
  const current = b.op(
    "Slice",
    [raters, b.op("Neg", [n]), b.int64([Number.MAX_SAFE_INTEGER], [1], "end"), b.int64([1], [1], "axis")],
    {},
    "stream_raters",
  ); // [B,N]
  const count = b.op("Max", [b.reduce("ReduceSum", current, [1], 1), one]);
  return b.op("Div", [current, count], {}, "rater_weights");
}
