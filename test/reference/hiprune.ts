/**
 * Reference HiPrune (methods.md §4) on plain arrays, written the way the original does it
 * (`Danielement321/HiPrune`, LLaVA/llava/model/llava_arch.py: encode_images), independent of the
 * compiler's code and of its "g + 2·mask" rewrite:
 *
 *   n_a     = round(N'·alpha/5)                       Python round: halves go to the even integer
 *   anchors = topk(g_object, n_a)
 *   cand    = unique(clamp(cat(anchors, anchors−1, anchors+1, anchors−w, anchors+w), 0, Np−1))
 *   regs    = topk(g_deep − 1[cand], N' − |cand|)
 *   kept    = sort(cat(cand, regs))
 *
 * Tie order: lower index first (ONNX TopK; CUDA torch.topk leaves it unspecified).
 * |cand| > N' (the original would call topk with a negative count) follows prunec's definition:
 * every anchor, then the other candidates with the highest g_deep.
 */
import { globalScores, type Probs } from "./cls-attn.js";

/** Python 3's round(x) for a double. */
export function pythonRound(x: number): number {
  const lo = Math.floor(x);
  const diff = x - lo;
  if (diff !== 0.5) return diff < 0.5 ? lo : lo + 1;
  return lo % 2 === 0 ? lo : lo + 1;
}

/** `round(visual_token_num * alpha / 5)` as the original evaluates it. */
export function anchorCountRef(keep: number, alpha: number): number {
  return pythonRound((keep * alpha) / 5);
}

/** Indices (0-based prunable positions) of the k largest values, lower index first on ties, in rank order. */
function topk(scores: number[], k: number): number[] {
  return scores
    .map((s, i) => [s, i] as const)
    .sort((a, b) => (b[0] !== a[0] ? b[0] - a[0] : a[1] - b[1]))
    .slice(0, k)
    .map(([, i]) => i);
}

/** Anchors (rank order) and unique(clamp(anchors, ±1, ±grid)) over gObject.length prunable positions. */
export function anchorsAndBuffers(gObject: number[], nA: number, grid: number): { anchors: number[]; cand: number[] } {
  const np = gObject.length;
  const anchors = topk(gObject, nA);
  const raw = [
    ...anchors,
    ...anchors.map((a) => a - 1),
    ...anchors.map((a) => a + 1),
    ...anchors.map((a) => a - grid),
    ...anchors.map((a) => a + grid),
  ];
  return { anchors, cand: [...new Set(raw.map((i) => Math.min(np - 1, Math.max(0, i))))] };
}

/**
 * HiPrune on one example's global-attention scores (prunable keys only): returns the kept prunable
 * positions (0-based after the prefix), ascending. `nA` is the anchor count (see anchorCountRef).
 */
export function hipruneSelect(gObject: number[], gDeep: number[], keep: number, nA: number, grid: number): number[] {
  const { anchors, cand } = anchorsAndBuffers(gObject, nA, grid);
  if (cand.length > keep) {
    const anchorSet = new Set(anchors);
    const buffers = cand.filter((i) => !anchorSet.has(i));
    const best = topk(
      buffers.map((i) => gDeep[i]!),
      keep - anchors.length,
    ).map((r) => buffers[r]!);
    return [...anchors, ...best].sort((a, b) => a - b);
  }
  const mask = new Set(cand);
  const masked = gDeep.map((g, i) => g - (mask.has(i) ? 1 : 0));
  const registers = topk(masked, keep - cand.length);
  return [...cand, ...registers].sort((a, b) => a - b);
}

/**
 * Kept token positions (prefix in front) per example, from the object layer's and the stage
 * layer's probabilities [batch][head][query][key]; `keep` = N', the stage's prunable keep count.
 */
export function hipruneKeep(
  objectProbs: Probs,
  deepProbs: Probs,
  keep: number,
  alpha: number,
  prefix: number,
  nA = anchorCountRef(keep, alpha),
): number[][] {
  return deepProbs.map((deep, b) => {
    const gDeep = globalScores(deep, prefix);
    const gObject = globalScores(objectProbs[b]!, prefix);
    const grid = Math.round(Math.sqrt(gDeep.length));
    if (grid * grid !== gDeep.length) throw new Error(`${gDeep.length} prunable tokens are not a square grid`);
    const chosen = hipruneSelect(gObject, gDeep, keep, nA, grid);
    return [...Array(prefix).keys(), ...chosen.map((i) => i + prefix)];
  });
}
