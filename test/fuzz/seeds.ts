/**
 * What the fuzzers mutate: the models prunec ships (and, when ../shared is present, the ViT-Ti and
 * the graph-only exports of Gemma-3 and Qwen2-VL / Qwen3.5 towers and decoders), the small
 * real torch exports of test/fixtures/exports (other model forms: post-norm, sequence-first,
 * RMSNorm, einsum, DeiT, Swin), and models built in code (fused MultiHeadAttention ViT, plain and
 * GroupQueryAttention decoders), each with specs that compile on it; and the .prds data sets.
 */
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, sharedModel } from "../helpers/shared.js";
import { buildFusedVit } from "../support/fused-vit.js";
import { buildDecoder } from "../support/decoder.js";

export interface SeedModel {
  name: string;
  /** Where the bytes come from (a repository-relative path, or "built in code"). */
  source: string;
  bytes(): Uint8Array;
  /** Specs that compile on the unmutated model. */
  specs: readonly string[];
  /** Layers (for spec generation against this model). */
  layers: number;
}

const VIT_SPECS = [
  "after layer 1 keep 25% by cls-attn",
  "after layer 0 keep 50% by global-attn\nafter layer 2 keep 8 tokens by norm",
  "after layer 1 merge 25% by similarity",
  "after layer 1 keep mass 60% by cls-attn with mask",
  "after layer 1 keep 50% by diversity",
  "after layer 2 keep 25% by pagerank",
  "after layer 1 keep 25% by cls-attn with recycle",
  "after layer 0 keep 50% by random(seed: 3); after layer 2 keep 50% by uniform",
  "after layer 1 keep 50% by flowcut\nafter layer -1 keep 50% by cls-attn-ensemble(layers: 2..3)",
  "after layer 1 keep 25% by fopru(strategy: rows) with recycle",
];
const EXPORT_SPECS = [
  "after layer 0 keep 50% by cls-attn",
  "after layer 1 keep 50% by global-attn",
  "after layer 0 keep 25% by norm; after layer 1 keep 50% by cls-attn",
  "after layer 0 keep 50% by k-center",
];
const DECODER_SPECS = [
  "tokens image = input image_mask\nafter layer 1 drop 50% of image by last-token-attn",
  "tokens image = input image_mask\nafter layer 1 drop 50% of image by pagerank",
  "tokens image = input image_mask\ntokens instruction = after image\nafter layer 1 drop 50% of image by iga",
  "tokens image = input image_mask\nafter layer 1 drop 50% of image by text-attn",
  "tokens image = input image_mask\nafter layer 0 merge 25% by similarity\nafter layer 2 drop 50% of image by norm",
  "in layers 1..2 keep kv 25% by snapkv(window: 4)",
  "tokens image = input image_mask\nafter layer 1 drop 50% of image by last-token-attn\nkeep kv 50% by h2o(recent: 2)",
];

const GRAPH_ONLY: [string, string, string[], number][] = [
  [
    "gemma3-vision",
    "graph-only/gemma-3-4b-vlm/vision_encoder.onnx",
    ["after encoder keep 50% by global-attn", "after encoder keep 25% by norm"],
    27,
  ],
  [
    "gemma3-vision-q",
    "graph-only/gemma-3-4b-vlm/vision_encoder_quantized.onnx",
    ["after encoder keep 50% by global-attn"],
    27,
  ],
  [
    "gemma3-decoder",
    "graph-only/gemma-3-4b-vlm/decoder_model_merged.onnx",
    ["tokens image = input image_mask\nafter layer 1 drop 50% of image by last-token-attn"],
    34,
  ],
  [
    "qwen2vl-vision",
    "graph-only/qwen2-vl-2b-vision-tower-torchexport/model.onnx",
    ["after layer 2 keep 50% by global-attn", "after encoder keep 50% by global-attn"],
    32,
  ],
  [
    "qwen35-vision-q",
    "graph-only/qwen3.5-0.8b-vlm-int8/vision_encoder_quantized.onnx",
    ["after layer 2 keep 50% by global-attn"],
    12,
  ],
  [
    "qwen35-decoder-q",
    "graph-only/qwen3.5-0.8b-vlm-int8/decoder_model_merged_quantized.onnx",
    ["after layer 3 keep 50% by norm"],
    24,
  ],
];

function cached(load: () => Uint8Array): () => Uint8Array {
  let bytes: Uint8Array | undefined;
  return () => (bytes ??= load());
}

function file(path: string): () => Uint8Array {
  return cached(() => new Uint8Array(readFileSync(path)));
}

const VIT_TI = sharedModel("synthetic/vit-ti16-cls-randinit/model.onnx");
const EXPORTS = join(REPO_ROOT, "test", "fixtures", "exports");

