/**
 * Float64 references for prefill-time KV-cache eviction ("presses", methods.md §17–§26), written from
 * the authors' code, independent of prunec's compiler. One example (batch 1) at a time.
 *
 * Sources (read, not copied):
 *   - kvpress: NVIDIA/kvpress @ 8bb29b9, kvpress/presses/{scorer_press, base_press, knorm_press,
 *     snapkv_press, streaming_llm_press, observed_attention_press, tova_press, random_press,
 *     pyramidkv_press, expected_attention_press}.py, kvpress/utils.py, kvpress/pipeline.py.
 *   - H2O: FMInference/H2O @ ac75c2a, h2o_hf/utils_real_drop/modify_llama.py (H2OKVCache_LayerWise).
 *   - A2SF: Dirac-Notation/A2SF @ 00a617f, utils_real_drop/attention.py (compressed_attention),
 *     utils_real_drop/policies/a2sf.py (A2SFPolicy), utils_real_drop/policies/base.py (_topk_with_recent).
 *
 * Layout. Per layer: q[h][t][d] (query heads, after rotary), k[g][t][d], v[g][t][d] (KV heads, after
 * rotary, as cached). heads = G · kvHeads; query head h reads KV head floor(h / G) (HF `repeat_kv`,
 * onnxruntime GroupQueryAttention), so KV head g's group is query heads g·G … g·G+G−1. Attention is
 * causal with scale 1/√d unless told otherwise.
 *
 * Kvpress compresses after each layer's prefill attention, so prefill itself (every layer's hidden
 * states, and so these q/k/v) is the dense model's; only what decode steps see changes.
 *
 * Padding. kvpress has no padding support: its pipeline prefills one context at batch 1 without an
 * attention mask, and no score looks at a mask (a padded batch would count pads in N, and Knorm /
 * StreamingLLM / random could keep pad slots; StreamingLLM's sinks would be pads). H2O's real-drop
 * attention rebuilds a plain causal mask and ignores the caller's attention_mask, sums scores over the
 * batch (`attn.sum(0)`) and `squeeze()`s the cache, so it is batch 1 only. A2SF adds the caller's 4-D
 * mask to the logits, but its budget, recent window and query weights use the padded length.
 * prunec's batched semantics, defined here: each example computes exactly what it would alone at
 * batch 1. With `pad` left-padded slots, the reference drops slots [0, pad), evicts over the N − pad
 * real positions (counts from N − pad, causal attention among real positions only) and reports kept
 * positions as slot indices into the given arrays (so always ≥ pad). Pads are never kept and never
 * counted as context. (Rotary logits depend only on i − j, so a shift of all positions changes nothing.)
 */
import { mulberry32 } from "../../src/random.js";

export type Mat = number[][];
/** [head][position][dim] */
export type Heads = number[][][];
export interface LayerInput {
  q: Heads;
  k: Heads;
  v: Heads;
  /** The queries before rotary (expected attention's statistics). */
  qPre?: Heads;
}

// ---------------------------------------------------------------------------------------------
// Counts and rounding
// ---------------------------------------------------------------------------------------------

/**
 * kvpress `ScorerPress.compress`: n_kept = int(N · (1 − r)), float64, truncated. 0 ≤ r < 1.
 * N = 10, r = 0.25 → int(7.5) = 7; N = 1000, r = 0.9 → int(99.99999999999997) = 99; N = 10, r = 0.9 → 0.
 */
export function keptCountFromRatio(n: number, ratio: number): number {
  if (!(ratio >= 0 && ratio < 1)) throw new Error(`compression ratio must be in [0, 1), got ${ratio}`);
  return Math.trunc(n * (1 - ratio));
}

/**
 * prunec's `keep kv P%` is defined as kvpress's compression_ratio r = 1 − P/100 (float64), counted as
 * kvpress counts it, so that a compiled model matches kvpress at that r bit for bit. This is NOT
 * trunc(N·P/100): keep 10% of 1000 → r = 0.9 → 99 kept. Nor is it prunec's token-pruning `keep P%`
 * (round half up, at least 1; test/reference/cls-attn.ts keepCount). 0 < P ≤ 100.
 */
