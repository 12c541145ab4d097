/** A small seeded pseudo-random generator, the same everywhere prunec (and its tests) need one. */

/** mulberry32: a small, well-known 32-bit PRNG; the reference implementation uses the same one. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `data[k] = 2u − 1` for mulberry32(seed)'s successive values u: the values `mulberry32` gives,
 * with its state in locals. A smoke run's image input holds ~10^5 values and runs once per process,
 * before the JIT has seen this code: a closure call per value cost ~15 ms there.
 */
export function fillSigned(data: Float32Array | Float64Array, seed: number): void {
  let a = seed >>> 0;
  for (let k = 0; k < data.length; k++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    data[k] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
}
