/**
 * examples/digits: the trained example model ("cluttered digits") and its datasets.
 *
 * Parses the .prds files with a tiny reader local to this test (format: ASCII `PRUNEDS1`, uint32 LE
 * header length H, H bytes of UTF-8 JSON, N uint8 labels, N*C*H*W uint8 pixels in NCHW order),
 * runs model.onnx on onnxruntime-node, and checks that the accuracy (and the predictions) on the
 * sample set and on the first 256 test examples are exactly what scripts/train_digits.py's torch
 * evaluation recorded in metrics.json.
 */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";

const DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "examples", "digits");

interface Prds {
  header: {
    n: number;
    channels: number;
    height: number;
    width: number;
    classes: number;
    labels: string[];
    input: string;
    seed: unknown;
    description: string;
  };
  labels: Uint8Array;
  pixels: Uint8Array;
  byteLength: number;
}

function readPrds(path: string): Prds {
  const buf = readFileSync(path);
  if (buf.subarray(0, 8).toString("latin1") !== "PRUNEDS1") throw new Error(`${path}: bad magic`);
  const h = buf.readUInt32LE(8);
  const header = JSON.parse(buf.subarray(12, 12 + h).toString("utf8")) as Prds["header"];
  const n = header.n;
  const size = header.channels * header.height * header.width;
  const labelsAt = 12 + h;
  const pixelsAt = labelsAt + n;
  if (buf.length !== pixelsAt + n * size)
    throw new Error(`${path}: ${buf.length} bytes, expected ${pixelsAt + n * size}`);
  return {
    header,
    labels: new Uint8Array(buf.buffer, buf.byteOffset + labelsAt, n),
    pixels: new Uint8Array(buf.buffer, buf.byteOffset + pixelsAt, n * size),
    byteLength: buf.length,
  };
}

/** Predicted classes (argmax of logits; first index wins a tie) for examples [from, to). */
async function predict(session: ort.InferenceSession, ds: Prds, from: number, to: number) {
  const { channels, height, width } = ds.header;
  const size = channels * height * width;
  const n = to - from;
  const x = new Float32Array(n * size);
  const src = ds.pixels.subarray(from * size, to * size);
  for (let i = 0; i < x.length; i++) x[i] = src[i]! / 255;
  const out = await session.run({ pixel_values: new ort.Tensor("float32", x, [n, channels, height, width]) });
  const logits = out["logits"]!;
  expect(logits.dims).toEqual([n, 10]);
  const d = logits.data as Float32Array;
  const pred: number[] = [];
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < 10; c++) if (d[i * 10 + c]! > d[i * 10 + best]!) best = c;
    pred.push(best);
  }
  return { pred, logits: d.slice() };
}

const metrics = JSON.parse(readFileSync(join(DIR, "metrics.json"), "utf8")) as {
  test: { n: number; accuracy: number };
  sample_correct: number;
  sample_n: number;
  sample_predictions: number[];
  sample_logits: number[][];
  first256_correct: number;
  first256_predictions: number[];
};

describe("examples/digits (trained cluttered-digits ViT)", () => {
  const sample = readPrds(join(DIR, "sample.prds"));
  const test = readPrds(join(DIR, "test.prds"));

  it("datasets have the documented header and sizes", () => {
    for (const [ds, n] of [
      [sample, 8],
      [test, metrics.test.n],
    ] as const) {
      expect(ds.header).toMatchObject({
        n,
        channels: 1,
        height: 64,
        width: 64,
        classes: 10,
        labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        input: "float32 pixel/255, NCHW",
      });
      expect(typeof ds.header.description).toBe("string");
      expect(ds.header.seed).toBeDefined();
      expect(ds.labels.length).toBe(n);
      expect(ds.pixels.length).toBe(n * 64 * 64);
      expect(Math.max(...ds.labels)).toBeLessThan(10);
    }
    expect(test.header.n).toBeGreaterThanOrEqual(2000);
    expect(test.byteLength).toBeLessThan(10 * 1024 * 1024);
    // every class is represented in the test set
    expect(new Set(test.labels).size).toBe(10);
  });

  it("model.onnx: pixel_values [batch_size,1,64,64] -> logits [batch_size,10], ≤ 15 MB, >= 95% recorded", async () => {
    const bytes = readFileSync(join(DIR, "model.onnx"));
    expect(bytes.byteLength).toBeLessThanOrEqual(15 * 1024 * 1024);
    expect(metrics.test.accuracy).toBeGreaterThanOrEqual(0.95);
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["cpu"] });
    try {
      expect(session.inputNames).toEqual(["pixel_values"]);
      expect(session.outputNames).toEqual(["logits"]);
    } finally {
      await session.release();
    }
  });

  it("onnxruntime-node reproduces torch on the sample set and the first 256 test examples", async () => {
    const session = await ort.InferenceSession.create(join(DIR, "model.onnx"), { executionProviders: ["cpu"] });
    try {
      const s = await predict(session, sample, 0, sample.header.n);
      const sCorrect = s.pred.filter((p, i) => p === sample.labels[i]).length;
      expect(s.pred).toEqual(metrics.sample_predictions);
      expect(sCorrect).toBe(metrics.sample_correct);
      let maxErr = 0;
      metrics.sample_logits.flat().forEach((v, i) => (maxErr = Math.max(maxErr, Math.abs(v - s.logits[i]!))));
      expect(maxErr).toBeLessThan(1e-3);

      const t = await predict(session, test, 0, 256);
      const tCorrect = t.pred.filter((p, i) => p === test.labels[i]).length;
      expect(t.pred).toEqual(metrics.first256_predictions);
      expect(tCorrect).toBe(metrics.first256_correct);
      console.info(
        `digits: sample ${sCorrect}/${sample.header.n}, first 256 test ${tCorrect}/256 (torch: ${metrics.first256_correct}); ` +
          `sample logits max abs err vs torch ${maxErr.toExponential(2)}`,
      );
    } finally {
      await session.release();
    }
  });
});
