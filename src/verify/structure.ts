/**
 * Structural well-formedness of a graph, the way onnxruntime needs it when it loads a model:
 * every node input is produced before the node reads it (by an earlier node, an initializer, a
 * graph input or, inside a subgraph, an outer-scope value), each tensor has one producer, node
 * names are unique, and every graph output is produced. `onnx.checker` does not catch all of
 * these on prunec's output, and onnxruntime reports them only when the model is loaded. Pure.
 */
import type { GraphProto, NodeProto } from "../onnx/gen/onnx_pb.js";
import { dataInputs } from "../ir/graph.js";

export type StructureIssueKind =
  | "missing-input"
  | "out-of-order"
  | "duplicate-output"
  | "duplicate-node-name"
  | "unproduced-output";

export interface StructureIssue {
  kind: StructureIssueKind;
  /** The node at fault (its name, or `#index` when it has none); absent for graph outputs. */
  node?: string;
  opType?: string;
  /** The tensor (or, for duplicate-node-name, the node name) the issue is about. */
  tensor: string;
  /** Where: "" for the main graph, else the path of subgraph attributes (`node/attr`). */
  scope: string;
  message: string;
}

/** A stable identity for an issue, to tell issues prunec introduced from ones its input already had. */
export function issueKey(i: StructureIssue): string {
  return `${i.kind}\u0000${i.scope}\u0000${i.node ?? ""}\u0000${i.tensor}`;
}

function nodeLabel(n: NodeProto, index: number): string {
  return n.name || `#${index}`;
}

const INITIALIZER = -1;
const GRAPH_INPUT = -2;

function where(scope: string): string {
  return scope ? ` in subgraph ${scope}` : "";
}

/**
 * Every structural issue of a main graph and its subgraphs, in node order. Remembered per graph:
 * GraphProtos are never mutated once built (passes copy), and the same graph is checked by the
 * analysis, by the post-condition of the step that made it and of the next one, and by verification.
 */
export function structureIssues(graph: GraphProto): readonly StructureIssue[] {
  let issues = remembered.get(graph);
  if (!issues) {
    issues = issuesIn(
      graph,
      () => false,
      "",
      () => undefined,
    );
    remembered.set(graph, issues);
  }
  return issues;
}

const remembered = new WeakMap<GraphProto, readonly StructureIssue[]>();

/**
 * Scopes are lookups chained to the enclosing graph's (not copied sets): a subgraph sees the names
 * available at its node, so each check stays linear in the model whatever its nesting.
 */
function issuesIn(
  graph: GraphProto,
  outerVisible: (t: string) => boolean,
  scope: string,
  outerLater: (t: string) => NodeProto | undefined,
): StructureIssue[] {
  const issues: StructureIssue[] = [];
  // tensor → what produces it: a node's position, or INITIALIZER / GRAPH_INPUT (named only in messages)
  const producedBy = new Map<string, number>();
  const laterProducer = new Map<string, NodeProto>();
  graph.node.forEach((n) => {
    for (const o of n.output) if (o && !laterProducer.has(o)) laterProducer.set(o, n);
  });
  // Initializers may also be listed as graph inputs (IR < 4): that is one value, not two producers.
  for (const t of graph.initializer) producedBy.set(t.name, INITIALIZER);
  for (const i of graph.input) if (!producedBy.has(i.name)) producedBy.set(i.name, GRAPH_INPUT);
  const producerText = (p: number): string => {
    if (p === INITIALIZER) return "an initializer";
    if (p === GRAPH_INPUT) return "a graph input";
    const m = graph.node[p]!;
    return `node '${nodeLabel(m, p)}' (${m.opType})`;
  };
  const available = new Set<string>(producedBy.keys());
  const visible = (t: string) => available.has(t) || outerVisible(t);
  const later = (t: string) => laterProducer.get(t) ?? outerLater(t);
  const names = new Set<string>();

  graph.node.forEach((n, index) => {
    const label = nodeLabel(n, index);
    // Built only for an issue: most nodes have none, and this check runs on every graph a step makes.
    const at = () => ({ node: label, opType: n.opType, scope });
    if (n.name) {
      if (names.has(n.name))
        issues.push({
          kind: "duplicate-node-name",
          ...at(),
          tensor: n.name,
          message: `two nodes are named '${n.name}'${where(scope)}`,
        });
      names.add(n.name);
    }
    // A Constant's inputs are not read (ONNX gives it none; onnxruntime ignores any): see dataInputs.
    for (const input of dataInputs(n)) {
      if (!input || visible(input)) continue; // "" is an omitted optional input
      const producer = later(input);
      issues.push(
        producer
          ? {
              kind: "out-of-order",
              ...at(),
              tensor: input,
              message: `node '${label}' (${n.opType}) reads '${input}' before node '${producer.name || "?"}' (${producer.opType}) produces it${where(scope)}: the nodes are not in topological order`,
            }
          : {
              kind: "missing-input",
              ...at(),
              tensor: input,
              message: `node '${label}' (${n.opType}) reads '${input}', which no node, initializer or graph input produces${where(scope)}`,
            },
      );
    }
    // Subgraphs see every name visible at this node (ONNX outer-scope rule): checked now, before later outputs join `available`.
    for (const a of n.attribute) {
      for (const sub of [...(a.g ? [a.g] : []), ...a.graphs]) {
        for (const i of issuesIn(sub, visible, `${scope ? `${scope}/` : ""}${label}/${a.name}`, later)) issues.push(i);
      }
    }
    for (const o of n.output) {
      if (!o) continue; // an omitted optional output
      const previous = producedBy.get(o);
      if (previous !== undefined)
        issues.push({
          kind: "duplicate-output",
          ...at(),
          tensor: o,
          message: `node '${label}' (${n.opType}) writes '${o}', which ${producerText(previous)} already produces${where(scope)}`,
        });
      else producedBy.set(o, index);
      available.add(o);
    }
  });
  for (const o of graph.output) {
    if (!visible(o.name))
      issues.push({
        kind: "unproduced-output",
        tensor: o.name,
        scope,
        message: `graph output '${o.name}' is not produced by any node, initializer or graph input${where(scope)}`,
      });
  }
  return issues;
}