export function keepPercentToRatio(percent: number): number {
  if (!(percent > 0 && percent <= 100)) throw new Error(`keep percent must be in (0, 100], got ${percent}`);
  return 1 - percent / 100;
}

/** Budget forms: kvpress's compression ratio, prunec's `keep kv P%` (→ r above), or a fixed token count. */
export type Budget = { ratio: number } | { keepPercent: number } | { keep: number };

export function budgetRatio(b: Budget): number | undefined {
  if ("ratio" in b) return b.ratio;
  if ("keepPercent" in b) return keepPercentToRatio(b.keepPercent);
  return undefined;
}

/** Kept count for an N-token example: int(N(1 − r)) for the ratio forms, min(K, N) for `keep K tokens`. */
export function keptCount(n: number, b: Budget): number {
  if ("keep" in b) {
    if (!Number.isInteger(b.keep) || b.keep < 0) throw new Error(`keep must be a count, got ${b.keep}`);
    return Math.min(b.keep, n);
  }
  return keptCountFromRatio(n, budgetRatio(b)!);
}

/** Python 3 `round(x)` on a float: nearest integer, exact halves to even (ONNX Round does the same). */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const diff = x - f; // exact for |x| < 2^52
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

function dot(a: number[], b: number[]): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

function softmax(xs: number[]): number[] {
  const m = Math.max(...xs);
  const e = xs.map((x) => Math.exp(x - m));
  const z = e.reduce((a, x) => a + x, 0);
  return e.map((x) => x / z);
}

function groupSize(heads: number, kvHeads: number): number {
  if (kvHeads <= 0 || heads % kvHeads !== 0) throw new Error(`${heads} query heads over ${kvHeads} KV heads`);
  return heads / kvHeads;
}

/** The KV head query head h reads: floor(h / G). */
export function kvHeadOf(h: number, heads: number, kvHeads: number): number {
  return Math.floor(h / groupSize(heads, kvHeads));
}

/**
 * Causal attention probabilities P[h][i][j] (0 for j > i), softmax of q_i·k_j·scale over j ≤ i.
 * This is what kvpress reads from eager attention and what SnapKV/TOVA's recompute gives (their
 * window rows, over all N keys).
 */
export function causalProbs(q: Heads, k: Heads, scale?: number): number[][][] {
  const heads = q.length;
  const kvHeads = k.length;
  const d = q[0]![0]!.length;
  const s = scale ?? 1 / Math.sqrt(d);
  return q.map((rows, h) => {
    const keys = k[kvHeadOf(h, heads, kvHeads)]!;
    const n = keys.length;
    return rows.map((qi, i) => {
      const p = softmax(keys.slice(0, i + 1).map((kj) => dot(qi, kj) * s));
      return [...p, ...new Array<number>(n - i - 1).fill(0)];
    });
  });
}

/** Reduce per-query-head scores [h][n] to per-KV-head [g][n] over each group (mean: kvpress; sum: A2SF). */
export function reduceGroups(perHead: Mat, kvHeads: number, how: "mean" | "sum"): Mat {
  const G = groupSize(perHead.length, kvHeads);
  const out: Mat = [];
  for (let g = 0; g < kvHeads; g++) {
    const row = perHead[g * G]!.map(() => 0);
    for (let j = 0; j < G; j++) {
      const src = perHead[g * G + j]!;
      for (let t = 0; t < row.length; t++) row[t]! += src[t]!;
    }
    out.push(how === "mean" ? row.map((x) => x / G) : row);
  }
  return out;
}

function maxAll(m: Mat): number {
  let best = -Infinity;
  for (const row of m) for (const x of row) if (x > best) best = x;
  return best;
}

