/**
 * The project's small LLaMA-style decoder-only language model, built in code (groundwork for
 * pruning inside language models): token embedding, pre-norm blocks of RMSNorm → grouped-query
 * attention with rotary position embedding (rotate-half, HF/LLaMA convention) → residual add →
 * RMSNorm → SwiGLU MLP → residual add, a final RMSNorm and an LM head. Weights come from
 * mulberry32(seed), so every build is byte-identical.
 *
 * Two variants of the SAME weights (same initializer names and values):
 * - `attention: "plain"`: prefill only, no KV cache. Attention is MatMul + Softmax, keys/values
 *   repeated to the query heads with Unsqueeze/Expand/Reshape (HF's repeat_kv), rotary applied with
 *   plain ops to [batch, heads, seq, head_size] q/k (cos/sin gathered from `cos_cache`/`sin_cache`
 *   by position_ids), and an additive mask (finfo(float32).min where not allowed) combining
 *   causality with the padding mask.
 * - `attention: "plain-cache"`: the plain variant with a KV cache, laid out as torch's exporter
 *   writes HF decoders (and examples/recall): present.N.key = Concat(past_key_values.N.key, rotated
 *   k) on the sequence axis (likewise the value), read by repeat_kv; the mask's columns are the
 *   cache slots (total = attention_mask's length, query i at slot total − seq + i).
 * - `attention: "gqa"`: com.microsoft GroupQueryAttention with a KV cache, laid out as
 *   transformers.js "decoder_model_merged" decoders are (one model for prefill, fed an empty past of
 *   length 0, and for decode steps): inputs `past_key_values.N.key/value`
 *   [batch, kv_heads, past_seq, head_size], outputs `present.N.key/value`.
 *
 * Op choices, checked on onnxruntime-node 1.30 (CPU) and onnxruntime-web 1.30 (WASM):
 * - RMSNorm: `SimplifiedLayerNormalization` in the default domain (axis -1, stash_type 1), as
 *   onnxruntime-genai / transformers.js exports write it. The residual adds are plain `Add`s rather
 *   than com.microsoft `SkipSimplifiedLayerNormalization`, so prunec's residual-block analysis sees
 *   the stream (it does not look through fused add+norm yet).
 * - Rotary in the gqa variant: com.microsoft `RotaryEmbedding` on the 3D q and k
 *   ([batch, seq, heads·head_size], num_heads and rotary_embedding_dim set) with the caller's
 *   position_ids [batch, seq], before GroupQueryAttention (do_rotary = 0). GQA's own rotary
 *   (do_rotary = 1) derives positions from seqlens_k (its position_ids input "uses only the first
 *   element" on the first prompt), so it cannot give left-padded examples their own positions.
 * - GroupQueryAttention inputs (as in current transformers.js exports, e.g. the shared Gemma-3 and
 *   Qwen3.5 decoders): seqlens_k = total_sequence_length − 1 for every example (Shape of
 *   attention_mask, Sub 1, Expand to [batch], Cast int32), total_sequence_length = Shape of
 *   attention_mask [1] (Cast int32 scalar), and the padding goes in as attention_bias
 *   [batch, 1, seq, total_seq] = (1 − mask)·finfo.min. The kernel adds the causal mask itself.
 *   Every example's cache then has the padded length and keeps the padded layout (pad slots
 *   masked by the bias), so LEFT and RIGHT padding are both exact: each example gets its batch-1
 *   logits at its real positions and its batch-1 tokens (right-padded, its first token comes from
 *   its last real position; decode steps append [mask, 1] as usual).
 * - `seqlensK: "reduce-sum"` builds the older layout instead: seqlens_k = ReduceSum(mask, 1) − 1
 *   (Cast int32), no attention_bias. The kernel then takes example b's valid keys to be cache
 *   slots 0..seqlens_k[b] and writes each step's new key at slot seqlens_k[b]: that is RIGHT
 *   padding, and it works (the usual [mask, 1] extension gives the right counts; pad slots past
 *   an example's length are never read). LEFT padding is wrong with it from the prefill on: the
 *   kernel attends to the leading pads and cuts off the prompt's tail (logits off by units).
 *   The tests check all four combinations.
 */
import { create } from "@bufbuild/protobuf";
import {
  GraphProtoSchema,
  ModelProtoSchema,
  OperatorSetIdProtoSchema,
  type NodeProto,
  type TensorProto,
} from "../../src/onnx/gen/onnx_pb.js";
import { encodeModel } from "../../src/onnx/io.js";
import { makeNode, type AttrValue } from "../../src/ir/graph.js";
import { floatTensor, int64Tensor } from "../../src/onnx/tensor.js";
import { valueInfo } from "../../src/ir/value-info.js";
import { mulberry32 } from "../../src/random.js";
import { loadOrtWeb, type Feeds, type Outputs, type TensorData } from "../helpers/ort.js";

export interface DecoderOptions {
  vocab: number;
  hidden: number;
  layers: number;
  /** Query heads. */
  heads: number;
  /** Key/value heads (grouped-query attention: heads is a multiple of kvHeads). */
  kvHeads: number;
  headSize: number;
  /** SwiGLU inner width. */
  intermediate: number;
  /** Rows of the rotary cos/sin caches (positions 0..maxPositions-1). */
  maxPositions: number;
  ropeBase: number;
  /** A constant factor on the rotary tables' cos and sin (YaRN's attention scaling; default 1). */
  ropeScale?: number;
  epsilon: number;
  /** LM head = embedding matrix transposed (a Transpose node of the embedding initializer). */
  tiedEmbeddings: boolean;
  /** Sliding-window attention (gqa: local_window_size w): a query in cache slot p sees the w slots p−w+1..p (onnxruntime 1.30, measured). */
  localWindow?: number;
  seed: number;
}

