import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseNpy, readNpy } from "./npy.js";
import { REPO_ROOT, describeShared, sharedModel } from "./shared.js";

/** Build .npy bytes by hand, as numpy.lib.format writes them. */
function npyBytes(version: 1 | 2, descr: string, shape: number[], payload: Uint8Array, fortran = false): Uint8Array {
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
  let header = `{'descr': '${descr}', 'fortran_order': ${fortran ? "True" : "False"}, 'shape': ${shapeText}, }`;
  const pre = version === 1 ? 10 : 12;
  const total = Math.ceil((pre + header.length + 1) / 64) * 64;
  header = `${header.padEnd(total - pre - 1, " ")}\n`;
  const out = new Uint8Array(total + payload.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0]);
  const dv = new DataView(out.buffer);
  if (version === 1) dv.setUint16(8, header.length, true);
  else dv.setUint32(8, header.length, true);
  out.set(new TextEncoder().encode(header), pre);
  out.set(payload, total);
  return out;
}
const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

describe("parseNpy", () => {
  it("reads v1 '<f4'", () => {
    const a = parseNpy(npyBytes(1, "<f4", [2, 2], bytesOf(new Float32Array([1, 2.5, -3, 4]))));
    expect(a.shape).toEqual([2, 2]);
    expect(a.dtype).toBe("float32");
    expect(Array.from(a.data as Float32Array)).toEqual([1, 2.5, -3, 4]);
  });

  it("reads v2 '<i8' and '<i4', 1-D and scalar shapes", () => {
    const i8 = parseNpy(npyBytes(2, "<i8", [3], bytesOf(new BigInt64Array([1n, -2n, 1n << 40n]))));
    expect(i8.shape).toEqual([3]);
    expect(i8.data).toBeInstanceOf(BigInt64Array);
    expect(Array.from(i8.data as BigInt64Array)).toEqual([1n, -2n, 1n << 40n]);
    const i4 = parseNpy(npyBytes(2, "<i4", [], bytesOf(new Int32Array([-7]))));
    expect(i4.shape).toEqual([]);
    expect(Array.from(i4.data as Int32Array)).toEqual([-7]);
  });

  it("copes with an unaligned payload (input is a view at an odd offset)", () => {
    const raw = npyBytes(1, "<f4", [1], bytesOf(new Float32Array([0.5])));
    const padded = new Uint8Array(raw.length + 1);
    padded.set(raw, 1);
    expect(Array.from(parseNpy(padded.subarray(1)).data as Float32Array)).toEqual([0.5]);
  });

  it("refuses what it does not support, saying what", () => {
    expect(() => parseNpy(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))).toThrow(/bad magic/);
    expect(() => parseNpy(npyBytes(1, "<f8", [1], new Uint8Array(8)))).toThrow(/'<f8' not supported/);
    expect(() => parseNpy(npyBytes(1, ">f4", [1], new Uint8Array(4)))).toThrow(/not supported/);
    expect(() => parseNpy(npyBytes(1, "<f4", [2, 2], new Uint8Array(16), true))).toThrow(/Fortran/);
    expect(() => parseNpy(npyBytes(1, "<f4", [4], new Uint8Array(8)))).toThrow(/needs 16/);
  });

  it("reads the shipped example's reference arrays (written by numpy)", () => {
    const x = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
    expect(x.shape).toEqual([2, 3, 64, 64]);
    expect(x.dtype).toBe("float32");
    expect(x.data.length).toBe(2 * 3 * 64 * 64);
  });
});

describeShared("readNpy on ../shared reference arrays", () => {
  const dir = "synthetic/vit-ti16-cls-randinit";
  // Values below were read with numpy 1.24 (float64 sum of the float32 array).
  const sum = (a: Float32Array) => a.reduce((s, v) => s + v, 0);

  it("ref_in.npy", () => {
    const a = readNpy(sharedModel(`${dir}/ref_in.npy`));
    expect(a.shape).toEqual([1, 3, 224, 224]);
    expect(a.dtype).toBe("float32");
    const d = a.data as Float32Array;
    expect(d[0]).toBeCloseTo(-0.6371967196464539, 7);
    expect(d[2]).toBeCloseTo(0.02451322227716446, 7);
    expect(d[d.length - 1]).toBeCloseTo(0.5592525005340576, 7);
    expect(sum(d)).toBeCloseTo(139.88197006690007, 6);
  });

  it("ref_out.npy", () => {
    const a = readNpy(sharedModel(`${dir}/ref_out.npy`));
    expect(a.shape).toEqual([1, 1000]);
    const d = a.data as Float32Array;
    expect(d[1]).toBeCloseTo(0.3788420259952545, 7);
    expect(d[999]).toBeCloseTo(0.1647225022315979, 7);
    expect(sum(d)).toBeCloseTo(11.198946147458628, 6);
  });
});
