/** Reading a compiled stage's own tensors back (tests): the scores its selection ranks. */
import { decodeModel } from "../../src/onnx/io.js";

/** The tensor stage `stage`'s first TopK (largest=1) ranks: the criterion's scores [B, Np] (or [B, groups]). */
export function stageScoresName(compiled: Uint8Array, stage: number): string {
  const g = decodeModel(compiled).graph!;
  const topk = g.node.find(
    (n) =>
      n.opType === "TopK" &&
      n.name.startsWith(`prunec/stage${stage}/`) &&
      n.attribute.some((a) => a.name === "largest" && a.i === 1n),
  );
  if (!topk) throw new Error(`stage ${stage} has no TopK`);
  return topk.input[0]!;
}

/** Names of the Softmax outputs, in graph order (the probabilities of an unfused model's layers). */
export function softmaxOutputs(model: Uint8Array): string[] {
  return decodeModel(model)
    .graph!.node.filter((n) => n.opType === "Softmax")
    .map((n) => n.output[0]!);
}

/**
 * FastV's score of key j in example b: the last query row's probability for j, averaged over the
 * heads, from a layer's softmax output [B, H, N, N].
 */
export function lastRowAttention(probs: Float32Array, dims: readonly number[], b: number): (j: number) => number {
  const [, heads, n] = dims as [number, number, number];
  return (j) => {
    let s = 0;
    for (let h = 0; h < heads; h++) s += probs[((b * heads + h) * n + (n - 1)) * n + j]!;
    return s / heads;
  };
}
