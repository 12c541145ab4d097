/**
 * examples/recall (the trained decoder with a KV cache, scripts/train_recall.py): where its files
 * are, its data sets and metrics as the script writes them, and its sizes as DecoderOptions (for
 * the float64 reference decoder and the feed helpers of test/support/decoder.ts).
 */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { DecoderOptions } from "./decoder.js";

export const RECALL_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "examples", "recall");
export const RECALL_MODEL = join(RECALL_DIR, "model.onnx");

export interface RecallExample {
  prompt: number[];
  answer: number;
  context_len: number;
  key_pos: number;
  /** sample.jsonl only: torch's greedy answer and last-position logits. */
  prediction?: number;
  logits?: number[];
}

export interface RecallMetrics {
  first200_n: number;
  first200_accuracy: number;
  first200_predictions: number[];
  sample_predictions: number[];
  test: { accuracy: number };
  settings: {
    model: {
      vocab: number;
      hidden: number;
      layers: number;
      heads: number;
      kv_heads: number;
      head_size: number;
      intermediate: number;
      max_positions: number;
      rope_base: number;
      eps: number;
    };
  };
}

/** `test.jsonl` (1000 held-out prompts) or `sample.jsonl` (8 prompts with torch's answers). */
export function readRecall(name: "test.jsonl" | "sample.jsonl"): RecallExample[] {
  return readFileSync(join(RECALL_DIR, name), "utf8")
    .split("\n")
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as RecallExample);
}

export const RECALL_METRICS = JSON.parse(readFileSync(join(RECALL_DIR, "metrics.json"), "utf8")) as RecallMetrics;

const m = RECALL_METRICS.settings.model;
/** The recall decoder's sizes (an untied LM head; seed unused: the weights are read from the model). */
export const RECALL: DecoderOptions = {
  vocab: m.vocab,
  hidden: m.hidden,
  layers: m.layers,
  heads: m.heads,
  kvHeads: m.kv_heads,
  headSize: m.head_size,
  intermediate: m.intermediate,
  maxPositions: m.max_positions,
  ropeBase: m.rope_base,
  epsilon: m.eps,
  tiedEmbeddings: false,
  seed: 0,
};
