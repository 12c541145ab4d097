/**
 * examples/recall: the trained decoder with a KV cache ("multi-query associative recall", made by
 * scripts/train_recall.py) and its datasets.
 *
 * Runs model.onnx on onnxruntime-node the way transformers.js feeds a decoder: prefill with an
 * empty past (past_key_values.N.key/value of length 0), left padding with position_ids =
 * max(cumsum(attention_mask) - 1, 0), decode steps fed the returned presents. Checks that the
 * greedy answers on the 8 sample prompts (batch 1 each, one left-padded batch, and through the cache:
 * prefill the context, decode `QUERY k`) are the ones torch recorded in sample.jsonl, that the
 * accuracy on the first 200 test prompts is within 1 point of metrics.json, and that prunec's
 * analysis (`inspectModel`) finds every layer's attention and residual stream.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { inspectModel } from "../src/inspect.js";
import { runNode, type Feeds, type OrtOutput } from "./helpers/ort.js";
import { RECALL_METRICS as metrics, RECALL_MODEL as MODEL, readRecall } from "./support/recall.js";

const M = metrics.settings.model;
const V = M.vocab;
const samples = readRecall("sample.jsonl");
const test = readRecall("test.jsonl");

type Past = Record<string, { data: Float32Array; dims: number[] }>;

function emptyPast(batch: number): Past {
  const past: Past = {};
  for (let l = 0; l < M.layers; l++)
    for (const kv of ["key", "value"])
      past[`past_key_values.${l}.${kv}`] = { data: new Float32Array(0), dims: [batch, M.kv_heads, 0, M.head_size] };
  return past;
}

/** The presents of a run as the next step's past. */
function pastOf(out: Record<string, OrtOutput>): Past {
  const past: Past = {};
  for (let l = 0; l < M.layers; l++)
    for (const kv of ["key", "value"]) {
      const t = out[`present.${l}.${kv}`]!;
      past[`past_key_values.${l}.${kv}`] = { data: t.data as Float32Array, dims: t.dims };
    }
  return past;
}

/** Feeds for new tokens `ids` [batch][seq] after `past`; `mask` covers past + new, `pos` the new tokens. */
function feeds(ids: number[][], mask: number[][], pos: number[][], past: Past): Feeds {
  const i64 = (rows: number[][]) => ({
    type: "int64" as const,
    dims: [rows.length, rows[0]!.length],
    data: BigInt64Array.from(rows.flat(), (v) => BigInt(v)),
  });
  const f: Feeds = { input_ids: i64(ids), attention_mask: i64(mask), position_ids: i64(pos) };
  for (const [name, t] of Object.entries(past)) f[name] = { type: "float32", dims: t.dims, data: t.data };
  return f;
}

/** A left-padded batch: PAD (0) before each prompt, mask 0 there, position_ids max(cumsum(mask) - 1, 0). */
function leftPadded(prompts: number[][]): { ids: number[][]; mask: number[][]; pos: number[][] } {
  const n = Math.max(...prompts.map((p) => p.length));
  const ids = prompts.map((p) => [...new Array<number>(n - p.length).fill(0), ...p]);
  const mask = prompts.map((p) => [...new Array<number>(n - p.length).fill(0), ...new Array<number>(p.length).fill(1)]);
  const pos = prompts.map((p) => [...new Array<number>(n - p.length).fill(0), ...p.map((_, j) => j)]);
  return { ids, mask, pos };
}

const ones = (n: number) => new Array<number>(n).fill(1);
const range = (a: number, b: number) => Array.from({ length: b - a }, (_, j) => a + j);

/** Last-position logits of every row of a [batch, seq, vocab] output. */
function lastRows(logits: OrtOutput): Float32Array[] {
  const [b, s, v] = logits.dims as [number, number, number];
  expect(v).toBe(V);
  const d = logits.data as Float32Array;
  return Array.from({ length: b }, (_, i) => d.slice((i * s + s - 1) * v, (i * s + s) * v));
}

/** Argmax (first index wins a tie). */
function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let j = 1; j < row.length; j++) if (row[j]! > row[best]!) best = j;
  return best;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let j = 0; j < a.length; j++) m = Math.max(m, Math.abs(a[j]! - b[j]!));
  return m;
}

/** Prefill prompts (equal lengths, no padding) with an empty past; last-position logits. */
async function prefill(prompts: number[][]): Promise<Float32Array[]> {
  const n = prompts[0]!.length;
  const out = await runNode(
    MODEL,
    feeds(
      prompts,
      prompts.map(() => ones(n)),
      prompts.map(() => range(0, n)),
      emptyPast(prompts.length),
    ),
    ["logits"],
  );
  return lastRows(out.logits!);
}

/** torch's logits are recorded with 5 decimals; onnxruntime differs from torch by about 1e-5. */
const LOGIT_TOL = 1e-3;