export interface BuildOptions {
  /** `plain-cache`: the plain variant with a KV cache, as torch exports it (see the file comment). */
  attention: "plain" | "plain-cache" | "gqa";
  /** gqa only: how seqlens_k is computed from attention_mask (see the file comment). */
  seqlensK?: "total" | "reduce-sum";
  /**
   * gqa only: where q/k are rotated. `outside` (default): RotaryEmbedding nodes fed position_ids.
   * `op`: GroupQueryAttention's own rotary (do_rotary=1, cos/sin caches as its inputs 7–8), as
   * transformers.js exports Gemma-3; the op numbers positions from its sequence lengths, so
   * position_ids (still an input) goes unused and left-padded examples start at position 0.
   */
  rotary?: "outside" | "op";
}

export const DECODER: DecoderOptions = {
  vocab: 64,
  hidden: 32,
  layers: 4,
  heads: 4,
  kvHeads: 2,
  headSize: 8,
  intermediate: 64,
  maxPositions: 128,
  ropeBase: 10000,
  epsilon: 1e-6,
  tiedEmbeddings: false,
  seed: 11,
};

/** Token ids: 0 pad, 1 bos, 2 eos, 3..47 text, 48..63 image (reserved range, one id per slot). */
export const PAD = 0;
export const BOS = 1;
export const EOS = 2;
export const IMAGE_TOKEN_START = 48;
export const IMAGE_TOKENS = 16;

/** float32's most negative finite value (what exports use as the additive mask value). */
export const FINFO_MIN = -3.4028234663852886e38;

/** Per-layer weight tensors in the layout the graph uses ([in, out] for projections). */
export interface LayerWeights {
  inputNorm: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
  postNorm: Float32Array;
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

export interface DecoderWeights {
  /** [vocab, hidden] */
  embed: Float32Array;
  layers: LayerWeights[];
  norm: Float32Array;
  /** [hidden, vocab] (the embedding transposed when tied). */
  lmHead: Float32Array;
}

/** Initializer names (transformers.js / onnxruntime-genai style). */
export const weightNames = {
  embed: "model.embed_tokens.weight",
  norm: "model.norm.weight",
  lmHead: "lm_head.MatMul.weight",
  cos: "cos_cache",
  sin: "sin_cache",
  layer: (l: number): Record<keyof LayerWeights, string> => ({
    inputNorm: `model.layers.${l}.input_layernorm.weight`,
    q: `model.layers.${l}.attn.q_proj.MatMul.weight`,
    k: `model.layers.${l}.attn.k_proj.MatMul.weight`,
    v: `model.layers.${l}.attn.v_proj.MatMul.weight`,
    o: `model.layers.${l}.attn.o_proj.MatMul.weight`,
    postNorm: `model.layers.${l}.post_attention_layernorm.weight`,
    gate: `model.layers.${l}.mlp.gate_proj.MatMul.weight`,
    up: `model.layers.${l}.mlp.up_proj.MatMul.weight`,
    down: `model.layers.${l}.mlp.down_proj.MatMul.weight`,
  }),
};

/**
 * The seeded weights. Scales keep attention far from uniform but not one-hot, and logits spread
 * over a few units (no near-ties for greedy decoding).
 */
export function decoderWeights(o: DecoderOptions = DECODER): DecoderWeights {
  const rand = mulberry32(o.seed);
  const uniform = (size: number, std: number, mean = 0): Float32Array => {
    const a = new Float32Array(size);
    for (let i = 0; i < size; i++) a[i] = mean + std * (2 * rand() - 1) * Math.sqrt(3);
    return a;
  };
  const d = o.hidden;
  const qw = o.heads * o.headSize;
  const kvw = o.kvHeads * o.headSize;
  const embed = uniform(o.vocab * d, 1);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < o.layers; l++) {
    layers.push({
      inputNorm: uniform(d, 0.1, 1),
      q: uniform(d * qw, 0.3),
      k: uniform(d * kvw, 0.3),
      v: uniform(d * kvw, 0.3),
      o: uniform(qw * d, 0.2),
      postNorm: uniform(d, 0.1, 1),
      gate: uniform(d * o.intermediate, 0.25),
      up: uniform(d * o.intermediate, 0.25),
      down: uniform(o.intermediate * d, 0.15),
    });
  }
  const norm = uniform(d, 0.1, 1);
  let lmHead: Float32Array;
  if (o.tiedEmbeddings) {
    lmHead = new Float32Array(d * o.vocab);
    for (let v = 0; v < o.vocab; v++) for (let i = 0; i < d; i++) lmHead[i * o.vocab + v] = embed[v * d + i]!;
  } else {
    lmHead = uniform(d * o.vocab, 0.4);
  }
  return { embed, layers, norm, lmHead };
}

/** The rotary frequencies θ_i = base^(−2i/headSize), i < headSize/2 (float64). */
export function rotaryFrequencies(o: DecoderOptions = DECODER): number[] {
  return Array.from({ length: o.headSize / 2 }, (_, i) => o.ropeBase ** ((-2 * i) / o.headSize));
}

