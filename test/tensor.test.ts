/**
 * int64 initializers: prunec writes the halves of safe integers itself (a BigInt per entry was
 * slow on large tables), so every value must read back as BigInt64Array reads it.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { int64Tensor } from "../src/onnx/tensor.js";

const readBack = (raw: Uint8Array): bigint[] => [...new BigInt64Array(raw.slice().buffer)];

describe("int64Tensor", () => {
  it("writes every safe integer as little-endian int64, the edges included", () => {
    const edges = [0, 1, -1, 2 ** 31, -(2 ** 31), 2 ** 32 - 1, 2 ** 32, -(2 ** 32), -(2 ** 32) - 1];
    const all = [...edges, Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER];
    expect(readBack(int64Tensor("t", all).rawData)).toEqual(all.map(BigInt));
    fc.assert(
      fc.property(fc.array(fc.maxSafeInteger()), (values) => {
        expect(readBack(int64Tensor("t", values).rawData)).toEqual(values.map(BigInt));
      }),
      { numRuns: 300 },
    );
  });

  it("refuses a value that is not an integer, as BigInt does", () => {
    expect(() => int64Tensor("t", [1.5])).toThrow(RangeError);
  });
});
