/**
 * The smoke run's synthetic inputs (src/cli/smoke-feeds.ts): a float input holds 2u − 1 for
 * mulberry32(seed)'s successive u, the batch symbol takes the batch asked for, and the in-place
 * fill (`fillSigned`, written for a cold process) gives exactly the values of the closure generator.
 */
import { describe, expect, it } from "vitest";
import { syntheticFeed } from "../src/cli/smoke-feeds.js";
import { fillSigned, mulberry32 } from "../src/random.js";

/** The reference: the closure generator, one call per value. */
const signed = (seed: number, count: number): number[] => {
  const next = mulberry32(seed);
  return Array.from({ length: count }, () => next() * 2 - 1);
};

describe("smoke-run feeds", () => {
  it("fillSigned writes mulberry32's values as 2u − 1, in float64 and rounded to float32", () => {
    for (const seed of [0, 1, 7, 0xdeadbeef]) {
      const want = signed(seed, 5000);
      const f64 = new Float64Array(5000);
      fillSigned(f64, seed);
      expect(Array.from(f64)).toEqual(want);
      const f32 = new Float32Array(5000);
      fillSigned(f32, seed);
      expect(Array.from(f32)).toEqual(want.map(Math.fround));
    }
  });

  it("a float image input at batch 2: the batch symbol becomes 2, the values the seed's sequence", () => {
    const feed = syntheticFeed({ name: "pixel_values", elemType: 1, dims: ["batch", 3, 8, 8] }, "batch", 2, 11);
    if (typeof feed === "string") throw new Error(feed);
    expect(feed.type).toBe("float32");
    expect(feed.dims).toEqual([2, 3, 8, 8]);
    expect(Array.from(feed.data as Float32Array)).toEqual(signed(11, 2 * 3 * 8 * 8).map(Math.fround));
    const f64 = syntheticFeed({ name: "x", elemType: 11, dims: ["batch", 5] }, "batch", 1, 3);
    if (typeof f64 === "string") throw new Error(f64);
    expect(Array.from(f64.data as Float64Array)).toEqual(signed(3, 5));
  });
});
