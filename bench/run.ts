/**
 * `npm run bench`: side-by-side measurements in one run, printed as ratios (the machine is noisy;
 * nothing here asserts).
 *  1. in-process compile time vs the time to just read and write the same file, for the digits
 *     model, vit-ti16 and the graph-only encoders and decoder of ../shared (`--compile-only`: just this);
 *  2. ORT CPU latency, dense vs `after layer 2 keep 25% by cls-attn`, batch 1 and 8 (vit-ti16);
 *  3. the same for the shipped digits model and its schedules at batch 32, when it is present;
 *  4. a decoder with a KV cache (bench/decoder.ts): prefill latency and KV-cache bytes, dense vs FastV;
 *  5. KV eviction (bench/kv-decoder.ts): prefill and decode-step latency and KV bytes, dense vs keep kv 25%;
 *  6. KV eviction on the trained recall decoder (bench/recall-kv.ts): accuracy on its test set per
 *     press at 10/25/50% of the cache, KV bytes and decode-step latency (docs/results.md's table);
 *  7. eviction while generating (bench/kv-generation.ts): KV bytes and step latency over a
 *     2,000-token generation, dense vs `during decode keep kv C tokens`.
 *
 *   npm run bench [-- --runs 30] [-- --compile-only]
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { compile } from "../src/compile.js";
import { writeAtomic } from "../src/cli/atomic.js";
import { benchmark, formatBench } from "../src/cli/benchmark.js";
import { benchDecoder } from "./decoder.js";
import { benchRealDecoders } from "./real-decoders.js";
import { benchKvDecoder } from "./kv-decoder.js";
import { benchRecallKv } from "./recall-kv.js";
import { benchKvGeneration } from "./kv-generation.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const runs = Number(args[args.indexOf("--runs") + 1] ?? 30) || 30;
const VIT = join(root, "..", "shared", "models", "synthetic", "vit-ti16-cls-randinit", "model.onnx");
const DIGITS = join(root, "examples", "digits", "model.onnx");
const VIT_SPEC = "after layer 2 keep 25% by cls-attn";

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const time = async (f: () => Promise<void>): Promise<number> => {
  const t = performance.now();
  await f();
  return performance.now() - t;
};

/** In-process compile (read + compile + write, warm) against read + write of the same file, medians of `n`. */
async function compileTime(modelPath: string, spec: string, n = 21): Promise<{ comp: number; io: number }> {
  const dir = mkdtempSync(join(tmpdir(), "prunec-bench-"));
  try {
    const io: number[] = [];
    const comp: number[] = [];
    // Each run writes a new file, the previous run's pages flushed first (untimed): replacing a
    // file and another run's writeback are costs of their own (scripts/bench-table.ts).
    const fresh = (file: string) => {
      rmSync(file, { force: true });
      spawnSync("sync");
      return file;
    };
    // Two untimed compiles first: this table is the compile's own cost, warm; the CLI's cold start
    // (module loading, JIT warm-up) is in the whole-process table (scripts/bench-table.ts).
    for (let i = 0; i < 2; i++) compile(readFileSync(modelPath), spec);
    for (let i = 0; i < n; i++) {
      const copy = fresh(join(dir, "copy.onnx"));
      io.push(await time(() => writeAtomic(copy, [readFileSync(modelPath)])));
      const pruned = fresh(join(dir, "pruned.onnx"));
      comp.push(await time(() => writeAtomic(pruned, compile(readFileSync(modelPath), spec).parts)));
    }
    return { comp: median(comp), io: median(io) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const SHARED = join(root, "..", "shared", "models");
/** Every model the in-process goal names (≤ 1.5× read + write), with a spec each compiles. */
const COMPILE_CASES: { label: string; path: string; spec: string }[] = [
  { label: "digits", path: DIGITS, spec: "after layer 2 keep 25% by cls-attn" },
  { label: "vit-ti16", path: VIT, spec: VIT_SPEC },
  {
    label: "qwen2-vl vision tower",
    path: join(SHARED, "graph-only", "qwen2-vl-2b-vision-tower-torchexport", "model.onnx"),
    spec: "after layer 0 keep 50% by norm",
  },
  {
    label: "gemma-3 vision encoder",
    path: join(SHARED, "graph-only", "gemma-3-4b-vlm", "vision_encoder.onnx"),
    spec: "after encoder keep 25% by norm",
  },
  {
    label: "qwen3.5 vision encoder (int8)",
    path: join(SHARED, "graph-only", "qwen3.5-0.8b-vlm-int8", "vision_encoder_quantized.onnx"),
    spec: "after encoder keep 25% by norm",
  },
  {
    label: "gemma-3 decoder",
    path: join(SHARED, "graph-only", "gemma-3-4b-vlm", "decoder_model_merged.onnx"),
    spec: "keep kv 50% by knorm",
  },
];

async function compileTimes(): Promise<void> {
  console.log("| model | file MB | read + write ms | compile ms (in process) | ratio (goal ≤ 1.5×) |");
  console.log("|---|---|---|---|---|");
  for (const c of COMPILE_CASES) {
    if (!existsSync(c.path)) {
      console.log(`| ${c.label} | (not found: ${c.path}) | | | |`);
      continue;
    }
    const mb = (statSync(c.path).size / 2 ** 20).toFixed(1);
    try {
      const { comp, io } = await compileTime(c.path, c.spec, 7);
      console.log(
        `| ${c.label} \`${c.spec}\` | ${mb} | ${io.toFixed(1)} | ${comp.toFixed(1)} | ${(comp / io).toFixed(1)}× |`,
      );
    } catch (e) {
      console.log(
        `| ${c.label} | ${mb} | refused: ${(e instanceof Error ? e.message : String(e)).split("\n")[0]} | | |`,
      );
    }
  }
}

async function main(): Promise<void> {
  console.log("== in-process compile against read + write of the same file (medians of 7)");
  await compileTimes();
  if (args.includes("--compile-only")) return;
  console.log("");
  if (existsSync(VIT)) {
    console.log(`== vit-ti16 (${VIT}), spec: ${VIT_SPEC}`);
    for (const batch of [1, 8]) {
      console.log(
        formatBench(
          await benchmark(readFileSync(VIT), "vit-ti16", [{ name: VIT_SPEC, text: VIT_SPEC }], { batch, runs }),
        ),
      );
    }
  } else {
    console.log(`(vit-ti16 not found at ${VIT}: ../shared is missing; skipping its benchmarks)`);
  }
  if (existsSync(DIGITS)) {
    const specDir = join(root, "examples", "digits");
    const specs = ["cls-attn-25.prune", "best.prune"]
      .filter((f) => existsSync(join(specDir, f)))
      .map((f) => ({ name: f, text: readFileSync(join(specDir, f), "utf8") }));
    console.log(`\n== digits (${DIGITS})`);
    console.log(formatBench(await benchmark(readFileSync(DIGITS), "digits", specs, { batch: 32, runs })));
  }
  console.log("\n== decoder with a KV cache");
  await benchDecoder(runs);
  await benchKvDecoder(runs);
  await benchRealDecoders(join(root, "..", "shared", "models"), runs);
  console.log("\n== KV eviction on the trained recall decoder");
  await benchRecallKv({ limit: 1000, batch: 50, runs: Math.min(runs, 15), markdown: false });
  console.log("\n== eviction while generating (bench/kv-generation.ts): 2,000 tokens, dense vs 'during decode'");
  await benchKvGeneration(2000);
}

await main();
