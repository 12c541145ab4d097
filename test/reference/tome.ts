/**
 * ToMe's merge step on plain arrays, written from ../shared/docs/methods.md §16 and
 * facebookresearch/ToMe (tome/merge.py: bipartite_soft_matching, merge_wavg; tome/patch/timm.py:
 * the metric is k averaged over heads). Independent of passes/: float64, loops, one example at a time.
 *
 *   metric = k̄ / ‖k̄‖            (the norm clamped at 1e-12, as prunec does; ToMe divides plainly)
 *   a, b   = metric[0::2], metric[1::2]          (over ALL tokens: CLS is a[0])
 *   scores = a·bᵀ; protected tokens (the special prefix) get −∞: their A rows (class token:
 *            `scores[..., 0, :] = -inf`) and their B columns (distillation token: `scores[..., :, 0]`)
 *   node_max, node_idx = scores.max(-1)          (first maximum on ties)
 *   edge order = node_max descending              (torch.argsort is not stable; here ties go to
 *                                                  the lower A index)
 *   src = the first r, unm = the rest; dst = node_idx[src]
 *   merge_wavg: x_b ← (s_b·x_b + Σ s_a·x_a) / (s_b + Σ s_a), s_b ← s_b + Σ s_a
 *
 * ToMe outputs [unm, b] (unm sorted by A index when there is a class token); prunec keeps the
 * surviving tokens in their original order, so `positions`/`merged`/`sizes` are in that order and
 * `tomeOrder` gives ToMe's order of the same positions. A later merge works on ToMe's order
 * (`sequence`), as ToMe's own code does.
 */

export interface TomeStep {
  /** Surviving original positions, ascending (the merge stage's exposed indices). */
  positions: number[];
  /** The merged token at each surviving position. */
  merged: number[][];
  sizes: number[];
  /** ToMe's output order of the same positions: [unmerged A, B]. */
  tomeOrder: number[];
  /**
   * Per input position, the position whose merged token it went into (its own when unmerged):
   * tomesd's unmerge (tomesd/merge.py) gives it that token's output, `out[a_idx[src_idx]] = y_dst[dst_idx]`.
   */
  landing: number[];
  /** The r-th best edge minus the (r+1)-th (how far the top-r set is from a tie); Infinity when no edge is left out. */
  boundaryGap: number;
  /** Over the merged A tokens, the smallest margin between the best and second-best B partner. */
  partnerGap: number;
}

const dot = (u: number[], v: number[]) => u.reduce((s, x, i) => s + x * v[i]!, 0);

/**
 * One example: keys [N][D] (averaged over heads), x [N][C], sizes [N], all in position order;
 * merge r tokens, `prefix` protected. `sequence` is ToMe's token order: ToMe's tensor holds the
 * token at position sequence[s] at place s (identity before any merge; after one, the previous
 * step's `tomeOrder` renumbered as this step's positions, see `nextSequence`). ToMe splits THAT
 * order into a = [0::2], b = [1::2], so a second merge pairs other tokens than position order would.
 */