// ---------------------------------------------------------------------------------------------
// Scores [kvHead][position], higher = keep. Probability inputs are causal P[h][i][j] over N tokens.
// ---------------------------------------------------------------------------------------------

/**
 * ExpectedAttentionPress's parameters (kvpress's defaults: 512, 4, true, true, 0) and the model's
 * rotary: its frequencies θ_i (i < d/2; cos/sin(p·θ_i)), or its cos/sin at position p (half
 * width: what HF's rotary_emb returns, YaRN's attention scaling included).
 */
export interface ExpectedOptions {
  theta?: readonly number[];
  rotary?: (p: number) => { cos: readonly number[]; sin: readonly number[] };
  future?: number;
  sinks?: number;
  covariance?: boolean;
  vnorm?: boolean;
  epsilon?: number;
}

/**
 * ExpectedAttentionPress.score (kvpress @ 8bb29b9, expected_attention_press.py; the pre-RoPE queries
 * as kvpress/utils.py `get_prerope_query_states` takes them): qPre[h][t][d] the queries before
 * rotary, k/v[g][t][d] the cache. Written as the code computes it, matrices and all: R̄ is built
 * from HF's full-width cos/sin (cat(freqs, freqs)) at positions N … N + future − 1 and kvpress's P.
 */
export function expectedScores(qPre: Heads, k: Heads, v: Heads, o: ExpectedOptions): Mat {
  const sinks = o.sinks ?? 4;
  const future = o.future ?? 512;
  const n = k[0]!.length;
  if (!(n > sinks)) throw new Error(`Input should contain more tokens than n_sink=${sinks}`);
  const heads = qPre.length;
  const kvHeads = k.length;
  const d = k[0]![0]!.length;
  const half = d / 2;
  // get_query_statistics: hidden_states[:, n_sink:], mean over positions, covariance ÷ h.shape[1].
  const m = n - sinks;
  const mean = qPre.map((rows) => {
    const mu = new Array<number>(d).fill(0);
    for (const row of rows.slice(sinks)) for (let c = 0; c < d; c++) mu[c]! += row[c]! / m;
    return mu;
  });
  const cov = qPre.map((rows, h) => {
    const out = Array.from({ length: d }, () => new Array<number>(d).fill(0));
    for (const row of rows.slice(sinks)) {
      const x = row.map((val, c) => val - mean[h]![c]!);
      for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) out[i]![j]! += (x[i]! * x[j]!) / m;
    }
    return out;
  });
  // apply_avg_rope: R = mean_p (cos_p.unsqueeze(1)·Id + sin_p.unsqueeze(1)·P).
  const P = Array.from({ length: d }, () => new Array<number>(d).fill(0));
  for (let i = 0; i < half; i++) {
    P[half + i]![i] = 1;
    P[i]![half + i] = -1;
  }
  const R = Array.from({ length: d }, () => new Array<number>(d).fill(0));
  const at = (p: number) => {
    if (o.rotary) return o.rotary(p);
    const theta = o.theta;
    if (!theta) throw new Error("expected attention needs the rotary: theta or rotary(p)");
    return { cos: theta.map((t) => Math.cos(p * t)), sin: theta.map((t) => Math.sin(p * t)) };
  };
  for (let p = n; p < n + future; p++) {
    const { cos, sin } = at(p); // full width: the half repeated
    for (let r = 0; r < d; r++)
      for (let c = 0; c < d; c++)
        R[r]![c]! += (cos[c % half]! * (r === c ? 1 : 0) + sin[c % half]! * P[r]![c]!) / future;
  }
  const mu = mean.map((x) => R.map((row) => dot(row, x))); // μ Rᵀ
  const rotatedCov = cov.map((s) => {
    const rs = R.map((row) => Array.from({ length: d }, (_, j) => row.reduce((a, x, l) => a + x * s[l]![j]!, 0)));
    return rs.map((row) => R.map((r2) => dot(row, r2))); // (R Σ) Rᵀ
  });
  // score: keys[:, :, n_sink:], μ·k/√d + kᵀΣk/d/2, softmax over keys, mean over the group.
  const perHead: Mat = mu.map((muH, h) => {
    const keys = k[kvHeadOf(h, heads, kvHeads)]!.slice(sinks);
    const logits = keys.map((kt) => {
      let s = dot(muH, kt) / Math.sqrt(d);
      if (o.covariance ?? true) {
        const c = rotatedCov[h]!;
        let quad = 0;
        for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) quad += kt[i]! * c[i]![j]! * kt[j]!;
        s += quad / d / 2;
      }
      return s;
    });
    return softmax(logits);
  });
  let scores = reduceGroups(perHead, kvHeads, "mean");
  if (o.vnorm ?? true)
    scores = scores.map((row, g) =>
      row.map((x, j) => (x + (o.epsilon ?? 0)) * Math.sqrt(dot(v[g]![sinks + j]!, v[g]![sinks + j]!))),
    );
  // F.pad(scores, (n_sink, 0), value=scores.max().item() + 1)
  const top = maxAll(scores) + 1;
  return scores.map((row) => [...new Array<number>(sinks).fill(top), ...row]);
}

