/**
 * Reference HoloV (methods.md §9) on plain arrays, in float64, written from the authors' code and
 * independent of the compiler's: `obananas/HoloV` at 1d2e65e,
 *   L = llava/model/utils.py (function HoloV, lines 22–151), the LLaVA-1.5 variant;
 *   Q = qwen-model-HoloV/utils.py (function HoloV, lines 43–198), the Qwen2.5-VL variant, which
 *       also returns the kept positions (`final_positions`) and pads them with −1.
 * One example at a time (both loop `for b in range(B)`, L:28 / Q:53).
 *
 * Inputs: `attention[i]`, the CLS query's attention to prunable token i, mean over heads
 * (llava/model/multimodal_encoder/clip_encoder.py:37–40 takes `attentions[layer][:, :, 0, 1:]`,
 * llava/model/llava_arch.py:143 `.mean(dim=1)`); `tokens[i]`, the features HoloV measures
 * similarity on (its projected image features; here the stream leaving the stage's layer);
 * `count` (`num_patches`) and `budget` K (`new_image_token_num`).
 */

export interface HoloV {
  /** Chunk sizes (L:33–50). */
  sizes: number[];
  /** Chunk scores P_c (L:95, or the raw attention of a one-token chunk, L:61–65). */
  chunkScores: number[];
  /** w_c = P_c/(ΣP + 1e-6) (L:104). */
  weights: number[];
  /** ⌊w_c·K⌋ (L:105). */
  floors: number[];
  /** K − Σ floors (L:108). */
  remaining: number;
  /** Allocation after the remainder (L:109–112). */
  alloc: number[];
  /** `final_positions` (Q:150–192): crop by crop, TopK order inside a crop, −1 padding up to K. */
  positions: number[];
  /** The kept prunable positions, ascending (what prunec keeps). */
  kept: number[];
  /**
   * How far the decisions are from a flip, for callers checking fp32 can agree with float64:
   * `floor`: min over chunks of the distance of w_c·K to a positive integer; `remainder`: the weight gap
   * between the last chunk given +1 and the first one not (Infinity when there is no such pair);
   * `inChunk`: min over partially kept chunks of the attention gap between the last kept token
   * and the first dropped one.
   */
  margins: { floor: number; remainder: number; inChunk: number };
}

/**
 * HoloV's rules, and a wrong alternative to each, so a test can show that its input exercises the
 * rule (the alternative keeps another set there): `longer`, which chunks are one token longer when
 * count does not divide n; `remainder`, who gets the K − Σ⌊w·K⌋ left over; `surplus`, what happens
 * to a chunk's budget beyond its size (HoloV: lost; `refill`: handed on, +1 at a time, to the
 * heaviest chunks with room, so K are always kept).
 */
export interface Rules {
  longer: "first" | "last";
  remainder: "heaviest" | "none";
  surplus: "lost" | "refill";
}
export const HOLOV_RULES: Rules = { longer: "first", remainder: "heaviest", surplus: "lost" };

const EPS = 1e-6; // `esp` (L:22)
const ALPHA = 0.09; // L:25 (Q:47–48: alpha = 1 on the attention, beta = 0.09 on the variance)

/** ⌊n/count⌋ each, one more for chunks p < n mod count (L:33–43: "Last few patches get an extra token" says the comment; the code gives it to the FIRST ones). */
export function holovChunkSizes(n: number, count: number, longer: Rules["longer"] = "first"): number[] {
  const base = Math.floor(n / count);
  const extra = n % count;
  const sizes: number[] = [];
  for (let p = 0; p < count; p++) {
    const size = base + ((longer === "first" ? p < extra : p >= count - extra) ? 1 : 0);
    if (size > 0) sizes.push(size); // empty chunks are skipped (L:46)
  }
  return sizes;
}

/** Indices of `values` by decreasing value, ties to the lower index (ONNX TopK's rule; torch.topk leaves it open). */
function byValue(values: number[]): number[] {
  return values
    .map((v, i) => [v, i] as const)
    .sort((x, y) => (y[0] !== x[0] ? y[0] - x[0] : x[1] - y[1]))
    .map(([, i]) => i);
}

function mean(xs: number[]): number {
  return xs.reduce((s, x) => s + x, 0) / xs.length;
}

