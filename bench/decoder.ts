/**
 * Pruning inside a decoder, measured (part of `npm run bench`): the project's LLaMA-style test
 * decoder (test/support/decoder.ts) at a bench size, exported with GroupQueryAttention and a KV
 * cache, with a LLaVA-like prompt (576 image tokens between a short system prompt and an
 * instruction). FastV K=2, R=75%: `after layer 1 drop 75% of image by last-token-attn`.
 * Prints prefill latency dense vs pruned (ORT CPU, batch 1, median of alternating blocks), the
 * FLOPs-ideal ratio from the analysis's per-layer costs, and the KV-cache bytes the prefill leaves.
 */
import "./no-telemetry.js";
import * as ort from "onnxruntime-node";
import { cacheBytes, emptyPast, int64 } from "./feeds.js";
import { Graph } from "../src/ir/graph.js";
import { decodeModel } from "../src/onnx/io.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { layerCosts, totalFlops, outsideFlops } from "../src/analysis/flops.js";
import { compile } from "../src/compile.js";
import { buildDecoder, DECODER, type DecoderOptions } from "../test/support/decoder.js";

/** The bench-size test decoder (also bench/kv-decoder.ts). */
export const BENCH_DECODER: DecoderOptions = {
  ...DECODER,
  vocab: 512,
  hidden: 256,
  layers: 8,
  heads: 8,
  kvHeads: 2,
  headSize: 32,
  intermediate: 768,
  maxPositions: 1024,
};
const SPEC = "tokens image = input image_mask\nafter layer 1 drop 75% of image by last-token-attn";
const IMAGE = 576;
const SYSTEM = 16;
const INSTRUCTION = 32;

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

function feeds(): Record<string, ort.Tensor> {
  const n = 1 + SYSTEM + IMAGE + INSTRUCTION;
  const positions = Array.from({ length: n }, (_, i) => i);
  const image = Uint8Array.from(positions, (i) => (i > SYSTEM && i <= SYSTEM + IMAGE ? 1 : 0));
  return {
    input_ids: int64(
      positions.map((i) => (i === 0 ? 1 : 3 + ((i * 7) % 40))),
      [1, n],
    ),
    attention_mask: int64(new Array<number>(n).fill(1), [1, n]),
    position_ids: int64(positions, [1, n]),
    image_mask: new ort.Tensor("bool", image, [1, n]),
    ...emptyPast(BENCH_DECODER),
  };
}

export async function benchDecoder(runs: number): Promise<void> {
  const dense = buildDecoder({ attention: "gqa" }, BENCH_DECODER);
  const compiled = compile(dense, SPEC);
  const info = analyzeTransformer(new Graph(decodeModel(dense).graph!), "decoder");
  const costs = layerCosts(new Graph(decodeModel(dense).graph!), info);
  const fixed = outsideFlops(new Graph(decodeModel(dense).graph!), info);
  const n = 1 + SYSTEM + IMAGE + INSTRUCTION;
  const kept = n - Math.floor((2 * 75 * IMAGE + 100) / 200);
  const tokens = (pruned: boolean) => info.layers.map((l) => (pruned && l.index > 1 ? kept : n));
  const ideal = (fixed + totalFlops(costs, tokens(false))) / (fixed + totalFlops(costs, tokens(true)));
  const f = feeds();
  const denseFeeds = Object.fromEntries(Object.entries(f).filter(([k]) => k !== "image_mask"));
  const sessions = [await ort.InferenceSession.create(dense), await ort.InferenceSession.create(compiled.model)];
  const inputs = [denseFeeds, f];
  const times: number[][] = [[], []];
  const kv: number[] = [];
  for (let k = 0; k < 2; k++) kv.push(cacheBytes(await sessions[k]!.run(inputs[k]!)));
  for (let block = 0; block < Math.ceil(runs / 5); block++) {
    for (let k = 0; k < 2; k++) {
      await sessions[k]!.run(inputs[k]!);
      for (let i = 0; i < 5; i++) {
        const t = performance.now();
        await sessions[k]!.run(inputs[k]!);
        times[k]!.push(performance.now() - t);
      }
    }
  }
  const [d, p] = times.map(median) as [number, number];
  console.log(
    `decoder: ${BENCH_DECODER.layers} layers, hidden ${BENCH_DECODER.hidden}, GQA ${BENCH_DECODER.heads}/${BENCH_DECODER.kvHeads} heads, prompt ${n} tokens (${IMAGE} image); ${SPEC.split("\n")[1]}`,
  );
  console.log(
    `prefill ORT CPU batch 1, median of ${times[0]!.length}: dense ${d.toFixed(1)} ms, pruned ${p.toFixed(1)} ms: ${(d / p).toFixed(2)}× (FLOPs-ideal ${ideal.toFixed(2)}×, ratio ${(d / p / ideal).toFixed(2)})`,
  );
  console.log(
    `KV cache after prefill: dense ${(kv[0]! / 1024).toFixed(0)} KiB, pruned ${(kv[1]! / 1024).toFixed(0)} KiB (${(kv[0]! / kv[1]!).toFixed(2)}× smaller; layers 2..${BENCH_DECODER.layers - 1} hold ${kept} of ${n} tokens)`,
  );
  for (const s of sessions) await s.release();
}
