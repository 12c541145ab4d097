/**
 * The KV-eviction table of docs/results.md, on the trained recall decoder (examples/recall):
 * accuracy on its held-out test set for dense and each press at 10%, 25% and 50% of the cache,
 * the KV bytes a prefill leaves, and the decode-step latency over them, side by side in one run.
 *
 * Protocol (kvpress's "question-agnostic" compression): prefill the 256-token context, evict at
 * that call, then decode `QUERY` and the key; the answer is the argmax of the last logits. Every
 * test prompt has the same context length, so batches need no padding (exact per example).
 *
 *   npx tsx bench/recall-kv.ts [--limit 1000] [--batch 50] [--runs 15] [--markdown]
 */
import "./no-telemetry.js";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import * as ort from "onnxruntime-node";
import { compile } from "../src/compile.js";
import { RECALL, RECALL_MODEL as MODEL, readRecall, type RecallExample as Example } from "../test/support/recall.js";
import { cacheBytes, emptyPast, emptyStates, int64, pastOf } from "./feeds.js";

/** The presses of the table, with settings scaled to a 256-token context (docs/results.md says why). */
export const RECALL_PRESSES: readonly { label: string; by: string }[] = [
  { label: "StreamingLLM", by: "streaming(sinks: 4)" },
  { label: "H2O", by: "h2o(recent: 8)" },
  { label: "SnapKV", by: "snapkv(window: 8, kernel: 5)" },
  { label: "A2SF", by: "a2sf(forget: 0.9, recent: 8)" },
  { label: "ExpectedAttention", by: "expected-attn" },
  { label: "Knorm", by: "knorm" },
  { label: "random", by: "random(seed: 0)" },
];
export const RECALL_BUDGETS: readonly number[] = [10, 25, 50];
/** Decode-time eviction (`during decode keep kv C tokens`) at the same entry counts: int(256·P/100). */
export const RECALL_DECODE_PRESSES: readonly { label: string; by: string }[] = [
  { label: "H2O, during decode", by: "h2o(recent: 8)" },
  { label: "A2SF, during decode", by: "a2sf(forget: 0.9, recent: 8)" },
  { label: "SpAtten cascade, during decode", by: "spatten" },
];

const QUERY = 2;

function readTest(limit: number): Example[] {
  return readRecall("test.jsonl").slice(0, limit);
}

/** int64 [rows, columns]. */
const i64 = (rows: number[][]) => int64(rows.flat(), [rows.length, rows[0]!.length]);

/** Prefill `contexts` (equal lengths), then decode each token of `tail[b]` one at a time; the last logits' argmax per row. */
async function answer(
  session: ort.InferenceSession,
  contexts: number[][],
  tails: number[][],
): Promise<{ predictions: number[]; bytes: number }> {
  const batch = contexts.length;
  const n = contexts[0]!.length;
  let out = await session.run({
    input_ids: i64(contexts),
    attention_mask: i64(contexts.map(() => new Array<number>(n).fill(1))),
    position_ids: i64(contexts.map(() => Array.from({ length: n }, (_, j) => j))),
    ...emptyPast(RECALL, batch),
    ...emptyStates(session, batch),
  });
  const bytes = keyValueBytes(out);
  for (let s = 0; s < tails[0]!.length; s++) {
    out = await session.run({
      input_ids: i64(tails.map((t) => [t[s]!])),
      // The host counts the dense cache: its mask and positions are the uncompressed ones.
      attention_mask: i64(contexts.map(() => new Array<number>(n + s + 1).fill(1))),
      position_ids: i64(contexts.map(() => [n + s])),
      ...pastOf(out),
    });
  }
  const logits = out["logits"] as ort.Tensor;
  const [b, seq, v] = logits.dims as [number, number, number];
  const d = logits.data as Float32Array;
  const predictions = Array.from({ length: b }, (_, i) => {
    const row = d.subarray((i * seq + seq - 1) * v, (i * seq + seq) * v);
    let best = 0;
    for (let j = 1; j < v; j++) if (row[j]! > row[best]!) best = j;
    return best;
  });
  return { predictions, bytes };
}

/** Bytes of a run's present keys and values (a decode-time stage's carried scores are counted apart). */
function keyValueBytes(out: ort.InferenceSession.OnnxValueMapType): number {
  return cacheBytes(Object.fromEntries(Object.entries(out).filter(([n]) => /\.(key|value)$/.test(n))));
}

export interface RecallRow {
  label: string;
  spec: string;
  budget?: number;
  correct: number;
  total: number;
  /** KV-cache bytes after the prefill, per example. */
  bytesPerExample: number;
}

