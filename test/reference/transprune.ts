/**
 * Reference TransPrune scores (methods.md §5; liaolea/TransPrune, modeling_llama_transprune.py) on
 * plain arrays, written from the method's description and independent of the compiler's code. All
 * arithmetic in float64; tensors are one example's rows of the dense model's intermediate tensors.
 */

/** Positions of an example's image tokens, ascending. */
export function imagePositions(image: readonly boolean[]): number[] {
  return image.flatMap((v, j) => (v ? [j] : []));
}

/** s / (Σ over the image positions of s + 1e-8), returned at the image positions only. */
function normalisedImage(s: number[], image: readonly boolean[]): number[] {
  const cols = imagePositions(image).map((j) => s[j]!);
  const total = cols.reduce((a, x) => a + x, 0) + 1e-8;
  return cols.map((x) => x / total);
}

/**
 * IGA of example `b` from the next layer's attention probabilities [B,H,N,N] (the next layer's
 * norm, q/k and rotary applied to the stream leaving this layer, causal + padding mask, softmax):
 * mean over heads, mean over the instruction queries (the tokens after the last image token) of
 * the image columns, normalised to sum 1. One score per image token, in position order.
 */
export function igaImageScores(
  probs: Float32Array,
  dims: readonly number[],
  b: number,
  image: readonly boolean[],
): number[] {
  const [, heads, n] = dims as [number, number, number, number];
  const last = image.lastIndexOf(true);
  const queries = [...Array(n).keys()].filter((q) => q > last);
  const s = Array<number>(n).fill(0);
  for (const q of queries) {
    for (let j = 0; j < n; j++) {
      let m = 0;
      for (let h = 0; h < heads; h++) m += probs[((b * heads + h) * n + q) * n + j]!;
      s[j]! += m / heads / queries.length;
    }
  }
  return normalisedImage(s, image);
}

/** One sub-block's tensors [B,N,D]: u (normed input) and v (output before the residual add). */
export interface SubBlock {
  u: Float32Array;
  v: Float32Array;
  dims: readonly number[];
}

/**
 * TTV of example `b`: Σ over sub-blocks of (‖v‖/‖u‖) · softmax over the example's N tokens of
 * (1 − cos(u, v)), normalised to sum 1 over the image tokens. One score per image token.
 */
export function ttvImageScores(blocks: readonly SubBlock[], b: number, image: readonly boolean[]): number[] {
  const n = blocks[0]!.dims[1]!;
  const total = Array<number>(n).fill(0);
  for (const { u, v, dims } of blocks) {
    const d = dims[2]!;
    const ratio: number[] = [];
    const e: number[] = [];
    for (let j = 0; j < n; j++) {
      let uu = 0;
      let vv = 0;
      let uv = 0;
      for (let k = 0; k < d; k++) {
        const a = u[(b * n + j) * d + k]!;
        const c = v[(b * n + j) * d + k]!;
        uu += a * a;
        vv += c * c;
        uv += a * c;
      }
      const nu = Math.sqrt(uu);
      const nv = Math.sqrt(vv);
      ratio.push(nv / nu);
      e.push(Math.exp(1 - uv / Math.max(nu * nv, 1e-8)));
    }
    const z = e.reduce((a, x) => a + x, 0);
    for (let j = 0; j < n; j++) total[j]! += (ratio[j]! * e[j]!) / z;
  }
  return normalisedImage(total, image);
}

/** Elementwise sum (TransPrune's selection score TTV + IGA). */
export function addScores(a: readonly number[], c: readonly number[]): number[] {
  return a.map((x, i) => x + c[i]!);
}
