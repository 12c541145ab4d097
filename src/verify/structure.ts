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

function where(scope: string): string {
  return scope ? ` in subgraph ${scope}` : "";
}

/**
 * Every structural issue of `graph` and its subgraphs, in node order. For subgraphs: `outer`, the
 * names visible from enclosing graphs; `outerProducers`, every node of them (to tell a value
 * produced too late from one never produced).
 */
export function structureIssues(
  graph: GraphProto,
  outer: ReadonlySet<string> = new Set(),
  scope = "",
  outerProducers: ReadonlyMap<string, NodeProto> = new Map(),
): StructureIssue[] {
  return issuesIn(
    graph,
    (t) => outer.has(t),
    scope,
    (t) => outerProducers.get(t),
  );
}

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
  const producedBy = new Map<string, string>(); // tensor → what produces it (for messages)
  const laterProducer = new Map<string, NodeProto>();
  graph.node.forEach((n) => {
    for (const o of n.output) if (o && !laterProducer.has(o)) laterProducer.set(o, n);
  });
  // Initializers may also be listed as graph inputs (IR < 4): that is one value, not two producers.
  for (const t of graph.initializer) producedBy.set(t.name, "an initializer");
  for (const i of graph.input) if (!producedBy.has(i.name)) producedBy.set(i.name, "a graph input");
  const available = new Set<string>([...producedBy.keys()]);
  const visible = (t: string) => available.has(t) || outerVisible(t);
  const later = (t: string) => laterProducer.get(t) ?? outerLater(t);
  const names = new Set<string>();

  graph.node.forEach((n, index) => {
    const label = nodeLabel(n, index);
    const at = { node: label, opType: n.opType, scope };
    if (n.name) {
      if (names.has(n.name))
        issues.push({
          kind: "duplicate-node-name",
          ...at,
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
              ...at,
              tensor: input,
              message: `node '${label}' (${n.opType}) reads '${input}' before node '${producer.name || "?"}' (${producer.opType}) produces it${where(scope)}: the nodes are not in topological order`,
            }
          : {
              kind: "missing-input",
              ...at,
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
          ...at,
          tensor: o,
          message: `node '${label}' (${n.opType}) writes '${o}', which ${previous} already produces${where(scope)}`,
        });
      else producedBy.set(o, `node '${label}' (${n.opType})`);
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
