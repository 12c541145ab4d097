/**
 * Test videos from still images (the digits sample set): frames that move, change and carry a
 * little sensor noise, for `across frames` stages (test/evs.test.ts, test/webgpu/evs.webgpu.ts).
 */
const SIDE = 64;

/** One 64×64 image (pixel/255) moved by (dx, dy) pixels, zeros shifted in. */
export function shifted(img: Float32Array, dx: number, dy: number): Float32Array {
  const out = new Float32Array(SIDE * SIDE);
  for (let y = 0; y < SIDE; y++)
    for (let x = 0; x < SIDE; x++) {
      const sx = x - dx;
      const sy = y - dy;
      if (sx >= 0 && sx < SIDE && sy >= 0 && sy < SIDE) out[y * SIDE + x] = img[sy * SIDE + sx]!;
    }
  return out;
}

/** `img` with a 12×12 block at (x, y) painted at `value`. */
export function painted(img: Float32Array, x0: number, y0: number, value: number): Float32Array {
  const out = img.slice();
  for (let y = y0; y < y0 + 12; y++) for (let x = x0; x < x0 + 12; x++) out[y * SIDE + x] = value;
  return out;
}

/** `img` plus deterministic sensor noise of amplitude `a` (a different pattern per `seed`). */
export function noisy(img: Float32Array, a: number, seed: number): Float32Array {
  return img.map((v, i) => v + a * Math.sin(i * 12.9898 + seed * 78.233));
}

/** A 4-frame video from one image: as is, one patch to the right, a block painted in, then 3 px down; sensor noise from frame 1 on. */
export function video(img: Float32Array, seed: number): Float32Array[] {
  const f1 = shifted(img, 8, 0);
  const f2 = painted(f1, 4 + 8 * (seed % 4), 40 - 4 * seed, 0.9);
  return [img, noisy(f1, 0.03, seed + 1), noisy(f2, 0.03, seed + 2), noisy(shifted(f2, 0, 3), 0.03, seed + 3)];
}

/** Frame t of several videos as one batch: pixel_values [B, 1, 64, 64]. */
export function batchAt(videos: Float32Array[][], t: number) {
  const data = new Float32Array(videos.length * SIDE * SIDE);
  videos.forEach((v, b) => data.set(v[t]!, b * SIDE * SIDE));
  return { type: "float32" as const, dims: [videos.length, 1, SIDE, SIDE], data };
}
