/**
 * A plain-array TypeScript forward pass of the test decoder (test/support/decoder.ts), in float64,
 * with a KV cache and greedy generation. One example at a time, no padding: position i of a
 * sequence is rotary position i. Weights are read back from a model's initializers (by the names
 * the builder gives them), so the check covers what the ONNX file actually holds.
 *
 * Per layer: h = RMSNorm(x)·w; q = h·Wq, k = h·Wk, v = h·Wv; rotary (rotate-half: x·cos +
 * [−x₂, x₁]·sin with angle pos·base^(−2i/head_size)) on q and k; query head n reads key/value head
 * ⌊n / (heads/kvHeads)⌋; softmax(q·kᵀ/√head_size) over keys 0..pos; x += attn·Wo;
 * x += (silu(h₂·Wg) ⊙ h₂·Wu)·Wd with h₂ = RMSNorm(x)·w₂. Logits = RMSNorm(x)·w_f · W_head.
 *
 * `generatePruned` adds FastV (`after layer L drop P% of image by last-token-attn`) with its
 * "prune once at prefill" KV-cache semantics: per-layer caches of different lengths (all prompt
 * tokens up to layer L, the kept ones after), kept tokens at their original rotary positions.
 */
import { decodeModel } from "../../src/onnx/io.js";
import { readNumbers } from "../../src/onnx/tensor.js";
import {
  DECODER,
  weightNames,
  type DecoderOptions,
  type DecoderWeights,
  type LayerWeights,
} from "../support/decoder.js";
import { keepCount, topKPositions } from "./cls-attn.js";

/** The decoder's weights as stored in `model` (initializers named as the builder names them). */
export function weightsFromModel(model: Uint8Array, o: DecoderOptions): DecoderWeights {
  const inits = new Map(decodeModel(model).graph!.initializer.map((t) => [t.name, t]));
  const read = (name: string, size: number): Float32Array => {
    const t = inits.get(name);
    if (!t) throw new Error(`model has no initializer '${name}'`);
    const values = readNumbers(t, size);
    if (!values || values.length !== size) throw new Error(`initializer '${name}': expected ${size} float values`);
    return Float32Array.from(values);
  };
  const d = o.hidden;
  const qw = o.heads * o.headSize;
  const kvw = o.kvHeads * o.headSize;
  const embed = read(weightNames.embed, o.vocab * d);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < o.layers; l++) {
    const n = weightNames.layer(l);
    layers.push({
      inputNorm: read(n.inputNorm, d),
      q: read(n.q, d * qw),
      k: read(n.k, d * kvw),
      v: read(n.v, d * kvw),
      o: read(n.o, qw * d),
      postNorm: read(n.postNorm, d),
      gate: read(n.gate, d * o.intermediate),
      up: read(n.up, d * o.intermediate),
      down: read(n.down, o.intermediate * d),
    });
  }
  let lmHead: Float32Array;
  if (o.tiedEmbeddings) {
    lmHead = new Float32Array(d * o.vocab);
    for (let v = 0; v < o.vocab; v++) for (let i = 0; i < d; i++) lmHead[i * o.vocab + v] = embed[v * d + i]!;
  } else {
    lmHead = read(weightNames.lmHead, d * o.vocab);
  }
  return { embed, layers, norm: read(weightNames.norm, d), lmHead };
}

/**
 * The weights of a decoder exported by torch from an HF-style module tree (examples/recall): each
 * read from the initializer its node reads, found by the node's name (`/model/layers.L/self_attn/
 * q_proj/MatMul`, `/model/layers.L/input_layernorm/Mul_1`, …), MatMul weights stored [in, out].
 */
