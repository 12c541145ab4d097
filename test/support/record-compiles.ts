/**
 * Behaviour-preservation log for refactors (vitest setup file, active only when
 * PRUNEC_RECORD_COMPILES names a file): every in-process `compile()` the suite runs appends one
 * line `sha256(model) sha256(spec + options) sha256(compiled bytes) sha256(order-free form)` to
 * that file. The order-free form is the compiled model with its main graph's nodes sorted by their
 * own bytes: equal there but not in the bytes means only the node order changed. Run the suite
 * before and after a refactor and compare with `npx tsx scripts/compare-compiles.ts BEFORE AFTER`.
 */
import { vi } from "vitest";
import { createHash } from "node:crypto";
import { appendFileSync } from "node:fs";
import { toBinary } from "@bufbuild/protobuf";
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { NodeProtoSchema } from "../../src/onnx/gen/onnx_pb.js";

const log = process.env["PRUNEC_RECORD_COMPILES"];
const sha = (b: Uint8Array | string) => createHash("sha256").update(b).digest("hex");

/** The model's bytes with its main graph's nodes in the order of their own encodings. */
function orderFree(bytes: Uint8Array): Uint8Array {
  const model = decodeModel(bytes);
  const graph = model.graph;
  if (!graph) return bytes;
  const keyed = graph.node.map((n) => ({ n, key: Buffer.from(toBinary(NodeProtoSchema, n)).toString("hex") }));
  keyed.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  graph.node = keyed.map((k) => k.n);
  return encodeModel(model);
}

// vi.mock is hoisted out of any condition, so the wrapper itself checks whether to log.
vi.mock("../../src/compile.js", async (importOriginal) => {
  const real = await importOriginal<typeof import("../../src/compile.js")>();
  if (!log) return real;
  const compile: typeof real.compile = (model, spec, options = {}) => {
    const result = real.compile(model, spec, options);
    const { modelName: _m, specName: _s, __testMutate, ...rest } = options;
    if (!__testMutate)
      appendFileSync(
        log,
        `${sha(model)} ${sha(`${spec}\u0000${JSON.stringify(rest)}`)} ${sha(result.model)} ${sha(orderFree(result.model))}\n`,
      );
    return result;
  };
  return { ...real, compile };
});