/** KnormPress: −‖k_t‖₂ on the cached (post-rotary) keys; keeps the lowest-norm keys. */
export function knormScores(k: Heads): Mat {
  return k.map((rows) => rows.map((kt) => -Math.sqrt(dot(kt, kt))));
}

/**
 * SnapKVPress (w = window, default 64; kernel default 5; N > w asserted):
 *   s[h][j] = mean over the w last queries of P[h][i][j], j < N − w (probabilities normalized over all
 *   N keys, not renormalized over the prefix);
 *   avg_pool1d(kernel, stride 1, padding ⌊kernel/2⌋, count_include_pad): zero padding, always ÷ kernel;
 *   mean over each GQA group; the w window positions get max(all KV heads' pooled scores) + 1.
 * An even kernel changes the pooled length and fails kvpress's `view`, so it is refused.
 */
export function snapkvScores(probs: number[][][], kvHeads: number, window = 64, kernel = 5): Mat {
  const n = probs[0]!.length;
  if (!(n > window)) throw new Error(`SnapKV: query length ${n} must exceed the window ${window}`);
  if (kernel < 1 || kernel % 2 !== 1) throw new Error(`SnapKV: kernel ${kernel} must be odd`);
  const prefix = n - window;
  const half = Math.floor(kernel / 2);
  const perHead = probs.map((rows) => {
    const s: number[] = [];
    for (let j = 0; j < prefix; j++) {
      let sum = 0;
      for (let i = prefix; i < n; i++) sum += rows[i]![j]!;
      s.push(sum / window);
    }
    return s.map((_, j) => {
      let sum = 0;
      for (let u = j - half; u <= j + half; u++) if (u >= 0 && u < prefix) sum += s[u]!;
      return sum / kernel;
    });
  });
  const grouped = reduceGroups(perHead, kvHeads, "mean");
  const top = maxAll(grouped) + 1;
  return grouped.map((row) => [...row, ...new Array<number>(window).fill(top)]);
}

/**
 * StreamingLLMPress: 1 everywhere, 0 on [sinks, sinks + n_pruned) with n_pruned = N − nKept
 * (kvpress: N − int(N(1 − r))); N > sinks asserted. The kept set is the first `sinks` plus the last
 * nKept − sinks positions, the same for every head. If nKept < sinks the top-k is among tied sinks.
 */
export function streamingScores(n: number, kvHeads: number, sinks: number, nKept: number): Mat {
  if (!(n > sinks)) throw new Error(`StreamingLLM: ${n} tokens must exceed n_sink ${sinks}`);
  const pruned = n - nKept;
  const row = Array.from({ length: n }, (_, t) => (t >= sinks && t < sinks + pruned ? 0 : 1));
  return Array.from({ length: kvHeads }, () => [...row]);
}

