/**
 * Reference EVS (efficient video sampling, methods.md §31) on plain float64 arrays, written from
 * vLLM's `vllm/multimodal/evs.py` @ 094f117 (read, not copied) and torch's `F.cosine_similarity`
 * (aten/src/ATen/native/Distance.cpp: each vector divided by max(‖x‖₂, eps), then the dot product),
 * independent of the compiler's code.
 *
 * - `retainedTokensCount`: evs.py lines 17–36, max(tpf, int(T·tpf·(1 − q))).
 * - `evsDissimilarity`: lines 60–78, 1 − cos(e[t], e[t−1]) per cell (eps 1e-8, the default), 255 for frame 0.
 * - `retain`: lines 80–93, the first `count` of a stable descending argsort (ties: lower flat index),
 *   returned as a mask over the flat (frame, cell) order.
 * - `evsRetentionMask`: the whole of `compute_retention_mask` (vLLM's in-one-call form, T frames).
 * - `evsCall`: prunec's per-call form (`after layer L keep P% by evs across frames`): vLLM's
 *   computation over the two frames (previous, current) with the previous frame counted as kept
 *   (budget tpf + K, so frame 0's 255s take tpf of it and the current frame gets K); at the first
 *   call (no previous frame) every token.
 */

/** A video's embeddings: [frame][cell][channel]. */
export type Video = number[][][];

/** torch F.cosine_similarity(x, y, dim=-1, eps) for two vectors. */
export function cosineSimilarity(x: readonly number[], y: readonly number[], eps = 1e-8): number {
  const norm = (v: readonly number[]) => Math.max(Math.sqrt(v.reduce((s, a) => s + a * a, 0)), eps);
  const nx = norm(x);
  const ny = norm(y);
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += (x[i]! / nx) * (y[i]! / ny);
  return sum;
}

/** evs.py `compute_retained_tokens_count`: Python's int() truncates toward zero. */
export function retainedTokensCount(tokensPerFrame: number, frames: number, q: number): number {
  return Math.max(tokensPerFrame, Math.trunc(tokensPerFrame * frames * (1 - q)));
}

/** dissimilarity[t][cell]: 255 for t = 0, else 1 − cos(e[t][cell], e[t−1][cell]). */
export function evsDissimilarity(video: Video): number[][] {
  return video.map((frame, t) =>
    t === 0 ? frame.map(() => 255) : frame.map((e, c) => 1 - cosineSimilarity(e, video[t - 1]![c]!)),
  );
}

/** The first `count` entries of a stable descending argsort of `flat`, as a mask (ties: lower index first). */
export function retain(flat: readonly number[], count: number): boolean[] {
  const order = flat.map((_, i) => i).sort((a, b) => (flat[b]! !== flat[a]! ? flat[b]! - flat[a]! : a - b));
  const mask = flat.map(() => false);
  for (const i of order.slice(0, count)) mask[i] = true;
  return mask;
}

/** vLLM's `compute_retention_mask` (spatial merge already applied): the mask over [T·cells]. */
export function evsRetentionMask(video: Video, q: number): boolean[] {
  const tpf = video[0]!.length;
  return retain(evsDissimilarity(video).flat(), retainedTokensCount(tpf, video.length, q));
}

/**
 * One call of a per-frame model: the current frame's kept cells (ascending), given the previous
 * frame's unpruned embeddings (undefined at the first call) and the per-frame budget `keep`.
 */
export function evsCall(previous: number[][] | undefined, current: number[][], keep: number): number[] {
  if (!previous) return current.map((_, c) => c);
  const tpf = current.length;
  const mask = retain(evsDissimilarity([previous, current]).flat(), tpf + keep);
  return mask.slice(tpf).flatMap((kept, c) => (kept ? [c] : []));
}

/** The current frame's dissimilarities (what `evsCall` ranks), for margin checks. */
export function callScores(previous: number[][], current: number[][]): number[] {
  return evsDissimilarity([previous, current])[1]!;
}
