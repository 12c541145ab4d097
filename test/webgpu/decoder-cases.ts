/**
 * The decoder-side cases of the WebGPU suite (decoder.webgpu.ts): the project's small LLaMA-style
 * test decoder (test/support/decoder.ts), prompts with a 16-token image span, one `… of image`
 * stage per decoder criterion, the TypeScript reference of each (test/reference/, fed the dense
 * model's own intermediate tensors from onnxruntime-node, as test/fastv.test.ts,
 * test/transprune.test.ts and test/text-attn.test.ts do), the selection margins the tie screen
 * reads, and a page runner that can feed bool tensors (page.js's `run` has no bool feeds; the
 * image mask is one).
 */
import { compile } from "../../src/index.js";
import { decodeModel } from "../../src/onnx/io.js";
import { runNode, type Feeds } from "../helpers/ort.js";
import {
  buildDecoder,
  decoderWeights,
  imageMaskFeed,
  imagePrompt,
  prefillFeeds,
  promptBatch,
  rotaryFrequencies,
  DECODER,
  type PromptBatch,
} from "../support/decoder.js";
import { withOutputs } from "../support/model-edit.js";
import { softmaxOutputs } from "../support/stage-tensors.js";
import { keepCount, topKPositions } from "../reference/cls-attn.js";
import { pagerankScores } from "../reference/attention-scores.js";
import { addScores, igaImageScores, ttvImageScores, type SubBlock } from "../reference/transprune.js";
import { raterRelevance, sparsevlmRaters, textAttnScores } from "../reference/sparsevlm.js";
import { ReferenceDecoder, weightsFromModel } from "../reference/decoder.js";
import { evictingGeneration } from "../reference/kv-generation.js";
import {
  causalProbs,
  expectedScores,
  keptCount,
  knormScores,
  h2oScores,
  pyramidLayerBudget,
  snapkvScores,
  type LayerInput,
  type Mat,
  type PressSpec,
} from "../reference/kv-presses.js";
import type { BrowserSession } from "./browser.js";
import type { TestServer } from "./server.js";

export const PLAIN = buildDecoder({ attention: "plain" });
export const GQA = buildDecoder({ attention: "gqa" });
/** The same weights behind plain MatMul-Softmax attention with Concat(past, k) caches (torch's export layout). */
export const PLAIN_CACHE = buildDecoder({ attention: "plain-cache" });
const WEIGHTS = decoderWeights(DECODER);
/** The decoder's rotary frequencies (expected attention's reference rotates by them). */
const THETA = rotaryFrequencies(DECODER);

export const SETS = "tokens image = input image_mask\ntokens instruction = after image";

/**
 * Candidate prompts, in the order they are tried: those of test/fastv.test.ts, fastv-cache.test.ts
 * and text-attn.test.ts first, then more of different lengths (the batch of 3 is left-padded).
 */
export const POOL: { id: string; tokens: number[]; image: boolean[] }[] = [
  imagePrompt([3, 4, 5], [20, 21, 22, 23]),
  imagePrompt([3], [24, 25]),
  imagePrompt([6, 7, 8, 9, 10], [26, 27, 28, 29, 30, 31]),
  imagePrompt([5, 6, 7], [9, 10, 11, 12]),
  imagePrompt([20], [30, 31]),
  imagePrompt([3, 4, 5, 6, 7, 8, 9], [40, 41, 42, 43, 44, 45]),
  imagePrompt([3, 4, 5], [20, 21, 22, 23, 40, 41]),
  imagePrompt([11, 12], [33, 34, 35]),
  imagePrompt([13, 14, 15, 16], [36, 37, 38, 39, 46]),
  imagePrompt([17], [18, 19, 32, 47]),
  imagePrompt([8, 9], [25, 26, 27, 28, 29]),
  imagePrompt([21, 22, 23, 24, 25, 26], [41, 42, 43]),
].map((p, i) => ({ id: `p${i}`, ...p }));