export function tomeStep(
  keys: number[][],
  x: number[][],
  sizes: number[],
  r: number,
  prefix: number,
  sequence: number[] = [...keys.keys()],
  /** false: AIM's unweighted mean (each token once); the sizes still sum. */
  weighted = true,
): TomeStep {
  const metric = keys.map((k) => {
    const norm = Math.max(Math.sqrt(dot(k, k)), 1e-12);
    return k.map((v) => v / norm);
  });
  // a, b = metric[..., ::2, :], metric[..., 1::2, :] over ToMe's sequence (as positions).
  const aIdx = sequence.filter((_, s) => s % 2 === 0);
  const bIdx = sequence.filter((_, s) => s % 2 === 1);
  // class_token: scores[..., 0, :] = -inf; distill_token: scores[..., :, 0] = -inf (prefix 2);
  // longer prefixes (registers) protect their A rows and B columns the same way.
  const protectedA = Math.ceil(prefix / 2);
  const protectedB = Math.floor(prefix / 2);
  const scores = aIdx.map((i, ai) =>
    bIdx.map((j, bi) => (ai < protectedA || bi < protectedB ? -Infinity : dot(metric[i]!, metric[j]!))),
  );
  const nodeMax: number[] = [];
  const nodeIdx: number[] = [];
  let partnerGap = Infinity;
  const secondBest: number[] = [];
  for (const row of scores) {
    let best = 0;
    for (let j = 1; j < row.length; j++) if (row[j]! > row[best]!) best = j; // first maximum
    nodeMax.push(row[best]!);
    nodeIdx.push(best);
    secondBest.push(Math.max(...row.filter((_, j) => j !== best), -Infinity));
  }
  const edges = [...nodeMax.keys()].sort((p, q) => nodeMax[q]! - nodeMax[p]! || p - q);
  const src = edges.slice(0, r);
  let unm = edges.slice(r);
  const boundaryGap =
    r < edges.length && Number.isFinite(nodeMax[edges[r]!]!) ? nodeMax[edges[r - 1]!]! - nodeMax[edges[r]!]! : Infinity;
  for (const a of src) partnerGap = Math.min(partnerGap, nodeMax[a]! - secondBest[a]!);
  // if class_token: unm_idx = unm_idx.sort(dim=1)[0]  (by A index, i.e. place in the sequence)
  if (prefix > 0) unm = unm.slice().sort((p, q) => p - q);

  // merge_wavg over the tokens, kept by position (AIM: scatter_reduce mean, weight 1 each).
  const weight = weighted ? sizes : sizes.map(() => 1);
  const sum = x.map((row, i) => row.map((v) => v * weight[i]!));
  const size = sizes.slice();
  const count = weight.slice();
  const gone = new Set<number>();
  const landing = [...keys.keys()];
  for (const a of src) {
    const from = aIdx[a]!;
    const to = bIdx[nodeIdx[a]!]!;
    landing[from] = to;
    sum[to] = sum[to]!.map((v, c) => v + sum[from]![c]!);
    size[to]! += size[from]!;
    count[to]! += count[from]!;
    gone.add(from);
  }
  const positions = [...keys.keys()].filter((i) => !gone.has(i));
  const unmPositions = unm.map((a) => aIdx[a]!);
  // torch.cat([unm, dst]); with a distillation token: cat([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]]).
  const tomeOrder =
    prefix === 2
      ? [unmPositions[0]!, bIdx[0]!, ...unmPositions.slice(1), ...bIdx.slice(1)]
      : [...unmPositions, ...bIdx];
  return {
    positions,
    merged: positions.map((i) => sum[i]!.map((v) => v / count[i]!)),
    sizes: positions.map((i) => size[i]!),
    tomeOrder,
    landing,
    boundaryGap,
    partnerGap,
  };
}

/** ToMe's sequence for the next merge, in the next step's position numbering (indices into `positions`). */
export function nextSequence(step: TomeStep): number[] {
  const index = new Map(step.positions.map((p, i) => [p, i]));
  return step.tomeOrder.map((p) => index.get(p)!);
}

/**
 * Keys averaged over heads, [B][N][D], from the Q·Kᵀ MatMul's right input: Kᵀ laid out
 * [B·H, D, N] (heads batch-major, torchvision) or [B, H, D, N].
 */
export function headMeanKeysFromKt(data: Float32Array, dims: number[], heads: number): number[][][] {
  const [d, n] = dims.slice(-2) as [number, number];
  const batch = dims.length === 3 ? dims[0]! / heads : dims[0]!;
  return Array.from({ length: batch }, (_, bi) =>
    Array.from({ length: n }, (_, t) =>
      Array.from({ length: d }, (_, c) => {
        let s = 0;
        for (let h = 0; h < heads; h++) s += data[((bi * heads + h) * d + c) * n + t]!;
        return s / heads;
      }),
    ),
  );
}

/** [B, N, C] float data as nested arrays. */
export function tokensOf(data: Float32Array, dims: number[]): number[][][] {
  const [b, n, c] = dims as [number, number, number];
  return Array.from({ length: b }, (_, i) =>
    Array.from({ length: n }, (_, j) => Array.from(data.subarray((i * n + j) * c, (i * n + j + 1) * c))),
  );
}
