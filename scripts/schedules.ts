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
 *     repetitions and their min–max;
 *  3. capabilities: the other selection capabilities (diversity and k-center in both lowerings, ToMe
 *     merging, `with mask`, `with recycle`, `keep mass`) next to cls-attn at the same budget, with the
 *     graph size prunec adds; timed on the real test batches (the adaptive row's count depends on the
 *     input), plus the adaptive row at batch 1 (no padding);
 *  4. heads: SpAtten's cascade head pruning (`keep heads … by spatten`), alone and after a token
 *     stage: accuracy, measured speedup and the FLOPs-ideal one (attention's Q·Kᵀ and P·V scale
 *     with the heads kept; the projections do not: passes/head-stage.ts gathers activations).
 *
 *  5. restore: `with restore` on the per-patch model of examples/digit-masks (its own test set):
 *     mIoU dense vs pruned with every dropped patch restored, measured speedup and FLOPs-ideal.
 *
 *   npx tsx scripts/schedules.ts [--runs 20] [--reps 5] [--only schedules,criteria,capabilities] [--write docs/results.md]
 *
 * With --write, only the generated sections of the file (between `<!-- generated:NAME -->` and
 * `<!-- /generated:NAME -->`) are replaced; prose outside them is kept. Missing sections are appended.
 * --only computes (and writes) just the named sections.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { compile, type CompileOptions, type CompileResult } from "../src/compile.js";
import { batchInput, parseDataset, type Dataset } from "../src/data/prds.js";
import { evaluate } from "../src/cli/evaluate.js";
import { benchmark, BLOCK, type BenchResult } from "../src/cli/benchmark.js";
import { openSession, type FloatInput, type Session } from "../src/cli/runtime.js";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import type { NodeProto } from "../src/onnx/gen/onnx_pb.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { layerCosts, outsideFlops, totalFlops } from "../src/analysis/flops.js";
import { CRITERIA } from "../passes/registry.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const arg = (k: string) => (args.includes(k) ? args[args.indexOf(k) + 1] : undefined);
const runs = Number(arg("--runs") ?? 20);
const reps = Number(arg("--reps") ?? 5);
const out = arg("--write");
const SECTIONS = ["schedules", "criteria", "capabilities", "heads", "restore"] as const;
const only = arg("--only")?.split(",") ?? [...SECTIONS];
for (const o of only)
  if (!(SECTIONS as readonly string[]).includes(o))
    throw new Error(`--only: unknown section '${o}' (${SECTIONS.join(", ")})`);
/** Evaluation batch (accuracy does not depend on it: each example gets its batch-1 result). */
const EVAL_BATCH = 32;
const BENCH_BATCH = 32;