/** One decoder case: a spec with one stage, and how the reference scores the image tokens. */
export interface DecoderCase {
  key: string;
  /** What it covers: a criterion of passes/registry.ts CRITERIA, or a stage form. */
  covers: string;
  spec: string;
  /** The stage drops P% of the image tokens (100: all of them, no ranking). */
  dropPercent: number;
  /** Reference: per example of `p`, one score per image token (position order); undefined for 100%. */
  scores?: (p: PromptBatch) => Promise<ImageScores[]>;
}

/** One example's reference scores of its image tokens, and a second decision to screen (text-attn's raters). */
export interface ImageScores {
  scores: number[];
  /** Smallest relative distance of another threshold the selection depends on, and where. */
  extra?: { margin: number; at: string };
}

/** Prefill feeds with the image mask: plain decoder, and gqa decoder (empty past). */
export const plainFeeds = (p: PromptBatch): Feeds => ({ ...prefillFeeds(p, "plain"), ...imageMaskFeed(p) });
export const gqaFeeds = (p: PromptBatch): Feeds => ({ ...prefillFeeds(p, "gqa"), ...imageMaskFeed(p) });

/** The dense plain decoder's tensors `names` on prompt batch `p` (onnxruntime-node, CPU). */
async function dense(p: PromptBatch, names: string[]): Promise<Record<string, { data: Float32Array; dims: number[] }>> {
  const out = await runNode(withOutputs(PLAIN, names), prefillFeeds(p, "plain"), names);
  return Object.fromEntries(names.map((n) => [n, { data: out[n]!.data as Float32Array, dims: out[n]!.dims }]));
}

const probsOf = (layer: number) => softmaxOutputs(PLAIN)[layer]!;
/** Layer l's Softmax input: the masked attention logits (AIM's PageRank reads them). */
const attnLogitsOf = (layer: number) =>
  decodeModel(PLAIN).graph!.node.find((n) => n.output[0] === probsOf(layer))!.input[0]!;
/** Layer l's sub-block tensors: u = the norms' outputs, v = o_proj / down_proj outputs (as test/transprune.test.ts). */
const blockNames = (l: number): [string, string][] => [
  [`/model/layers.${l}/input_layernorm/output_0`, `/model/layers.${l}/attn/o_proj/MatMul/output_0`],
  [`/model/layers.${l}/post_attention_layernorm/output_0`, `/model/layers.${l}/mlp/down_proj/MatMul/output_0`],
];

const imageCols = (scores: readonly number[], image: readonly boolean[]) =>
  image.flatMap((v, j) => (v ? [scores[j]!] : []));

/** FastV: layer `layer`'s attention of the last query row (left padding: every example's last prompt token), mean over heads. */
function lastTokenScores(layer: number) {
  return async (p: PromptBatch): Promise<ImageScores[]> => {
    const t = (await dense(p, [probsOf(layer)]))[probsOf(layer)]!;
    const [, heads, n] = t.dims as [number, number, number, number];
    return p.imageMask.map((image, b) => {
      const s = Array.from({ length: n }, (_, j) => {
        let sum = 0;
        for (let h = 0; h < heads; h++) sum += t.data[((b * heads + h) * n + (n - 1)) * n + j]!;
        return sum / heads;
      });
      return { scores: imageCols(s, image) };
    });
  };
}

function igaScores(layer: number) {
  return async (p: PromptBatch): Promise<ImageScores[]> => {
    const t = (await dense(p, [probsOf(layer + 1)]))[probsOf(layer + 1)]!;
    return p.imageMask.map((image, b) => ({ scores: igaImageScores(t.data, t.dims, b, image) }));
  };
}

async function ttvBlocks(p: PromptBatch, layers: number[]): Promise<SubBlock[]> {
  const names = layers.flatMap((l) => blockNames(l).flat());
  const out = await dense(p, names);
  return layers.flatMap((l) =>
    blockNames(l).map(([u, v]) => ({ u: out[u]!.data, v: out[v]!.data, dims: out[u]!.dims })),
  );
}

