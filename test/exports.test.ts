/**
 * Models as users export them (test/fixtures/exports, made by scripts/export_forms.py with Debian's
 * torch 1.13): LayerNorm decomposed by opset 13/14 exports, RMSNorm written by hand, post-norm
 * (BERT layout) and sequence-first nn.TransformerEncoder, a static batch, attention in Einsum, two
 * special tokens (DeiT), a per-token graph output, and torchvision's Swin, which is refused.
 *
 * The committed models are what the script writes (byte-identical on re-export); CI also re-exports
 * them with Debian's torch and runs this file on the fresh copies (PRUNEC_EXPORTS_DIR, .ci/run).
 *
 * For each: `inspect` facts equal the facts the export script recorded from how it built the model
 * (manifest.json); the dense model reproduces torch's output; keep-100% compiles to outputs equal to
 * the dense model's (≤ 1e-5) at batch 1 and 2; cls-attn / global-attn at 50% keeps exactly the
 * tokens the TypeScript reference picks from the dense model's own attention probabilities.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { inspectModel } from "../src/inspect.js";
import { PrunecError } from "../src/errors.js";
import { decodeModel } from "../src/onnx/io.js";
import { withOutputs, unfoldProbs, rows, declaring } from "./support/model-edit.js";
import { residualOutput } from "./support/synthetic-weights.js";
import { clsAttnKeep, globalAttnKeep } from "./reference/cls-attn.js";

// CI re-exports the models with Debian's torch into a fresh folder and runs this file on it too.
const DIR = process.env["PRUNEC_EXPORTS_DIR"] ?? join(REPO_ROOT, "test/fixtures/exports");

interface ManifestModel {
  file: string;
  form: string;
  batch: "dynamic" | "static";
  layers: number;
  heads: number;
  hidden: number;
  tokens: number;
  specialTokens: number;
  tokenAxis: number;
  batchAxis: number;
  staticBatch?: number;
  inputs: { name: string; shape: (string | number)[] }[];
  outputs: { name: string; shape: (string | number)[]; perToken: boolean }[];
  reference: { batch: number; inputs: Record<string, string>; outputs: Record<string, string> };
}

const manifest = JSON.parse(readFileSync(join(DIR, "manifest.json"), "utf8")) as {
  models: Record<string, ManifestModel>;
};
const models = Object.values(manifest.models);
const prunable = models.filter((m) => m.form !== "swin-tiny");

function load(m: ManifestModel): {
  bytes: Uint8Array;
  feeds2: Feeds;
  feeds1: Feeds;
  refs: Record<string, Float32Array>;
} {
  const bytes = readFileSync(join(DIR, m.file));
  const x = readNpy(join(DIR, m.reference.inputs[m.inputs[0]!.name]!));
  const data = x.data as Float32Array;
  const feeds2: Feeds = { [m.inputs[0]!.name]: { type: "float32", dims: x.shape, data } };
  const feeds1: Feeds = {
    [m.inputs[0]!.name]: {
      type: "float32",
      dims: [1, ...x.shape.slice(1)],
      data: data.subarray(0, data.length / x.shape[0]!),
    },
  };
  const refs = Object.fromEntries(
    Object.entries(m.reference.outputs).map(([o, f]) => [o, readNpy(join(DIR, f)).data as Float32Array]),
  );
  return { bytes, feeds2, feeds1, refs };
}

/** The Softmax outputs in graph order: one per layer in these exports. */
function softmaxes(bytes: Uint8Array): string[] {
  return decodeModel(bytes)
    .graph!.node.filter((n) => n.opType === "Softmax")
    .map((n) => n.output[0]!);
}

const criterionFor = (m: ManifestModel) => (m.specialTokens > 0 ? "cls-attn" : "global-attn");
const batches = (m: ManifestModel) => (m.batch === "static" ? (["feeds2"] as const) : (["feeds1", "feeds2"] as const));