/** Every seed model available here (the shared ViT-Ti only when ../shared has it). */
export function seedModels(): SeedModel[] {
  const seeds: SeedModel[] = [
    {
      name: "tiny-vit",
      source: "examples/tiny-vit/model.onnx",
      bytes: file(join(REPO_ROOT, "examples/tiny-vit/model.onnx")),
      specs: VIT_SPECS,
      layers: 4,
    },
    {
      name: "digits",
      source: "examples/digits/model.onnx",
      bytes: file(join(REPO_ROOT, "examples/digits/model.onnx")),
      specs: VIT_SPECS,
      layers: 6,
    },
  ];
  if (existsSync(VIT_TI))
    seeds.push({
      name: "vit-ti16",
      source: "../shared/models/synthetic/vit-ti16-cls-randinit/model.onnx",
      bytes: file(VIT_TI),
      specs: VIT_SPECS,
      layers: 12,
    });
  // Real exports without weights (fused attention, quantized MatMuls, Skip norms, merged encoders).
  for (const [name, rel, specs, layers] of GRAPH_ONLY) {
    const path = sharedModel(rel);
    if (existsSync(path)) seeds.push({ name, source: `../shared/models/${rel}`, bytes: file(path), specs, layers });
  }
  if (existsSync(EXPORTS)) {
    for (const f of readdirSync(EXPORTS)
      .filter((f) => f.endsWith(".onnx"))
      .sort()) {
      seeds.push({
        name: `export:${f.replace(/\.onnx$/, "")}`,
        source: `test/fixtures/exports/${f}`,
        bytes: file(join(EXPORTS, f)),
        specs: EXPORT_SPECS,
        layers: 2,
      });
    }
  }
  const only = process.env["PRUNEC_FUZZ_SEEDS"];
  seeds.push(
    {
      name: "fused-vit",
      source: "built in code (test/support/fused-vit.ts)",
      bytes: cached(() => buildFusedVit()),
      specs: [
        "after layer 1 keep 50% by cls-attn",
        "after layer 0 keep 50% by global-attn",
        "after layer 1 keep mass 60% by cls-attn with mask",
      ],
      layers: 3,
    },
    {
      name: "decoder-plain",
      source: "built in code (test/support/decoder.ts, plain)",
      bytes: cached(() => buildDecoder({ attention: "plain" })),
      // No cache to evict: the KV specs are the cached decoders'.
      specs: DECODER_SPECS.filter((s) => !/\bkv\b/.test(s)),
      layers: 4,
    },
    {
      name: "decoder-gqa",
      source: "built in code (test/support/decoder.ts, gqa)",
      bytes: cached(() => buildDecoder({ attention: "gqa" })),
      specs: DECODER_SPECS,
      layers: 4,
    },
    {
      name: "decoder-gqa-rotary-op",
      source: "built in code (test/support/decoder.ts, gqa, rotary: op)",
      bytes: cached(() => buildDecoder({ attention: "gqa", rotary: "op" })),
      specs: DECODER_SPECS,
      layers: 4,
    },
  );
  if (only === undefined) return seeds;
  // PRUNEC_FUZZ_SEEDS=REGEX: a campaign aimed at some seeds (model attacks draw only those).
  const chosen = seeds.filter((s) => new RegExp(only).test(s.name));
  if (!chosen.length)
    throw new Error(`PRUNEC_FUZZ_SEEDS=${only} matches none of ${seeds.map((s) => s.name).join(", ")}`);
  return chosen;
}

/**
 * How often each seed is drawn: the shipped models most (the brief's targets), the other forms
 * for coverage of the analysis paths they take.
 */
export function seedWeight(s: SeedModel): number {
  if (s.name === "tiny-vit" || s.name === "digits") return 6;
  if (s.name === "vit-ti16") return 3;
  if (s.name.startsWith("export:")) return 0.5;
  if (s.source.includes("graph-only/")) return 0.5;
  return 2;
}

export interface SeedDataset {
  name: string;
  bytes(): Uint8Array;
}

/** A .prds with the given header and n·c·h·w pixels (labels i % classes, pixels i·7 % 256). */
export function makePrds(header: Record<string, unknown>, n: number, pixels: number): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(12 + json.length + n + pixels);
  out.set(new TextEncoder().encode("PRUNEDS1"), 0);
  new DataView(out.buffer).setUint32(8, json.length, true);
  out.set(json, 12);
  const classes = typeof header["classes"] === "number" && header["classes"] > 0 ? header["classes"] : 10;
  for (let i = 0; i < n; i++) out[12 + json.length + i] = i % classes;
  for (let i = 0; i < pixels; i++) out[12 + json.length + n + i] = (i * 7) % 256;
  return out;
}

export function seedDatasets(): SeedDataset[] {
  return [
    { name: "digits/sample.prds", bytes: file(join(REPO_ROOT, "examples/digits/sample.prds")) },
    {
      name: "tiny (2 examples, 1×4×4, labels)",
      bytes: cached(() =>
        makePrds({ n: 2, channels: 1, height: 4, width: 4, classes: 3, labels: ["a", "b", "c"] }, 2, 32),
      ),
    },
  ];
}