function ttvScores(layers: number[]) {
  return async (p: PromptBatch): Promise<ImageScores[]> => {
    const blocks = await ttvBlocks(p, layers);
    return p.imageMask.map((image, b) => ({ scores: ttvImageScores(blocks, b, image) }));
  };
}

function transpruneScores(layer: number, ttvLayers: number[]) {
  return async (p: PromptBatch): Promise<ImageScores[]> => {
    const blocks = await ttvBlocks(p, ttvLayers);
    const t = (await dense(p, [probsOf(layer + 1)]))[probsOf(layer + 1)]!;
    return p.imageMask.map((image, b) => ({
      scores: addScores(ttvImageScores(blocks, b, image), igaImageScores(t.data, t.dims, b, image)),
    }));
  };
}

/** The embedding rows of example b's token ids (SparseVLM picks its raters on them). */
function embeddings(p: PromptBatch, b: number): number[][] {
  const d = DECODER.hidden;
  return Array.from({ length: p.seq }, (_, j) => {
    const id = Number(p.inputIds[b * p.seq + j]!);
    return Array.from(WEIGHTS.embed.subarray(id * d, (id + 1) * d));
  });
}

/**
 * How far SparseVLM's rater threshold is from deciding otherwise: min over text tokens t of
 * |m_t − mean(m)| / |mean(m)| (m as test/reference/sparsevlm.ts computes it). One text token: m_t is
 * the mean exactly on any backend (a mean of one value), the fallback is certain: Infinity.
 */
function raterMargin(embeds: readonly (readonly number[])[], image: readonly boolean[]): number {
  const { text, m, mean } = raterRelevance(embeds, image);
  if (text.length <= 1) return Infinity;
  return Math.min(...m.map((x) => Math.abs(x - mean) / Math.abs(mean)));
}

function textAttnImageScores(layer: number) {
  return async (p: PromptBatch): Promise<ImageScores[]> => {
    const t = (await dense(p, [probsOf(layer)]))[probsOf(layer)]!;
    const [, heads, n, m] = t.dims as [number, number, number, number];
    return p.imageMask.map((image, b) => {
      const perHead = Array.from({ length: heads }, (_, h) =>
        Array.from({ length: n }, (_, q) =>
          Array.from(t.data.subarray(((b * heads + h) * n + q) * m, ((b * heads + h) * n + q + 1) * m)),
        ),
      );
      const embeds = embeddings(p, b);
      const raters = sparsevlmRaters(embeds, image).raters;
      return {
        scores: imageCols(textAttnScores(perHead, raters), image),
        extra: { margin: raterMargin(embeds, image), at: "rater threshold (m_t vs mean)" },
      };
    });
  };
}

/** Example b of `p` alone: its tokens and image mask without the left padding, as a batch of 1. */
function alone(p: PromptBatch, b: number): PromptBatch {
  const o = p.offsets[b]!;
  const tokens = Array.from(p.inputIds.subarray(b * p.seq + o, (b + 1) * p.seq), Number);
  return promptBatch([tokens], "left", [p.imageMask[b]!.slice(o)]);
}

/**
 * AIM's PageRank of each example's image tokens, computed on that example alone (a batch of 1 of
 * the dense model): the compiler gives a padding query row (every key masked) no transitions, so
 * padding contributes nothing and a left-padded example keeps its batch-1 set, shifted by its
 * offset (pads are not image tokens: kept). The image tokens come in the same order either way.
 */
function pagerankImageScores(layer: number) {
  const name = attnLogitsOf(layer);
  return async (p: PromptBatch): Promise<ImageScores[]> =>
    Promise.all(
      p.imageMask.map(async (_, b) => {
        const one = alone(p, b);
        const t = (await dense(one, [name]))[name]!;
        const [, heads, n] = t.dims as [number, number, number, number];
        const perHead = Array.from({ length: heads }, (_, h) =>
          Array.from({ length: n }, (_, q) => Array.from(t.data.subarray((h * n + q) * n, (h * n + q + 1) * n))),
        );
        return { scores: imageCols(pagerankScores(perHead, 5, 0.1, 0), one.imageMask[0]!) };
      }),
    );
}

