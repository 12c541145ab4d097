/**
 * Folding the exporter's shape arithmetic below a stage (passes/fold-shapes.ts, issue 19).
 *
 * The reference for every folded value is onnxruntime itself: the unfolded compile, with each folded
 * tensor made a graph output, run at two batch sizes, must compute exactly the constant prunec wrote.
 * The folded model must then compute bit-identical outputs, touch nothing above the stage, and
 * leave no initializer unread (onnxruntime warns of each one).
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { compile, type CompileOptions } from "../src/compile.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { shallowCopy } from "../src/ir/copy.js";
import { valueInfo } from "../src/ir/value-info.js";
import { readNumbers } from "../src/onnx/tensor.js";
import { TensorProto_DataType as DT } from "../src/onnx/gen/onnx_pb.js";
import type { GraphProto } from "../src/onnx/gen/onnx_pb.js";
import { runNode, runWasm, maxAbsDiff } from "./helpers/ort.js";
import { REPO_ROOT } from "./helpers/shared.js";

const TINY = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
const DIGITS = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));

const graphOf = (spec: string, model: Uint8Array, options: CompileOptions = {}): GraphProto =>
  decodeModel(compile(model, spec, { exposeIndices: true, ...options }).model).graph!;

function image(batch: number, channels: number, size: number) {
  const data = new Float32Array(batch * channels * size * size);
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(i * 0.61) * 0.9;
  return { type: "float32" as const, data, dims: [batch, channels, size, size] };
}

const FOLDED = /^prunec: folded from /;

describe("shape arithmetic below a stage is folded", () => {
  const cases = [
    {
      name: "tiny-vit, after layer 1 keep 50%",
      model: TINY,
      spec: "after layer 1 keep 50% by cls-attn",
      below: 2,
      channels: 3,
      size: 64,
    },
    {
      name: "digits, after layer 2 keep 25%",
      model: DIGITS,
      spec: "after layer 2 keep 25% by cls-attn",
      below: 3,
      channels: 1,
      size: 64,
    },
  ];
  for (const c of cases)
    it(`${c.name}: each folded constant is what onnxruntime computes at batch 1 and 3; outputs bit-identical; nothing above the stage touched`, async () => {
      const folded = graphOf(c.spec, c.model);
      const plain = graphOf(c.spec, c.model, { foldShapes: false });
      const constants = folded.initializer.filter((t) => FOLDED.test(t.docString));
      expect(constants.length).toBeGreaterThan(10);
      // Removed: only shape arithmetic (and the constants it read), and only in the layers after the stage.
      const kept = new Set(folded.node.map((n) => n.name));
      const removed = plain.node.filter((n) => !kept.has(n.name));
      expect(removed.length).toBeGreaterThan(constants.length);
      for (const n of removed) {
        expect([
          "Shape",
          "Gather",
          "Unsqueeze",
          "Concat",
          "Slice",
          "Mul",
          "Div",
          "Add",
          "Sub",
          "Squeeze",
          "Cast",
          "Reshape",
          "Constant",
        ]).toContain(n.opType);
        if (n.opType !== "Constant")
          expect(Number(/encoder_layer_(\d+)\//.exec(n.name)?.[1] ?? -1)).toBeGreaterThanOrEqual(c.below);
      }
      // Every initializer is read by a node or is a graph output.
      const read = new Set([...folded.node.flatMap((n) => n.input), ...folded.output.map((o) => o.name)]);
      expect(folded.initializer.filter((t) => !read.has(t.name)).map((t) => t.name)).toEqual([]);
      // The reference: the unfolded model with each folded tensor exposed, run by onnxruntime.
      const exposed = shallowCopy(plain, {
        output: [...plain.output, ...constants.map((t) => valueInfo(t.name, DT.INT64, t.dims.map(Number)))],
      });
      const model = decodeModel(compile(c.model, c.spec, { exposeIndices: true, foldShapes: false }).model);
      const probe = encodeModel(shallowCopy(model, { graph: exposed }));
      const result = compile(c.model, c.spec, { exposeIndices: true });
      expect(result.report.foldedNodes).toBe(plain.node.length - folded.node.length);
      const foldedBytes = result.model;
      for (const batch of [1, 3]) {
        const feeds = { pixel_values: image(batch, c.channels, c.size) };
        const ref = await runNode(probe, feeds);
        for (const t of constants)
          expect([t.name, Array.from(ref[t.name]!.data as BigInt64Array, Number)]).toEqual([t.name, readNumbers(t)]);
        const ours = await runNode(foldedBytes, feeds);
        for (const o of plain.output)
          expect([o.name, maxAbsDiff(ours[o.name]!.data, ref[o.name]!.data)]).toEqual([o.name, 0]);
        const wasm = await runWasm(foldedBytes, feeds);
        for (const o of plain.output) expect(maxAbsDiff(wasm[o.name]!.data, ours[o.name]!.data)).toBeLessThan(1e-5);
      }
    });

  it("a per-example count (a kept count that is no number): the model runs at batch 1 and 3, bit-identical to the unfolded one", async () => {
    const spec = "after layer 1 keep mass 60% by cls-attn";
    const folded = compile(DIGITS, spec, { exposeIndices: true }).model;
    const plain = compile(DIGITS, spec, { exposeIndices: true, foldShapes: false }).model;
    for (const batch of [1, 3]) {
      const feeds = { pixel_values: image(batch, 1, 64) };
      const [a, b] = [await runNode(folded, feeds), await runNode(plain, feeds)];
      for (const name of Object.keys(b)) expect([name, maxAbsDiff(a[name]!.data, b[name]!.data)]).toEqual([name, 0]);
    }
  });

  it("a spec without stages folds nothing: the graph is the input's", () => {
    const r = compile(TINY, "# nothing\n");
    expect(r.report.foldedNodes).toBe(0);
    const g = decodeModel(r.model).graph!;
    expect(g.node.length).toBe(decodeModel(TINY).graph!.node.length);
    expect(g.initializer.some((t) => FOLDED.test(t.docString))).toBe(false);
  });
});
