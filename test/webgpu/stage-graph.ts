/**
 * What each of prunec's nodes in a compiled model is for, read from the graph's structure (no node
 * names hard-coded beyond prunec's `prunec/stageN/` namespace), and which of ORT's device↔host
 * copies touch them.
 *
 *   data path  a node that is an ancestor of a model output (logits): scoring, selection, gather,
 *              concat; the pruned residual stream depends on it.
 *   expose     a node that is NOT an ancestor of any model output but is one of its stage's
 *              `prunec.stageN.indices` output (the exposure Identity, and with `--target webgpu`
 *              the int64 prefix arithmetic that turns the kept positions into token positions).
 *
 * A prunec node that is neither is dead code, which prunec never emits; `stageNodes` throws.
 *
 * Copies (ORT's transformer_memcpy.cc): "Add MemcpyToHost before T" means T is written on the GPU
 * and read by CPU nodes (those read the copy); "Add MemcpyFromHost after T" means T is written on
 * the CPU (or is an initializer/graph input) and read by GPU nodes (those read the copy). A copy
 * belongs to a stage when T's producer or a consumer is one of the stage's nodes, and is an
 * exposure copy when every node reading the copy is an exposure node; otherwise it is on the data
 * path.
 */
import type { GraphProto, NodeProto } from "../../src/onnx/gen/onnx_pb.js";
import { CPU_EP, WEBGPU_EP, type MemcpyNote, type PlacementLog } from "./placement.js";

export type Role = "data" | "expose";

export interface StageNode {
  name: string;
  opType: string;
  stage: number;
  role: Role;
}

export interface StageCopy extends MemcpyNote {
  stage: number;
  role: Role;
  /** The node writing T, and the nodes reading the copy (on the other device). */
  producer: string | null;
  readers: string[];
}

const INDICES = /^prunec\.stage(\d+)\.indices$/;
const STAGE = /^prunec\/stage(\d+)\//;

export function stageOf(nodeName: string): number | undefined {
  const m = STAGE.exec(nodeName);
  return m ? Number(m[1]) : undefined;
}

interface Index {
  producer: Map<string, NodeProto>;
  consumers: Map<string, NodeProto[]>;
}

function index(graph: GraphProto): Index {
  const producer = new Map<string, NodeProto>();
  const consumers = new Map<string, NodeProto[]>();
  for (const n of graph.node) {
    for (const o of n.output) if (o) producer.set(o, n);
    for (const i of n.input) if (i) (consumers.get(i) ?? consumers.set(i, []).get(i)!).push(n);
  }
  return { producer, consumers };
}

function ancestors(ix: Index, tensors: readonly string[]): Set<NodeProto> {
  const seen = new Set<NodeProto>();
  const stack = [...tensors];
  while (stack.length) {
    const p = ix.producer.get(stack.pop()!);
    if (!p || seen.has(p)) continue;
    seen.add(p);
    for (const i of p.input) if (i) stack.push(i);
  }
  return seen;
}

/** prunec's nodes (`prunec/stageN/…`), in graph order, each with its stage and role. */
export function stageNodes(graph: GraphProto): StageNode[] {
  const ix = index(graph);
  const outputs = graph.output.map((o) => o.name);
  const model = ancestors(
    ix,
    outputs.filter((o) => !INDICES.test(o)),
  );
  const exposed = new Map(
    outputs.filter((o) => INDICES.test(o)).map((o) => [Number(INDICES.exec(o)![1]), ancestors(ix, [o])]),
  );
  const out: StageNode[] = [];
  for (const n of graph.node) {
    const stage = stageOf(n.name);
    if (stage === undefined) continue;
    let role: Role;
    if (model.has(n)) role = "data";
    else if (exposed.get(stage)?.has(n)) role = "expose";
    else
      throw new Error(
        `prunec node ${n.name} (${n.opType}) reaches neither a model output nor prunec.stage${stage}.indices`,
      );
    out.push({ name: n.name, opType: n.opType, stage, role });
  }
  return out;
}

/** The EP a node runs on according to the log ("" when the log does not list it). */
function epOf(log: PlacementLog, name: string): string {
  return log.nodes.get(name)?.ep ?? log.allOn ?? "";
}

/** The copies ORT inserted that touch prunec's nodes, with stage and role. */
export function stageCopies(graph: GraphProto, nodes: readonly StageNode[], log: PlacementLog): StageCopy[] {
  const ix = index(graph);
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const out: StageCopy[] = [];
  for (const m of log.memcpy) {
    const producer = ix.producer.get(m.tensor);
    const consumers = ix.consumers.get(m.tensor) ?? [];
    const readingEp = m.kind === "MemcpyToHost" ? CPU_EP : WEBGPU_EP;
    const readers = consumers.filter((c) => epOf(log, c.name) === readingEp);
    const touched = [producer, ...consumers]
      .map((x) => (x ? byName.get(x.name) : undefined))
      .find((x) => x !== undefined);
    const stage = touched?.stage ?? stageOf(m.tensor);
    if (stage === undefined) continue; // the model's own copy
    const role: Role =
      readers.length > 0 && readers.every((r) => byName.get(r.name)?.role === "expose") ? "expose" : "data";
    out.push({ ...m, stage, role, producer: producer?.name ?? null, readers: readers.map((r) => r.name) });
  }
  return out;
}
