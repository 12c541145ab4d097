/**
 * `npm run bench`: dense vs pruned latency on onnxruntime-node CPU, measured side by side
 * (interleaved runs, medians), next to the FLOPs-ideal speedup; and compile time next to the time to
 * just read and write the same file. Prints ratios; asserts nothing (the machine is noisy).
 *
 *   npm run bench [-- --model PATH] [--spec "after layer 2 keep 25% by cls-attn"] [--runs 30]
 */
import { readFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import { compile } from "../src/compile.js";
import { writeAtomic } from "../src/cli/main.js";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { layerCosts, outsideFlops, totalFlops } from "../src/analysis/flops.js";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const modelPath = resolve(opt("model", join(here, "..", "..", "shared", "models", "synthetic", "vit-ti16-cls-randinit", "model.onnx")));
const spec = opt("spec", "after layer 2 keep 25% by cls-attn");
const runs = Number(opt("runs", "30"));
const batches = opt("batches", "1,8").split(",").map(Number);
const BLOCK = 5;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const quartiles = (xs: number[]): [number, number] => {
  const s = [...xs].sort((a, b) => a - b);
  return [s[Math.floor(s.length * 0.25)]!, s[Math.floor(s.length * 0.75)]!];
};
const time = (f: () => void): number => {
  const t = performance.now();
  f();
  return performance.now() - t;
};

async function main(): Promise<void> {
  const bytes = readFileSync(modelPath);
  const dir = mkdtempSync(join(tmpdir(), "prunec-bench-"));
  try {
    // Compile time vs plain I/O on the same file, interleaved.
    const io: number[] = [];
    const comp: number[] = [];
    let pruned: Uint8Array = new Uint8Array();
    let report: ReturnType<typeof compile>["report"] | undefined;
    for (let i = 0; i < 21; i++) {
      io.push(time(() => writeAtomic(join(dir, "copy.onnx"), [readFileSync(modelPath)])));
      comp.push(
        time(() => {
          const r = compile(readFileSync(modelPath), spec);
          writeAtomic(join(dir, "pruned.onnx"), r.parts);
          pruned = r.model;
          report = r.report;
        }),
      );
    }
    const graph = new Graph(decodeModel(bytes).graph!);
    const info = analyzeTransformer(graph);
    const costs = layerCosts(graph, info);
    const fixed = outsideFlops(graph, info);
    const dense = report!.tokensPerLayer.map((t) => Number(t.dense));
    const after = report!.tokensPerLayer.map((t) => Number(t.pruned));
    const ideal = (fixed + totalFlops(costs, dense)) / (fixed + totalFlops(costs, after));

    console.log(`model: ${modelPath}`);
    console.log(`spec:  ${spec}`);
    console.log(`tokens per layer: dense ${dense.join(" ")} | pruned ${after.join(" ")}`);
    console.log(`FLOPs per example: layers dense ${(totalFlops(costs, dense) / 1e9).toFixed(3)} G, pruned ${(totalFlops(costs, after) / 1e9).toFixed(3)} G; outside the layers ${(fixed / 1e9).toFixed(3)} G (same for both)`);
    console.log(`\ncompile (read + compile + write): median ${median(comp).toFixed(1)} ms; read + write only: median ${median(io).toFixed(1)} ms; ratio ${(median(comp) / median(io)).toFixed(2)}× (goal ≤ 1.5×)`);

    // ORT's default session options (intra-op pool spinning on, as users run it). Two sessions each
    // have their own pool, and a pool keeps spinning for a while after its run, stealing the 2 cores
    // from the other session; so runs alternate in blocks and the first run of each block is dropped.
    const opts: ort.InferenceSession.SessionOptions = { executionProviders: ["cpu"], graphOptimizationLevel: "all" };
    const denseS = await ort.InferenceSession.create(bytes, opts);
    const prunedS = await ort.InferenceSession.create(pruned, opts);
    const input = denseS.inputNames[0]!;
    console.log(`\nORT CPU latency, ${runs} runs each in alternating blocks of ${BLOCK} after 5 warm-ups (median [IQR] ms)`);
    console.log("batch | dense              | pruned             | measured | FLOPs-ideal | ratio");
    for (const batch of batches) {
      const data = new Float32Array(batch * 3 * 224 * 224).map((_, i) => Math.sin(i * 0.37));
      const feed = { [input]: new ort.Tensor("float32", data, [batch, 3, 224, 224]) };
      for (let i = 0; i < 5; i++) {
        await denseS.run(feed);
        await prunedS.run(feed);
      }
      const d: number[] = [];
      const p: number[] = [];
      const block = async (s: ort.InferenceSession, into: number[]) => {
        await s.run(feed);
        for (let i = 0; i < BLOCK; i++) {
          const t = performance.now();
          await s.run(feed);
          into.push(performance.now() - t);
        }
      };
      for (let i = 0; i < Math.ceil(runs / BLOCK); i++) {
        await block(denseS, d);
        await block(prunedS, p);
      }
      const measured = median(d) / median(p);
      const fmt = (xs: number[]) => `${median(xs).toFixed(2).padStart(7)} [${quartiles(xs).map((x) => x.toFixed(1)).join("–")}]`.padEnd(18);
      console.log(`${String(batch).padStart(5)} | ${fmt(d)} | ${fmt(p)} | ${measured.toFixed(2).padStart(7)}× | ${ideal.toFixed(2).padStart(10)}× | ${(measured / ideal).toFixed(2)} (goal ≥ 0.9)`);
    }
    await denseS.release();
    await prunedS.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