/** Rotary tables [maxPositions, headSize/2]: cos/sin(pos · θ_i), rounded to float32. */
export function rotaryCaches(o: DecoderOptions = DECODER): { cos: Float32Array; sin: Float32Array } {
  const half = o.headSize / 2;
  const theta = rotaryFrequencies(o);
  const cos = new Float32Array(o.maxPositions * half);
  const sin = new Float32Array(o.maxPositions * half);
  for (let p = 0; p < o.maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * theta[i]!;
      cos[p * half + i] = Math.cos(angle) * (o.ropeScale ?? 1);
      sin[p * half + i] = Math.sin(angle) * (o.ropeScale ?? 1);
    }
  }
  return { cos, sin };
}

export function buildDecoder(build: BuildOptions, o: DecoderOptions = DECODER): Uint8Array {
  if (o.heads % o.kvHeads !== 0) throw new Error(`heads (${o.heads}) must be a multiple of kvHeads (${o.kvHeads})`);
  const gqa = build.attention === "gqa";
  const cached = gqa || build.attention === "plain-cache";
  const seqlensK = build.seqlensK ?? "total";
  const w = decoderWeights(o);
  const rope = rotaryCaches(o);
  const nodes: NodeProto[] = [];
  const inits: TensorProto[] = [];
  const d = o.hidden;
  const hs = o.headSize;
  const qw = o.heads * hs;
  const kvw = o.kvHeads * hs;
  const rep = o.heads / o.kvHeads;

  const init = (name: string, data: Float32Array, dims: number[]): string => {
    inits.push(floatTensor(name, Array.from(data), dims));
    return name;
  };
  const constants = new Map<string, string>();
  const ints = (values: number[], scalar = false): string => {
    const name = `/model/constants/INT64/${scalar ? values[0] : `[${values.join(", ")}]`}`;
    if (!constants.has(name)) {
      inits.push(int64Tensor(name, values, scalar ? [] : [values.length]));
      constants.set(name, name);
    }
    return name;
  };
  const float = (value: number): string => {
    const name = `/model/constants/FLOAT/${value}`;
    if (!constants.has(name)) {
      inits.push(floatTensor(name, [value], []));
      constants.set(name, name);
    }
    return name;
  };
  const node = (
    op: string,
    name: string,
    inputs: string[],
    attrs: Record<string, AttrValue | { float: number }> = {},
    domain = "",
    outputs?: string[],
  ): string => {
    const outs = outputs ?? [`${name}/output_0`];
    nodes.push(makeNode(op, inputs, outs, name, attrs, domain));
    return outs[0]!;
  };
  const rmsNorm = (name: string, x: string, weight: string): string =>
    node(
      "SimplifiedLayerNormalization",
      `${name}/LayerNorm`,
      [x, weight],
      { axis: -1, epsilon: { float: o.epsilon }, stash_type: 1 },
      "",
      [`${name}/output_0`],
    );
  const matmul = (name: string, x: string, weight: string): string => node("MatMul", `${name}/MatMul`, [x, weight]);

  // Shared dimensions, built on first use: scalars and their 1-element forms.
  const memo = new Map<string, string>();
  const once = (key: string, make: () => string): string => {
    if (!memo.has(key)) memo.set(key, make());
    return memo.get(key)!;
  };
  const idsShape = () => once("idsShape", () => node("Shape", "/model/shared_dims/input_ids/Shape", ["input_ids"]));
  const maskShape = () =>
    once("maskShape", () => node("Shape", "/model/shared_dims/attention_mask/Shape", ["attention_mask"]));
  const batch = () =>
    once("batch", () =>
      node("Gather", "/model/shared_dims/input_ids/Gather_0", [idsShape(), ints([0], true)], { axis: 0 }),
    );
  const seq = () =>
    once("seq", () =>
      node("Gather", "/model/shared_dims/input_ids/Gather_1", [idsShape(), ints([1], true)], { axis: 0 }),
    );
  const total = () =>
    once("total", () =>
      node("Gather", "/model/shared_dims/attention_mask/Gather_1", [maskShape(), ints([1], true)], { axis: 0 }),
    );
  const batch1 = () =>
    once("batch1", () => node("Unsqueeze", "/model/shared_dims/batch/Unsqueeze", [batch(), ints([0])]));
  const seq1 = () => once("seq1", () => node("Unsqueeze", "/model/shared_dims/seq/Unsqueeze", [seq(), ints([0])]));
  const total1 = () =>
    once("total1", () => node("Unsqueeze", "/model/shared_dims/total/Unsqueeze", [total(), ints([0])]));

  const cosCache = init(weightNames.cos, rope.cos, [o.maxPositions, hs / 2]);
  const sinCache = init(weightNames.sin, rope.sin, [o.maxPositions, hs / 2]);

  // Attention mask subgraphs.
  let bias: string;
  let seqlens = "";
  let totalLen = "";
  if (gqa) {
    if (seqlensK === "total") {
      // Padding as an additive bias [batch, 1, seq, total]; GQA applies causality itself.
      const m = node("Cast", "/model/gqa_attention_bias/Cast", ["attention_mask"], { to: 1 });
      const inv = node("Sub", "/model/gqa_attention_bias/Sub", [float(1), m]);
      const neg = node("Mul", "/model/gqa_attention_bias/Mul", [inv, float(FINFO_MIN)]);
      const b4 = node("Unsqueeze", "/model/gqa_attention_bias/Unsqueeze", [neg, ints([1, 2])]);
      const target = node("Concat", "/model/gqa_attention_bias/Target4D", [batch1(), ints([1]), seq1(), total1()], {
        axis: 0,
      });
      bias = node("Expand", "/model/gqa_attention_bias/Expand", [b4, target]);
      const minus1 = node("Sub", "/model/attn_mask_reformat/attn_mask_subgraph/Sub", [total(), ints([1], true)]);
      const minus1v = node("Unsqueeze", "/model/attn_mask_reformat/attn_mask_subgraph/Sub/Unsqueeze", [
        minus1,
        ints([0]),
      ]);
      const expanded = node("Expand", "/model/attn_mask_reformat/attn_mask_subgraph/Expand", [minus1v, batch1()]);
      seqlens = node("Cast", "/model/attn_mask_reformat/attn_mask_subgraph/Expand/Cast", [expanded], { to: 6 });
    } else {
      // The kernel reads padding from seqlens_k alone (no attention_bias).
      bias = "";
      const sum = node(
        "ReduceSum",
        "/model/attn_mask_reformat/attn_mask_subgraph/ReduceSum",
        ["attention_mask", ints([1])],
        { keepdims: 0 },
      );
      const minus1 = node("Sub", "/model/attn_mask_reformat/attn_mask_subgraph/Sub", [sum, ints([1], true)]);
      seqlens = node("Cast", "/model/attn_mask_reformat/attn_mask_subgraph/Sub/Cast", [minus1], { to: 6 });
    }
    totalLen = node("Cast", "/model/attn_mask_reformat/attn_mask_subgraph/Gather/Cast", [total()], { to: 6 });
  } else {
    // allowed[b, i, j] = key j is real and j ≤ i + (total − seq) (causal, with any past offset).
    const offset = node("Sub", "/model/attn_mask/offset/Sub", [total(), seq()]);
    const qPos = node("Range", "/model/attn_mask/query/Range", [offset, total(), ints([1], true)]);
    const kPos = node("Range", "/model/attn_mask/key/Range", [ints([0], true), total(), ints([1], true)]);
    const qCol = node("Unsqueeze", "/model/attn_mask/query/Unsqueeze", [qPos, ints([1])]);
    const kRow = node("Unsqueeze", "/model/attn_mask/key/Unsqueeze", [kPos, ints([0])]);
    const causal = node("LessOrEqual", "/model/attn_mask/causal/LessOrEqual", [kRow, qCol]);
    const padBool = node("Cast", "/model/attn_mask/padding/Cast", ["attention_mask"], { to: 9 });
    const pad4 = node("Unsqueeze", "/model/attn_mask/padding/Unsqueeze", [padBool, ints([1, 2])]);
    const allowed = node("And", "/model/attn_mask/And", [causal, pad4]);
    bias = node("Where", "/model/attn_mask/Where", [allowed, float(0), float(FINFO_MIN)]);
  }

  // Rotary tables gathered by position (plain variant): [batch, 1, seq, head_size].
  let cos4 = "";
  let sin4 = "";
  if (!gqa) {
    const table = (which: "cos" | "sin", cache: string): string => {
      const g = node("Gather", `/model/rotary_emb/${which}/Gather`, [cache, "position_ids"], { axis: 0 });
      const full = node("Concat", `/model/rotary_emb/${which}/Concat`, [g, g], { axis: -1 });
      return node("Unsqueeze", `/model/rotary_emb/${which}/Unsqueeze`, [full, ints([1])]);
    };
    cos4 = table("cos", cosCache);
    sin4 = table("sin", sinCache);
  }
  // x·cos + rotate_half(x)·sin on [batch, heads, seq, head_size].
  const applyRotary = (name: string, x: string): string => {
    const x1 = node("Slice", `${name}/Slice_1`, [x, ints([0]), ints([hs / 2]), ints([-1])]);
    const x2 = node("Slice", `${name}/Slice_2`, [x, ints([hs / 2]), ints([hs]), ints([-1])]);
    const neg = node("Neg", `${name}/Neg`, [x2]);
    const rotated = node("Concat", `${name}/Concat`, [neg, x1], { axis: -1 });
    const a = node("Mul", `${name}/Mul_1`, [x, cos4]);
    const b = node("Mul", `${name}/Mul_2`, [rotated, sin4]);
    return node("Add", `${name}/Add`, [a, b]);
  };

  let x = node("Gather", "/model/embed_tokens/Gather", [init(weightNames.embed, w.embed, [o.vocab, d]), "input_ids"], {
    axis: 0,
  });

  for (let l = 0; l < o.layers; l++) {
    const p = `/model/layers.${l}`;
    const names = weightNames.layer(l);
    const lw = w.layers[l]!;
    const h = rmsNorm(`${p}/input_layernorm`, x, init(names.inputNorm, lw.inputNorm, [d]));
    const q = matmul(`${p}/attn/q_proj`, h, init(names.q, lw.q, [d, qw]));
    const k = matmul(`${p}/attn/k_proj`, h, init(names.k, lw.k, [d, kvw]));
    const v = matmul(`${p}/attn/v_proj`, h, init(names.v, lw.v, [d, kvw]));
    let attn: string;
    if (gqa) {
      const inOp = build.rotary === "op";
      const rot = (which: "q" | "k", t: string, heads: number): string =>
        inOp
          ? t
          : node(
              "RotaryEmbedding",
              `${p}/attn/${which}_rotary/RotaryEmbedding`,
              [t, "position_ids", cosCache, sinCache],
              { interleaved: 0, num_heads: heads, rotary_embedding_dim: hs },
              "com.microsoft",
            );
      const qr = rot("q", q, o.heads);
      const kr = rot("k", k, o.kvHeads);
      const caches = inOp ? [cosCache, sinCache] : ["", ""];
      attn = node(
        "GroupQueryAttention",
        `${p}/attn/GroupQueryAttention`,
        [qr, kr, v, `past_key_values.${l}.key`, `past_key_values.${l}.value`, seqlens, totalLen, ...caches, "", bias],
        {
          num_heads: o.heads,
          kv_num_heads: o.kvHeads,
          scale: { float: 1 / Math.sqrt(hs) },
          do_rotary: inOp ? 1 : 0,
          rotary_interleaved: 0,
          local_window_size: o.localWindow ?? -1,
        },
        "com.microsoft",
        [`${p}/attn/GroupQueryAttention/output_0`, `present.${l}.key`, `present.${l}.value`],
      );
    } else {
      const heads = (which: string, t: string, n: number): string => {
        const r = node("Reshape", `${p}/attn/${which}/Reshape`, [t, ints([0, 0, n, hs])]);
        return node("Transpose", `${p}/attn/${which}/Transpose`, [r], { perm: [0, 2, 1, 3] });
      };
      const qh = applyRotary(`${p}/attn/q_rotary`, heads("q", q, o.heads));
      const rotatedK = applyRotary(`${p}/attn/k_rotary`, heads("k", k, o.kvHeads));
      const current = heads("v", v, o.kvHeads);
      // With a cache: present = Concat(past, current) on the sequence axis, a graph output.
      const withPast = (kv: "key" | "value", t: string): string =>
        cached
          ? node("Concat", `${p}/attn/${kv}_cache/Concat`, [`past_key_values.${l}.${kv}`, t], { axis: 2 }, "", [
              `present.${l}.${kv}`,
            ])
          : t;
      const kh = withPast("key", rotatedK);
      const vh = withPast("value", current);
      // repeat_kv: [b, kv, s, hs] → [b, kv, 1, s, hs] → expand [b, kv, rep, s, hs] → [b, heads, s, hs].
      const repeat = (which: string, t: string): string => {
        if (rep === 1) return t;
        const u = node("Unsqueeze", `${p}/attn/repeat_${which}/Unsqueeze`, [t, ints([2])]);
        const e = node("Expand", `${p}/attn/repeat_${which}/Expand`, [u, ints([1, 1, rep, 1, 1])]);
        return node("Reshape", `${p}/attn/repeat_${which}/Reshape`, [e, ints([0, o.heads, -1, hs])]);
      };
      const kt = node("Transpose", `${p}/attn/k/Transpose_1`, [repeat("k", kh)], { perm: [0, 1, 3, 2] });
      const scores = node("MatMul", `${p}/attn/MatMul`, [qh, kt]);
      const scaled = node("Mul", `${p}/attn/Mul`, [scores, float(1 / Math.sqrt(hs))]);
      const masked = node("Add", `${p}/attn/Add`, [scaled, bias]);
      const probs = node("Softmax", `${p}/attn/Softmax`, [masked], { axis: -1 });
      const ctx = node("MatMul", `${p}/attn/MatMul_1`, [probs, repeat("v", vh)]);
      const back = node("Transpose", `${p}/attn/Transpose`, [ctx], { perm: [0, 2, 1, 3] });
      attn = node("Reshape", `${p}/attn/Reshape`, [back, ints([0, 0, qw])]);
    }
    const out = matmul(`${p}/attn/o_proj`, attn, init(names.o, lw.o, [qw, d]));
    const mid = node("Add", `${p}/Add_1`, [x, out]);
    const h2 = rmsNorm(`${p}/post_attention_layernorm`, mid, init(names.postNorm, lw.postNorm, [d]));
    const gate = matmul(`${p}/mlp/gate_proj`, h2, init(names.gate, lw.gate, [d, o.intermediate]));
    const up = matmul(`${p}/mlp/up_proj`, h2, init(names.up, lw.up, [d, o.intermediate]));
    const silu = node("Mul", `${p}/mlp/act_fn/Mul`, [gate, node("Sigmoid", `${p}/mlp/act_fn/Sigmoid`, [gate])]);
    const prod = node("Mul", `${p}/mlp/Mul`, [silu, up]);
    const down = matmul(`${p}/mlp/down_proj`, prod, init(names.down, lw.down, [o.intermediate, d]));
    x = node("Add", `${p}/Add_2`, [mid, down]);
  }
  const final = rmsNorm("/model/norm", x, init(weightNames.norm, w.norm, [d]));
  const head = o.tiedEmbeddings
    ? node("Transpose", "/lm_head/Transpose", [weightNames.embed], { perm: [1, 0] })
    : init(weightNames.lmHead, w.lmHead, [d, o.vocab]);
  nodes.push(makeNode("MatMul", [final, head], ["logits"], "/lm_head/MatMul"));

  const inputs = [
    valueInfo("input_ids", 7, ["batch_size", "sequence_length"]),
    valueInfo("attention_mask", 7, ["batch_size", "total_sequence_length"]),
    valueInfo("position_ids", 7, ["batch_size", "sequence_length"]),
  ];
  const outputs = [valueInfo("logits", 1, ["batch_size", "sequence_length", o.vocab])];
  if (cached) {
    for (let l = 0; l < o.layers; l++) {
      for (const kv of ["key", "value"]) {
        inputs.push(valueInfo(`past_key_values.${l}.${kv}`, 1, ["batch_size", o.kvHeads, "past_sequence_length", hs]));
        outputs.push(valueInfo(`present.${l}.${kv}`, 1, ["batch_size", o.kvHeads, "total_sequence_length", hs]));
      }
    }
  }
  const graph = create(GraphProtoSchema, {
    name: `decoder-${build.attention}`,
    node: nodes,
    initializer: inits,
    input: inputs,
    output: outputs,
  });
  const opsetImport = [create(OperatorSetIdProtoSchema, { domain: "", version: 17n })];
  if (gqa) opsetImport.push(create(OperatorSetIdProtoSchema, { domain: "com.microsoft", version: 1n }));
  return encodeModel(create(ModelProtoSchema, { irVersion: 8n, opsetImport, producerName: "prunec-test", graph }));
}

