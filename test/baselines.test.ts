/** norm, random(seed), uniform: exact kept sets against the TypeScript references (CPU and WASM). */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, describeShared, sharedModel } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { withOutputs, rows } from "./support/model-edit.js";
import { normKeep, randomKeep, uniformKeep } from "./reference/baselines.js";

const residualOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/Add_1_output_0`;

/** [B, N, D] float data as nested arrays. */
function tokens(data: Float32Array, dims: number[]): number[][][] {
  const [b, n, d] = dims as [number, number, number];
  return Array.from({ length: b }, (_, i) =>
    Array.from({ length: n }, (_, j) => Array.from(data.subarray((i * n + j) * d, (i * n + j + 1) * d))),
  );
}

async function kept(model: Uint8Array, spec: string, feeds: Feeds, run = runNode): Promise<number[][]> {
  const out = (await run(compile(model, spec, { exposeIndices: true }).model, feeds, ["prunec.stage0.indices"]))[
    "prunec.stage0.indices"
  ]!;
  return rows(out.data as BigInt64Array, out.dims);
}

describe("baseline criteria on the built-in tiny ViT (64 patches + CLS)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
  const x = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
  const feeds: Feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };

  it("norm: the tokens with the largest L2 norm leaving the layer", async () => {
    const r = (await runNode(withOutputs(model, [residualOf(2)]), feeds, [residualOf(2)]))[residualOf(2)]!;
    const expected = normKeep(tokens(r.data as Float32Array, r.dims), 25, 1);
    for (const run of [runNode, runWasm])
      expect(await kept(model, "after layer 2 keep 25% by norm", feeds, run)).toEqual(expected);
  });

  it("random(seed): a fixed subset from mulberry32, the same for every example; the seed matters", async () => {
    const expected = randomKeep(64, 25, 1, 7);
    expect(await kept(model, "after layer 1 keep 25% by random(seed: 7)", feeds)).toEqual([expected, expected]);
    expect(await kept(model, "after layer 1 keep 25% by random(7)", feeds, runWasm)).toEqual([expected, expected]);
    expect(randomKeep(64, 25, 1, 8)).not.toEqual(expected);
    expect(await kept(model, "after layer 1 keep 25% by random", feeds)).toEqual([
      randomKeep(64, 25, 1, 0),
      randomKeep(64, 25, 1, 0),
    ]);
  });

  it("uniform: an even spread over the 8×8 grid", async () => {
    const expected = uniformKeep(8, 25, 1);
    expect(await kept(model, "after layer 0 keep 25% by uniform", feeds)).toEqual([expected, expected]);
    // 16 of 64 cells, spread out: every cell of the grid touches a kept cell (Chebyshev distance ≤ 1),
    // while a clump would leave most of the image uncovered.
    const cells = expected.slice(1).map((t) => t - 1);
    const cheb = (a: number, b: number) =>
      Math.max(Math.abs((a % 8) - (b % 8)), Math.abs(Math.floor(a / 8) - Math.floor(b / 8)));
    for (let c = 0; c < 64; c++) expect(Math.min(...cells.map((k) => cheb(k, c)))).toBeLessThanOrEqual(1);
  });

  it("uniform must be the first stage (it needs the full grid)", () => {
    expect(() =>
      compile(model, "after layer 0 keep 50% by cls-attn\nafter layer 1 keep 50% by uniform", { specName: "s.prune" }),
    ).toThrow(
      "s.prune:2:27: error: uniform cannot run after layer 1: it spreads tokens over the full patch grid, so it must be the first stage",
    );
  });
});

describeShared("norm on the torchvision ViT-Ti", () => {
  it("after layer 4 keep 25% by norm: exact kept sets at batch 1 and 3", async () => {
    const model = readFileSync(sharedModel("synthetic/vit-ti16-cls-randinit/model.onnx"));
    const one = readNpy(sharedModel("synthetic/vit-ti16-cls-randinit/ref_in.npy")).data as Float32Array;
    const three = new Float32Array(one.length * 3);
    for (let b = 0; b < 3; b++)
      for (let i = 0; i < one.length; i++) three[b * one.length + i] = one[i]! * (1 + 0.3 * b) - 0.05 * b;
    for (const [dims, data] of [
      [[1, 3, 224, 224], one],
      [[3, 3, 224, 224], three],
    ] as const) {
      const feeds: Feeds = { pixel_values: { type: "float32", dims, data } };
      const r = (await runNode(withOutputs(model, [residualOf(4)]), feeds, [residualOf(4)]))[residualOf(4)]!;
      expect(await kept(model, "after layer 4 keep 25% by norm", feeds)).toEqual(
        normKeep(tokens(r.data as Float32Array, r.dims), 25, 1),
      );
    }
  });
});
