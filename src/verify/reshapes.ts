/**
 * Reshapes below a stage must keep their element count. An exporter may bake a token count into a
 * Reshape's constant target (static-batch exports fold `batch·tokens` into one number); a stage
 * that changes the count then leaves a Reshape onnxruntime refuses at run time. Where the inferred
 * input and output shapes are fully static, prunec can prove it before writing. Pure.
 */
import type { NodeProto } from "../onnx/gen/onnx_pb.js";
import type { Shape, ShapeMap } from "../analysis/dims.js";

export interface ReshapeIssue {
  node: NodeProto;
  message: string;
}

const count = (s: Shape): number | undefined =>
  s.every((d): d is number => typeof d === "number") ? s.reduce((a, b) => a * b, 1) : undefined;

/** Reshape nodes among `nodes` whose static input and output element counts differ. */
export function reshapeIssues(nodes: Iterable<NodeProto>, shapes: ShapeMap): ReshapeIssue[] {
  const issues: ReshapeIssue[] = [];
  for (const n of nodes) {
    if (n.opType !== "Reshape" || (n.domain !== "" && n.domain !== "ai.onnx")) continue;
    const data = n.input[0] ? shapes.get(n.input[0]) : undefined;
    const out = n.output[0] ? shapes.get(n.output[0]) : undefined;
    const a = data && count(data);
    const b = out && count(out);
    if (a === undefined || b === undefined || a === b) continue;
    issues.push({
      node: n,
      message: `node '${n.name}' (Reshape) reshapes [${data!.join(", ")}] (${a} elements) to [${out!.join(", ")}] (${b} elements): its target shape does not follow the stage's token count`,
    });
  }
  return issues;
}