describe("exports as users make them (test/fixtures/exports)", () => {
  for (const m of prunable) {
    describe(m.form, () => {
      it("inspect reports the facts the export recorded", () => {
        const { bytes } = load(m);
        const r = inspectModel(bytes, m.file);
        expect(r.unproven).toBeNull();
        expect({
          layers: r.layerCount,
          hidden: r.hidden,
          tokens: r.tokens,
          tokenAxis: r.tokenAxis,
          batchAxis: r.batchAxis,
          special: r.cls.prefixTokens,
        }).toEqual({
          layers: m.layers,
          hidden: m.hidden,
          tokens: m.tokens,
          tokenAxis: m.tokenAxis,
          batchAxis: m.batchAxis,
          special: m.specialTokens,
        });
        for (const l of r.layers) {
          expect(l.heads).toBe(m.heads);
          expect(l.residual).not.toBeNull();
          expect(l.criteria.find((c) => c.name === criterionFor(m))).toMatchObject({ ok: true });
        }
      });

      it("keep 100% compiles to the dense model's outputs (≤ 1e-5), which equal torch's (≤ 1e-4)", async () => {
        const { bytes, refs, ...feeds } = load(m);
        const { model } = compile(bytes, `after layer 0 keep 100% by ${criterionFor(m)}`);
        for (const which of batches(m)) {
          const names = m.outputs.map((o) => o.name);
          const dense = await runNode(bytes, feeds[which], names);
          const pruned = await runNode(model, feeds[which], names);
          for (const o of names) {
            expect(pruned[o]!.dims).toEqual(dense[o]!.dims);
            expect(maxAbsDiff(pruned[o]!.data as Float32Array, dense[o]!.data as Float32Array)).toBeLessThanOrEqual(
              1e-5,
            );
            if (which === "feeds2")
              expect(maxAbsDiff(dense[o]!.data as Float32Array, refs[o]!)).toBeLessThanOrEqual(1e-4);
          }
        }
      });

      for (const layer of [0, 1]) {
        it(`after layer ${layer} keep 50% by ${criterionFor(m)}: kept sets equal the reference at batch 1 and 2`, async () => {
          const { bytes, feeds1, feeds2 } = load(m);
          const { model, report } = compile(bytes, `after layer ${layer} keep 50% by ${criterionFor(m)}`, {
            exposeIndices: true,
          });
          const prunableTokens = m.tokens - m.specialTokens;
          expect(report.stages[0]).toMatchObject({
            tokensIn: m.tokens,
            tokensOut: m.specialTokens + Math.floor(prunableTokens / 2 + 0.5),
          });
          const probs = softmaxes(bytes)[layer]!;
          const probe = withOutputs(bytes, [probs]);
          for (const feeds of m.batch === "static" ? [feeds2] : [feeds1, feeds2]) {
            const p = (await runNode(probe, feeds, [probs]))[probs]!;
            // [B·H, N, N] (nn.MultiheadAttention) or [B, H, N, N]: the same memory order.
            const dims = p.dims.length === 4 ? [p.dims[0]! * p.dims[1]!, p.dims[2]!, p.dims[3]!] : p.dims;
            const unfolded = unfoldProbs(p.data as Float32Array, dims, m.heads);
            const expected =
              m.specialTokens > 0 ? clsAttnKeep(unfolded, 50, m.specialTokens) : globalAttnKeep(unfolded, 50, 0);
            const idx = (await runNode(model, feeds, ["prunec.stage0.indices"]))["prunec.stage0.indices"]!;
            expect(rows(idx.data as BigInt64Array, idx.dims)).toEqual(expected);
          }
          // The pruned model runs and gives finite outputs of the declared shapes.
          const out = await runNode(
            model,
            feeds2,
            m.outputs.map((o) => o.name),
          );
          for (const o of m.outputs) {
            expect(Array.from(out[o.name]!.data as Float32Array).every(Number.isFinite)).toBe(true);
            if (!o.perToken) expect(out[o.name]!.dims).toEqual(o.shape.map((d) => (typeof d === "number" ? d : 2)));
          }
        });
      }
    });
  }

  it("a graph output with one row per token that a stage shrinks is reported: name, axis, rows, stages, where the positions are", async () => {
    const m = manifest.models["per-token-output"]!;
    const { bytes, feeds2 } = load(m);
    const { model, report } = compile(bytes, "after layer 0 keep 50% by cls-attn\nafter layer 1 keep 50% by cls-attn", {
      exposeIndices: true,
    });
    expect(report.perTokenOutputs).toEqual([
      {
        output: "last_hidden_state",
        axis: 1,
        denseRows: 17,
        rows: 5,
        stages: [0, 1],
        positions: ["prunec.stage0.indices", "prunec.stage1.indices"],
      },
    ]);
    // Row r of the output is the dense output's token at stage0[stage1[r]]: the final norm is per token.
    const dense = (await runNode(bytes, feeds2, ["last_hidden_state"])).last_hidden_state!;
    const out = await runNode(model, feeds2, ["last_hidden_state", "prunec.stage0.indices", "prunec.stage1.indices"]);
    expect(out.last_hidden_state!.dims).toEqual([2, 5, 32]);
    const s0 = rows(out["prunec.stage0.indices"]!.data as BigInt64Array, out["prunec.stage0.indices"]!.dims);
    const s1 = rows(out["prunec.stage1.indices"]!.data as BigInt64Array, out["prunec.stage1.indices"]!.dims);
    // Only the CLS row is computed from the same tokens in both (the others saw fewer tokens in layer 1).
    for (let b = 0; b < 2; b++)
      expect(s1[b]!.map((r) => s0[b]![r])).toEqual(s1[b]!.map((r) => s0[b]![r]!).sort((x, y) => x - y));
    expect(Array.from(out.last_hidden_state!.data as Float32Array).every(Number.isFinite)).toBe(true);
    expect(dense.dims).toEqual([2, 17, 32]);
    // Keep 100% leaves the output whole: nothing to report.
    expect(compile(bytes, "after layer 0 keep 100% by cls-attn").report.perTokenOutputs).toEqual([]);
    // The logits output (no token axis) is never listed.
    expect(
      compile(readFileSync(join(DIR, "vit-opset17.onnx")), "after layer 0 keep 50% by cls-attn").report.perTokenOutputs,
    ).toEqual([]);
  });

  it("an output declared with the dense token count as a number (torch's export with only the batch axis dynamic) is declared with the pruned count, listed, and runs", async () => {
    const m = manifest.models["per-token-output"]!;
    const { bytes, feeds2 } = load(m);
    // torch.onnx.export with dynamic_axes naming only the batch axis declares [batch, 17, 32]; the
    // stream leaving layer 0, above the stage, is exposed the same way.
    const layer0 = residualOutput(bytes, 0);
    const exposed = withOutputs(bytes, [layer0]);
    const numeric = declaring(exposed, { last_hidden_state: ["batch", 17, 32], [layer0]: ["batch", 17, 32] });
    const spec = "after layer 1 keep 50% by cls-attn";
    const { model, report, graph } = compile(numeric, spec);
    // 16 patch tokens, half of them kept, and CLS.
    expect(report.perTokenOutputs.map((o) => [o.output, o.axis, o.denseRows, o.rows])).toEqual([
      ["last_hidden_state", 1, 17, 9],
    ]);
    const declared = (name: string) => {
      const t = graph.output.find((o) => o.name === name)?.type?.value;
      return t?.case === "tensorType" ? t.value.shape?.dim.map((d) => d.value.value) : undefined;
    };
    expect(declared("last_hidden_state")).toEqual(["batch", 9n, 32n]);
    // Above the stage nothing changed: its declaration stands.
    expect(declared(layer0)).toEqual(["batch", 17n, 32n]);
    const out = await runNode(model, feeds2, ["last_hidden_state", layer0]);
    expect(out.last_hidden_state!.dims).toEqual([2, 9, 32]);
    expect(out[layer0]!.dims).toEqual([2, 17, 32]);
    // The same values as the export with symbolic declarations compiles to: only a declaration differed.
    const symbolic = await runNode(compile(exposed, spec).model, feeds2, ["last_hidden_state"]);
    expect(
      maxAbsDiff(out.last_hidden_state!.data as Float32Array, symbolic.last_hidden_state!.data as Float32Array),
    ).toBe(0);
  });

  it("torchvision Swin is refused: its tokens lie on a grid and attention runs inside windows", () => {
    const swin = readFileSync(join(DIR, "swin-tiny.onnx"));
    const r = inspectModel(swin, "swin-tiny.onnx");
    expect(r.unproven).toBe(
      "the residual stream entering layer 0 ('/features/features.0/features.0.2/LayerNormalization_output_0') is [batch, 8, 8, 16]: its tokens lie on 2 axes (a spatial grid, as in Swin); its attention runs inside windows (window partition at node '/features/features.1/features.1.0/attn/Reshape_2'); prunec gathers tokens along one axis of a [batch, tokens, hidden] stream",
    );
    let error: unknown;
    try {
      compile(swin, "after layer 0 keep 50% by global-attn", { modelName: "swin-tiny.onnx", specName: "spec.prune" });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(PrunecError);
    expect((error as PrunecError).message).toContain(
      `spec.prune:1:1: error: prunec cannot prove this model's token structure: ${r.unproven}`,
    );
  });
});