// ---------------------------------------------------------------------------------------------
// Prompts and feeds.

/** A prompt with an image span: [bos, system…, 16 image ids, instruction…] and its image mask. */
export function imagePrompt(
  system: readonly number[],
  instruction: readonly number[],
): { tokens: number[]; image: boolean[] } {
  const image = Array.from({ length: IMAGE_TOKENS }, (_, i) => IMAGE_TOKEN_START + i);
  const tokens = [BOS, ...system, ...image, ...instruction];
  const mask = tokens.map((_, i) => i >= 1 + system.length && i < 1 + system.length + IMAGE_TOKENS);
  return { tokens, image: mask };
}

export interface PromptBatch {
  batch: number;
  seq: number;
  /** Where each example's real tokens start (left padding) and how many there are. */
  offsets: number[];
  lengths: number[];
  inputIds: BigInt64Array;
  attentionMask: BigInt64Array;
  positionIds: BigInt64Array;
  /** [batch][seq]: true at image-token positions (false at pads). */
  imageMask: boolean[][];
}

/**
 * Pads prompts to one length. Position ids are HF's: cumsum(mask) − 1, with pads set to 1.
 * `images` gives each prompt's image mask (as `imagePrompt` returns it); default: ids in the
 * reserved image range.
 */
export function promptBatch(
  prompts: readonly (readonly number[])[],
  side: "left" | "right" = "left",
  images?: readonly (readonly boolean[])[],
): PromptBatch {
  const batch = prompts.length;
  const seq = Math.max(...prompts.map((p) => p.length));
  const inputIds = new BigInt64Array(batch * seq);
  const attentionMask = new BigInt64Array(batch * seq);
  const positionIds = new BigInt64Array(batch * seq).fill(1n);
  const imageMask: boolean[][] = [];
  const offsets: number[] = [];
  prompts.forEach((p, b) => {
    const offset = side === "left" ? seq - p.length : 0;
    offsets.push(offset);
    const row = Array<boolean>(seq).fill(false);
    p.forEach((t, j) => {
      const i = b * seq + offset + j;
      inputIds[i] = BigInt(t);
      attentionMask[i] = 1n;
      positionIds[i] = BigInt(j);
      row[offset + j] = images ? images[b]![j]! : t >= IMAGE_TOKEN_START && t < IMAGE_TOKEN_START + IMAGE_TOKENS;
    });
    imageMask.push(row);
  });
  return {
    batch,
    seq,
    offsets,
    lengths: prompts.map((p) => p.length),
    inputIds,
    attentionMask,
    positionIds,
    imageMask,
  };
}

