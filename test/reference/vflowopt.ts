/**
 * VFlowOpt's grid-group recycling in plain float64, written line by line from the authors' code
 * (`sihany077/VFlowOpt` @ 129eeef,
 * `src/LLaVA-OneVision/llava/model/language_model/llava_qwen_training_free.py`, multi-crop path),
 * for one grid of L tokens (the authors run it on the 27-wide base grid and the local_w-wide local
 * grid, each grouped on its own; one grid here):
 *
 *   570  reduce_tokens = round(L·(1 − r))              (here: L − K, K the stage's kept count)
 *   575  a = illava_vit_m                              (a float, e.g. 17.39)
 *   576  num_merged_tokens = int(L/(a·a))              (Python: a·a first, then truncation)
 *   578  sorted_indices = torch.sort(attn).indices    (ascending; torch.sort is not stable)
 *   579  low_k = sorted_indices[:reduce + m]          (dropped)
 *   589  points = (idx // width, idx % width)
 *   592  grid = floor(points.float() / a)             (float32 division)
 *   595  groups by unique grid cell; each group lists its members in low_k's order
 *   614  for each group: weights = attn[group] / attn[group].sum()
 *   619      merged = Σ weights·feature
 *   620      rep = group[argmax(attn[group])]        (the first maximum in the group's order)
 *   621      feature[rep] = merged; keep[rep] = True
 *   626  feature[keep]                               (boolean indexing: ascending positions)
 *
 * Ties: torch.sort's order of equal scores is unspecified. This reference takes the order in which
 * equal scores put the HIGHER position first (so the lower one is kept, as ONNX TopK keeps it);
 * the argmax of line 620 then takes, among equal maxima, the first in that order: the higher
 * position. prunec's lowering follows the same order.
 */

export interface VFlowOptResult {
  /** Kept positions (0-based among the L grid tokens), ascending. */
  kept: number[];
  /** The recycled rows: the position of each non-empty group's representative → its merged row. */
  merged: Map<number, number[]>;
  reduce: number;
  m: number;
  groups: number;
  /** The smallest score gap across the kept/dropped cut and between each group's two best (fp32 flips). */
  margins: { cut: number; rep: number };
}

/** torch's float32 `(p.float() / a).floor()` (both operands float32; the quotient rounded to float32). */
export function cellOf(p: number, a: number): number {
  return Math.floor(Math.fround(Math.fround(p) / Math.fround(a)));
}

/**
 * `scores` [L] (the attention map), `features` [L][D], `width` the grid's columns, `a` the cell size,
 * `keep` K (so reduce = L − K).
 */
export function vflowoptRecycle(
  scores: readonly number[],
  features: readonly (readonly number[])[],
  width: number,
  a: number,
  keep: number,
): VFlowOptResult {
  const L = scores.length;
  const reduce = L - keep;
  const m = Math.trunc(L / (a * a));
  // Ascending; equal scores: the higher position first (see the header).
  const sorted = [...scores.keys()].sort((i, j) => scores[i]! - scores[j]! || j - i);
  const low = sorted.slice(0, reduce + m);
  const keepMask = Array<boolean>(L).fill(true);
  for (const i of low) keepMask[i] = false;
  // Groups by grid cell, members in low_k's order.
  const groups = new Map<string, number[]>();
  for (const i of low) {
    const key = `${cellOf(Math.floor(i / width), a)},${cellOf(i % width, a)}`;
    const g = groups.get(key) ?? [];
    g.push(i);
    groups.set(key, g);
  }
  const merged = new Map<number, number[]>();
  let repMargin = Number.POSITIVE_INFINITY;
  for (const group of groups.values()) {
    const total = group.reduce((s, i) => s + scores[i]!, 0);
    const d = features[group[0]!]!.length;
    const row = Array<number>(d).fill(0);
    for (const i of group) {
      const w = scores[i]! / total;
      for (let k = 0; k < d; k++) row[k]! += w * features[i]![k]!;
    }
    let rep = group[0]!;
    for (const i of group) if (scores[i]! > scores[rep]!) rep = i; // argmax: the first maximum
    for (const i of group) if (i !== rep) repMargin = Math.min(repMargin, scores[rep]! - scores[i]!);
    merged.set(rep, row);
    keepMask[rep] = true;
  }
  const kept = [...keepMask.keys()].filter((i) => keepMask[i]);
  const cutAt = reduce + m;
  const cut = cutAt > 0 && cutAt < L ? scores[sorted[cutAt]!]! - scores[sorted[cutAt - 1]!]! : Number.POSITIVE_INFINITY;
  return { kept, merged, reduce, m, groups: groups.size, margins: { cut, rep: repMargin } };
}