describe("examples/recall (trained decoder with a KV cache)", () => {
  it("the files are what the script writes: 8 samples with torch's answers, 1000 test prompts of 258 tokens", () => {
    expect(samples).toHaveLength(8);
    expect(samples.map((e) => e.prediction)).toEqual(metrics.sample_predictions);
    expect(new Set(samples.map((e) => e.prompt.length)).size).toBeGreaterThan(1); // the padded batch really pads
    expect(test.length).toBeGreaterThanOrEqual(metrics.first200_n);
    for (const e of [...samples, ...test]) {
      expect(e.prompt[0]).toBe(1); // BOS
      expect(e.prompt.length).toBe(e.context_len + 2);
      expect(e.prompt.at(-2)).toBe(2); // QUERY
      expect(e.prompt.at(-1)).toBe(e.prompt[e.key_pos]); // asks the key at key_pos ...
      expect(e.prompt[e.key_pos + 1]).toBe(e.answer); // ... whose value is the answer
    }
  });

  it("sample, batch 1 each: the greedy answers and logits are torch's", async () => {
    for (const e of samples) {
      const [row] = await prefill([e.prompt]);
      expect(argmax(row!)).toBe(e.prediction);
      expect(maxDiff(row!, e.logits!)).toBeLessThan(LOGIT_TOL);
    }
  });

  it("sample, one left-padded batch of all 8: every example gets its batch-1 answer and logits", async () => {
    const { ids, mask, pos } = leftPadded(samples.map((e) => e.prompt));
    const out = await runNode(MODEL, feeds(ids, mask, pos, emptyPast(samples.length)), ["logits"]);
    const rows = lastRows(out.logits!);
    rows.forEach((row, i) => {
      expect(argmax(row)).toBe(samples[i]!.prediction);
      expect(maxDiff(row, samples[i]!.logits!)).toBeLessThan(LOGIT_TOL);
    });
  });

  it("sample, through the cache: prefill the context, decode QUERY then k; present grows by one per step", async () => {
    for (const e of samples) {
      const c = e.context_len;
      const ctx = e.prompt.slice(0, c);
      let out = await runNode(MODEL, feeds([ctx], [ones(c)], [range(0, c)], emptyPast(1)));
      expect(out["present.0.key"]!.dims).toEqual([1, M.kv_heads, c, M.head_size]);
      for (let t = c; t < c + 2; t++) {
        out = await runNode(MODEL, feeds([[e.prompt[t]!]], [ones(t + 1)], [[t]], pastOf(out)));
        expect(out[`present.${M.layers - 1}.value`]!.dims).toEqual([1, M.kv_heads, t + 1, M.head_size]);
      }
      const [row] = lastRows(out.logits!);
      expect(argmax(row!)).toBe(e.prediction);
      expect(maxDiff(row!, e.logits!)).toBeLessThan(LOGIT_TOL);
    }
  });

  it("first 200 test prompts: accuracy within 1 point of metrics.json (torch)", async () => {
    const n = metrics.first200_n;
    const pred: number[] = [];
    for (let i = 0; i < n; i += 50) {
      const rows = await prefill(test.slice(i, Math.min(n, i + 50)).map((e) => e.prompt));
      for (const r of rows) pred.push(argmax(r));
    }
    const correct = pred.filter((p, i) => p === test[i]!.answer).length;
    expect(Math.abs(correct / n - metrics.first200_accuracy)).toBeLessThanOrEqual(0.01);
    // Not just the count: the predictions are torch's (the script records the smallest top-2 gap).
    const same = pred.filter((p, i) => p === metrics.first200_predictions[i]).length;
    expect(same).toBeGreaterThanOrEqual(n - 2);
  });

  it("prunec inspect: every layer is a matmul-softmax attention with a residual stream", () => {
    const report = inspectModel(readFileSync(MODEL), MODEL);
    expect(report.layerCount).toBe(M.layers);
    expect(report.hidden).toBe(M.hidden);
    expect(report.tokens).toBe("sequence_length");
    expect(report.tokenAxis).toBe(1);
    expect(report.batchAxis).toBe(0);
    expect(report.unproven).toBeNull();
    expect(report.cls.present).toBe(false);
    for (const l of report.layers) {
      expect(l.attention).toBe("matmul-softmax");
      expect(l.heads).toBe(M.heads);
      expect(l.headSize).toBe(M.head_size);
      expect(l.residual).not.toBeNull();
      // A stream stage above a plain-attention (Concat) cache is refused with the reason (its
      // later calls would read a shortened cache); after the last layer one can run.
      for (const c of ["last-token-attn", "norm"]) {
        const found = l.criteria.find((x) => x.name === c);
        if (l.index === M.layers - 1) expect(found?.ok).toBe(true);
        else {
          expect(found?.ok).toBe(false);
          expect(found?.why).toContain(`layer ${l.index + 1} keeps a KV cache behind plain attention`);
        }
      }
    }
    // One stream: each layer's residual input is the previous layer's output.
    for (let i = 1; i < report.layers.length; i++)
      expect(report.layers[i]!.residual!.input).toBe(report.layers[i - 1]!.residual!.output);
  });
});