/** Empty past (length 0) for every layer: what a merged decoder is fed for prefill. */
export function emptyPast(batch: number, o: DecoderOptions = DECODER): Feeds {
  const f: Feeds = {};
  for (let l = 0; l < o.layers; l++) {
    for (const kv of ["key", "value"])
      f[`past_key_values.${l}.${kv}`] = {
        type: "float32",
        dims: [batch, o.kvHeads, 0, o.headSize],
        data: new Float32Array(0),
      };
  }
  return f;
}

export function prefillFeeds(p: PromptBatch, attention: BuildOptions["attention"], o: DecoderOptions = DECODER): Feeds {
  const dims = [p.batch, p.seq];
  const f: Feeds = {
    input_ids: { type: "int64", dims, data: p.inputIds },
    attention_mask: { type: "int64", dims, data: p.attentionMask },
    position_ids: { type: "int64", dims, data: p.positionIds },
  };
  return attention === "plain" ? f : { ...f, ...emptyPast(p.batch, o) };
}

function argmax(a: ArrayLike<number>, start: number, n: number): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (a[start + i]! > a[start + best]!) best = i;
  return best;
}

export interface Generation {
  /** [batch][steps] generated token ids. */
  tokens: number[][];
  /** Prefill logits [batch, seq, vocab]. */
  prefill: Float32Array;
  /** Logits of each decode step's fed token, per step [batch, vocab]. */
  steps: Float32Array[];
}

