/**
 * The tables of docs/results.md (and the README's excerpt), on the shipped digits model, all measured
 * in one run:
 *
 *  1. schedules: for each schedule, tokens removed, test accuracy (absolute and relative to dense),
 *     measured ORT-CPU speedup at batch 32, FLOPs-ideal speedup and their ratio;
 *  2. criteria: every criterion prunec compiles (`CRITERIA` in passes/registry.ts) at the same budget,
 *     one stage `after layer 1 keep 25% by X` (16 of 64 patches + CLS), plus a few at layer 2. The
 *     latency benchmark (dense + every row, side by side in alternating blocks) is repeated `--reps`
 *     times, each with the rows in a rotated order; the table gives the median speedup over the
 *     repetitions and their min–max.
 *
 *   npx tsx scripts/schedules.ts [--runs 20] [--reps 5] [--write docs/results.md]
 *
 * With --write, only the generated sections of the file (between `<!-- generated:NAME -->` and
 * `<!-- /generated:NAME -->`) are replaced; prose outside them is kept. Missing sections are appended.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { compile } from "../src/compile.js";
import { parseDataset, type Dataset } from "../src/data/prds.js";
import { evaluate } from "../src/cli/evaluate.js";
import { benchmark, type BenchResult } from "../src/cli/benchmark.js";
import { CRITERIA } from "../passes/registry.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const arg = (k: string) => (args.includes(k) ? args[args.indexOf(k) + 1] : undefined);
const runs = Number(arg("--runs") ?? 20);
const reps = Number(arg("--reps") ?? 5);
const out = arg("--write");
/** Evaluation batch (accuracy does not depend on it: each example gets its batch-1 result). */
const EVAL_BATCH = 32;
const BENCH_BATCH = 32;

export const SCHEDULES: { name: string; spec: string }[] = [
  { name: "cls-attn 25% after layer 2", spec: "after layer 2 keep 25% by cls-attn" },
  { name: "cls-attn 50% after layer 1, 50% after layer 3", spec: "after layer 1 keep 50% by cls-attn\nafter layer 3 keep 50% by cls-attn" },
  { name: "cls-attn 25% after layer 3", spec: "after layer 3 keep 25% by cls-attn" },
  { name: "cls-attn 25% after layer 1", spec: "after layer 1 keep 25% by cls-attn" },
  { name: "cls-attn 50% after layer 2, 50% after layer 3", spec: "after layer 2 keep 50% by cls-attn\nafter layer 3 keep 50% by cls-attn" },
  // Other criteria at the same budget as the best schedule (25% of patches from layer 2 on).
  { name: "global-attn 25% after layer 1", spec: "after layer 1 keep 25% by global-attn" },
  { name: "norm 25% after layer 1", spec: "after layer 1 keep 25% by norm" },
  { name: "random 25% after layer 1", spec: "after layer 1 keep 25% by random(seed: 0)" },
  { name: "uniform 25% after layer 1", spec: "after layer 1 keep 25% by uniform" },
];

/**
 * Every compiled criterion at one budget: `after layer 1 keep 25%` keeps 16 of the 64 patches (for
 * spatial-rows, 2 of the 8 grid rows: the same 16 tokens). hiprune's default alpha 0.1 gives
 * n_a = round(16·0.1/5) = 0 anchors at this budget (then it ranks by layer 1's global attention alone),
 * so it is listed with the default and with alpha 0.5 (n_a = 2 anchors, up to 8 buffers).
 */
export const CRITERION_SPECS: string[] = [
  "cls-attn",
  "global-attn",
  "cls-attn-ensemble(layers: 0..1)",
  "hiprune(object_layer: 0)",
  "hiprune(object_layer: 0, alpha: 0.5)",
  "fopru",
  "spatial-rows",
  "pagerank",
  "flowcut",
  "norm",
  "random(seed: 0)",
  "uniform",
].map((c) => `after layer 1 keep 25% by ${c}`);

/** The layered criteria one layer deeper (same kept count, layers 3-5 only), with cls-attn for reference. */
export const DEEPER_SPECS: string[] = [
  "cls-attn",
  "cls-attn-ensemble(layers: 0..2)",
  "hiprune(object_layer: 0, alpha: 0.5)",
  "flowcut",
].map((c) => `after layer 2 keep 25% by ${c}`);

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

async function schedulesTable(model: Uint8Array, data: Dataset, denseAcc: number): Promise<string> {
  const bench = await benchmark(model, "digits", SCHEDULES.map((s) => ({ name: s.name, text: s.spec })), { batch: BENCH_BATCH, runs });
  const patches = 64;
  const lines = [
    `Dense: ${pct(denseAcc)} top-1 on ${data.header.n} test images; ORT CPU batch ${BENCH_BATCH} median ${bench.rows[0]!.medianMs.toFixed(1)} ms (${bench.runs} runs).`,
    "",
    "| schedule | patch tokens removed by layer 3 | accuracy | vs dense | measured speedup (b32) | FLOPs-ideal | ratio |",
    "|---|---|---|---|---|---|---|",
  ];
  for (let i = 0; i < SCHEDULES.length; i++) {
    const s = SCHEDULES[i]!;
    const pruned = compile(model, s.spec).model;
    const acc = await evaluate(pruned, s.name, data, { ep: "cpu", batch: EVAL_BATCH });
    const row = bench.rows[i + 1]!;
    // Patch tokens (all but CLS) removed by the end of layer 3, i.e. that layer 4 no longer sees.
    const removedBy3 = 100 * (1 - (row.tokensPerLayer[4]! - 1) / patches);
    lines.push(
      `| \`${s.spec.replace(/\n/g, "; ")}\` | ${removedBy3.toFixed(0)}% | ${pct(acc.accuracy)} | ${((100 * acc.accuracy) / denseAcc).toFixed(1)}% | ${row.speedup.toFixed(2)}× | ${row.idealSpeedup.toFixed(2)}× | ${row.ratio.toFixed(2)} |`,
    );
    console.error(`done ${s.name}`);
  }
  return lines.join("\n");
}