export function weightsByNodeNames(model: Uint8Array, o: DecoderOptions): DecoderWeights {
  const graph = decodeModel(model).graph!;
  const inits = new Map(graph.initializer.map((t) => [t.name, t]));
  const byNode = new Map(graph.node.map((n) => [n.name, n]));
  const read = (node: string, input: number, size: number): Float32Array => {
    const n = byNode.get(node);
    const t = n ? inits.get(n.input[input] ?? "") : undefined;
    if (!t) throw new Error(`model has no node '${node}' reading an initializer at input ${input}`);
    const values = readNumbers(t, size);
    if (!values || values.length !== size) throw new Error(`node '${node}': expected ${size} float weights`);
    return Float32Array.from(values);
  };
  const d = o.hidden;
  const qw = o.heads * o.headSize;
  const kvw = o.kvHeads * o.headSize;
  const layers: LayerWeights[] = Array.from({ length: o.layers }, (_, l) => {
    const p = `/model/layers.${l}`;
    return {
      inputNorm: read(`${p}/input_layernorm/Mul_1`, 1, d),
      q: read(`${p}/self_attn/q_proj/MatMul`, 1, d * qw),
      k: read(`${p}/self_attn/k_proj/MatMul`, 1, d * kvw),
      v: read(`${p}/self_attn/v_proj/MatMul`, 1, d * kvw),
      o: read(`${p}/self_attn/o_proj/MatMul`, 1, qw * d),
      postNorm: read(`${p}/post_attention_layernorm/Mul_1`, 1, d),
      gate: read(`${p}/mlp/gate_proj/MatMul`, 1, d * o.intermediate),
      up: read(`${p}/mlp/up_proj/MatMul`, 1, d * o.intermediate),
      down: read(`${p}/mlp/down_proj/MatMul`, 1, o.intermediate * d),
    };
  });
  return {
    embed: read("/model/embed_tokens/Gather", 0, o.vocab * d),
    layers,
    norm: read("/model/norm/Mul_1", 1, d),
    lmHead: read("/model/lm_head/MatMul", 1, d * o.vocab),
  };
}

/** x[in] · W[in, out] (W row-major). */
function linear(x: Float64Array, w: Float32Array, inDim: number, outDim: number): Float64Array {
  const y = new Float64Array(outDim);
  for (let i = 0; i < inDim; i++) {
    const xi = x[i]!;
    if (xi === 0) continue;
    const row = i * outDim;
    for (let j = 0; j < outDim; j++) y[j] = y[j]! + xi * w[row + j]!;
  }
  return y;
}

function rmsNorm(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * w[i]!);
}

/** Keys and values after rotary, per layer: [kvHead][position] → head_size vector. */
export interface KvCache {
  length: number;
  keys: Float64Array[][][];
  values: Float64Array[][][];
}

export class ReferenceDecoder {
  constructor(
    readonly w: DecoderWeights,
    readonly o: DecoderOptions,
  ) {}

  newCache(): KvCache {
    const per = () =>
      Array.from({ length: this.o.layers }, () => Array.from({ length: this.o.kvHeads }, () => [] as Float64Array[]));
    return { length: 0, keys: per(), values: per() };
  }