/** One chunk's score (L:56–97). */
function chunkScore(attn: number[], feats: number[][]): number {
  const n = attn.length;
  if (n <= 1) return n ? mean(attn) : 0; // L:61–65: the raw attention, not scaled by 1e3
  // L:69: F = x/(‖x‖ + esp)
  const unit = feats.map((x) => {
    const norm = Math.sqrt(x.reduce((s, v) => s + v * v, 0));
    return x.map((v) => v / (norm + EPS));
  });
  // L:72–76: S = F·Fᵀ with the diagonal zeroed
  const s = unit.map((u, i) => unit.map((v, j) => (i === j ? 0 : u.reduce((acc, ui, d) => acc + ui * v[d]!, 0))));
  // L:79–81: mean and variance over the n − 1 others, the zeroed diagonal included in the variance's sum
  const valid = n - 1;
  const mu = s.map((row) => row.reduce((a, b) => a + b, 0) / valid);
  const variance = s.map((row, i) => row.reduce((acc, v) => acc + (v - mu[i]!) ** 2, 0) / valid);
  // L:84–92
  const scaled = attn.map((a) => a * 1e3);
  const scaling = mean(scaled.map(Math.abs)) / (mean(variance.map(Math.abs)) + EPS);
  const scores = scaled.map((a, i) => a + ALPHA * (variance[i]! * scaling));
  return mean(scores); // L:95
}

/** HoloV on one example: what it keeps of the n = attention.length prunable tokens. */
export function holov(
  attention: number[],
  tokens: number[][],
  count: number,
  budget: number,
  rules: Rules = HOLOV_RULES,
): HoloV {
  const n = attention.length;
  const sizes = holovChunkSizes(n, count, rules.longer);
  const starts = sizes.map((_, c) => sizes.slice(0, c).reduce((a, b) => a + b, 0));
  const attnOf = (c: number) => attention.slice(starts[c], starts[c]! + sizes[c]!);
  const chunkScores = sizes.map((_, c) => chunkScore(attnOf(c), tokens.slice(starts[c], starts[c]! + sizes[c]!)));
  // L:104–112
  const total = chunkScores.reduce((a, b) => a + b, 0);
  const weights = chunkScores.map((p) => p / (total + EPS));
  const floors = weights.map((w) => Math.floor(w * budget));
  const remaining = budget - floors.reduce((a, b) => a + b, 0);
  const alloc = [...floors];
  const order = byValue(weights);
  const bonus = rules.remainder === "none" ? 0 : Math.max(0, Math.min(remaining, weights.length));
  for (const c of order.slice(0, bonus)) alloc[c]! += 1;
  if (rules.surplus === "refill") {
    let surplus = 0;
    sizes.forEach((size, c) => {
      surplus += Math.max(0, alloc[c]! - size);
      alloc[c] = Math.min(alloc[c]!, size);
    });
    while (surplus > 0 && order.some((c) => alloc[c]! < sizes[c]!))
      for (const c of order)
        if (surplus > 0 && alloc[c]! < sizes[c]!) {
          alloc[c]! += 1;
          surplus--;
        }
  }
  // L:116–127: skip, keep the whole chunk (the surplus is lost), or TopK by raw attention
  const positions: number[] = [];
  let inChunk = Infinity;
  sizes.forEach((size, c) => {
    const k = alloc[c]!;
    if (k <= 0) return;
    if (k >= size) {
      for (let i = 0; i < size; i++) positions.push(starts[c]! + i);
      return;
    }
    const a = attnOf(c);
    const top = byValue(a);
    inChunk = Math.min(inChunk, a[top[k - 1]!]! - a[top[k]!]!);
    for (const i of top.slice(0, k)) positions.push(starts[c]! + i);
  });
  // L:139–146 pads the features with zero rows (and Q:187 the positions with −1) up to K; truncation never happens (Σ alloc ≤ K).
  const kept = [...positions].sort((x, y) => x - y);
  while (positions.length < budget) positions.push(-1);
  // (w ≥ 0, so a w·K just above 0 floors to 0 in any precision: its distance counts to 1.)
  const floor = Math.min(...weights.map((w) => Math.abs(w * budget - Math.max(1, Math.round(w * budget)))));
  const remainder =
    bonus > 0 && bonus < order.length ? weights[order[bonus - 1]!]! - weights[order[bonus]!]! : Infinity;
  return {
    sizes,
    chunkScores,
    weights,
    floors,
    remaining,
    alloc,
    positions: positions.slice(0, budget),
    kept,
    margins: { floor, remainder, inChunk },
  };
}

/** round-half-up(P/100 · n), at least 1 (language.md), the stage's budget K. */
export function budgetOf(percent: number, n: number): number {
  return Math.min(n, Math.max(1, Math.floor((percent / 100) * n + 0.5)));
}

/**
 * HoloV per example of a batch, as token positions of the stage's input: the prefix (CLS) first,
 * then the kept prunable tokens ascending. `attention[b][i]` and `stream[b][t]` (t over every
 * token, prefix included).
 */
export function holovKeep(
  attention: number[][],
  stream: number[][][],
  count: number,
  budget: number,
  prefix: number,
  rules: Rules = HOLOV_RULES,
): { kept: number[][]; runs: HoloV[] } {
  const runs = attention.map((a, b) => holov(a, stream[b]!.slice(prefix), count, budget, rules));
  return {
    kept: runs.map((r) => [...Array(prefix).keys(), ...r.kept.map((i) => i + prefix)]),
    runs,
  };
}
