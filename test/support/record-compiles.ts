/**
 * Behaviour-preservation log for refactors (vitest setup file, active only when
 * PRUNEC_RECORD_COMPILES names a file): every in-process `compile()` the suite runs appends one
 * line `sha256(model) sha256(spec + options) sha256(compiled bytes)` to that file. Run the suite
 * before and after a refactor and compare with `npx tsx scripts/compare-compiles.ts BEFORE AFTER`:
 * every model × spec pair must compile to the same bytes.
 */
import { vi } from "vitest";
import { createHash } from "node:crypto";
import { appendFileSync } from "node:fs";

const log = process.env["PRUNEC_RECORD_COMPILES"];
const sha = (b: Uint8Array | string) => createHash("sha256").update(b).digest("hex");

// vi.mock is hoisted out of any condition, so the wrapper itself checks whether to log.
vi.mock("../../src/compile.js", async (importOriginal) => {
  const real = await importOriginal<typeof import("../../src/compile.js")>();
  if (!log) return real;
  const compile: typeof real.compile = (model, spec, options = {}) => {
    const result = real.compile(model, spec, options);
    const { modelName: _m, specName: _s, __testMutate, ...rest } = options;
    if (!__testMutate)
      appendFileSync(log, `${sha(model)} ${sha(`${spec}\u0000${JSON.stringify(rest)}`)} ${sha(result.model)}\n`);
    return result;
  };
  return { ...real, compile };
});
