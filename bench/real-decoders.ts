/**
 * Pruning inside the real transformers.js decoders of ../shared/models/graph-only, measured (part of
 * `npm run bench`; skipped without ../shared). Synthetic weights at the recorded offsets, the first
 * layers only and a 256-column LM head (test/support/decoder-cut.ts): what is timed is the real
 * graph's layers at their real widths.
 *
 * - Gemma-3 4B, 4 layers, a prompt of 16 system + 256 image (Gemma-3's image size) + 32 instruction
 *   tokens; FastV K=2, R=75%: `after layer 1 drop 75% of image by last-token-attn`.
 * - Qwen3.5 0.8B int8, 8 layers (hybrid: GroupQueryAttention at 3 and 7), the same prompt;
 *   `after layer 3 keep 50% by pagerank` (a per-example count of image tokens cannot pad through
 *   linear attention, so this stage is on all tokens).
 *
 * Prints prefill latency dense vs pruned (ORT CPU, batch 1, median of alternating runs), the
 * FLOPs-ideal ratio from the analysis's per-layer costs, and the bytes of the caches and states the
 * prefill leaves.
 */
import "./no-telemetry.js";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { Graph } from "../src/ir/graph.js";
import { decodeModel } from "../src/onnx/io.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { layerCosts, totalFlops, outsideFlops } from "../src/analysis/flops.js";
import { compile } from "../src/compile.js";
import { cutDecoder, decoderFeeds } from "../test/support/decoder-cut.js";
import { writeSyntheticWeights } from "../test/support/synthetic-weights.js";
import { uniform } from "../test/support/graph-only-inputs.js";
import type { Feeds } from "../test/helpers/ort.js";

const toOrt = (f: Feeds): Record<string, ort.Tensor> =>
  Object.fromEntries(Object.entries(f).map(([k, t]) => [k, new ort.Tensor(t.type, t.data as never, [...t.dims])]));

interface Case {
  name: string;
  rel: string;
  layers: number;
  spec: string;
  /** The stage's layer: layers after it run on the kept tokens. */
  after: number;
}

const SYSTEM = 16;
const IMAGE = 256;
const INSTRUCTION = 32;
const N = SYSTEM + IMAGE + INSTRUCTION;
const CASES: Case[] = [
  {
    name: "gemma-3-4b",
    rel: "graph-only/gemma-3-4b-vlm/decoder_model_merged.onnx",
    layers: 4,
    after: 1,
    spec: "tokens image = input image_mask\nafter layer 1 drop 75% of image by last-token-attn",
  },
  {
    name: "qwen3.5-0.8b int8",
    rel: "graph-only/qwen3.5-0.8b-vlm-int8/decoder_model_merged_quantized.onnx",
    layers: 8,
    after: 3,
    spec: "after layer 3 keep 50% by pagerank",
  },
];

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const cacheBytes = (out: ort.InferenceSession.OnnxValueMapType) =>
  Object.entries(out)
    .filter(([name]) => name.startsWith("present"))
    .reduce((s, [, t]) => s + ((t as ort.Tensor).data as Float32Array).byteLength, 0);

async function benchOne(c: Case, shared: string, runs: number): Promise<void> {
  const dense = cutDecoder(readFileSync(join(shared, c.rel)), c.layers, 256);
  const pruned = compile(dense, c.spec).model;
  const g = new Graph(decodeModel(dense).graph!);
  const info = analyzeTransformer(g, c.name);
  const image = Array.from({ length: N }, (_, j) => j >= SYSTEM && j < SYSTEM + IMAGE);
  const embeds = uniform(N * info.hidden!, 7);
  const dir = mkdtempSync(join(tmpdir(), "prunec-bench-"));
  try {
    writeSyntheticWeights(decodeModel(dense), dir, 1);
    writeFileSync(join(dir, "dense.onnx"), dense);
    writeFileSync(join(dir, "pruned.onnx"), pruned);
    const sessions = [
      await ort.InferenceSession.create(join(dir, "dense.onnx")),
      await ort.InferenceSession.create(join(dir, "pruned.onnx")),
    ];
    const inputs = [
      toOrt(decoderFeeds(dense, { embeds, rows: N, total: N })),
      toOrt(decoderFeeds(pruned, { embeds, rows: N, total: N, image })),
    ];
    const first = [await sessions[0]!.run(inputs[0]!), await sessions[1]!.run(inputs[1]!)];
    // Tokens the layers after the stage hold: the last attention layer's cache length.
    const lastAttention = info.layers.filter((l) => l.kind === "GroupQueryAttention").at(-1)!.index;
    const kept = (first[1]![`present.${lastAttention}.key`] as ort.Tensor).dims[2]!;
    const times: number[][] = [[], []];
    for (let r = 0; r < runs; r++) {
      for (let k = 0; k < 2; k++) {
        const t = performance.now();
        await sessions[k]!.run(inputs[k]!);
        times[k]!.push(performance.now() - t);
      }
    }
    const costs = layerCosts(g, info);
    const fixed = outsideFlops(g, info);
    const tokens = (cut: boolean) => info.layers.map((l) => (cut && l.index > c.after ? kept : N));
    const ideal = (fixed + totalFlops(costs, tokens(false))) / (fixed + totalFlops(costs, tokens(true)));
    const [d, p] = times.map(median) as [number, number];
    const [kd, kp] = first.map(cacheBytes) as [number, number];
    console.log(
      `${c.name}: ${c.layers} layers (hidden ${info.hidden}), synthetic weights, prompt ${N} tokens (${IMAGE} image); ${c.spec.split("\n").at(-1)}`,
    );
    console.log(
      `  prefill ORT CPU batch 1, median of ${runs}: dense ${d.toFixed(0)} ms, pruned ${p.toFixed(0)} ms: ${(d / p).toFixed(2)}× (FLOPs-ideal ${ideal.toFixed(2)}×, ratio ${(d / p / ideal).toFixed(2)}); layers ${c.after + 1}..${c.layers - 1} run ${kept} of ${N} tokens`,
    );
    console.log(
      `  caches and states after prefill: dense ${(kd / 2 ** 20).toFixed(2)} MiB, pruned ${(kp / 2 ** 20).toFixed(2)} MiB (${(kd / kp).toFixed(2)}× smaller)`,
    );
    for (const s of sessions) await s.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function benchRealDecoders(shared: string, runs: number): Promise<void> {
  if (!existsSync(join(shared, CASES[0]!.rel))) {
    console.log(`(real decoders not found under ${shared}: ../shared is missing; skipping their benchmarks)`);
    return;
  }
  for (const c of CASES) await benchOne(c, shared, Math.min(runs, 5));
}
