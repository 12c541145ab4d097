/**
 * SpAtten's cascade token pruning (HPCA'21; methods.md §27: the public code has no cascade, so this
 * is written from the paper's equations, independent of prunec): every token's importance is the
 * attention it has received, summed over heads and query rows, accumulated layer by layer from layer
 * 0; tokens pruned at a stage leave the sequence for every later layer, the survivors keep their
 * running score. One example at a time; probabilities [layer][head][query][key] over the tokens
 * that layer saw.
 */
import { keepCount, topKPositions } from "./cls-attn.js";

/** One stage: the probabilities of the layers since the previous stage (up to this one's layer), and its keep percentage. */
export interface SpattenStage {
  layers: number[][][][];
  keepPercent: number;
}

/** Σ_h Σ_i P[h][i][j] for every key j. */
function received(probs: number[][][]): number[] {
  const n = probs[0]![0]!.length;
  const out = new Array<number>(n).fill(0);
  for (const head of probs) for (const row of head) row.forEach((p, j) => (out[j]! += p));
  return out;
}

/** Kept positions per stage (numbered as that stage's input tokens, prefix first, ascending) and each stage's running scores. */
export function spattenCascade(
  stages: readonly SpattenStage[],
  prefix: number,
): { kept: number[][]; scores: number[][] } {
  const kept: number[][] = [];
  const scores: number[][] = [];
  let running: number[] | undefined;
  for (const stage of stages) {
    let s = running ?? new Array<number>(stage.layers[0]![0]![0]!.length).fill(0);
    for (const layer of stage.layers) {
      const r = received(layer);
      if (r.length !== s.length) throw new Error(`a layer saw ${r.length} tokens, the running score has ${s.length}`);
      s = s.map((x, j) => x + r[j]!);
    }
    const prunable = s.slice(prefix);
    const keep = topKPositions(prunable, keepCount(stage.keepPercent, prunable.length), prefix);
    kept.push(keep);
    scores.push(s);
    running = keep.map((j) => s[j]!);
  }
  return { kept, scores };
}