/** Column sums Σ_i P[h][i][j] per query head. */
function columnSums(probs: number[][][]): Mat {
  return probs.map((rows) => rows[0]!.map((_, j) => rows.reduce((a, r) => a + r[j]!, 0)));
}

/**
 * ObservedAttentionPress (kvpress): s_j = Σ_i P[i][j] / (N − j), N − j being how many causal queries
 * see key j, then the mean over each GQA group.
 */
export function observedScores(probs: number[][][], kvHeads: number): Mat {
  const n = probs[0]!.length;
  return reduceGroups(
    columnSums(probs).map((row) => row.map((x, j) => x / (n - j))),
    kvHeads,
    "mean",
  );
}

/**
 * H2O at prefill (H2OKVCache_LayerWise._update_hh_score on the prompt): s_j = Σ_i P[i][j], NOT
 * normalized, so early keys collect more. H2O's score is per query head and its eviction is MHA only
 * (a [H_q, T] mask indexes [H_kv, T, d]); for GQA the reference reduces with kvpress's group mean
 * (a sum would rank identically).
 */
export function h2oScores(probs: number[][][], kvHeads: number): Mat {
  return reduceGroups(columnSums(probs), kvHeads, "mean");
}

/**
 * TOVAPress: the last query's row P[h][N−1][j], j < N − 1, averaged over ALL query heads (not per
 * group) and repeated to every KV head, so every KV head keeps the same set; the last position gets
 * max + 1. N ≥ 2.
 */
export function tovaScores(probs: number[][][], kvHeads: number): Mat {
  const n = probs[0]!.length;
  if (n < 2) throw new Error("TOVA needs at least 2 tokens");
  const heads = probs.length;
  const s = Array.from({ length: n - 1 }, (_, j) => probs.reduce((a, rows) => a + rows[n - 1]![j]!, 0) / heads);
  const top = Math.max(...s) + 1;
  return Array.from({ length: kvHeads }, () => [...s, top]);
}

/**
 * A2SF at prefill (A2SF @ 00a617f, compressed_attention + A2SFPolicy): query i has weight
 * λ^(N − 1 − i) (the newest query weighs 1); acc[g][j] = Σ_{h in group g} Σ_i λ^(N−1−i) · P[h][i][j],
 * a SUM over the G query heads (a mean ranks identically: it only divides by G).
 */
export function a2sfScores(probs: number[][][], kvHeads: number, forget: number): Mat {
  const n = probs[0]!.length;
  const w = Array.from({ length: n }, (_, i) => forget ** (n - 1 - i));
  const perHead = probs.map((rows) => rows[0]!.map((_, j) => rows.reduce((a, r, i) => a + w[i]! * r[j]!, 0)));
  return reduceGroups(perHead, kvHeads, "sum");
}

/**
 * RandomPress stand-in: uniform scores from mulberry32(seed), drawn row-major over [kvHead][position].
 * kvpress seeds a fresh torch.Generator inside every `score` call, so with a seed every layer (same N,
 * same heads) gets the SAME scores and keeps the same set; the reference does the same (fresh stream
 * per layer). torch's stream (and its fp16/bf16 ties) cannot be reproduced; only the structure is.
 */
export function randomScores(kvHeads: number, n: number, seed: number): Mat {
  const next = mulberry32(seed);
  return Array.from({ length: kvHeads }, () => Array.from({ length: n }, () => next()));
}

/**
 * prunec's `random` on the cache (docs/kv-cache.md): h = (j·9765625 + g·7368787 + seed·4194301 +
 * 1234567) mod 16777213 per KV head g and position j, the same in every layer (kvpress's structure:
 * a freshly seeded draw per layer call). Written from the documented formula, in exact integers.
 */