  private rotate(x: Float64Array, heads: number, pos: number): Float64Array {
    const hs = this.o.headSize;
    const half = hs / 2;
    const y = new Float64Array(x.length);
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < half; i++) {
        const angle = pos * this.o.ropeBase ** ((-2 * i) / hs);
        const c = Math.cos(angle) * (this.o.ropeScale ?? 1);
        const s = Math.sin(angle) * (this.o.ropeScale ?? 1);
        const a = x[h * hs + i]!;
        const b = x[h * hs + half + i]!;
        y[h * hs + i] = a * c - b * s;
        y[h * hs + half + i] = b * c + a * s;
      }
    }
    return y;
  }

  /** Whether a query in cache slot `p` sees slot `j` (j ≤ p) under the sliding window of w slots, if any. */
  private visible(j: number, p: number): boolean {
    return this.o.localWindow === undefined || j > p - this.o.localWindow;
  }

  /** Widths the layer computations use: hidden, head size, q/kv widths, heads per kv head, 1/√d. */
  private sizes() {
    const o = this.o;
    const hs = o.headSize;
    return {
      d: o.hidden,
      hs,
      qw: o.heads * hs,
      kvw: o.kvHeads * hs,
      rep: o.heads / o.kvHeads,
      scale: 1 / Math.sqrt(hs),
    };
  }

  /**
   * Runs `tokens` after what `cache` holds (appending to it); returns each token's logits. Rotary
   * positions count `cache.length` (the dense position, even after entries were evicted). With
   * `queries`, each token's rotated query is appended per layer and head: queries[l][h] = rows.
   */
  forward(
    tokens: readonly number[],
    cache: KvCache,
    queries?: Float64Array[][][],
    /** Each token's query before rotary, per layer and head (as `queries`). */
    preRope?: Float64Array[][][],
  ): Float64Array[] {
    const o = this.o;
    const { d, hs, qw, kvw, rep, scale } = this.sizes();
    const logits: Float64Array[] = [];
    for (const token of tokens) {
      const pos = cache.length;
      let x = Float64Array.from(this.w.embed.subarray(token * d, (token + 1) * d));
      for (let l = 0; l < o.layers; l++) {
        const lw = this.w.layers[l]!;
        const h = rmsNorm(x, lw.inputNorm, o.epsilon);
        const projected = linear(h, lw.q, d, qw);
        const q = this.rotate(projected, o.heads, pos);
        const k = this.rotate(linear(h, lw.k, d, kvw), o.kvHeads, pos);
        const v = linear(h, lw.v, d, kvw);
        if (queries) for (let n = 0; n < o.heads; n++) queries[l]![n]!.push(q.slice(n * hs, (n + 1) * hs));
        if (preRope) for (let n = 0; n < o.heads; n++) preRope[l]![n]!.push(projected.slice(n * hs, (n + 1) * hs));
        for (let g = 0; g < o.kvHeads; g++) {
          cache.keys[l]![g]!.push(k.slice(g * hs, (g + 1) * hs));
          cache.values[l]![g]!.push(v.slice(g * hs, (g + 1) * hs));
        }
        const attn = new Float64Array(qw);
        for (let n = 0; n < o.heads; n++) {
          const g = Math.floor(n / rep);
          const keys = cache.keys[l]![g]!;
          const values = cache.values[l]![g]!;
          const scores = keys.map((key, j) => {
            let s = 0;
            for (let i = 0; i < hs; i++) s += q[n * hs + i]! * key[i]!;
            return this.visible(j, keys.length - 1) ? s * scale : -Infinity;
          });
          const max = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - max));
          const sum = e.reduce((a, b) => a + b, 0);
          e.forEach((p, j) => {
            for (let i = 0; i < hs; i++) attn[n * hs + i] = attn[n * hs + i]! + (p / sum) * values[j]![i]!;
          });
        }
        const mid = linear(attn, lw.o, qw, d).map((v, i) => v + x[i]!);
        const h2 = rmsNorm(mid, lw.postNorm, o.epsilon);
        const gate = linear(h2, lw.gate, d, o.intermediate);
        const up = linear(h2, lw.up, d, o.intermediate);
        const act = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]!);
        x = linear(act, lw.down, o.intermediate, d).map((v, i) => v + mid[i]!);
      }
      cache.length += 1;
      logits.push(linear(rmsNorm(x, this.w.norm, o.epsilon), this.w.lmHead, d, o.vocab));
    }
    return logits;
  }

  /** Greedy: prefill `prompt`, then feed back the argmax `steps − 1` times; `steps` tokens in all. */
  generate(
    prompt: readonly number[],
    steps: number,
  ): { tokens: number[]; prefill: Float64Array[]; steps: Float64Array[] } {
    const cache = this.newCache();
    const prefill = this.forward(prompt, cache);
    return { ...this.decodeGreedy(prefill.at(-1)!, cache, steps), prefill };
  }

  /**
   * Greedy decoding after a prefill whose last logits are `last`, over whatever `cache` holds (an
   * evicted one too): the argmax, then `steps − 1` decode steps; their tokens and logits.
   */
  decodeGreedy(last: Float64Array, cache: KvCache, steps: number): { tokens: number[]; steps: Float64Array[] } {
    const tokens = [argmax(last)];
    const stepLogits: Float64Array[] = [];
    for (let s = 1; s < steps; s++) {
      const [logits] = this.forward([tokens.at(-1)!], cache);
      stepLogits.push(logits!);
      tokens.push(argmax(logits!));
    }
    return { tokens, steps: stepLogits };
  }

  /**
   * A prompt layer by layer into `cache` (its `length` becomes the prompt's), recording each row's
   * rotated query per layer and head in `queries`; after layer `stream.afterLayer` only the rows
   * `stream.keep` returns (ascending, from that layer's last-row probabilities, mean over heads) go
   * on, at their original positions. Returns the last row's logits.
   */
  prefillLayerwise(
    prompt: readonly number[],
    cache: KvCache,
    queries: Float64Array[][][],
    stream?: { afterLayer: number; keep(lastRowProbs: Float64Array): number[] },
  ): Float64Array {
    const d = this.o.hidden;
    let xs: Float64Array[] = prompt.map((t) => Float64Array.from(this.w.embed.subarray(t * d, (t + 1) * d)));
    let positions = prompt.map((_, j) => j);
    for (let l = 0; l < this.o.layers; l++) {
      const r = this.runLayer(l, xs, positions, { keys: cache.keys[l]!, values: cache.values[l]! }, queries[l]);
      xs = r.xs;
      if (stream && l === stream.afterLayer) {
        const kept = stream.keep(r.lastRowProbs);
        xs = kept.map((j) => xs[j]!);
        positions = kept.map((j) => positions[j]!);
      }
    }
    cache.length = prompt.length;
    return linear(rmsNorm(xs.at(-1)!, this.w.norm, this.o.epsilon), this.w.lmHead, d, this.o.vocab);
  }

  /** Runs layer `l` on rows `xs` at rotary `positions`, appending their keys/values to `cache`; causal within the rows. */
  runLayer(
    l: number,
    xs: readonly Float64Array[],
    positions: readonly number[],
    cache: LayerCache,
    /** Each row's rotated query, per head (pushed). */
    queries?: Float64Array[][],
  ): { xs: Float64Array[]; lastRowProbs: Float64Array } {
    const o = this.o;
    const { d, hs, qw, kvw, rep, scale } = this.sizes();
    const lw = this.w.layers[l]!;
    const before = cache.keys[0]!.length;
    const qs: Float64Array[] = [];
    xs.forEach((x, i) => {
      const h = rmsNorm(x, lw.inputNorm, o.epsilon);
      qs.push(this.rotate(linear(h, lw.q, d, qw), o.heads, positions[i]!));
      if (queries) for (let n = 0; n < o.heads; n++) queries[n]!.push(qs.at(-1)!.slice(n * hs, (n + 1) * hs));
      const k = this.rotate(linear(h, lw.k, d, kvw), o.kvHeads, positions[i]!);
      const v = linear(h, lw.v, d, kvw);
      for (let g = 0; g < o.kvHeads; g++) {
        cache.keys[g]!.push(k.slice(g * hs, (g + 1) * hs));
        cache.values[g]!.push(v.slice(g * hs, (g + 1) * hs));
      }
    });
    let lastRowProbs = new Float64Array(0);
    const out = xs.map((x, i) => {
      const visible = before + i + 1;
      const q = qs[i]!;
      const attn = new Float64Array(qw);
      const meanProbs = new Float64Array(visible);
      for (let n = 0; n < o.heads; n++) {
        const g = Math.floor(n / rep);
        const keys = cache.keys[g]!;
        const values = cache.values[g]!;
        const scores: number[] = [];
        for (let j = 0; j < visible; j++) {
          let s = 0;
          for (let t = 0; t < hs; t++) s += q[n * hs + t]! * keys[j]![t]!;
          scores.push(this.visible(j, visible - 1) ? s * scale : -Infinity);
        }
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const sum = e.reduce((a, b) => a + b, 0);
        e.forEach((ej, j) => {
          const p = ej / sum;
          meanProbs[j] = meanProbs[j]! + p / o.heads;
          for (let t = 0; t < hs; t++) attn[n * hs + t] = attn[n * hs + t]! + p * values[j]![t]!;
        });
      }
      if (i === xs.length - 1) lastRowProbs = meanProbs;
      const mid = linear(attn, lw.o, qw, d).map((v, t) => v + x[t]!);
      const h2 = rmsNorm(mid, lw.postNorm, o.epsilon);
      const gate = linear(h2, lw.gate, d, o.intermediate);
      const up = linear(h2, lw.up, d, o.intermediate);
      const act = gate.map((gv, t) => (gv / (1 + Math.exp(-gv))) * up[t]!);
      return linear(act, lw.down, o.intermediate, d).map((v, t) => v + mid[t]!);
    });
    return { xs: out, lastRowProbs };
  }

  /**
   * FastV with "prune once at prefill" cache semantics. Prefill runs layers 0..afterLayer on all N
   * prompt tokens (their caches keep all N); layer afterLayer's causal attention probabilities of
   * the LAST prompt token (mean over heads) score the image tokens; the lowest are dropped, and
   * layers afterLayer+1.. run on the kept tokens only (their caches hold only the kept tokens,
   * rotated at their ORIGINAL positions). Decode steps run every layer on its own cache (layers
   * ≤ afterLayer attend to all prompt tokens, later layers to the kept ones), each new token at
   * position N + step − 1 (dense numbering continuing from the original prompt length).
   * dropPercent 0 is the dense model computed layer by layer.
   */
  generatePruned(
    prompt: readonly number[],
    image: readonly boolean[],
    fastv: FastvOptions,
    steps: number,
  ): PrunedGeneration {
    const o = this.o;
    const d = o.hidden;
    const n = prompt.length;
    if (image.length !== n)
      throw new Error(`generatePruned: image mask has ${image.length} entries for ${n} prompt tokens`);
    if (fastv.afterLayer < 0 || fastv.afterLayer >= o.layers)
      throw new Error(`generatePruned: afterLayer ${fastv.afterLayer} out of range 0..${o.layers - 1}`);
    if (image[n - 1])
      throw new Error(
        "generatePruned: the last prompt token must not be an image token (its logits give the first generated token)",
      );
    const caches: LayerCache[] = Array.from({ length: o.layers }, () => ({
      keys: Array.from({ length: o.kvHeads }, () => [] as Float64Array[]),
      values: Array.from({ length: o.kvHeads }, () => [] as Float64Array[]),
    }));
    const embed = (token: number): Float64Array => Float64Array.from(this.w.embed.subarray(token * d, (token + 1) * d));
    const logitsOf = (x: Float64Array): Float64Array =>
      linear(rmsNorm(x, this.w.norm, o.epsilon), this.w.lmHead, d, o.vocab);

    // Prefill.
    let xs = prompt.map(embed);
    let positions = prompt.map((_, j) => j);
    let kept = positions;
    let imageScores: number[] = [];
    for (let l = 0; l < o.layers; l++) {
      const r = this.runLayer(l, xs, positions, caches[l]!);
      xs = r.xs;
      if (l === fastv.afterLayer) {
        const scores = Array.from(r.lastRowProbs);
        imageScores = image.flatMap((v, j) => (v ? [scores[j]!] : []));
        kept = fastvKept(scores, image, fastv.dropPercent);
        xs = kept.map((j) => xs[j]!);
        // TransPrune / SparseVLM renumber the kept tokens 0..K'−1; FastV keeps their positions.
        positions = fastv.renumber ? kept.map((_, k) => k) : kept;
      }
    }
    const cacheLengths = caches.map((c) => c.keys[0]!.length);
    const prefillLast = logitsOf(xs.at(-1)!);

    // Greedy decode: token s (s ≥ 1) is fed at position n + s − 1, every layer on its own cache.
    const tokens = [argmax(prefillLast)];
    const stepLogits: Float64Array[] = [];
    for (let s = 1; s < steps; s++) {
      let x = [embed(tokens.at(-1)!)];
      for (let l = 0; l < o.layers; l++) x = this.runLayer(l, x, [n + s - 1], caches[l]!).xs;
      const logits = logitsOf(x[0]!);
      stepLogits.push(logits);
      tokens.push(argmax(logits));
    }
    return { kept, imageScores, prefillLast, tokens, steps: stepLogits, cacheLengths };
  }
}