/**
 * Greedy generation with a gqa model: prefill (empty past), then `steps − 1` decode steps feeding
 * present.N → past_key_values.N, the mask extended by 1 and each example's next position.
 */
export async function generateGreedy(
  run: (feeds: Feeds) => Promise<Outputs>,
  p: PromptBatch,
  steps: number,
  o: DecoderOptions = DECODER,
): Promise<Generation> {
  const V = o.vocab;
  const out = await run(prefillFeeds(p, "gqa", o));
  const prefill = out["logits"]!.data as Float32Array;
  const tokens: number[][] = Array.from({ length: p.batch }, () => []);
  // Each example's first token comes from its last real position (the last one when left-padded).
  // After a stream stage the logits have a row per kept token: the last prompt token's is the last.
  const rows = out["logits"]!.dims[1]!;
  for (let b = 0; b < p.batch; b++)
    tokens[b]!.push(
      argmax(prefill, (rows === p.seq ? b * p.seq + p.offsets[b]! + p.lengths[b]! - 1 : (b + 1) * rows - 1) * V, V),
    );
  const stepLogits = await decodeSteps(run, out, p, tokens, steps, o, {});
  return { tokens, prefill, steps: stepLogits };
}

/**
 * Decode steps 1..steps−1 after a prefill whose outputs are `out`: feed each example's last token,
 * the attention mask grown by one column, the next dense position, and every layer's present.N as
 * past_key_values.N (whatever its length); `extra` adds inputs (e.g. an all-false image mask).
 * Appends the greedy tokens to `tokens` and returns each step's logits [batch, vocab].
 */