async function criteriaTable(model: Uint8Array, data: Dataset, denseAcc: number): Promise<string> {
  const specs = [...CRITERION_SPECS, ...DEEPER_SPECS];
  const covered = new Set(specs.map((s) => /by ([a-z-]+)/.exec(s)![1]!));
  const missing = CRITERIA.map((c) => c.name).filter((n) => !covered.has(n));
  if (missing.length) console.error(`warning: criteria not in the table: ${missing.join(", ")}`);

  const accuracy: number[] = [];
  for (const spec of specs) {
    const acc = await evaluate(compile(model, spec).model, spec, data, { ep: "cpu", batch: EVAL_BATCH });
    accuracy.push(acc.accuracy);
    console.error(`evaluated ${spec}: ${pct(acc.accuracy)}`);
  }
  // Each repetition rotates the order in which the pruned models run within a block (dense stays
  // first), so that no row always runs in the same position; rows are mapped back by spec.
  const benches: BenchResult[] = [];
  const step = Math.ceil(specs.length / reps);
  for (let r = 0; r < reps; r++) {
    const order = specs.map((_, i) => specs[(i + r * step) % specs.length]!);
    const b = await benchmark(model, "digits", order.map((s) => ({ name: s, text: s })), { batch: BENCH_BATCH, runs });
    benches.push({ ...b, rows: [b.rows[0]!, ...specs.map((s) => b.rows.find((row) => row.spec === s)!)] });
    console.error(`bench repetition ${r + 1}/${reps} done`);
  }
  const denseMs = benches.map((b) => b.rows[0]!.medianMs);
  const lines = [
    `Dense: ${pct(denseAcc)} top-1; ORT CPU batch ${BENCH_BATCH} median ${median(denseMs).toFixed(1)} ms (${benches.map((b) => b.rows[0]!.medianMs.toFixed(1)).join(", ")} in the ${reps} repetitions of ${benches[0]!.runs} runs per model).`,
    "",
    `| spec | tokens per layer | accuracy | vs dense | measured speedup (b32), median [min–max] of ${reps} | FLOPs-ideal | ratio |`,
    "|---|---|---|---|---|---|---|",
  ];
  for (let i = 0; i < specs.length; i++) {
    const rows = benches.map((b) => b.rows[i + 1]!);
    const sp = rows.map((r) => r.speedup);
    const speedup = median(sp);
    const ideal = rows[0]!.idealSpeedup;
    lines.push(
      `| \`${specs[i]}\` | ${rows[0]!.tokensPerLayer.join(" ")} | ${pct(accuracy[i]!)} | ${((100 * accuracy[i]!) / denseAcc).toFixed(1)}% | ${speedup.toFixed(2)}× [${Math.min(...sp).toFixed(2)}–${Math.max(...sp).toFixed(2)}] | ${ideal.toFixed(2)}× | ${(speedup / ideal).toFixed(2)} |`,
    );
  }
  return lines.join("\n");
}

/** Replaces `<!-- generated:NAME -->…<!-- /generated:NAME -->` in `doc`, or appends the section. */
function replaceSection(doc: string, name: string, body: string): string {
  const open = `<!-- generated:${name} -->`;
  const close = `<!-- /generated:${name} -->`;
  const block = `${open}\n${body}\n${close}`;
  const a = doc.indexOf(open);
  const b = doc.indexOf(close);
  if (a >= 0 && b > a) return doc.slice(0, a) + block + doc.slice(b + close.length);
  return `${doc.trimEnd()}\n\n${block}\n`;
}

async function main(): Promise<void> {
  const model = readFileSync(join(root, "examples", "digits", "model.onnx"));
  const data = parseDataset(readFileSync(join(root, "examples", "digits", "test.prds")), "test.prds");
  const dense = await evaluate(model, "digits", data, { ep: "cpu", batch: EVAL_BATCH });
  const schedules = await schedulesTable(model, data, dense.accuracy);
  console.log(schedules + "\n");
  const criteria = await criteriaTable(model, data, dense.accuracy);
  console.log(criteria);
  if (out) {
    const path = join(root, out);
    let doc = existsSync(path) ? readFileSync(path, "utf8") : "# Schedules and criteria on the shipped digits model\n";
    doc = replaceSection(doc, "schedules", schedules);
    doc = replaceSection(doc, "criteria", criteria);
    writeFileSync(path, doc.endsWith("\n") ? doc : doc + "\n");
  }
}

await main();
