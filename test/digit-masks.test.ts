/**
 * examples/digit-masks: the trained dense-output model (one row of 2 logits per patch) and its
 * per-patch labelled sets. onnxruntime-node must reproduce the per-patch predictions
 * scripts/train_digit_masks.py's torch evaluation recorded in metrics.json, and `prunec eval` the
 * very counts (per-class intersection and union, patches right) behind its mIoU.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { REPO_ROOT } from "./helpers/shared.js";
import { batchInput, parseDataset, type Dataset } from "../src/data/prds.js";
import { compile } from "../src/compile.js";

const DIR = join(REPO_ROOT, "examples", "digit-masks");
const MODEL = join(DIR, "model.onnx");
const TEST = join(DIR, "test.prds");
const SAMPLE = join(DIR, "sample.prds");
const run = (...args: string[]) =>
  spawnSync(process.execPath, [join(REPO_ROOT, "bin", "prunec.js"), ...args], { encoding: "utf8", timeout: 120_000 });

interface Scores {
  n: number;
  patches: number;
  miou: number;
  per_class: { class: string; intersection: number; union: number; iou: number }[];
  patch_correct: number;
  patch_accuracy: number;
}
interface Metrics {
  test: Scores;
  sample: Scores;
  sample_predictions: number[][];
  sample_logits: number[][][];
  first_predictions_n: number;
  first_predictions: number[][];
}

/** Predicted class per patch (argmax of 2 logits, first index wins a tie) of examples [from, to). */
async function predict(session: ort.InferenceSession, d: Dataset, from: number, to: number) {
  const x = batchInput(d, from, to);
  const out = (await session.run({ pixel_values: new ort.Tensor("float32", x.data, x.dims) }))["logits"]!;
  expect(out.dims).toEqual([to - from, 64, 2]);
  const v = out.data as Float32Array;
  const pred: number[][] = [];
  for (let i = 0; i < to - from; i++)
    pred.push(Array.from({ length: 64 }, (_, p) => (v[(i * 64 + p) * 2 + 1]! > v[(i * 64 + p) * 2]! ? 1 : 0)));
  return { pred, logits: v.slice() };
}