const drop50 = (criterion: string, layer = 1) => `${SETS}\nafter layer ${layer} drop 50% of image by ${criterion}\n`;

/** Every decoder criterion of passes/registry.ts (those with `requiresSets`, plus ttv and pagerank of image) and `drop 100% of image`. */
export const DECODER_CASES: DecoderCase[] = [
  {
    key: "last-token-attn",
    covers: "last-token-attn",
    spec: drop50("last-token-attn"),
    dropPercent: 50,
    scores: lastTokenScores(1),
  },
  { key: "iga", covers: "iga", spec: drop50("iga"), dropPercent: 50, scores: igaScores(1) },
  { key: "ttv", covers: "ttv", spec: drop50("ttv"), dropPercent: 50, scores: ttvScores([1]) },
  {
    key: "transprune",
    covers: "transprune",
    spec: drop50("transprune(layers: 0..1)"),
    dropPercent: 50,
    scores: transpruneScores(1, [0, 1]),
  },
  { key: "text-attn", covers: "text-attn", spec: drop50("text-attn"), dropPercent: 50, scores: textAttnImageScores(1) },
  { key: "pagerank", covers: "pagerank", spec: drop50("pagerank"), dropPercent: 50, scores: pagerankImageScores(1) },
  {
    key: "drop-all-image",
    covers: "drop 100% of image",
    spec: `${SETS}\nafter layer 2 drop 100% of image by last-token-attn\n`,
    dropPercent: 100,
  },
];

/** The FastV case behind GroupQueryAttention (KV-cache variant of the same weights): prefill. */
export const GQA_SPEC = drop50("last-token-attn");
export const GQA_REFERENCE = new ReferenceDecoder(weightsFromModel(GQA, DECODER), DECODER);

/** Every non-image token and the image tokens left after dropping round-half-up(P%) of the lowest-scored (ties: lower position kept). */
export function expectedKeep(
  image: readonly boolean[],
  scores: readonly number[] | undefined,
  dropPercent: number,
): number[] {
  const positions = image.flatMap((v, j) => (v ? [j] : []));
  const keepN = positions.length - keepCount(dropPercent, positions.length);
  const kept = keepN > 0 ? topKPositions([...scores!], keepN, 0).map((i) => positions[i]!) : [];
  return [...image.keys()].filter((j) => !image[j] || kept.includes(j));
}

/** Relative gap between the last kept and the first dropped image score (Infinity when nothing is ranked). */
export function selectionMargin(scores: readonly number[] | undefined, dropPercent: number): number {
  if (!scores) return Infinity;
  const n = scores.length;
  const k = n - keepCount(dropPercent, n);
  if (k <= 0 || k >= n) return Infinity;
  const s = [...scores].sort((a, b) => b - a);
  const [a, c] = [s[k - 1]!, s[k]!];
  return (a - c) / Math.max(Math.abs(a), Math.abs(c));
}

export function compileCase(model: Uint8Array, spec: string, target: "cpu" | "webgpu", key: string) {
  return compile(model, spec, { exposeIndices: true, target, modelName: "decoder", specName: `${key}.prune` });
}

export function batchOf(ids: readonly string[]): PromptBatch {
  const ps = ids.map((id) => POOL.find((x) => x.id === id)!);
  return promptBatch(
    ps.map((x) => x.tokens),
    "left",
    ps.map((x) => x.image),
  );
}

// ---------------------------------------------------------------------------------------------
// The page side. page.js's `run` feeds float32/int64/int32/uint8 only; the image mask is bool.
// This runner is sent as source text (not a serialised function: vitest's transform may rewrite
// a function's dynamic import or add helpers the page does not have). It imports the same module
// URL page.js's import map resolves "onnxruntime-web/webgpu" to, so it gets the same ORT instance
// and its settings (wasm paths, one thread, verbose log level). Session options as page.js's:
// executionProviders ["webgpu"] ONLY, graphOptimizationLevel "all", verbose session log.
// Errors (session creation or run) are returned, not thrown, with the phase they came from.