async function decodeSteps(
  run: (feeds: Feeds) => Promise<Outputs>,
  out: Outputs,
  p: PromptBatch,
  tokens: number[][],
  steps: number,
  o: DecoderOptions,
  extra: Feeds,
): Promise<Float32Array[]> {
  const V = o.vocab;
  let mask = p.attentionMask;
  let total = p.seq;
  const stepLogits: Float32Array[] = [];
  for (let s = 1; s < steps; s++) {
    const next = new BigInt64Array(p.batch * (total + 1));
    for (let b = 0; b < p.batch; b++) {
      next.set(mask.subarray(b * total, (b + 1) * total), b * (total + 1));
      next[b * (total + 1) + total] = 1n;
    }
    mask = next;
    total += 1;
    const feeds: Feeds = {
      input_ids: { type: "int64", dims: [p.batch, 1], data: BigInt64Array.from(tokens.map((t) => BigInt(t.at(-1)!))) },
      attention_mask: { type: "int64", dims: [p.batch, total], data: mask },
      position_ids: {
        type: "int64",
        dims: [p.batch, 1],
        data: BigInt64Array.from(p.lengths.map((n) => BigInt(n + s - 1))),
      },
      ...extra,
    };
    for (let l = 0; l < o.layers; l++) {
      for (const kv of ["key", "value"]) {
        const t = out[`present.${l}.${kv}`];
        if (!t) throw new Error(`decode step ${s - 1} returned no 'present.${l}.${kv}'`);
        feeds[`past_key_values.${l}.${kv}`] = { type: "float32", dims: t.dims, data: t.data };
      }
    }
    // Any other state the model carries from call to call (prunec's KV stages: `present.L.prunec_valid`),
    // fed back the way transformers.js does: `present` → `past_key_values` in the name.
    for (const [name, t] of Object.entries(out)) {
      if (!name.startsWith("present.") || /\.(key|value)$/.test(name)) continue;
      feeds[name.replace(/^present/, "past_key_values")] = { type: "float32", dims: t.dims, data: t.data };
    }
    out = await run(feeds);
    const logits = out["logits"]!.data as Float32Array;
    if (logits.length !== p.batch * V)
      throw new Error(`decode step ${s} logits have dims [${out["logits"]!.dims}], expected [${p.batch}, 1, ${V}]`);
    stepLogits.push(logits);
    for (let b = 0; b < p.batch; b++) tokens[b]!.push(argmax(logits, b * V, V));
  }
  return stepLogits;
}

// ---------------------------------------------------------------------------------------------
// Sessions kept open across decode steps (test/helpers/ort.ts opens one per run).

export type Backend = "cpu" | "wasm";

export interface DecoderSession {
  run(feeds: Feeds): Promise<Outputs>;
  release(): Promise<void>;
}

interface AnyTensor {
  type: string;
  dims: readonly number[];
  data: unknown;
  dispose(): void;
}
interface AnySession {
  outputNames: readonly string[];
  run(feeds: Record<string, unknown>): Promise<Record<string, AnyTensor>>;
  release(): Promise<void>;
}

/** One session on onnxruntime-node's CPU EP or onnxruntime-web's WASM backend (single thread). */
export async function openDecoderSession(model: Uint8Array, backend: Backend): Promise<DecoderSession> {
  let session: AnySession;
  let tensor: (type: string, data: TensorData, dims: number[]) => unknown;
  if (backend === "wasm") {
    const ort = await loadOrtWeb();
    session = (await ort.InferenceSession.create(model, { executionProviders: ["wasm"] })) as unknown as AnySession;
    tensor = (type, data, dims) => new ort.Tensor(type as "float32", data as Float32Array, dims);
  } else {
    const ort = await import("onnxruntime-node");
    session = (await ort.InferenceSession.create(model, { executionProviders: ["cpu"] })) as unknown as AnySession;
    tensor = (type, data, dims) => new ort.Tensor(type as "float32", data as Float32Array, dims);
  }
  return {
    async run(feeds: Feeds): Promise<Outputs> {
      const ortFeeds: Record<string, unknown> = {};
      for (const [name, f] of Object.entries(feeds)) ortFeeds[name] = tensor(f.type, f.data, [...f.dims]);
      const res = await session.run(ortFeeds);
      const out: Outputs = {};
      for (const name of session.outputNames) {
        const t = res[name]!;
        out[name] = { type: t.type, dims: [...t.dims], data: (t.data as TensorData).slice() };
        t.dispose();
      }
      return out;
    },
    release: () => session.release(),
  };
}

// ---------------------------------------------------------------------------------------------
// Generation with an image mask (models compiled by prunec with `tokens image = input image_mask`).

/** Feeds a decoder step: a function, or an open session. */
export type DecoderRunner = ((feeds: Feeds) => Promise<Outputs>) | DecoderSession;