export function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

// ---------------------------------------------------------------------------------------------
// FastV with a KV cache: prune once at prefill.

/** FastV's stage: after layer `afterLayer`, drop `dropPercent`% of the image tokens by last-token attention. */
export interface FastvOptions {
  afterLayer: number;
  /** 0: no pruning (the dense model, computed layer by layer). */
  dropPercent: number;
  /** Later layers see the kept tokens at positions 0..K'−1 (`with renumber`); decode steps still continue at N + s − 1. */
  renumber?: boolean;
}

export interface PrunedGeneration {
  /** Prompt positions kept after the stage (ascending): every non-image token and the kept image tokens. */
  kept: number[];
  /** The stage's scores of the image tokens (in prompt order): mean over heads of the last prompt row. */
  imageScores: number[];
  /** Logits of the last prompt token after prefill (where the first generated token comes from). */
  prefillLast: Float64Array;
  /** `steps` greedy tokens. */
  tokens: number[];
  /** Logits of each decode step's fed token (steps − 1 of them). */
  steps: Float64Array[];
  /** Cache length per layer right after prefill: N for layers ≤ afterLayer, kept.length after. */
  cacheLengths: number[];
}

/** One layer's cache: [kvHead][entry] → head_size vector (keys after rotary). */
export interface LayerCache {
  keys: Float64Array[][];
  values: Float64Array[][];
}

