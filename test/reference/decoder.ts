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
 */
import { decodeModel } from "../../src/onnx/io.js";
import { readNumbers } from "../../src/onnx/tensor.js";
import { weightNames, type DecoderOptions, type DecoderWeights, type LayerWeights } from "../support/decoder.js";

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
    const per = () => Array.from({ length: this.o.layers }, () => Array.from({ length: this.o.kvHeads }, () => [] as Float64Array[]));
    return { length: 0, keys: per(), values: per() };
  }

  private rotate(x: Float64Array, heads: number, pos: number): Float64Array {
    const hs = this.o.headSize;
    const half = hs / 2;
    const y = new Float64Array(x.length);
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < half; i++) {
        const angle = pos * Math.pow(this.o.ropeBase, (-2 * i) / hs);
        const c = Math.cos(angle);
        const s = Math.sin(angle);
        const a = x[h * hs + i]!;
        const b = x[h * hs + half + i]!;
        y[h * hs + i] = a * c - b * s;
        y[h * hs + half + i] = b * c + a * s;
      }
    }
    return y;
  }

  /** Runs `tokens` after what `cache` holds (appending to it); returns each token's logits. */
  forward(tokens: readonly number[], cache: KvCache): Float64Array[] {
    const o = this.o;
    const d = o.hidden;
    const hs = o.headSize;
    const qw = o.heads * hs;
    const kvw = o.kvHeads * hs;
    const rep = o.heads / o.kvHeads;
    const scale = 1 / Math.sqrt(hs);
    const logits: Float64Array[] = [];
    for (const token of tokens) {
      const pos = cache.length;
      let x = Float64Array.from(this.w.embed.subarray(token * d, (token + 1) * d));
      for (let l = 0; l < o.layers; l++) {
        const lw = this.w.layers[l]!;
        const h = rmsNorm(x, lw.inputNorm, o.epsilon);
        const q = this.rotate(linear(h, lw.q, d, qw), o.heads, pos);
        const k = this.rotate(linear(h, lw.k, d, kvw), o.kvHeads, pos);
        const v = linear(h, lw.v, d, kvw);
        for (let g = 0; g < o.kvHeads; g++) {
          cache.keys[l]![g]!.push(k.slice(g * hs, (g + 1) * hs));
          cache.values[l]![g]!.push(v.slice(g * hs, (g + 1) * hs));
        }
        const attn = new Float64Array(qw);
        for (let n = 0; n < o.heads; n++) {
          const g = Math.floor(n / rep);
          const keys = cache.keys[l]![g]!;
          const values = cache.values[l]![g]!;
          const scores = keys.map((key) => {
            let s = 0;
            for (let i = 0; i < hs; i++) s += q[n * hs + i]! * key[i]!;
            return s * scale;
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
  generate(prompt: readonly number[], steps: number): { tokens: number[]; prefill: Float64Array[]; steps: Float64Array[] } {
    const cache = this.newCache();
    const prefill = this.forward(prompt, cache);
    const tokens = [argmax(prefill.at(-1)!)];
    const stepLogits: Float64Array[] = [];
    for (let s = 1; s < steps; s++) {
      const [logits] = this.forward([tokens.at(-1)!], cache);
      stepLogits.push(logits!);
      tokens.push(argmax(logits!));
    }
    return { tokens, prefill, steps: stepLogits };
  }
}

export function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}