/** The `image_mask` feed [batch, seq] (bool) of a prompt batch. */
export function imageMaskFeed(p: PromptBatch, name = "image_mask"): Feeds {
  const data = new Uint8Array(p.batch * p.seq);
  p.imageMask.forEach((row, b) => row.forEach((v, j) => (data[b * p.seq + j] = v ? 1 : 0)));
  return { [name]: { type: "bool", dims: [p.batch, p.seq], data } };
}

export interface ImageMaskGenerationOptions {
  /** The bool input marking image positions (default "image_mask"). */
  imageMask?: string;
  /**
   * An int64 [batch, K] output giving the prompt position of each prefill output row (-1 for
   * empty slots), used to find each example's last prompt token when the prefill returns fewer
   * rows than it was fed (default "prunec.stage0.indices", read only when the model returns it).
   */
  indices?: string;
}

export interface ImageMaskGeneration extends Generation {
  /** Every output of the prefill run: present.N.key/value (lengths may differ per layer), exposed indices… */
  prefillOutputs: Outputs;
  /** Row of each example's last prompt token in the prefill logits (the row its first token comes from). */
  lastRows: number[];
  /** Length (dim 2) of present.N.key after prefill, per layer. */
  presentLengths: number[];
}

/**
 * Greedy generation with a merged gqa decoder that takes an image mask (a model prunec compiled with
 * `tokens image = input image_mask`). Prefill feeds the prompt batch, an empty past and its image
 * mask; each of the `steps − 1` decode steps feeds the last token, an all-false [batch, 1] image
 * mask (the new token is text), the attention mask grown by one column of ones (DENSE length: the
 * caller does not know how many tokens the model pruned), position ids continuing in dense
 * numbering (prompt length + step − 1), and every layer's present.N → past_key_values.N as
 * returned, whatever its length (a pruning model's layers after the stage return shorter caches).
 *
 * The prefill logits may have fewer rows than the prompt (pruned tokens have none): each example's
 * first token is read from the row `options.indices` maps to its last prompt position; without
 * such an output, all rows must end at the last column (left padding or equal lengths) and the
 * last row is used.
 */
export async function generateGreedyWithImageMask(
  runner: DecoderRunner,
  p: PromptBatch,
  steps: number,
  o: DecoderOptions = DECODER,
  options: ImageMaskGenerationOptions = {},
): Promise<ImageMaskGeneration> {
  const run = typeof runner === "function" ? runner : (f: Feeds) => runner.run(f);
  const maskName = options.imageMask ?? "image_mask";
  const indicesName = options.indices ?? "prunec.stage0.indices";
  const V = o.vocab;
  const prefillOutputs = await run({ ...prefillFeeds(p, "gqa", o), ...imageMaskFeed(p, maskName) });
  const logitsOut = prefillOutputs["logits"];
  if (!logitsOut) throw new Error("generateGreedyWithImageMask: the model returned no 'logits'");
  const prefill = logitsOut.data as Float32Array;
  const [batch, rowsOut, vocab] = logitsOut.dims as [number, number, number];
  if (batch !== p.batch || vocab !== V)
    throw new Error(
      `generateGreedyWithImageMask: prefill logits have dims [${logitsOut.dims}], expected [${p.batch}, ≤${p.seq}, ${V}]`,
    );
  const indices = prefillOutputs[indicesName];
  const lastRows = p.offsets.map((offset, b) => {
    const last = offset + p.lengths[b]! - 1;
    if (rowsOut === p.seq) return last;
    if (indices) {
      const k = indices.dims[1]!;
      if (k !== rowsOut)
        throw new Error(`generateGreedyWithImageMask: '${indicesName}' has ${k} columns for ${rowsOut} logits rows`);
      const row = Array.from((indices.data as BigInt64Array).subarray(b * k, (b + 1) * k), Number).indexOf(last);
      if (row < 0)
        throw new Error(
          `generateGreedyWithImageMask: example ${b}'s last prompt position ${last} is not among the kept rows of '${indicesName}'`,
        );
      return row;
    }
    if (last !== p.seq - 1)
      throw new Error(
        `generateGreedyWithImageMask: ${rowsOut} of ${p.seq} logits rows and no '${indicesName}' output: cannot find example ${b}'s last prompt token (not left-padded)`,
      );
    return rowsOut - 1;
  });
  const tokens: number[][] = lastRows.map((row, b) => [argmax(prefill, (b * rowsOut + row) * V, V)]);
  const presentLengths = Array.from({ length: o.layers }, (_, l) => prefillOutputs[`present.${l}.key`]?.dims[2] ?? -1);

  const noImage: Feeds = { [maskName]: { type: "bool", dims: [p.batch, 1], data: new Uint8Array(p.batch) } };
  const stepLogits = await decodeSteps(run, prefillOutputs, p, tokens, steps, o, noImage);
  return { tokens, prefill, steps: stepLogits, prefillOutputs, lastRows, presentLengths };
}

/** `generateGreedyWithImageMask` on a session of `model` opened for the run (and released after). */
export async function generateWithImageMask(
  model: Uint8Array,
  backend: Backend,
  p: PromptBatch,
  steps: number,
  o: DecoderOptions = DECODER,
  options: ImageMaskGenerationOptions = {},
): Promise<ImageMaskGeneration> {
  const session = await openDecoderSession(model, backend);
  try {
    return await generateGreedyWithImageMask(session, p, steps, o, options);
  } finally {
    await session.release();
  }
}
