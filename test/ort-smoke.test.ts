/**
 * onnxruntime smoke tests: the test runners (native CPU EP and WASM in Node) reproduce the torch
 * reference outputs of the shipped example model and of the shared ViT-Ti/16.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readNpy } from "./helpers/npy.js";
import { maxAbsDiff, npyFeed, runNode, runWasm } from "./helpers/ort.js";
import { REPO_ROOT, describeShared, sharedModel } from "./helpers/shared.js";

const TOL = 1e-4;

describe("examples/tiny-vit (built in, no ../shared needed)", () => {
  const dir = join(REPO_ROOT, "examples", "tiny-vit");
  const model = readFileSync(join(dir, "model.onnx"));
  const x = readNpy(join(dir, "ref_in.npy"));
  const ref = readNpy(join(dir, "ref_out.npy"));

  it("reference arrays have the documented shapes", () => {
    expect(x.shape).toEqual([2, 3, 64, 64]);
    expect(ref.shape).toEqual([2, 10]);
    expect(model.byteLength).toBeLessThan(500 * 1024);
  });

  it("onnxruntime-node matches torch (batch 2)", async () => {
    const out = await runNode(model, { pixel_values: npyFeed(x) });
    const logits = out["logits"]!;
    expect(logits.dims).toEqual([2, 10]);
    const err = maxAbsDiff(logits.data as Float32Array, ref.data as Float32Array);
    console.info(`tiny-vit onnxruntime-node vs torch: max abs err ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(TOL);
  });

  it("onnxruntime-node matches torch with batch 1 (dynamic batch axis)", async () => {
    const one = {
      type: "float32" as const,
      dims: [1, 3, 64, 64],
      data: (x.data as Float32Array).subarray(0, 3 * 64 * 64),
    };
    const out = await runNode(model, { pixel_values: one }, ["logits"]);
    expect(out["logits"]!.dims).toEqual([1, 10]);
    expect(
      maxAbsDiff(out["logits"]!.data as Float32Array, (ref.data as Float32Array).subarray(0, 10)),
    ).toBeLessThanOrEqual(TOL);
  });

  it("onnxruntime-web (WASM) matches torch (batch 2)", async () => {
    const out = await runWasm(model, { pixel_values: npyFeed(x) });
    const err = maxAbsDiff(out["logits"]!.data as Float32Array, ref.data as Float32Array);
    console.info(`tiny-vit onnxruntime-web/wasm vs torch: max abs err ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(TOL);
  });
});

describeShared("synthetic/vit-ti16-cls-randinit on both runtimes", () => {
  const dir = "synthetic/vit-ti16-cls-randinit";
  const modelPath = sharedModel(`${dir}/model.onnx`);
  const x = () => readNpy(sharedModel(`${dir}/ref_in.npy`));
  const ref = () => readNpy(sharedModel(`${dir}/ref_out.npy`));

  it("onnxruntime-node matches the torch reference (batch 1)", async () => {
    const input = x();
    const expected = ref();
    expect(input.shape).toEqual([1, 3, 224, 224]);
    expect(expected.shape).toEqual([1, 1000]);
    const out = await runNode(readFileSync(modelPath), { pixel_values: npyFeed(input) }, ["logits"]);
    expect(out["logits"]!.dims).toEqual([1, 1000]);
    const err = maxAbsDiff(out["logits"]!.data as Float32Array, expected.data as Float32Array);
    console.info(`vit-ti16 onnxruntime-node vs torch: max abs err ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(TOL);
  });

  it("onnxruntime-web (WASM, 1 thread) matches the torch reference (batch 1)", async () => {
    const out = await runWasm(modelPath, { pixel_values: npyFeed(x()) }, ["logits"]);
    expect(out["logits"]!.dims).toEqual([1, 1000]);
    const err = maxAbsDiff(out["logits"]!.data as Float32Array, ref().data as Float32Array);
    console.info(`vit-ti16 onnxruntime-web/wasm vs torch: max abs err ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(TOL);
  });
});
