/**
 * `npm run bench`: side-by-side measurements in one run, printed as ratios (the machine is noisy;
 * nothing here asserts).
 *  1. compile time vs the time to just read and write the same file (vit-ti16 from ../shared);
 *  2. ORT CPU latency, dense vs `after layer 2 keep 25% by cls-attn`, batch 1 and 8 (vit-ti16);
 *  3. the same for the shipped digits model and its schedules at batch 32, when it is present;
 *  4. a decoder with a KV cache (bench/decoder.ts): prefill latency and KV-cache bytes, dense vs FastV;
 *  5. KV eviction (bench/kv-decoder.ts): prefill and decode-step latency and KV bytes, dense vs keep kv 25%;
 *  6. KV eviction on the trained recall decoder (bench/recall-kv.ts): accuracy on its test set per
 *     press at 10/25/50% of the cache, KV bytes and decode-step latency (docs/results.md's table);
 *  7. eviction while generating (bench/kv-generation.ts): KV bytes and step latency over a
 *     2,000-token generation, dense vs `during decode keep kv C tokens`.
 *
 *   npm run bench [-- --runs 30]
 */
import { existsSync, readFileSync, mkdtempSync, rmSync } from "node:fs";
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

async function compileTime(modelPath: string, spec: string): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "prunec-bench-"));
  try {
    const io: number[] = [];
    const comp: number[] = [];
    for (let i = 0; i < 21; i++) {
      io.push(await time(() => writeAtomic(join(dir, "copy.onnx"), [readFileSync(modelPath)])));
      comp.push(await time(() => writeAtomic(join(dir, "pruned.onnx"), compile(readFileSync(modelPath), spec).parts)));
    }
    const ratio = median(comp) / median(io);
    console.log(
      `compile (read + compile + write) median ${median(comp).toFixed(1)} ms; read + write only ${median(io).toFixed(1)} ms; ratio ${ratio.toFixed(2)}× (goal ≤ 1.5×)`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (existsSync(VIT)) {
    console.log(`== vit-ti16 (${VIT}), spec: ${VIT_SPEC}`);
    await compileTime(VIT, VIT_SPEC);
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
