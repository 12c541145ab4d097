/**
 * Behaviour-preservation log for refactors (vitest setup file, active only when
 * PRUNEC_RECORD_COMPILES names a file): every in-process `compile()` the suite runs appends one
 * line `sha256(model) sha256(spec + options) sha256(compiled bytes) sha256(order-free form)` to
 * that file (`orderFree`: equal there but not in the bytes means only the order of nodes,
 * initializers or value_info changed). Run the suite
 * before and after a refactor and compare with `npx tsx scripts/compare-compiles.ts BEFORE AFTER`.
 */
import { vi } from "vitest";
import { createHash } from "node:crypto";
import { appendFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { orderFree } from "./order-free.js";

const log = process.env["PRUNEC_RECORD_COMPILES"];
/** With PRUNEC_DUMP_COMPILES=DIR too, each compiled model under 5 MB is written there as MODEL-SPEC.onnx (12 hex digits each), to diff two runs' outputs. */
const dump = process.env["PRUNEC_DUMP_COMPILES"];
/**
 * With PRUNEC_DUMP_INPUTS=DIR too, each input model under 5 MB is written there as MODEL.onnx and
 * its spec and options as SPEC.json (12 hex digits each): a pair that changed can then be compiled
 * again by both trees and the difference read (scratch scripts; the log names the pair).
 */
const inputs = process.env["PRUNEC_DUMP_INPUTS"];
const sha = (b: Uint8Array | string) => createHash("sha256").update(b).digest("hex");

// vi.mock is hoisted out of any condition, so the wrapper itself checks whether to log.
vi.mock("../../src/compile.js", async (importOriginal) => {
  const real = await importOriginal<typeof import("../../src/compile.js")>();
  if (!log) return real;
  const compile: typeof real.compile = (model, spec, options = {}) => {
    const result = real.compile(model, spec, options);
    const { modelName: _m, specName: _s, __testMutate, ...rest } = options;
    if (__testMutate) return result;
    const [m, s] = [sha(model), sha(`${spec}\u0000${JSON.stringify(rest)}`)];
    if (dump && result.model.length < 5 << 20)
      writeFileSync(join(dump, `${m.slice(0, 12)}-${s.slice(0, 12)}.onnx`), result.model);
    if (inputs && model.length < 5 << 20) {
      writeFileSync(join(inputs, `${m.slice(0, 12)}.onnx`), model);
      writeFileSync(join(inputs, `${s.slice(0, 12)}.json`), JSON.stringify({ spec, options: rest }));
    }
    appendFileSync(log, `${m} ${s} ${sha(result.model)} ${sha(orderFree(result.model))}\n`);
    return result;
  };
  return { ...real, compile };
});