export function randomHashScores(kvHeads: number, n: number, seed: number): Mat {
  const P = 16777213n;
  return Array.from({ length: kvHeads }, (_, g) =>
    Array.from({ length: n }, (_, j) =>
      Number((BigInt(j) * 9765625n + BigInt(g) * 7368787n + BigInt(seed) * 4194301n + 1234567n) % P),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------------------------

/**
 * torch.topk(scores, k) on one row, indices in descending-score order. Tie assumption: equal scores go
 * to the lower index first. torch.topk promises nothing about ties (CPU and CUDA differ), so tests
 * must not depend on a tie straddling the cut, except tied blocks kept or dropped whole.
 */
export function topkDescending(scores: number[], k: number): number[] {
  return scores
    .map((s, i) => [s, i] as const)
    .sort((a, b) => (b[0] !== a[0] ? b[0] - a[0] : a[1] - b[1]))
    .slice(0, k)
    .map(([, i]) => i);
}

const ascending = (xs: number[]): number[] => [...xs].sort((a, b) => a - b);

/**
 * kvpress's select: top-n_kept per KV head. Returns the positions in kvpress's cache order
 * (descending score; kvpress never re-sorts) and ascending (prunec's layout).
 */
export function kvpressSelect(scores: Mat, nKept: number): { cacheOrder: number[][]; kept: number[][] } {
  const cacheOrder = scores.map((row) => topkDescending(row, nKept));
  return { cacheOrder, kept: cacheOrder.map(ascending) };
}

/**
 * H2O's eviction (H2OKVCache_LayerWise.__call__), per head: if N ≤ heavy + recent keep everything,
 * else sort(topk(s[:N − recent], heavy)) followed by [N − recent, N). Positional order is kept.
 */
export function heavyRecentSelect(scores: Mat, heavy: number, recent: number): number[][] {
  return scores.map((row) => {
    const n = row.length;
    if (n <= heavy + recent) return row.map((_, t) => t);
    const head = ascending(topkDescending(row.slice(0, n - recent), heavy));
    return [...head, ...Array.from({ length: recent }, (_, i) => n - recent + i)];
  });
}

/**
 * A2SF's select (CompressionPolicy.__init__ and _topk_with_recent): total = max(int(total), 2),
 * select = total − recent; if N ≤ total keep everything; else sort(topk(s[:N − recent], select)) (none
 * if select ≤ 0) followed by [N − recent, N). If recent > total A2SF keeps `recent` entries, more than
 * the budget; the reference does the same (recent ≤ N required).
 */
export function a2sfSelect(scores: Mat, total: number, recent: number): number[][] {
  const budget = Math.max(Math.trunc(total), 2);
  const select = budget - recent;
  return scores.map((row) => {
    const n = row.length;
    if (n <= budget) return row.map((_, t) => t);
    if (recent > n) throw new Error(`A2SF: recent ${recent} exceeds ${n} tokens`);
    const head = select > 0 ? ascending(topkDescending(row.slice(0, n - recent), select)) : [];
    return [...head, ...Array.from({ length: recent }, (_, i) => n - recent + i)];
  });
}

/**
 * PyramidKVPress.get_layer_budget, as computed (Python floats, `round` half to even), with
 * q_len = N (the cached length), L = num_hidden_layers:
 *   cap = w + N(1 − r); min = (cap − w)/β; max = (cap − w)·2 − min;
 *   if max ≥ N − w: max = N − w, min = (cap − w)·2 − max;
 *   if not (N ≥ max ≥ min ≥ w): return round(N(1 − r))   — round, not SnapKV's int();
 *   return round(max − layer · (max − min)/(L − 1)).
 * (cap − w) is recomputed like the code, not N(1 − r) directly; L = 1 divides by zero in Python (refused).
 */
export function pyramidLayerBudget(
  layer: number,
  layers: number,
  n: number,
  ratio: number,
  window = 64,
  beta = 20,
): number {
  if (beta < 1) throw new Error("Beta should >= 1");
  const cap = window + n * (1 - ratio);
  let minNum = (cap - window) / beta;
  let maxNum = (cap - window) * 2 - minNum;
  if (maxNum >= n - window) {
    maxNum = n - window;
    minNum = (cap - window) * 2 - maxNum;
  }
  if (!(n >= maxNum && maxNum >= minNum && minNum >= window)) return roundHalfEven(n * (1 - ratio));
  if (layers < 2) throw new Error("PyramidKV: (max − min)/(L − 1) with one layer divides by zero");
  const steps = (maxNum - minNum) / (layers - 1);
  return roundHalfEven(maxNum - layer * steps);
}

// ---------------------------------------------------------------------------------------------
// Whole prefill
// ---------------------------------------------------------------------------------------------

export type PressSpec =
  | { method: "knorm"; budget: Budget }
  | { method: "snapkv"; budget: Budget; window?: number; kernel?: number }
  | {
      method: "pyramidkv";
      budget: { ratio: number } | { keepPercent: number };
      window?: number;
      kernel?: number;
      beta?: number;
      layers?: number;
    }
  | { method: "streaming"; budget: Budget; sinks?: number }
  | { method: "observed"; budget: Budget }
  | { method: "tova"; budget: Budget }
  | { method: "random"; budget: Budget; seed: number }
  | ({ method: "expected"; budget: Budget } & ExpectedOptions)
  /** H2O's own rule: heavy hitters by unnormalized column sums plus the `recent` last (hh_size, recent_size). */
  | { method: "h2o"; heavy: number; recent: number }
  /** A2SF @ 00a617f: total_budget, forgetting factor λ, recent (16 in the code). */
  | { method: "a2sf"; total: number; forget: number; recent?: number };

export interface EvictOptions {
  /** Left-padded slots at the front of every layer's arrays (default 0). */
  pad?: number;
  /** Attention scale (default 1/√d). */
  scale?: number;
}

export interface Evicted {
  /** [layer][kvHead] kept slot indices, ascending (prunec's layout), all ≥ pad. */
  kept: number[][][];
  /** [layer][kvHead] the same positions in the authors' cache order (kvpress: descending score). */
  cacheOrder: number[][][];
  /** [layer][kvHead][n][d], rows in `kept` order. */
  keys: number[][][][];
  values: number[][][][];
}

const slicePad = (x: Heads, pad: number): Heads => x.map((rows) => rows.slice(pad));

/** Kept positions (real-token indices) of one layer, in the authors' cache order. */
function selectLayer(spec: PressSpec, layer: number, layerCount: number, x: LayerInput, scale?: number): number[][] {
  const kvHeads = x.k.length;
  const n = x.k[0]!.length;
  const probs = () => causalProbs(x.q, x.k, scale);
  const all = () => Array.from({ length: kvHeads }, () => Array.from({ length: n }, (_, t) => t));
  const kvpress = (ratioOrBudget: Budget, scores: () => Mat): number[][] => {
    if (budgetRatio(ratioOrBudget) === 0) return all(); // `if compression_ratio == 0: return keys, values`
    return kvpressSelect(scores(), keptCount(n, ratioOrBudget)).cacheOrder;
  };
  switch (spec.method) {
    case "knorm":
      return kvpress(spec.budget, () => knormScores(x.k));
    case "snapkv":
      return kvpress(spec.budget, () => snapkvScores(probs(), kvHeads, spec.window ?? 64, spec.kernel ?? 5));
    case "pyramidkv": {
      const r = budgetRatio(spec.budget)!;
      keptCountFromRatio(n, r); // range check
      if (r === 0) return all();
      const window = spec.window ?? 64;
      const nKept = pyramidLayerBudget(layer, spec.layers ?? layerCount, n, r, window, spec.beta ?? 20);
      return kvpressSelect(snapkvScores(probs(), kvHeads, window, spec.kernel ?? 5), nKept).cacheOrder;
    }
    case "streaming":
      return kvpress(spec.budget, () => streamingScores(n, kvHeads, spec.sinks ?? 4, keptCount(n, spec.budget)));
    case "observed":
      return kvpress(spec.budget, () => observedScores(probs(), kvHeads));
    case "tova":
      return kvpress(spec.budget, () => tovaScores(probs(), kvHeads));
    case "random":
      return kvpress(spec.budget, () => randomScores(kvHeads, n, spec.seed));
    case "expected": {
      const qPre = x.qPre;
      if (!qPre) throw new Error("expected attention scores the queries before rotary (LayerInput.qPre)");
      return kvpress(spec.budget, () => expectedScores(qPre, x.k, x.v, spec));
    }
    case "h2o":
      return heavyRecentSelect(h2oScores(probs(), kvHeads), spec.heavy, spec.recent);
    case "a2sf":
      return a2sfSelect(a2sfScores(probs(), kvHeads, spec.forget), spec.total, spec.recent ?? 16);
  }
}

/**
 * Prefill eviction over all layers of one example. Layer l's press sees only layer l's q/k/v (the
 * dense prefill's); PyramidKV's layer index is l and its L is `spec.layers` or layerInputs.length.
 */
export function evictPrefill(layerInputs: LayerInput[], spec: PressSpec, options: EvictOptions = {}): Evicted {
  const pad = options.pad ?? 0;
  const out: Evicted = { kept: [], cacheOrder: [], keys: [], values: [] };
  layerInputs.forEach((x, layer) => {
    const real: LayerInput = { q: slicePad(x.q, pad), k: slicePad(x.k, pad), v: slicePad(x.v, pad) };
    if (x.qPre) real.qPre = slicePad(x.qPre, pad);
    const order = selectLayer(spec, layer, layerInputs.length, real, options.scale);
    const kept = order.map((idx) => ascending(idx));
    out.cacheOrder.push(order.map((idx) => idx.map((t) => t + pad)));
    out.kept.push(kept.map((idx) => idx.map((t) => t + pad)));
    out.keys.push(kept.map((idx, g) => idx.map((t) => [...real.k[g]![t]!])));
    out.values.push(kept.map((idx, g) => idx.map((t) => [...real.v[g]![t]!])));
  });
  return out;
}

/** Gather cache rows [g][t][d] at positions [g][]. */
export function gatherCache(x: Heads, positions: number[][]): Heads {
  return positions.map((idx, g) => idx.map((t) => [...x[g]![t]!]));
}

/**
 * One decode step over a kept cache: q[h][d] (rotated at its position, kvpress continues at the
 * uncompressed length), keptK/keptV [g][n][d] (append the step's own k/v to them first if the step
 * should see itself). out[h] = Σ_t softmax_t(q_h · k_t · scale) v_t over KV head floor(h/G).
 * A softmax over a set: the result does not depend on the cache's row order (kvpress's descending-
 * score order and prunec's ascending order give the same output).
 */
export function attendDecode(q: Mat, keptK: Heads, keptV: Heads, scale?: number): Mat {
  const heads = q.length;
  const s = scale ?? 1 / Math.sqrt(q[0]!.length);
  return q.map((qh, h) => {
    const g = kvHeadOf(h, heads, keptK.length);
    if (keptK[g]!.length === 0) throw new Error(`KV head ${g} keeps nothing (append the step's own k/v)`);
    const p = softmax(keptK[g]!.map((kt) => dot(qh, kt) * s));
    const d = keptV[g]![0]!.length;
    const o = new Array<number>(d).fill(0);
    for (let t = 0; t < p.length; t++) {
      const vt = keptV[g]![t]!;
      for (let c = 0; c < d; c++) o[c]! += p[t]! * vt[c]!;
    }
    return o;
  });
}

/** Helper for the order-invariance check: permute each KV head's cache rows by `order[g]` (indices into the rows). */
export function permuteCache(x: Heads, order: number[][]): Heads {
  return x.map((rows, g) => order[g]!.map((i) => [...rows[i]!]));
}
