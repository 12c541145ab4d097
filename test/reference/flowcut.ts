/**
 * Reference FlowCut score (methods.md §6) on plain arrays, written from the original
 * (`TungChintao/FlowCut`, flowcut/modeling_clip_flowcut.py: CLIPAttention_forward,
 * CLIPEncoderLayer_forward; flowcut/utils_flowcut.py: compute_score), independent of the compiler:
 *
 *   cls_attention = attn_weights[:, :, 0, 1:].mean(heads)               softmax over all keys, then sliced
 *   semantic_attn = softmax(v_cls · vᵀ over all keys).mean(heads)[:, 1:]  unscaled
 *   v_metric      = v.mean(heads)[:, 1:]
 *   s = (cls/Σcls + sem/Σsem) · ‖v_metric‖₁
 *   cumulative = s at the first layer scored, then 0.5·cumulative + 0.5·s
 *
 * Here the layers are a fixed list (prunec: the stage's firstLayer..L) and the count is a fixed
 * percentage (the entropy-adaptive count is not modelled).
 */
import { keepCount, topKPositions, type Probs } from "./cls-attn.js";

/** values[b][h][token][d] */
export type Values = number[][][][];

/** One layer's s over the prunable keys for one example: probs [H][Q][N], values [H][N][D]. */
export function flowcutLayerScores(probs: number[][][], values: number[][][], prefix: number): number[] {
  const heads = probs.length;
  const n = probs[0]![0]!.length;
  const d = values[0]![0]!.length;
  const cls = new Array<number>(n).fill(0);
  const semantic = new Array<number>(n).fill(0);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < n; j++) cls[j] = cls[j]! + probs[h]![0]![j]! / heads;
    const vCls = values[h]![0]!;
    const logits = values[h]!.map((v) => v.reduce((acc, x, k) => acc + x * vCls[k]!, 0));
    const max = Math.max(...logits);
    const exps = logits.map((z) => Math.exp(z - max));
    const total = exps.reduce((a, e) => a + e, 0);
    for (let j = 0; j < n; j++) semantic[j] = semantic[j]! + exps[j]! / total / heads;
  }
  const a = cls.slice(prefix);
  const sigma = semantic.slice(prefix);
  const sumA = a.reduce((x, y) => x + y, 0);
  const sumS = sigma.reduce((x, y) => x + y, 0);
  const scores: number[] = [];
  for (let j = prefix; j < n; j++) {
    let l1 = 0;
    for (let k = 0; k < d; k++) {
      let mean = 0;
      for (let h = 0; h < heads; h++) mean += values[h]![j]![k]!;
      l1 += Math.abs(mean / heads);
    }
    scores.push((a[j - prefix]! / sumA + sigma[j - prefix]! / sumS) * l1);
  }
  return scores;
}

/** The running average over layers (in order) for one example. */
export function flowcutScores(layers: { probs: number[][][]; values: number[][][] }[], prefix: number): number[] {
  let c: number[] | undefined;
  for (const { probs, values } of layers) {
    const s = flowcutLayerScores(probs, values, prefix);
    c = c === undefined ? s : c.map((x, j) => 0.5 * x + 0.5 * s[j]!);
  }
  return c!;
}

/** Kept token positions (prefix in front) per example; `layers` lists each averaged layer's probs and values. */
export function flowcutKeep(layers: { probs: Probs; values: Values }[], percent: number, prefix: number): number[][] {
  return layers[0]!.probs.map((_, b) => {
    const scores = flowcutScores(
      layers.map((l) => ({ probs: l.probs[b]!, values: l.values[b]! })),
      prefix,
    );
    return topKPositions(scores, keepCount(percent, scores.length), prefix);
  });
}