/**
 * Page-side source shared by the runners: fetch job.model, create the session with page.js's
 * options (executionProviders ["webgpu"] ONLY, graphOptimizationLevel "all", verbose log) and
 * time it into `out` (initialised as `init`), returning `out` with the error if creation fails.
 */
function openSession(init: string): string {
  return `  const ort = await import("/ort/ort.webgpu.bundle.min.mjs");
  const res = await fetch(job.model);
  if (!res.ok) throw new Error(job.model + ": HTTP " + res.status);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const out = ${init};
  const t0 = performance.now();
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: ["webgpu"],
      graphOptimizationLevel: "all",
      logId: job.id,
      logSeverityLevel: 0,
      logVerbosityLevel: 0,
    });
  } catch (e) {
    out.error = { phase: "create", message: String((e && e.message) || e) };
    return out;
  }
  out.createMs = performance.now() - t0;
`;
}

export interface PageFeed {
  type: "float32" | "int64" | "bool";
  dims: number[];
  data: number[];
}

export interface PageRun {
  createMs: number;
  runs: { outputs: Record<string, { type: string; dims: number[]; data: number[] }>; runMs: number }[];
  error?: { phase: "create" | "run"; batch?: number; message: string };
}

const PAGE_RUNNER = `async (job) => {
${openSession("{ createMs: 0, runs: [] }")}  try {
    for (let b = 0; b < job.batches.length; b++) {
      const feeds = {};
      for (const [name, f] of Object.entries(job.batches[b])) {
        const data = f.type === "int64" ? BigInt64Array.from(f.data, (v) => BigInt(v)) : f.type === "bool" ? Uint8Array.from(f.data) : Float32Array.from(f.data);
        feeds[name] = new ort.Tensor(f.type, data, f.dims);
      }
      const t1 = performance.now();
      let res;
      try {
        res = await session.run(feeds, job.outputs);
      } catch (e) {
        out.error = { phase: "run", batch: b, message: String((e && e.message) || e) };
        return out;
      }
      const runMs = performance.now() - t1;
      const outputs = {};
      for (const name of job.outputs) {
        const t = res[name];
        if (!t) throw new Error("no output " + name);
        const data = await t.getData();
        outputs[name] = { type: t.type, dims: [...t.dims], data: Array.from(data, (v) => Number(v)) };
        t.dispose();
      }
      out.runs.push({ outputs, runMs });
    }
    return out;
  } finally {
    await session.release();
  }
}`;

/** Feeds as plain arrays for the page (bool as 0/1, int64 as numbers: small ids and positions). */
export function pageFeeds(f: Feeds): Record<string, PageFeed> {
  const out: Record<string, PageFeed> = {};
  for (const [name, t] of Object.entries(f)) {
    if (t.type !== "float32" && t.type !== "int64" && t.type !== "bool")
      throw new Error(`feed ${name}: type ${t.type} not supported by the decoder page runner`);
    out[name] = { type: t.type, dims: [...t.dims], data: Array.from(t.data as ArrayLike<number | bigint>, Number) };
  }
  return out;
}

/**
 * Runs `model` in the page on each feed set (one session, ORT logId `id`), fetching `outputs`.
 * Also returns the browser console lines logged meanwhile (ORT's verbose log, via Playwright).
 */
export async function runDecoderInBrowser(
  server: TestServer,
  browser: BrowserSession,
  id: string,
  model: Uint8Array,
  feeds: Feeds[],
  outputs: string[],
): Promise<PageRun & { log: string[] }> {
  const modelUrl = server.put(`${id}.onnx`, model);
  const job = { id, model: modelUrl, batches: feeds.map(pageFeeds), outputs };
  const start = browser.console.length;
  const run = (await browser.page.evaluate(`(${PAGE_RUNNER})(${JSON.stringify(job)})`)) as PageRun;
  // Console events of the run arrive before the evaluation's result on the same connection.
  const log = browser.console.slice(start).map((l) => l.replace(/^\[\w+\] /, ""));
  return { ...run, log };
}

