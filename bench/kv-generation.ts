/**
 * Eviction while generating, measured (part of `npm run bench`): the project's test decoder at the
 * bench size of bench/decoder.ts generates 2,000 tokens after a 64-token prompt, dense vs
 * `during decode keep kv C tokens` by h2o and a2sf. Every model runs the same token stream (the
 * work per step does not depend on which tokens), one step of each model in turn, so the machine's
 * drift hits all alike. Prints the KV bytes each model holds after 100, 1,000 and 2,000 tokens and
 * the median step latency around those points: the dense cache and step time grow with the
 * length, the evicted ones stay flat.
 *
 *   npx tsx bench/kv-generation.ts [--tokens 2000]
 */
import "./no-telemetry.js";
import { pathToFileURL } from "node:url";
import * as ort from "onnxruntime-node";
import { compile } from "../src/compile.js";
import { buildDecoder, type DecoderOptions } from "../test/support/decoder.js";
import { BENCH_DECODER } from "./decoder.js";
import { cacheBytes, emptyPast, emptyStates, int64, pastOf } from "./feeds.js";

const PROMPT = 64;
export const GENERATION_SPECS = [
  "during decode keep kv 256 tokens by h2o(recent: 32)",
  "during decode keep kv 256 tokens by a2sf(forget: 0.9, recent: 32)",
  "during decode keep kv 512 tokens by a2sf(forget: 0.9, recent: 32)",
];

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const token = (i: number) => 3 + ((i * 7) % 200);

export async function benchKvGeneration(tokens = 2000): Promise<void> {
  const size: DecoderOptions = { ...BENCH_DECODER, maxPositions: PROMPT + tokens + 8 };
  const dense = buildDecoder({ attention: "gqa" }, size);
  const names = ["dense", ...GENERATION_SPECS];
  const sessions = await Promise.all(
    [dense, ...GENERATION_SPECS.map((s) => compile(dense, s).model)].map((m) =>
      ort.InferenceSession.create(m, { intraOpNumThreads: 1, interOpNumThreads: 1 }),
    ),
  );
  const positions = Array.from({ length: PROMPT }, (_, i) => i);
  let pasts = sessions.map((s) => ({ ...emptyPast(size), ...emptyStates(s) }));
  const checkpoints = [100, 1000, tokens].filter((c) => c <= tokens);
  const times: number[][] = sessions.map(() => []);
  const bytes: { keyValue: number; scores: number }[][] = sessions.map(() => []);
  for (let step = 0; step < tokens; step++) {
    const feeds =
      step === 0
        ? {
            input_ids: int64(positions.map(token), [1, PROMPT]),
            attention_mask: int64(new Array<number>(PROMPT).fill(1), [1, PROMPT]),
            position_ids: int64(positions, [1, PROMPT]),
          }
        : {
            input_ids: int64([token(PROMPT + step)], [1, 1]),
            attention_mask: int64(new Array<number>(PROMPT + step).fill(1), [1, PROMPT + step]),
            position_ids: int64([PROMPT + step - 1], [1, 1]),
          };
    for (let k = 0; k < sessions.length; k++) {
      const t = performance.now();
      const out = await sessions[k]!.run({ ...feeds, ...pasts[k]! });
      times[k]!.push(performance.now() - t);
      pasts[k] = pastOf(out);
      if (checkpoints.includes(step + 1)) {
        const kv = Object.fromEntries(Object.entries(out).filter(([n]) => /^present\.\d+\.(key|value)$/.test(n)));
        const scores = Object.fromEntries(Object.entries(out).filter(([n]) => n.endsWith(".prunec_score")));
        bytes[k]!.push({ keyValue: cacheBytes(kv), scores: cacheBytes(scores) });
      }
    }
  }
  for (const s of sessions) await s.release();
  pasts = [];
  // Step latency around each checkpoint: the median of the 100 decode steps before it.
  const around = (k: number, c: number) => median(times[k]!.slice(Math.max(1, c - 100), c));
  console.log(
    `decoder ${size.layers} layers × ${size.kvHeads} KV heads × ${size.headSize}, ${PROMPT}-token prompt, ${tokens} tokens generated (ORT CPU, one thread, batch 1; each model's step in turn):`,
  );
  console.log(
    `  ${"model".padEnd(66)} ${checkpoints.map((c) => `KV @${c}`.padStart(12)).join("")} ${checkpoints.map((c) => `step @${c}`.padStart(14)).join("")}`,
  );
  names.forEach((name, k) => {
    const kb = bytes[k]!.map((b) => `${(b.keyValue / 1024).toFixed(0)} KiB`.padStart(12)).join("");
    const ms = checkpoints
      .map((c) => `${around(k, c).toFixed(2)} ms (${(around(0, c) / around(k, c)).toFixed(2)}×)`.padStart(14))
      .join("");
    console.log(`  ${name.padEnd(66)} ${kb} ${ms}`);
  });
  const scores = bytes.slice(1).map((b) => b.at(-1)!.scores);
  console.log(
    `  (the carried scores add ${scores.map((s) => `${(s / 1024).toFixed(0)} KiB`).join(" / ")}: one float per kept entry and KV head, ${size.headSize * 2}× less than its key and value)`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  await benchKvGeneration(args.includes("--tokens") ? Number(args[args.indexOf("--tokens") + 1]) : 2000);
}
