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