// ---------------------------------------------------------------------------------------------
// KV-cache stages (`keep kv P% by PRESS`, docs/kv-cache.md) on the GroupQueryAttention decoder:
// prefill evicts per layer and KV head, then greedy decode steps run over the shorter caches.

/** One KV case: a spec whose only stage is `keep kv …` in every cached layer, and its float64 reference press. */
export interface KvCase {
  key: string;
  spec: string;
  /** The reference press for an N-token prompt (test/reference/kv-presses.ts). */
  press: (n: number) => PressSpec;
  /** The reference scores [kvHead][position] of one layer (for the tie screen). */
  scores: (x: LayerInput) => Mat;
  /** K' for an N-token prompt, in layer `layer` (PyramidKV's differ per layer). */
  kept: (n: number, layer: number) => number;
  /** The decoder compiled: GroupQueryAttention (default) or plain attention with Concat caches. */
  layout?: "plain-cache";
}

export const KV_CASES: KvCase[] = [
  {
    key: "kv-knorm",
    spec: "keep kv 50% by knorm",
    press: () => ({ method: "knorm", budget: { keepPercent: 50 } }),
    scores: (x) => knormScores(x.k),
    kept: (n) => keptCount(n, { keepPercent: 50 }),
  },
  {
    key: "kv-snapkv",
    spec: "keep kv 50% by snapkv(window: 4, kernel: 3)",
    press: () => ({ method: "snapkv", budget: { keepPercent: 50 }, window: 4, kernel: 3 }),
    scores: (x) => snapkvScores(causalProbs(x.q, x.k), x.k.length, 4, 3),
    kept: (n) => keptCount(n, { keepPercent: 50 }),
  },
  {
    // Per-layer budgets from int64 tables (WebGPU has no float64 kernels).
    key: "kv-pyramidkv",
    spec: "keep kv 50% by pyramidkv(window: 4, kernel: 3, beta: 2)",
    press: () => ({ method: "pyramidkv", budget: { keepPercent: 50 }, window: 4, kernel: 3, beta: 2 }),
    scores: (x) => snapkvScores(causalProbs(x.q, x.k), x.k.length, 4, 3),
    kept: (n, layer) => Math.max(1, pyramidLayerBudget(layer, DECODER.layers, n, 0.5, 4, 2)),
  },
  {
    key: "kv-expected",
    spec: "keep kv 50% by expected-attn(sinks: 2, future: 16)",
    press: () => ({ method: "expected", budget: { keepPercent: 50 }, theta: THETA, sinks: 2, future: 16 }),
    scores: (x) => expectedScores(x.qPre!, x.k, x.v, { theta: THETA, sinks: 2, future: 16 }),
    kept: (n) => keptCount(n, { keepPercent: 50 }),
  },
  {
    key: "kv-h2o-plain",
    spec: "keep kv 50% by h2o(recent: 2)",
    press: (n) => ({ method: "h2o", heavy: keptCount(n, { keepPercent: 50 }) - 2, recent: 2 }),
    scores: (x) => h2oScores(causalProbs(x.q, x.k), x.k.length),
    kept: (n) => keptCount(n, { keepPercent: 50 }),
    layout: "plain-cache",
  },
];

/**
 * Left-padded batch forms of KV stages on the GQA decoder (WebGPU against onnxruntime-node, which
 * test/kv-cache.test.ts proves against the float64 references for the same forms).
 */
export interface KvBatchCase {
  key: string;
  spec: string;
  /** Compiled with `--kv-state` (validity carried between calls, fed empty at the first). */
  kvState?: boolean;
  /**
   * A decode-time stage (`during decode`): kept slots compared at every call; `scores`: its score
   * pairs (h2o, a2sf; not streaming) are fed empty at the first call.
   */
  decode?: { scores: boolean | "cascade" };
}