/**
 * How many of `n` image tokens the stage drops: round-half-up(percent·n / 100), as prunec's
 * `drop P% of image` counts them (at least one when percent > 0, at most n); none at 0%.
 */
export function fastvDropCount(percent: number, n: number): number {
  return percent <= 0 || n === 0 ? 0 : keepCount(percent, n);
}

/**
 * FastV's selection on one example: `scores[j]` for every prompt position j (the last row's
 * attention, mean over heads), `image[j]` marking the image tokens. Keeps every non-image token and
 * the (image count − drop) highest-scoring image tokens (ties: the lower position is kept first).
 */
export function fastvKept(scores: readonly number[], image: readonly boolean[], dropPercent: number): number[] {
  const imagePositions = image.flatMap((v, j) => (v ? [j] : []));
  const drop = fastvDropCount(dropPercent, imagePositions.length);
  const keptImage = new Set(
    topKPositions(
      imagePositions.map((j) => scores[j]!),
      imagePositions.length - drop,
      0,
    ).map((i) => imagePositions[i]!),
  );
  return image.flatMap((isImage, j) => (!isImage || keptImage.has(j) ? [j] : []));
}

/** `generatePruned` on a fresh reference decoder over `weights` (options `o`, default the test decoder's). */
export function generatePruned(
  weights: DecoderWeights,
  prompt: readonly number[],
  image: readonly boolean[],
  fastv: FastvOptions,
  steps: number,
  o: DecoderOptions = DECODER,
): PrunedGeneration {
  return new ReferenceDecoder(weights, o).generatePruned(prompt, image, fastv, steps);
}