describe.skipIf(!existsSync(MODEL))("examples/digit-masks (trained per-patch ViT)", () => {
  let metrics: Metrics;
  let test: Dataset;
  let sample: Dataset;
  let dir: string;
  beforeAll(() => {
    metrics = JSON.parse(readFileSync(join(DIR, "metrics.json"), "utf8"));
    test = parseDataset(readFileSync(TEST), TEST);
    sample = parseDataset(readFileSync(SAMPLE), SAMPLE);
    dir = mkdtempSync(join(tmpdir(), "prunec-digit-masks-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("the sets: per-patch headers, 64 labels per example, each a 3x3 block of 'digit' patches", () => {
    for (const [d, n] of [
      [sample, 8],
      [test, metrics.test.n],
    ] as const) {
      expect(d.header).toMatchObject({
        n,
        channels: 1,
        height: 64,
        width: 64,
        classes: 2,
        labels: ["background", "digit"],
        targets: "patches",
        patches: 64,
        patch_grid: [8, 8],
        input: "float32 pixel/255, NCHW",
      });
      expect(d.patches).toBe(64);
      expect(d.labels.length).toBe(n * 64);
      for (let i = 0; i < n; i++) {
        const on = [...d.labels.subarray(i * 64, (i + 1) * 64).keys()].filter((p) => d.labels[i * 64 + p] === 1);
        expect(on.length).toBe(9);
        const [r0, c0] = [Math.floor(on[0]! / 8), on[0]! % 8];
        expect(on).toEqual([0, 1, 2].flatMap((r) => [0, 1, 2].map((c) => (r0 + r) * 8 + c0 + c)));
      }
    }
    expect(test.header.n).toBe(1000);
    expect(readFileSync(TEST).byteLength).toBeLessThan(5 * 1024 * 1024);
  });

  it("onnxruntime-node reproduces torch's per-patch predictions (sample set, first test examples)", async () => {
    const session = await ort.InferenceSession.create(MODEL, { executionProviders: ["cpu"] });
    try {
      expect(session.inputNames).toEqual(["pixel_values"]);
      expect(session.outputNames).toEqual(["logits"]);
      const s = await predict(session, sample, 0, 8);
      expect(s.pred).toEqual(metrics.sample_predictions);
      let maxErr = 0;
      metrics.sample_logits.flat(2).forEach((v, i) => (maxErr = Math.max(maxErr, Math.abs(v - s.logits[i]!))));
      expect(maxErr).toBeLessThan(1e-3);
      const t = await predict(session, test, 0, metrics.first_predictions_n);
      expect(t.pred).toEqual(metrics.first_predictions);
    } finally {
      await session.release();
    }
  });

  it("eval --json on the whole test set: the counts, mIoU, IoU and patch accuracy the script wrote", () => {
    const r = run("eval", MODEL, "--data", TEST, "--json", "--batch", "100");
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    const t = metrics.test;
    expect(j).toEqual({
      miou: j.miou,
      iou: j.iou,
      intersection: t.per_class.map((c) => c.intersection),
      union: t.per_class.map((c) => c.union),
      patchAccuracy: j.patchAccuracy,
      patchCorrect: t.patch_correct,
      patchTotal: t.patches,
      n: t.n,
      patches: 64,
      classes: ["background", "digit"],
      ep: "cpu",
      tokensPerLayer: null,
    });
    // the same counts give the same floats: the definitions agree to the last bit
    expect(j.iou).toEqual(t.per_class.map((c) => c.iou));
    expect(j.miou).toBe(t.miou);
    expect(j.patchAccuracy).toBe(t.patch_accuracy);
  });

  it("eval --ep wasm: the sample set's counts", () => {
    const r = run("eval", MODEL, "--data", SAMPLE, "--json", "--ep", "wasm");
    expect(r.status, r.stderr).toBe(0);
    const s = metrics.sample;
    expect(JSON.parse(r.stdout)).toMatchObject({
      intersection: s.per_class.map((c) => c.intersection),
      union: s.per_class.map((c) => c.union),
      patchCorrect: s.patch_correct,
      miou: s.miou,
      ep: "wasm",
    });
  });

  it("eval in text: mIoU, per-class IoU with counts, patch accuracy", () => {
    const r = run("eval", MODEL, "--data", SAMPLE);
    expect(r.status, r.stderr).toBe(0);
    const s = metrics.sample;
    const pct = (v: number) => `${(100 * v).toFixed(2)}%`;
    const [bg, dg] = s.per_class;
    expect(r.stdout).toBe(
      `${MODEL}: mIoU ${pct(s.miou)} over 512 patches (8 examples x 64) on ${SAMPLE}, cpu\n` +
        `  IoU: background ${pct(bg!.iou)} (${bg!.intersection}/${bg!.union}), digit ${pct(dg!.iou)} (${dg!.intersection}/${dg!.union})\n` +
        `  patch accuracy ${pct(s.patch_accuracy)} (${s.patch_correct}/512)\n`,
    );
  });

  it("a model whose output rows are not the set's patches: exit 2 naming both shapes", () => {
    // pruned (the patch rows shrink to the kept tokens: 16 of 64)
    const pruned = join(dir, "pruned.onnx");
    writeFileSync(pruned, compile(readFileSync(MODEL), "after layer 2 keep 25% by cls-attn\n").model);
    const p = run("eval", pruned, "--data", SAMPLE);
    expect([p.status, p.stdout, p.stderr]).toEqual([
      2,
      "",
      `prunec: error: ${pruned}: output 'logits' has shape [8, 16, 2]; expected [batch, 64, 2] logits, one row of 2 per patch of ${SAMPLE} (header fields 'patches' and 'classes')\n`,
    ]);
    // a per-example classifier on a per-patch set
    const digits = join(REPO_ROOT, "examples", "digits", "model.onnx");
    const c = run("eval", digits, "--data", SAMPLE, "--batch", "4");
    expect([c.status, c.stderr]).toEqual([
      2,
      `prunec: error: ${digits}: output 'logits' has shape [4, 10]; expected [batch, 64, 2] logits, one row of 2 per patch of ${SAMPLE} (header fields 'patches' and 'classes')\n`,
    ]);
    // and the per-patch model on a per-example set
    const perExample = join(REPO_ROOT, "examples", "digits", "sample.prds");
    const e = run("eval", MODEL, "--data", perExample);
    expect([e.status, e.stderr]).toEqual([
      2,
      `prunec: error: ${MODEL}: output 'logits' has shape [8, 64, 2]; expected [batch, 10] logits\n`,
    ]);
  });

  it("report refuses a per-patch set (its overlays carry one label per example)", () => {
    writeFileSync(join(dir, "s.prune"), "after layer 2 keep 25% by cls-attn\n");
    const r = run("report", MODEL, join(dir, "s.prune"), "-o", join(dir, "report"), "--data", SAMPLE);
    expect([r.status, r.stderr]).toEqual([
      6,
      `prunec: error: ${SAMPLE}: report's overlays show one label per example; this set has per-patch labels (header field 'targets' is "patches")\n`,
    ]);
    expect(existsSync(join(dir, "report"))).toBe(false);
  });
});
