/**
 * `npm run bench`: dense vs pruned latency on onnxruntime-node CPU, measured side by side
 * (interleaved runs, medians), next to the FLOPs-ideal speedup; and compile time next to the time to
 * just read and write the same file. Prints ratios; asserts nothing (the machine is noisy).
 *
 *   npm run bench [-- --model PATH] [--spec "after layer 2 keep 25% by cls-attn"] [--runs 30]
 */
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import { compile } from "../src/compile.js";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { layerCosts, totalFlops } from "../src/analysis/flops.js";

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
    for (let i = 0; i < 7; i++) {
      io.push(time(() => writeFileSync(join(dir, "copy.onnx"), readFileSync(modelPath))));
      comp.push(
        time(() => {
          const r = compile(readFileSync(modelPath), spec);
          writeFileSync(join(dir, "pruned.onnx"), r.model);
          pruned = r.model;
          report = r.report;
        }),
      );
    }
    const info = analyzeTransformer(new Graph(decodeModel(bytes).graph!));
    const costs = layerCosts(new Graph(decodeModel(bytes).graph!), info);
    const dense = report!.tokensPerLayer.map((t) => Number(t.dense));
    const after = report!.tokensPerLayer.map((t) => Number(t.pruned));
    const ideal = totalFlops(costs, dense) / totalFlops(costs, after);

    console.log(`model: ${modelPath}`);
    console.log(`spec:  ${spec}`);
    console.log(`tokens per layer: dense ${dense.join(" ")} | pruned ${after.join(" ")}`);
    console.log(`\ncompile (read + compile + write): median ${median(comp).toFixed(1)} ms; read + write only: median ${median(io).toFixed(1)} ms; ratio ${(median(comp) / median(io)).toFixed(2)}× (goal ≤ 1.5×)`);

    const opts: ort.InferenceSession.SessionOptions = { executionProviders: ["cpu"], graphOptimizationLevel: "all" };
    const denseS = await ort.InferenceSession.create(bytes, opts);
    const prunedS = await ort.InferenceSession.create(pruned, opts);
    const input = denseS.inputNames[0]!;
    console.log(`\nORT CPU latency, ${runs} interleaved runs after 5 warm-ups (median [IQR] ms)`);
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
      for (let i = 0; i < runs; i++) {
        let t = performance.now();
        await denseS.run(feed);
        d.push(performance.now() - t);
        t = performance.now();
        await prunedS.run(feed);
        p.push(performance.now() - t);
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