export const KV_BATCH_CASES: KvBatchCase[] = [
  { key: "kv-batch-count", spec: "keep kv 50% by snapkv(window: 4, kernel: 3)" },
  { key: "kv-batch-state", spec: "keep kv 50% by snapkv(window: 4, kernel: 3)", kvState: true },
  { key: "kv-batch-of-image", spec: `${SETS}\nkeep kv 25% of image by knorm` },
  { key: "kv-batch-expected", spec: "keep kv 50% by expected-attn(sinks: 2, future: 16)" },
  {
    key: "kv-batch-decode-a2sf",
    spec: "during decode keep kv 12 tokens by a2sf(forget: 0.9, recent: 3)",
    decode: { scores: true },
  },
  { key: "kv-batch-decode-h2o", spec: "during decode keep kv 10 tokens by h2o(recent: 2)", decode: { scores: true } },
  // A prefill press composed with the decode rule: snapkv's ScatterElements mask in the prefill branch.
  {
    key: "kv-batch-decode-composed",
    spec: "keep kv 50% by snapkv(window: 4)\nduring decode keep kv 12 tokens by h2o(recent: 2)",
    decode: { scores: true },
  },
  // SpAtten's cascade: one set for all layers, one shared score pair.
  { key: "kv-batch-decode-spatten", spec: "during decode keep kv 10 tokens by spatten", decode: { scores: "cascade" } },
  {
    key: "kv-batch-decode-streaming",
    spec: "during decode keep kv 9 tokens by streaming(sinks: 3)",
    decode: { scores: false },
  },
];

/** Greedy tokens generated per case (the prefill's and each decode step's). */
export const KV_STEPS = 6;

/**
 * The float64 reference of a KV case on one prompt (as test/kv-cache.test.ts): GQA_REFERENCE's dense
 * prefill (capturing every layer's rotated q and its k, v), eviction by the reference press, greedy
 * decode over the kept cache (positions count the dense tokens). Also the smallest selection margin
 * over layers and KV heads: relative gap between the K'-th and (K'+1)-th reference score.
 */
export function kvReference(c: KvCase, prompt: readonly number[], steps: number) {
  const gen = evictingGeneration(GQA_REFERENCE, prompt, c.press(prompt.length), steps);
  let margin = Infinity;
  for (const [l, x] of gen.layers.entries())
    for (const row of c.scores(x)) {
      const k = c.kept(prompt.length, l);
      const s = [...row].sort((a, b) => b - a);
      if (k < s.length) margin = Math.min(margin, (s[k - 1]! - s[k]!) / Math.max(Math.abs(s[k - 1]!), Math.abs(s[k]!)));
    }
  return { kept: gen.kept, tokens: gen.tokens, margin };
}

/** What the page's generation loop returns. */
export interface KvPageRun {
  createMs: number;
  /** Prefill's `prunec.stage0.layerL.kv_indices` outputs. */
  indices: Record<string, { dims: number[]; data: number[] }>;
  /** Prefill's `present.L.prunec_valid` outputs (`--kv-state`). */
  validity: Record<string, { dims: number[]; data: number[] }>;
  /** Greedy tokens per example: the prefill's, then each decode step's. */
  tokens: number[][];
  /** Per call (prefill, then each decode step): each example's last logits row, concatenated, and every present output's dims. */
  calls: {
    logits: number[];
    presentDims: Record<string, number[]>;
    runMs: number;
    /** This call's `prunec.stage0.layerL.kv_indices` (a decode-time stage evicts at every call). */
    indices: Record<string, { dims: number[]; data: number[] }>;
  }[];
  error?: { phase: "create" | "run"; step?: number; message: string };
}

/**
 * Greedy generation in the page, one WebGPU session (executionProviders ["webgpu"] ONLY, as
 * PAGE_RUNNER), for a left-padded batch: the prefill feeds given, then `steps − 1` decode steps
 * that feed each example's argmax of its last logits row, its attention mask one column longer, its
 * next dense position (its own length + step − 1), an all-false image mask when the prefill had
 * one, and every `present.*` output back as `past_key_values.*` (whatever its length; `--kv-state`'s
 * validity too), as transformers.js does. The same loop as test/support/decoder.ts's decodeSteps.
 * Source text for the same reasons as PAGE_RUNNER.
 */