/** Accuracy of one model (dense bytes or a compiled spec) on the first `limit` test prompts. */
export async function recallAccuracy(
  modelBytes: Uint8Array,
  examples: readonly Example[],
  batch: number,
): Promise<{ correct: number; bytesPerExample: number }> {
  const session = await ort.InferenceSession.create(modelBytes, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  let correct = 0;
  let bytes = 0;
  for (let i = 0; i < examples.length; i += batch) {
    const chunk = examples.slice(i, i + batch);
    const { predictions, bytes: b } = await answer(
      session,
      chunk.map((e) => e.prompt.slice(0, e.context_len)),
      chunk.map((e) => e.prompt.slice(e.context_len)),
    );
    bytes = b / chunk.length;
    predictions.forEach((p, j) => {
      if (p === chunk[j]!.answer) correct++;
    });
  }
  await session.release();
  return { correct, bytesPerExample: bytes };
}

function compiled(spec: string): Uint8Array {
  const r = compile(readFileSync(MODEL), spec);
  const total = r.parts.reduce((s, p) => s + p.byteLength, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of r.parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** Median decode-step latency (batch 1) after prefilling one context, dense vs each spec, alternating blocks. */
export async function decodeLatency(
  specs: readonly string[],
  runs: number,
  context: number[],
): Promise<Map<string, number>> {
  const models = new Map<string, Uint8Array>([["dense", new Uint8Array(readFileSync(MODEL))]]);
  for (const s of specs) models.set(s, compiled(s));
  const sessions = new Map<string, { session: ort.InferenceSession; past: Record<string, ort.Tensor> }>();
  const n = context.length;
  for (const [name, bytes] of models) {
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1, interOpNumThreads: 1 });
    const out = await session.run({
      input_ids: i64([context]),
      attention_mask: i64([new Array<number>(n).fill(1)]),
      position_ids: i64([Array.from({ length: n }, (_, j) => j)]),
      ...emptyPast(RECALL),
    });
    sessions.set(name, { session, past: pastOf(out) });
  }
  const times = new Map<string, number[]>([...models.keys()].map((k) => [k, []]));
  const step = {
    input_ids: i64([[QUERY]]),
    attention_mask: i64([new Array<number>(n + 1).fill(1)]),
    position_ids: i64([[n]]),
  };
  for (let r = 0; r < runs; r++)
    for (const [name, { session, past }] of sessions) {
      const t = performance.now();
      for (let k = 0; k < 20; k++) await session.run({ ...step, ...past });
      times.get(name)!.push((performance.now() - t) / 20);
    }
  for (const { session } of sessions.values()) await session.release();
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
  return new Map([...times].map(([k, v]) => [k, median(v)]));
}

export async function benchRecallKv(options: {
  limit: number;
  batch: number;
  runs: number;
  markdown: boolean;
}): Promise<void> {
  const examples = readTest(options.limit);
  const rows: RecallRow[] = [];
  const dense = await recallAccuracy(new Uint8Array(readFileSync(MODEL)), examples, options.batch);
  rows.push({
    label: "dense",
    spec: "",
    correct: dense.correct,
    total: examples.length,
    bytesPerExample: dense.bytesPerExample,
  });
  const context = examples[0]!.context_len;
  // Prefill-time presses at P% of the cache; decode-time ones holding the same count, int(context·P/100).
  const specs = [
    ...RECALL_PRESSES.map((p) => ({ label: p.label, spec: (budget: number) => `keep kv ${budget}% by ${p.by}` })),
    ...RECALL_DECODE_PRESSES.map((p) => ({
      label: p.label,
      spec: (budget: number) => `during decode keep kv ${Math.trunc((context * budget) / 100)} tokens by ${p.by}`,
    })),
  ];
  for (const p of specs)
    for (const budget of RECALL_BUDGETS) {
      const spec = p.spec(budget);
      const r = await recallAccuracy(compiled(spec), examples, options.batch);
      rows.push({
        label: p.label,
        spec,
        budget,
        correct: r.correct,
        total: examples.length,
        bytesPerExample: r.bytesPerExample,
      });
    }
  const latency = await decodeLatency(
    RECALL_BUDGETS.map((b) => `keep kv ${b}% by knorm`),
    options.runs,
    examples[0]!.prompt.slice(0, examples[0]!.context_len),
  );
  const pct = (r: RecallRow) => `${((100 * r.correct) / r.total).toFixed(1)}%`;
  const byLabel = new Map<string, RecallRow[]>();
  for (const r of rows) byLabel.set(r.label, [...(byLabel.get(r.label) ?? []), r]);
  console.log(
    `recall decoder, ${examples.length} test prompts, question-agnostic (prefill the context, evict, decode QUERY k):`,
  );
  if (options.markdown) {
    console.log(`| press | spec | ${RECALL_BUDGETS.map((b) => `${b}% of the cache`).join(" | ")} |`);
    console.log(`|---|---|${RECALL_BUDGETS.map(() => "---").join("|")}|`);
    console.log(`| dense | | ${pct(rows[0]!)} (100%) | | |`);
    for (const p of RECALL_PRESSES) {
      const rs = byLabel.get(p.label)!;
      console.log(`| ${p.label} | \`${p.by}\` | ${rs.map(pct).join(" | ")} |`);
    }
    for (const p of RECALL_DECODE_PRESSES) {
      const rs = byLabel.get(p.label)!;
      console.log(`| ${p.label} | \`during decode keep kv C tokens by ${p.by}\` | ${rs.map(pct).join(" | ")} |`);
    }
  } else
    for (const r of rows)
      console.log(
        `  ${r.label.padEnd(12)} ${r.budget !== undefined ? `${r.budget}%`.padStart(4) : "    "} ${pct(r).padStart(6)}  KV ${(r.bytesPerExample / 1024).toFixed(1)} KiB/example`,
      );
  const d = latency.get("dense")!;
  console.log(
    `decode step after a ${examples[0]!.context_len}-token prefill (batch 1, medians of ${options.runs} blocks of 20):`,
  );
  for (const [name, ms] of latency) {
    const bytes = rows.find((r) => r.spec === name)?.bytesPerExample ?? rows[0]!.bytesPerExample;
    console.log(
      `  ${name.padEnd(24)} ${ms.toFixed(3)} ms (${(d / ms).toFixed(2)}× dense's speed), KV ${(bytes / 1024).toFixed(1)} KiB`,
    );
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const num = (flag: string, d: number) => (args.includes(flag) ? Number(args[args.indexOf(flag) + 1]) : d);
  await benchRecallKv({
    limit: num("--limit", 1000),
    batch: num("--batch", 50),
    runs: num("--runs", 15),
    markdown: args.includes("--markdown"),
  });
}
