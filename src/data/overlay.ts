/**
 * Kept-patch overlays, shared by `prunec report` (PNG files) and the playground (a canvas): the
 * example's image (first channel) upscaled, dropped patches faded halfway to grey and hatched in
 * magenta, kept ones edged dark outside and green inside, so both show on dark and light images;
 * and what a caption reads from a run (kept positions composed over stages, the predicted class).
 * Pure: RGBA bytes in, no files, no DOM.
 */
import type { Dataset } from "./prds.js";

/** Pixel (r, g, b) of the overlay: kept patches as they are, edged; dropped ones faded and hatched. */
function overlayPixel(v: number, kept: boolean, edge: 0 | 1 | 2, hatch: boolean): [number, number, number] {
  if (kept && edge === 1) return [0, 0, 0];
  if (kept && edge === 2) return [0, 230, 118];
  if (kept) return [v, v, v];
  // Contrast halved toward mid grey whatever the image's brightness; magenta, which neither a black
  // nor a white image has, marks the dropped area.
  if (hatch) return [214, 0, 170];
  const g = Math.round(128 + (v - 128) * 0.4);
  return [g, g, g];
}

/** RGBA [height·scale, width·scale] of example `index`, patches on a `grid`×`grid` raster. */
export function overlayRgba(
  d: Dataset,
  index: number,
  grid: number,
  kept: ReadonlySet<number>,
  scale: number,
): { width: number; height: number; data: Uint8Array } {
  const { channels, height, width } = d.header;
  const W = width * scale;
  const H = height * scale;
  const data = new Uint8Array(W * H * 4);
  const base = index * channels * height * width;
  const ph = (height / grid) * scale;
  const pw = (width / grid) * scale;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const patch = Math.floor(y / ph) * grid + Math.floor(x / pw);
      const v = d.pixels[base + Math.floor(y / scale) * width + Math.floor(x / scale)]!;
      const py = y % ph;
      const px = x % pw;
      const border = Math.min(py, px, ph - 1 - py, pw - 1 - px);
      const edge = border === 0 ? 1 : border === 1 ? 2 : 0;
      const [r, g, b] = overlayPixel(v, kept.has(patch), edge, (x + y) % 8 < 2);
      const o = (y * W + x) * 4;
      data[o] = r;
      data[o + 1] = g;
      data[o + 2] = b;
      data[o + 3] = 255;
    }
  }
  return { width: W, height: H, data };
}

/**
 * The dense patch positions example `b` keeps, from each stage's exposed positions
 * (`prunec.stageN.indices`, int64 [batch, K], each numbering its own input tokens), composed in order.
 */
export function keptPatches(
  stageIndices: readonly { data: BigInt64Array; dims: readonly number[] }[],
  tokens: number,
  prefix: number,
  b: number,
): number[] {
  let kept: number[] = [...Array(tokens).keys()];
  for (const idx of stageIndices) {
    const k = idx.dims.at(-1)!;
    kept = Array.from(idx.data.subarray(b * k, (b + 1) * k), (v) => kept[Number(v)]!).filter((t) => t !== undefined);
  }
  return kept.filter((t) => t >= prefix).map((t) => t - prefix);
}

/** The index of a row's largest value, the first on ties: a logits row's predicted class. */
export function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}