const KV_PAGE_RUNNER = `async (job) => {
${openSession("{ createMs: 0, indices: {}, validity: {}, tokens: [], calls: [] }")}  const int64 = (values, dims) => new ort.Tensor("int64", BigInt64Array.from(values, (v) => BigInt(v)), dims);
  const tensor = (f) =>
    f.type === "int64" ? int64(f.data, f.dims)
    : f.type === "bool" ? new ort.Tensor("bool", Uint8Array.from(f.data), f.dims)
    : new ort.Tensor("float32", Float32Array.from(f.data), f.dims);
  let feeds = {};
  for (const [name, f] of Object.entries(job.prefill)) feeds[name] = tensor(f);
  const batch = job.lengths.length;
  out.tokens = job.lengths.map(() => []);
  let mask = job.prefill.attention_mask.data.slice();
  let total = job.prefill.attention_mask.dims[1];
  let previous;
  try {
    for (let step = 0; step < job.steps; step++) {
      if (step > 0) {
        const next = [];
        for (let b = 0; b < batch; b++) next.push(...mask.slice(b * total, (b + 1) * total), 1);
        mask = next;
        total += 1;
        feeds = {
          input_ids: int64(out.tokens.map((t) => t[t.length - 1]), [batch, 1]),
          attention_mask: int64(mask, [batch, total]),
          position_ids: int64(job.lengths.map((n) => n + step - 1), [batch, 1]),
        };
        if (job.prefill.image_mask) feeds.image_mask = new ort.Tensor("bool", new Uint8Array(batch), [batch, 1]);
        for (const name of session.outputNames)
          if (name.startsWith("present.")) feeds[name.replace(/^present/, "past_key_values")] = previous[name];
      }
      const t1 = performance.now();
      let res;
      try {
        res = await session.run(feeds);
      } catch (e) {
        out.error = { phase: "run", step, message: String((e && e.message) || e) };
        return out;
      }
      const runMs = performance.now() - t1;
      const logits = await res.logits.getData();
      const rows = res.logits.dims[1];
      const last = [];
      for (let b = 0; b < batch; b++) {
        const row = Array.from(logits.subarray(((b + 1) * rows - 1) * job.vocab, (b + 1) * rows * job.vocab));
        let best = 0;
        for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
        out.tokens[b].push(best);
        last.push(...row);
      }
      const presentDims = {};
      const callIndices = {};
      for (const name of session.outputNames) {
        if (name.startsWith("present.")) presentDims[name] = [...res[name].dims];
        const read = async () => ({ dims: [...res[name].dims], data: Array.from(await res[name].getData(), (v) => Number(v)) });
        if (name.endsWith(".kv_indices")) {
          const t = await read();
          if (step === 0) out.indices[name] = t;
          callIndices[name] = t;
        }
        if (step === 0 && name.endsWith(".prunec_valid")) out.validity[name] = await read();
      }
      out.calls.push({ logits: last, presentDims, runMs, indices: callIndices });
      if (previous) for (const t of Object.values(previous)) t.dispose();
      previous = res;
    }
    return out;
  } finally {
    if (previous) for (const t of Object.values(previous)) t.dispose();
    await session.release();
  }
}`;

/**
 * Greedy generation of `steps` tokens with `model` in the page from the prefill feeds of a
 * (left-padded) prompt batch whose examples have `lengths` real tokens.
 */
export async function generateInBrowser(
  server: TestServer,
  browser: BrowserSession,
  id: string,
  model: Uint8Array,
  prefill: Feeds,
  lengths: readonly number[],
  steps: number,
): Promise<KvPageRun & { log: string[] }> {
  const modelUrl = server.put(`${id}.onnx`, model);
  const job = { id, model: modelUrl, prefill: pageFeeds(prefill), lengths, steps, vocab: DECODER.vocab };
  const start = browser.console.length;
  const run = (await browser.page.evaluate(`(${KV_PAGE_RUNNER})(${JSON.stringify(job)})`)) as KvPageRun;
  const log = browser.console.slice(start).map((l) => l.replace(/^\[\w+\] /, ""));
  return { ...run, log };
}
