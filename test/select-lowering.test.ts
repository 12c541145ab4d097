/**
 * The two selection lowerings (int64 index arithmetic; WebGPU-resident float keys) keep the same
 * tokens in the same order, ties included (ONNX TopK: the lower index wins), and gather the same
 * hidden states. Run on small graphs built from the lowerings themselves, on ORT CPU.
 */
import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import fc from "fast-check";
import { GraphProtoSchema, ModelProtoSchema, OperatorSetIdProtoSchema } from "../src/onnx/gen/onnx_pb.js";
import { encodeModel } from "../src/onnx/io.js";
import { NodeBuilder } from "../passes/builder.js";
import { selectTopK } from "../passes/select-topk.js";
import { selectAndGatherFloat } from "../passes/select-gather-float.js";
import { gatherTokens } from "../passes/gather-tokens.js";
import { makeNode } from "../src/ir/graph.js";
import { runNode } from "./helpers/ort.js";
import { topKPositions } from "./reference/cls-attn.js";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { compile } from "../src/compile.js";

function model(n: number, d: number, k: number, prefix: number, lowering: "index" | "float-keys"): Uint8Array {
  const b = new NodeBuilder("t", 17);
  let out: string;
  if (lowering === "index") {
    out = gatherTokens(b, "stream", selectTopK(b, "scores", b.int64([k], [1]), prefix), { tokenAxis: 1, batchAxis: 0 });
  } else {
    out = selectAndGatherFloat(b, "scores", "stream", n, k, prefix).output;
  }
  const io = (name: string, dims: (number | string)[]) => ({
    name,
    type: {
      value: {
        case: "tensorType" as const,
        value: {
          elemType: 1,
          shape: {
            dim: dims.map((x) => ({
              value:
                typeof x === "number"
                  ? { case: "dimValue" as const, value: BigInt(x) }
                  : { case: "dimParam" as const, value: x },
            })),
          },
        },
      },
    },
  });
  const graph = create(GraphProtoSchema, {
    name: "g",
    node: [...b.nodes, makeNode("Identity", [out], ["y"], "out")],
    initializer: b.initializers,
    input: [io("scores", ["B", n]), io("stream", ["B", n + prefix, d])],
    output: [io("y", ["B", k + prefix, d])],
  } as never);
  return encodeModel(
    create(ModelProtoSchema, {
      irVersion: 8n,
      opsetImport: [create(OperatorSetIdProtoSchema, { domain: "", version: 17n })],
      graph,
    }),
  );
}

describe("index and float-keys selection agree, ties included", () => {
  it("random scores drawn from a few values (many ties), batch 3, with and without a prefix", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 2, max: 24 }),
        fc.integer({ min: 0, max: 2 }),
        fc.integer({ min: 0, max: 1000 }),
        async (n, prefix, seed) => {
          const k = 1 + (seed % n);
          const d = 3;
          const batch = 3;
          const scores = new Float32Array(batch * n).map((_, i) => ((i * 7919 + seed * 31) % 5) / 4); // values in {0, .25, .5, .75, 1}
          const stream = new Float32Array(batch * (n + prefix) * d).map((_, i) => i);
          const feeds = {
            scores: { type: "float32" as const, dims: [batch, n], data: scores },
            stream: { type: "float32" as const, dims: [batch, n + prefix, d], data: stream },
          };
          const a = (await runNode(model(n, d, k, prefix, "index"), feeds, ["y"])).y!;
          const f = (await runNode(model(n, d, k, prefix, "float-keys"), feeds, ["y"])).y!;
          expect(Array.from(f.data as Float32Array)).toEqual(Array.from(a.data as Float32Array));
          // and both keep what the reference keeps
          for (let e = 0; e < batch; e++) {
            const keep = topKPositions(Array.from(scores.subarray(e * n, (e + 1) * n)), k, prefix);
            const rowsOut = Array.from(
              { length: k + prefix },
              (_, t) => (a.data as Float32Array)[(e * (k + prefix) + t) * d]! / d - e * (n + prefix),
            );
            expect(rowsOut).toEqual(keep);
          }
        },
      ),
      { numRuns: 25 },
    );
  });
});

describe("--target webgpu: each stage reports the lowering it got, and why when it is not GPU-resident", () => {
  const tiny = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
  const stage = (spec: string, target: "cpu" | "webgpu") => compile(tiny, spec, { target }).report.stages[0]!;
  it("a plain top-k stage gets float-keys with no note; on cpu, index with no note", () => {
    expect(stage("after layer 1 keep 50% by cls-attn", "webgpu")).toMatchObject({ lowering: "float-keys" });
    expect(stage("after layer 1 keep 50% by cls-attn", "webgpu").loweringNote).toBeUndefined();
    expect(stage("after layer 1 keep 50% by cls-attn with recycle", "cpu").loweringNote).toBeUndefined();
  });
  it("a stage that needs the kept indices falls back to index lowering, and says why", () => {
    expect(stage("after layer 1 keep 50% by cls-attn with recycle", "webgpu")).toMatchObject({
      lowering: "index",
      loweringNote: "'with recycle' needs the kept indices",
    });
    expect(stage("after layer 1 keep mass 50% by cls-attn", "webgpu")).toMatchObject({
      lowering: "index",
      loweringNote: "the count differs per example",
    });
    expect(stage("after layer 1 merge 10 tokens by similarity", "webgpu")).toMatchObject({
      lowering: "index",
      loweringNote: "merge stages have one lowering (one-hot MatMul; TopK indices)",
    });
  });
});
