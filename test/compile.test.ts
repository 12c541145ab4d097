/**
 * compile() on the built-in example (no ../shared needed): exact cls-attn kept sets, external data
 * kept as is, escaping locations rejected, checker-clean output, and rejections with the spec
 * position and the model fact.
 */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { shallowCopy } from "../src/ir/copy.js";
import { makeNode } from "../src/ir/graph.js";
import { int64Tensor } from "../src/onnx/tensor.js";
import { compile } from "../src/compile.js";
import { REPO_ROOT, describeShared, sharedModel } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, runWasm, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { withOutputs, unfoldProbs, rows } from "./support/model-edit.js";
import { clsAttnKeep } from "./reference/cls-attn.js";
import { thrown } from "./support/cases.js";
import { externalize } from "./support/externalize.js";

const EXAMPLE = join(REPO_ROOT, "examples", "tiny-vit");
const SPEC = "after layer 1 keep 50% by cls-attn";

describe("compile on the built-in tiny ViT", () => {
  let model: Uint8Array;
  let feeds: Feeds;
  let dir: string;
  beforeAll(() => {
    model = readFileSync(join(EXAMPLE, "model.onnx"));
    const x = readNpy(join(EXAMPLE, "ref_in.npy"));
    feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
    dir = mkdtempSync(join(tmpdir(), "prunec-compile-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("cls-attn keeps exactly the reference's tokens (batch 2, CPU and WASM)", async () => {
    const { model: pruned, report } = compile(model, SPEC, { exposeIndices: true });
    expect(report.stages).toEqual([
      { stage: 0, layer: 1, criterion: "cls-attn", tokensIn: 65, tokensOut: 33, line: 1, lowering: "index" },
    ]);
    expect(report.tokensPerLayer.map((t) => t.pruned)).toEqual([65, 65, 33, 33]);
    expect(report.addedNodes.every((n) => n.startsWith("prunec/stage0/"))).toBe(true);
    const probs = "/encoder/layers/encoder_layer_1/self_attention/Softmax_output_0";
    const p = (await runNode(withOutputs(model, [probs]), feeds, [probs]))[probs]!;
    const expected = clsAttnKeep(unfoldProbs(p.data as Float32Array, p.dims, 2), 50, 1);
    for (const run of [runNode, runWasm]) {
      const out = await run(pruned, feeds, ["prunec.stage0.indices"]);
      expect(rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims)).toEqual(
        expected,
      );
    }
  });

  it("external data keeps its location/offset/length and the pruned model runs from it", async () => {
    const { model: ext, weights } = externalize(model);
    writeFileSync(join(dir, "weights.bin"), weights);
    const out = compile(ext, SPEC, { exposeIndices: true }).model;
    const entries = (m: Uint8Array) =>
      decodeModel(m)
        .graph!.initializer.filter((t) => t.externalData.length)
        .map((t) => [t.name, t.externalData.map((e) => `${e.key}=${e.value}`)]);
    expect(entries(out)).toEqual(entries(ext));
    expect(entries(out).length).toBeGreaterThan(5);
    writeFileSync(join(dir, "pruned.onnx"), out);
    const fromFile = await runNode(join(dir, "pruned.onnx"), feeds, ["prunec.stage0.indices", "logits"]);
    const embedded = await runNode(compile(model, SPEC, { exposeIndices: true }).model, feeds, [
      "prunec.stage0.indices",
      "logits",
    ]);
    expect(Array.from(fromFile["prunec.stage0.indices"]!.data as BigInt64Array)).toEqual(
      Array.from(embedded["prunec.stage0.indices"]!.data as BigInt64Array),
    );
    expect(maxAbsDiff(fromFile.logits!.data as Float32Array, embedded.logits!.data as Float32Array)).toBe(0);
  });

  it("external data locations outside the model folder are rejected", () => {
    for (const location of ["../weights.bin", "/etc/weights.bin", "sub/../../weights.bin"]) {
      const { model: ext } = externalize(model, location);
      const e = thrown(() => compile(ext, SPEC, { modelName: "m.onnx" }));
      expect(e.kind).toBe("format");
      expect(e.message).toBe(
        `m.onnx: initializer 'conv_proj.weight' has external data location '${location}' outside the model's folder (absolute paths and '..' are not allowed)`,
      );
    }
  });

  it("a layer out of range names the spec position and the model's layer count", () => {
    const e = thrown(() =>
      compile(model, "after layer 1 keep 50% by cls-attn\nafter layer 7 keep 50% by cls-attn", { specName: "s.prune" }),
    );
    expect(e.kind).toBe("apply");
    expect(e.message).toBe(
      "s.prune:2:13: error: layer 7 is out of range: the model has 4 layers (0..3, or -1..-4 from the end)\n 2 | after layer 7 keep 50% by cls-attn\n   |             ^",
    );
  });

  it("stages out of layer order are rejected", () => {
    const e = thrown(() =>
      compile(model, "after layer 2 keep 50% by cls-attn; after layer -3 keep 50% by cls-attn", {
        specName: "s.prune",
      }),
    );
    expect(e.message).toBe(
      "s.prune:1:49: error: stages must be in layer order: layer 1 comes after a stage at layer 2\n 1 | after layer 2 keep 50% by cls-attn; after layer -3 keep 50% by cls-attn\n   |                                                 ^~",
    );
  });

  it("spec syntax errors come back as diagnostics before anything else", () => {
    const e = thrown(() => compile(model, "after layer 1 keep 250% by cls-attn", { specName: "s.prune" }));
    expect(e.kind).toBe("spec");
    expect(e.message.split("\n")[0]).toBe("s.prune:1:20: error: amount must be in (0, 100]%, got 250%");
    expect(e.diagnostics).toHaveLength(1);
  });

  it("drop and token counts resolve to the same kept count as keep", () => {
    const keep = compile(model, "after layer 1 keep 25% by cls-attn").report.stages[0]!.tokensOut;
    expect(compile(model, "after layer 1 drop 75% by cls-attn").report.stages[0]!.tokensOut).toBe(keep);
    expect(compile(model, "after layer 1 keep 16 tokens by cls-attn").report.stages[0]!.tokensOut).toBe(keep);
    expect(compile(model, "after layer 1 keep by cls-attn").report.stages[0]!.tokensOut).toBe(33); // default 50%
  });

  const PYTHON = process.env["PRUNEC_PYTHON"] ?? "/usr/bin/python3";
  const hasPyOnnx = spawnSync(PYTHON, ["-c", "import onnx"], { stdio: "ignore" }).status === 0;
  it.skipIf(!hasPyOnnx)(
    `the compiled model is onnx.checker-clean${hasPyOnnx ? "" : ` (needs ${PYTHON} with onnx: missing)`}`,
    () => {
      const out = join(dir, "checked.onnx");
      writeFileSync(out, compile(model, SPEC, { exposeIndices: true }).model);
      const r = spawnSync(PYTHON, [join(REPO_ROOT, "scripts", "onnx_check.py"), out], { encoding: "utf8" });
      expect(r.stdout.trim()).toBe(`OK ${out}`);
    },
  );
});

describeShared("specs that cannot apply to real exports", () => {
  it("cls-attn on a model without CLS (gemma-3 SigLIP) is rejected with the model fact", () => {
    const bytes = readFileSync(sharedModel("graph-only/gemma-3-4b-vlm/vision_encoder.onnx"));
    const e = thrown(() => compile(bytes, "after layer 3 keep 50% by cls-attn", { specName: "g.prune" }));
    expect(e.message).toBe(
      "g.prune:1:27: error: cls-attn cannot run after layer 3: the model has no CLS token (no learned token is concatenated in front of the patch tokens); use a criterion that does not need one\n 1 | after layer 3 keep 50% by cls-attn\n   |                           ^~~~~~~~",
    );
  });
});

describe("constant shapes below a stage", () => {
  const model = readFileSync(join(EXAMPLE, "model.onnx"));
  const x = readNpy(join(EXAMPLE, "ref_in.npy"));
  const feeds: Feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
  const RESIDUAL = "/encoder/layers/encoder_layer_2/Add_1_output_0";

  /** Route layer 2's output residual through Reshape(x, shape) before its consumers. */
  function withReshape(shape: number[]): Uint8Array {
    const m = decodeModel(model);
    const g = m.graph!;
    const shapeName = "test/static_shape";
    const node = makeNode("Reshape", [RESIDUAL, shapeName], ["test/reshaped"], "test/static_reshape");
    const nodes = g.node.map((n) =>
      n.input.includes(RESIDUAL)
        ? shallowCopy(n, { input: n.input.map((i) => (i === RESIDUAL ? "test/reshaped" : i)) })
        : n,
    );
    const at = nodes.findIndex((n) => n.output.includes(RESIDUAL));
    nodes.splice(at + 1, 0, node);
    return encodeModel(
      shallowCopy(m, {
        graph: shallowCopy(g, { node: nodes, initializer: [...g.initializer, int64Tensor(shapeName, shape)] }),
      }),
    );
  }

  it("a Reshape holding the token count at the token axis is retargeted and the model still runs", async () => {
    const patched = withReshape([-1, 65, 48]);
    const pruned = compile(patched, SPEC).model;
    const plain = compile(model, SPEC).model;
    const a = await runNode(pruned, feeds, ["logits"]);
    const b = await runNode(plain, feeds, ["logits"]);
    expect(maxAbsDiff(a.logits!.data as Float32Array, b.logits!.data as Float32Array)).toBe(0);
  });

  it("any other constant shape naming the token count is refused before writing", () => {
    const e = thrown(() => compile(withReshape([65, -1, 48]), SPEC));
    expect(e.message).toBe(
      "node 'test/static_reshape' (Reshape) after layer 1 has the token count 65 baked into its constant shape [65, -1, 48]; prunec cannot retarget it",
    );
  });
});
