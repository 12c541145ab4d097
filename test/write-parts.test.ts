/**
 * writeParts (src/cli/atomic.ts) writes a compiled model's parts with batched writev calls: the
 * file must hold exactly their concatenation, whatever their number and sizes (empty parts, more
 * parts than one call takes, parts larger than one call's byte budget).
 */
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { writeParts } from "../src/cli/atomic.js";

const dir = mkdtempSync(join(tmpdir(), "prunec-write-parts-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function roundTrip(parts: Uint8Array[]): Promise<void> {
  const file = join(dir, "out.bin");
  const fd = openSync(file, "w");
  try {
    await writeParts(fd, parts);
  } finally {
    closeSync(fd);
  }
  expect(Buffer.compare(readFileSync(file), Buffer.concat(parts))).toBe(0);
}

describe("writeParts", () => {
  it("writes any list of parts as their concatenation", async () => {
    await fc.assert(fc.asyncProperty(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 40 }), roundTrip), {
      numRuns: 100,
    });
  });

  it("more parts than one writev takes (3000 views of one buffer, as a model's tensors are views of its input)", async () => {
    const input = Uint8Array.from({ length: 6000 }, (_, i) => (i * 7) % 251);
    await roundTrip(Array.from({ length: 3000 }, (_, i) => input.subarray(2 * i, 2 * i + 2)));
  });

  it("parts larger than one call's 8 MiB budget, between small ones", async () => {
    const big = new Uint8Array(9 << 20).map((_, i) => i % 253);
    await roundTrip([
      Uint8Array.of(1, 2, 3),
      big,
      new Uint8Array(0),
      big.subarray(5, (17 << 20) >> 1),
      Uint8Array.of(9),
    ]);
  });
});
