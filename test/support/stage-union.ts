/**
 * Several compilations of one model (same stage layer, different criteria) as one model that
 * computes every compilation's stage-0 scores and kept positions side by side, so an expensive
 * model (Gemma's 4096 tokens) runs once for all criteria instead of once per criterion.
 *
 * Each compilation names what its stage adds `prunec/stage0/<criterion>/...`, and every compilation
 * leaves the graph above the stage as it was (the layer's producer writes `<residual>/dense` in all
 * of them), so the stage-0 subgraphs of different criteria never collide: the union adds to the
 * first compilation the nodes (and initializers) of the others that its own graph does not produce.
 * The pruned part below the stage is the first compilation's.
 */
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { shallowCopy } from "../../src/ir/copy.js";
import { Graph, type NodeProto } from "../../src/ir/graph.js";
import { create } from "@bufbuild/protobuf";
import {
  TensorProto_DataType as DT,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
} from "../../src/onnx/gen/onnx_pb.js";
import { stageScoresName } from "./stage-tensors.js";

export interface StageTensors {
  /** The stage's scores [B, Np] (what its first TopK ranks). */
  scores: string;
  /** The kept positions int64 [B, K'] (what `prunec.stage0.indices` exposes). */
  indices: string;
}

/** Stage 0's scores and kept-positions tensors of a model compiled with exposeIndices. */
export function stageTensors(compiled: Uint8Array): StageTensors {
  const expose = decodeModel(compiled).graph!.node.find((n) => n.output[0] === "prunec.stage0.indices");
  if (!expose) throw new Error("compiled without exposeIndices: no prunec.stage0.indices");
  return { scores: stageScoresName(compiled, 0), indices: expose.input[0]! };
}

/**
 * The first compilation plus the stage-0 scoring and selection subgraphs of the others; every
 * compilation's scores and indices are graph outputs (after the first compilation's own outputs),
 * returned in the order of `compiled`.
 */
export function stageUnion(compiled: readonly Uint8Array[]): { model: Uint8Array; stages: StageTensors[] } {
  const stages = compiled.map(stageTensors);
  const base = decodeModel(compiled[0]!);
  const baseGraph = base.graph!;
  const produced = new Set(new Graph(baseGraph).producer.keys());
  const haveInit = new Set(baseGraph.initializer.map((t) => t.name));
  const nodes: NodeProto[] = [...baseGraph.node];
  const initializer = [...baseGraph.initializer];
  compiled.slice(1).forEach((bytes, i) => {
    const other = decodeModel(bytes).graph!;
    const g = new Graph(other);
    const added = new Set<NodeProto>();
    const visit = (t: string): void => {
      if (!t || produced.has(t)) return;
      const p = g.producer.get(t);
      if (!p) {
        const init = other.initializer.find((x) => x.name === t);
        if (init && !haveInit.has(t)) {
          initializer.push(init);
          haveInit.add(t);
        }
        return;
      }
      if (added.has(p)) return;
      added.add(p);
      for (const o of p.output) if (o) produced.add(o);
      for (const input of p.input) visit(input);
    };
    const s = stages[i + 1]!;
    visit(s.scores);
    visit(s.indices);
    // Graph order: the other compilation's own order restricted to what was added.
    nodes.push(...g.order.filter((n) => added.has(n)));
  });
  const output = (name: string, elemType: DT) =>
    create(ValueInfoProtoSchema, {
      name,
      type: create(TypeProtoSchema, {
        value: { case: "tensorType", value: create(TypeProto_TensorSchema, { elemType }) },
      }),
    });
  const outputs = stages.flatMap((s) => [output(s.scores, DT.FLOAT), output(s.indices, DT.INT64)]);
  const graph = shallowCopy(baseGraph, { node: nodes, initializer, output: [...baseGraph.output, ...outputs] });
  const sorted = shallowCopy(graph, { node: new Graph(graph).order });
  return { model: encodeModel(shallowCopy(base, { graph: sorted })), stages };
}
