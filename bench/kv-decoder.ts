/**
 * KV-cache eviction, measured (part of `npm run bench`): the project's test decoder at the bench
 * size of bench/decoder.ts, a 1,000-token prompt, dense vs `keep kv 25%` by knorm and by snapkv.
 * Prints, side by side in one run (ORT CPU, batch 1, medians of alternating blocks): prefill
 * latency (the press's scoring is extra work there), the KV-cache bytes the prefill leaves, and the
 * latency of a decode step over those caches (where the smaller cache pays off).
 */
import "./no-telemetry.js";
import * as ort from "onnxruntime-node";
import { compile } from "../src/compile.js";
import { buildDecoder, type DecoderOptions } from "../test/support/decoder.js";
import { BENCH_DECODER } from "./decoder.js";
import { cacheBytes, emptyPast, int64, pastOf } from "./feeds.js";

const SIZE: DecoderOptions = { ...BENCH_DECODER, maxPositions: 2048 };
const N = 1000;
const SPECS = ["keep kv 25% by knorm", "keep kv 25% by snapkv(window: 32)"];

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

function prefillFeeds(): Record<string, ort.Tensor> {
  const positions = Array.from({ length: N }, (_, i) => i);
  return {
    input_ids: int64(
      positions.map((i) => (i === 0 ? 1 : 3 + ((i * 7) % 200))),
      [1, N],
    ),
    attention_mask: int64(new Array<number>(N).fill(1), [1, N]),
    position_ids: int64(positions, [1, N]),
    ...emptyPast(SIZE),
  };
}

/** One decode step's feeds after a prefill that returned `out`. */
function stepFeeds(out: ort.InferenceSession.OnnxValueMapType): Record<string, ort.Tensor> {
  return {
    input_ids: int64([5], [1, 1]),
    attention_mask: int64(new Array<number>(N + 1).fill(1), [1, N + 1]),
    position_ids: int64([N], [1, 1]),
    ...pastOf(out),
  };
}

export async function benchKvDecoder(runs: number): Promise<void> {
  const dense = buildDecoder({ attention: "gqa" }, SIZE);
  const models = [dense, ...SPECS.map((s) => compile(dense, s).model)];
  const names = ["dense", ...SPECS];
  const sessions = await Promise.all(models.map((m) => ort.InferenceSession.create(m)));
  const prefill = prefillFeeds();
  const outs = [];
  for (const s of sessions) outs.push(await s.run(prefill));
  const steps = outs.map(stepFeeds);
  const prefillTimes: number[][] = sessions.map(() => []);
  const stepTimes: number[][] = sessions.map(() => []);
  for (let block = 0; block < Math.ceil(runs / 5); block++) {
    for (let k = 0; k < sessions.length; k++) {
      const s = sessions[k]!;
      for (let i = 0; i < 5; i++) {
        let t = performance.now();
        await s.run(prefill);
        prefillTimes[k]!.push(performance.now() - t);
        t = performance.now();
        await s.run(steps[k]!);
        stepTimes[k]!.push(performance.now() - t);
      }
    }
  }
  console.log(
    `KV eviction: test decoder ${SIZE.layers} layers, hidden ${SIZE.hidden}, GQA ${SIZE.heads}/${SIZE.kvHeads} heads, prompt ${N} tokens, ORT CPU batch 1`,
  );
  const d = { prefill: median(prefillTimes[0]!), step: median(stepTimes[0]!), kv: cacheBytes(outs[0]!) };
  for (let k = 0; k < sessions.length; k++) {
    const p = median(prefillTimes[k]!);
    const st = median(stepTimes[k]!);
    const kv = cacheBytes(outs[k]!);
    console.log(
      `  ${names[k]!.padEnd(34)} prefill ${p.toFixed(1)} ms (${(p / d.prefill).toFixed(2)}× dense), decode step ${st.toFixed(2)} ms (${(d.step / st).toFixed(2)}× faster), KV after prefill ${(kv / 1024).toFixed(0)} KiB (${(d.kv / kv).toFixed(2)}× smaller)`,
    );
  }
  for (const s of sessions) await s.release();
}