export const SCHEDULES: { name: string; spec: string }[] = [
  { name: "cls-attn 25% after layer 2", spec: "after layer 2 keep 25% by cls-attn" },
  {
    name: "cls-attn 50% after layer 1, 50% after layer 3",
    spec: "after layer 1 keep 50% by cls-attn\nafter layer 3 keep 50% by cls-attn",
  },
  { name: "cls-attn 25% after layer 3", spec: "after layer 3 keep 25% by cls-attn" },
  { name: "cls-attn 25% after layer 1", spec: "after layer 1 keep 25% by cls-attn" },
  {
    name: "cls-attn 50% after layer 2, 50% after layer 3",
    spec: "after layer 2 keep 50% by cls-attn\nafter layer 3 keep 50% by cls-attn",
  },
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

/**
 * `keep mass P%` with P chosen so that the mean kept count on the test set is close to the fixed rows'
 * 16 patches + CLS (P = 86: mean 16.9 tokens with CLS, per-example 3–46; cls-attn is concentrated on a
 * few patches, so P = 50 keeps only 3.9). The table prints the measured mean and range.
 */
const MASS = 86;

/**
 * The other selection capabilities at the criteria table's budget (`after layer 1`, 16 of 64 patches
 * + CLS), with cls-attn as the reference. diversity and k-center compile to an ONNX Loop for the cpu
 * target and unrolled for `target: "webgpu"` (still runnable on ORT CPU). ToMe merges at most half the
 * tokens per stage, so the merge row halves twice: 65 → 33 after layer 1, → 17 after layer 2.
 */
export const CAPABILITY_ROWS: { spec: string; target?: "webgpu"; lowering: string }[] = [
  { spec: "after layer 1 keep 25% by cls-attn", lowering: "TopK + Gather" },
  { spec: "after layer 1 keep 25% by diversity", lowering: "Loop" },
  { spec: "after layer 1 keep 25% by diversity", target: "webgpu", lowering: "unrolled (target webgpu)" },
  { spec: "after layer 1 keep 25% by k-center", lowering: "Loop" },
  { spec: "after layer 1 keep 25% by k-center", target: "webgpu", lowering: "unrolled (target webgpu)" },
  {
    spec: "after layer 1 merge 50% by similarity\nafter layer 2 merge 50% by similarity",
    lowering: "bipartite matching + one-hot MatMul",
  },
  { spec: "after layer 1 keep 25% by cls-attn with mask", lowering: "key bias, nothing removed" },
  { spec: "after layer 1 keep 25% by cls-attn with recycle", lowering: "TopK + Gather + recycled token" },
  { spec: `after layer 1 keep mass ${MASS}% by cls-attn`, lowering: "adaptive count, padded per batch" },
];

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
/** A byte difference with its sign: the fold below a stage can remove more than the stage adds. */
const signed = (n: number) => `${n < 0 ? "−" : "+"}${Math.abs(n).toLocaleString("en-US")}`;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const vsDense = (acc: number, denseAcc: number) => `${((100 * acc) / denseAcc).toFixed(1)}%`;
/** `median× [min–max]` of per-repetition speedups. */
const spread = (xs: number[]) =>
  `${median(xs).toFixed(2)}× [${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}]`;
/** Repetition r's order of n rows: rotated by r·⌈n/reps⌉, so that no row always runs in the same position. */
const rotation = (n: number, r: number) => Array.from({ length: n }, (_, i) => (i + r * Math.ceil(n / reps)) % n);

async function schedulesTable(model: Uint8Array, data: Dataset, denseAcc: number): Promise<string> {
  const bench = await benchmark(
    model,
    "digits",
    SCHEDULES.map((s) => ({ name: s.name, text: s.spec })),
    { batch: BENCH_BATCH, runs },
  );
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
      `| \`${s.spec.replace(/\n/g, "; ")}\` | ${removedBy3.toFixed(0)}% | ${pct(acc.accuracy)} | ${vsDense(acc.accuracy, denseAcc)} | ${row.speedup.toFixed(2)}× | ${row.idealSpeedup.toFixed(2)}× | ${row.ratio.toFixed(2)} |`,
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
  for (let r = 0; r < reps; r++) {
    const order = rotation(specs.length, r).map((i) => specs[i]!);
    const b = await benchmark(
      model,
      "digits",
      order.map((s) => ({ name: s, text: s })),
      { batch: BENCH_BATCH, runs },
    );
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
    const ideal = rows[0]!.idealSpeedup;
    lines.push(
      `| \`${specs[i]}\` | ${rows[0]!.tokensPerLayer.join(" ")} | ${pct(accuracy[i]!)} | ${vsDense(accuracy[i]!, denseAcc)} | ${spread(sp)} | ${ideal.toFixed(2)}× | ${(median(sp) / ideal).toFixed(2)} |`,
    );
  }
  return lines.join("\n");
}

/** FLOPs per example of `model` (src/analysis/flops.ts) for given tokens per layer, and the dense tokens per layer. */
function flopsModel(model: Uint8Array): { flops: (tokens: number[]) => number; dense: number[] } {
  const graph = new Graph(decodeModel(model, "digits").graph!);
  const info = analyzeTransformer(graph, "digits");
  const costs = layerCosts(graph, info);
  const fixed = outsideFlops(graph, info);
  return { flops: (tokens) => fixed + totalFlops(costs, tokens), dense: info.layers.map(() => Number(info.tokens)) };
}

/** Tokens per layer of a compiled model, with `count` for the layers whose count is per-example (adaptive). */
const tokensWith = (r: CompileResult, count: number) =>
  r.report.tokensPerLayer.map((t) => (typeof t.pruned === "number" ? t.pruned : count));

/** Nodes inside subgraph attributes (Loop / If / Scan bodies), recursively. */
function subgraphNodes(nodes: readonly NodeProto[]): number {
  let n = 0;
  for (const node of nodes)
    for (const a of node.attribute)
      for (const g of [...(a.g ? [a.g] : []), ...a.graphs]) n += g.node.length + subgraphNodes(g.node);
  return n;
}

/**
 * Median latency (ms) of each model, side by side with the protocol of src/cli/benchmark.ts
 * (alternating blocks of BLOCK runs, each block's first run dropped), but for already-compiled models
 * (benchmark() compiles spec text for the cpu target) and on real inputs: run i of every model uses
 * feeds[(offset + i) % feeds.length], so adaptive models see the test set's own counts.
 */
async function sideBySide(models: Uint8Array[], feeds: FloatInput[], runs: number, offset: number): Promise<number[]> {
  const sessions: Session[] = [];
  try {
    // Idle pool threads sleep, as in benchmark(): a waiting session's spinning threads would take the cores of the one timed.
    for (const m of models) sessions.push(await openSession(m, "cpu", { spinning: false }));
    const feed = (i: number) => ({ [sessions[0]!.inputNames[0]!]: feeds[(offset + i) % feeds.length]! });
    for (const s of sessions) for (let i = 0; i < 3; i++) await s.run(feed(i));
    const times = sessions.map((): number[] => []);
    for (let j = 0; j < Math.ceil(runs / BLOCK); j++) {
      for (let k = 0; k < sessions.length; k++) {
        await sessions[k]!.run(feed(j * BLOCK));
        for (let i = 0; i < BLOCK; i++) {
          const t = performance.now();
          await sessions[k]!.run(feed(j * BLOCK + i));
          times[k]!.push(performance.now() - t);
        }
      }
    }
    return times.map(median);
  } finally {
    for (const s of sessions) await s.release();
  }
}

/** `reps` side-by-side repetitions (rotated row order, dense first): dense ms per repetition, speedups per row and repetition. */
async function repeatedSpeedups(
  dense: Uint8Array,
  models: Uint8Array[],
  feeds: FloatInput[],
  runs: number,
): Promise<{ denseMs: number[]; speedups: number[][] }> {
  const denseMs: number[] = [];
  const speedups = models.map((): number[] => []);
  for (let r = 0; r < reps; r++) {
    const order = rotation(models.length, r);
    const ms = await sideBySide([dense, ...order.map((i) => models[i]!)], feeds, runs, r * runs);
    denseMs.push(ms[0]!);
    order.forEach((i, k) => speedups[i]!.push(ms[0]! / ms[k + 1]!));
    console.error(`capabilities bench repetition ${r + 1}/${reps} done (${feeds[0]!.dims[0]} per batch)`);
  }
  return { denseMs, speedups };
}

/** Tokens each example keeps at stage 0 of an adaptive spec (CLS included), from `prunec.stage0.counts`. */
async function adaptiveCounts(model: Uint8Array, spec: string, data: Dataset): Promise<number[]> {
  const session = await openSession(compile(model, spec, { exposeIndices: true }).model, "cpu");
  try {
    const counts: number[] = [];
    for (let from = 0; from < data.header.n; from += EVAL_BATCH) {
      const res = await session.run(
        { [session.inputNames[0]!]: batchInput(data, from, Math.min(data.header.n, from + EVAL_BATCH)) },
        ["prunec.stage0.counts"],
      );
      counts.push(...Array.from(res["prunec.stage0.counts"]!.data as BigInt64Array, Number));
    }
    return counts;
  } finally {
    await session.release();
  }
}

async function capabilitiesTable(model: Uint8Array, data: Dataset, denseAcc: number): Promise<string> {
  const { flops, dense } = flopsModel(model);
  const denseFlops = flops(dense);
  const denseBody = subgraphNodes(decodeModel(model, "digits").graph!.node);
  const n = data.header.n;
  // The timed inputs: the test set's full batches of BENCH_BATCH, and its single images for batch 1.
  const batches = Array.from({ length: Math.floor(n / BENCH_BATCH) }, (_, i) =>
    batchInput(data, i * BENCH_BATCH, (i + 1) * BENCH_BATCH),
  );
  const singles = Array.from({ length: n }, (_, i) => batchInput(data, i, i + 1));

  type Row = {
    spec: string;
    target?: "webgpu";
    lowering: string;
    compiled?: CompileResult;
    error?: string;
    accuracy?: number;
    counts?: number[];
  };
  const rows: Row[] = CAPABILITY_ROWS.map((c) => ({ ...c }));
  for (const row of rows) {
    const options: CompileOptions = { modelName: "digits", ...(row.target ? { target: row.target } : {}) };
    try {
      row.compiled = compile(model, row.spec, options);
      row.accuracy = (await evaluate(row.compiled.model, row.spec, data, { ep: "cpu", batch: EVAL_BATCH })).accuracy;
      if (row.compiled.report.tokensPerLayer.some((t) => typeof t.pruned !== "number"))
        row.counts = await adaptiveCounts(model, row.spec, data);
      console.error(`evaluated ${row.spec.replace(/\n/g, "; ")} (${row.target ?? "cpu"}): ${pct(row.accuracy)}`);
    } catch (e) {
      row.error = (e as Error).message.split("\n")[0]!;
      row.compiled = undefined;
      console.error(`FAILED ${row.spec.replace(/\n/g, "; ")} (${row.target ?? "cpu"}): ${(e as Error).message}`);
    }
  }
  const ok = rows.filter((r) => r.compiled);
  const b32 = await repeatedSpeedups(
    model,
    ok.map((r) => r.compiled!.model),
    batches,
    runs,
  );

  const lines = [
    `Dense: ${pct(denseAcc)} top-1; ORT CPU batch ${BENCH_BATCH} median ${median(b32.denseMs).toFixed(1)} ms (${b32.denseMs.map((x) => x.toFixed(1)).join(", ")} in the ${reps} repetitions of ${Math.ceil(runs / BLOCK) * BLOCK} runs per model, on the test set's batches); ${(model.length / 1024).toFixed(1)} KiB, ${decodeModel(model, "digits").graph!.node.length} nodes.`,
    "",
    `| spec | lowering | tokens per layer | accuracy | vs dense | measured speedup (b${BENCH_BATCH}), median [min–max] of ${reps} | FLOPs-ideal | ratio | nodes added | bytes added |`,
    "|---|---|---|---|---|---|---|---|---|---|",
  ];
  let adaptive: Row | undefined;
  for (const row of rows) {
    const spec = `\`${row.spec.replace(/\n/g, "; ")}\``;
    if (!row.compiled) {
      lines.push(`| ${spec} | ${row.lowering} | failed: ${row.error!.replace(/\|/g, "\\|")} | | | | | | | |`);
      continue;
    }
    const r = row.compiled;
    const sp = b32.speedups[ok.indexOf(row)]!;
    let tokens: string;
    let ideal: number;
    if (row.counts) {
      // Each batch pads to its largest count: the ideal is dense FLOPs over the mean FLOPs of the timed batches.
      const padded = batches.map((_, i) => Math.max(...row.counts!.slice(i * BENCH_BATCH, (i + 1) * BENCH_BATCH)));
      ideal = denseFlops / mean(padded.map((c) => flops(tokensWith(r, c))));
      tokens =
        r.report.tokensPerLayer.map((t) => (typeof t.pruned === "number" ? t.pruned : "n")).join(" ") +
        ` (n per example: mean ${mean(row.counts).toFixed(1)}, ${Math.min(...row.counts)}–${Math.max(...row.counts)}; b${BENCH_BATCH} pads to mean ${mean(padded).toFixed(1)})`;
      adaptive = row;
    } else {
      tokens = tokensWith(r, 0).join(" ");
      ideal = denseFlops / flops(tokensWith(r, 0));
    }
    const body = subgraphNodes(decodeModel(r.model, "digits").graph!.node) - denseBody;
    const nodes = `${r.report.addedNodes.length}${body ? ` + ${body} in Loop body` : ""}`;
    lines.push(
      `| ${spec} | ${row.lowering} | ${tokens} | ${pct(row.accuracy!)} | ${vsDense(row.accuracy!, denseAcc)} | ${spread(sp)} | ${ideal.toFixed(2)}× | ${(median(sp) / ideal).toFixed(2)} | ${nodes} | ${signed(r.model.length - model.length)} |`,
    );
  }

  // Batch 1: nothing is padded. The adaptive row next to its fixed-count reference, on single test images.
  const reference = rows[0]!;
  if (adaptive && reference.compiled) {
    const pair = [reference, adaptive];
    // Single images are cheap: 4× the runs, so that each repetition covers more of the test set.
    const runs1 = 4 * runs;
    const b1 = await repeatedSpeedups(
      model,
      pair.map((r) => r.compiled!.model),
      singles,
      runs1,
    );
    lines.push(
      "",
      `At batch 1 (no padding): dense median ${median(b1.denseMs).toFixed(2)} ms (${b1.denseMs.map((x) => x.toFixed(2)).join(", ")} in the ${reps} repetitions of ${Math.ceil(runs1 / BLOCK) * BLOCK} runs per model, each run a different test image); FLOPs-ideal from each image's own count.`,
      "",
      `| spec | accuracy (batch 1) | measured speedup (b1), median [min–max] of ${reps} | FLOPs-ideal | ratio |`,
      "|---|---|---|---|---|",
    );
    for (const [k, row] of pair.entries()) {
      const acc = (await evaluate(row.compiled!.model, row.spec, data, { ep: "cpu", batch: 1 })).accuracy;
      const ideal = row.counts
        ? denseFlops / mean(row.counts.map((c) => flops(tokensWith(row.compiled!, c))))
        : denseFlops / flops(tokensWith(row.compiled!, 0));
      const sp = b1.speedups[k]!;
      lines.push(
        `| \`${row.spec}\` | ${pct(acc)} | ${spread(sp)} | ${ideal.toFixed(2)}× | ${(median(sp) / ideal).toFixed(2)} |`,
      );
    }
  }
  return lines.join("\n");
}

/** Head-pruning rows: heads alone, a cascade, and after a token stage (the digits model has 4 heads per layer). */
export const HEAD_ROWS: string[] = [
  "after layer 1 keep heads 3 by spatten",
  "after layer 1 keep heads 2 by spatten",
  "after layer 3 keep heads 2 by spatten",
  "after layer 1 keep heads 3 by spatten\nafter layer 3 keep heads 1 by spatten",
  "after layer 1 keep 25% by cls-attn\nafter layer 2 keep heads 2 by spatten",
];

async function headsTable(model: Uint8Array, data: Dataset, denseAcc: number): Promise<string> {
  const graph = new Graph(decodeModel(model, "digits").graph!);
  const info = analyzeTransformer(graph, "digits");
  const costs = layerCosts(graph, info);
  const fixed = outsideFlops(graph, info);
  const heads = info.layers[0]!.heads!;
  // Per layer: tokens, and the share of heads left (Q·Kᵀ and P·V scale with it).
  const flops = (r: CompileResult) => {
    const share = info.layers.map((l) => {
      const stage = [...r.report.headStages].reverse().find((h) => h.layer < l.index);
      return stage ? stage.headsOut / heads : 1;
    });
    const tokens = tokensWith(r, 0);
    return (
      fixed + costs.reduce((sum, c, i) => sum + c.perToken * tokens[i]! + c.perPair * share[i]! * tokens[i]! ** 2, 0)
    );
  };
  const denseFlops =
    fixed +
    totalFlops(
      costs,
      info.layers.map(() => Number(info.tokens)),
    );
  const batches = Array.from({ length: Math.floor(data.header.n / BENCH_BATCH) }, (_, i) =>
    batchInput(data, i * BENCH_BATCH, (i + 1) * BENCH_BATCH),
  );
  const compiled = HEAD_ROWS.map((spec) => compile(model, spec, { modelName: "digits" }));
  const accuracy: number[] = [];
  for (const [i, r] of compiled.entries()) {
    accuracy.push((await evaluate(r.model, HEAD_ROWS[i]!, data, { ep: "cpu", batch: EVAL_BATCH })).accuracy);
    console.error(`evaluated ${HEAD_ROWS[i]!.replace(/\n/g, "; ")}: ${pct(accuracy[i]!)}`);
  }
  const b32 = await repeatedSpeedups(
    model,
    compiled.map((r) => r.model),
    batches,
    runs,
  );
  const lines = [
    `Dense: ${pct(denseAcc)} top-1, ${heads} heads per layer; ORT CPU batch ${BENCH_BATCH} median ${median(b32.denseMs).toFixed(1)} ms (${b32.denseMs.map((x) => x.toFixed(1)).join(", ")} in the ${reps} repetitions).`,
    "",
    `| spec | heads per layer | tokens per layer | accuracy | vs dense | measured speedup (b${BENCH_BATCH}), median [min–max] of ${reps} | FLOPs-ideal | nodes added |`,
    "|---|---|---|---|---|---|---|---|",
  ];
  for (const [i, r] of compiled.entries()) {
    const perLayer = info.layers.map(
      (l) => [...r.report.headStages].reverse().find((h) => h.layer < l.index)?.headsOut ?? heads,
    );
    lines.push(
      `| \`${HEAD_ROWS[i]!.replace(/\n/g, "; ")}\` | ${perLayer.join(" ")} | ${tokensWith(r, 0).join(" ")} | ${pct(accuracy[i]!)} | ${vsDense(accuracy[i]!, denseAcc)} | ${spread(b32.speedups[i]!)} | ${(denseFlops / flops(r)).toFixed(3)}× | ${r.report.addedNodes.length} |`,
    );
  }
  return lines.join("\n");
}

/** `with restore` rows on the per-patch model (examples/digit-masks). */
const RESTORE_ROWS = [
  "after layer 2 keep 75% by cls-attn with restore",
  "after layer 2 keep 50% by cls-attn with restore",
  "after layer 2 keep 25% by cls-attn with restore",
  "after layer 1 keep 50% by cls-attn with restore\nafter layer 3 keep 50% by cls-attn with restore",
  "after layer 3 keep 25% by cls-attn with restore",
  "after layer 1 merge 32 tokens by similarity with restore",
];

async function restoreTable(): Promise<string> {
  const dir = join(root, "examples", "digit-masks");
  const model = readFileSync(join(dir, "model.onnx"));
  const data = parseDataset(readFileSync(join(dir, "test.prds")), "digit-masks/test.prds");
  const graph = new Graph(decodeModel(model, "digit-masks").graph!);
  const info = analyzeTransformer(graph, "digit-masks");
  const costs = layerCosts(graph, info);
  // The final norm and head run on every token again after the restore: outside the layers, as dense.
  const fixed = outsideFlops(graph, info);
  const flops = (tokens: number[]) => fixed + totalFlops(costs, tokens);
  const denseFlops = flops(info.layers.map(() => Number(info.tokens)));
  const miou = async (m: Uint8Array, name: string) =>
    (await evaluate(m, name, data, { ep: "cpu", batch: EVAL_BATCH })).segmentation!;
  const dense = await miou(model, "digit-masks");
  const compiled = RESTORE_ROWS.map((spec) => compile(model, spec, { modelName: "digit-masks" }));
  const scores = [];
  for (const [i, r] of compiled.entries()) {
    scores.push(await miou(r.model, RESTORE_ROWS[i]!));
    console.error(`evaluated ${RESTORE_ROWS[i]!.replace(/\n/g, "; ")}`);
  }
  const batches = Array.from({ length: Math.floor(data.header.n / BENCH_BATCH) }, (_, i) =>
    batchInput(data, i * BENCH_BATCH, (i + 1) * BENCH_BATCH),
  );
  const b32 = await repeatedSpeedups(
    model,
    compiled.map((r) => r.model),
    batches,
    runs,
  );
  const iou = (s: { iou: (number | null)[] }) => s.iou.map((v) => (v === null ? "–" : pct(v))).join(" / ");
  const lines = [
    `Dense: mIoU ${pct(dense.miou)} (IoU background / digit ${iou(dense)}) on ${data.header.n} test images × ${dense.patches} patches; ORT CPU batch ${BENCH_BATCH} median ${median(b32.denseMs).toFixed(1)} ms (${b32.denseMs.map((x) => x.toFixed(1)).join(", ")} in the ${reps} repetitions).`,
    "",
    `| spec | tokens per layer | mIoU | vs dense | IoU background / digit | measured speedup (b${BENCH_BATCH}), median [min–max] of ${reps} | FLOPs-ideal | nodes added |`,
    "|---|---|---|---|---|---|---|---|",
  ];
  for (const [i, r] of compiled.entries()) {
    const tokens = tokensWith(r, 0);
    lines.push(
      `| \`${RESTORE_ROWS[i]!.replace(/\n/g, "; ")}\` | ${tokens.join(" ")} | ${pct(scores[i]!.miou)} | ${vsDense(scores[i]!.miou, dense.miou)} | ${iou(scores[i]!)} | ${spread(b32.speedups[i]!)} | ${(denseFlops / flops(tokens)).toFixed(2)}× | ${r.report.addedNodes.length} |`,
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
  const tables: Record<(typeof SECTIONS)[number], typeof schedulesTable> = {
    schedules: schedulesTable,
    criteria: criteriaTable,
    capabilities: capabilitiesTable,
    heads: headsTable,
    restore: restoreTable,
  };
  const sections: [string, string][] = [];
  for (const name of SECTIONS.filter((s) => only.includes(s))) {
    const started = performance.now();
    const table = await tables[name](model, data, dense.accuracy);
    console.log(`${table}\n`);
    console.error(`${name}: ${((performance.now() - started) / 1000).toFixed(0)} s`);
    sections.push([name, table]);
  }
  if (out) {
    const path = join(root, out);
    let doc = existsSync(path) ? readFileSync(path, "utf8") : "# Schedules and criteria on the shipped digits model\n";
    for (const [name, table] of sections) doc = replaceSection(doc, name, table);
    writeFileSync(path, doc.endsWith("\n") ? doc : `${doc}\n`);
  }
}

await main();
