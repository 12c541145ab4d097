/**
 * Structural well-formedness of a graph, the way onnxruntime needs it when it loads a model:
 * every node input is produced before the node reads it (by an earlier node, an initializer, a
 * graph input or, inside a subgraph, an outer-scope value), each tensor has one producer, node
 * names are unique, and every graph output is produced. `onnx.checker` does not catch all of
 * these on prunec's output, and onnxruntime reports them only when the model is loaded. Pure.
 */
import type { GraphProto, NodeProto } from "../onnx/gen/onnx_pb.js";

export type StructureIssueKind = "missing-input" | "out-of-order" | "duplicate-output" | "duplicate-node-name" | "unproduced-output";

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
export function structureIssues(graph: GraphProto, outer: ReadonlySet<string> = new Set(), scope = "", outerProducers: ReadonlyMap<string, NodeProto> = new Map()): StructureIssue[] {
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
  const visible = (t: string) => available.has(t) || outer.has(t);
  const names = new Set<string>();

  graph.node.forEach((n, index) => {
    const label = nodeLabel(n, index);
    const at = { node: label, opType: n.opType, scope };
    if (n.name) {
      if (names.has(n.name)) issues.push({ kind: "duplicate-node-name", ...at, tensor: n.name, message: `two nodes are named '${n.name}'${where(scope)}` });
      names.add(n.name);
    }
    for (const input of n.input) {
      if (!input || visible(input)) continue; // "" is an omitted optional input
      const later = laterProducer.get(input) ?? outerProducers.get(input);
      issues.push(
        later
          ? { kind: "out-of-order", ...at, tensor: input, message: `node '${label}' (${n.opType}) reads '${input}' before node '${later.name || "?"}' (${later.opType}) produces it${where(scope)}: the nodes are not in topological order` }
          : { kind: "missing-input", ...at, tensor: input, message: `node '${label}' (${n.opType}) reads '${input}', which no node, initializer or graph input produces${where(scope)}` },
      );
    }
    // Subgraphs see every name visible at this node (ONNX outer-scope rule).
    for (const a of n.attribute) {
      for (const sub of [...(a.g ? [a.g] : []), ...a.graphs]) {
        issues.push(...structureIssues(sub, new Set([...outer, ...available]), `${scope ? scope + "/" : ""}${label}/${a.name}`, new Map([...outerProducers, ...laterProducer])));
      }
    }
    for (const o of n.output) {
      if (!o) continue; // an omitted optional output
      const previous = producedBy.get(o);
      if (previous !== undefined) issues.push({ kind: "duplicate-output", ...at, tensor: o, message: `node '${label}' (${n.opType}) writes '${o}', which ${previous} already produces${where(scope)}` });
      else producedBy.set(o, `node '${label}' (${n.opType})`);
      available.add(o);
    }
  });
  for (const o of graph.output) {
    if (!visible(o.name)) issues.push({ kind: "unproduced-output", tensor: o.name, scope, message: `graph output '${o.name}' is not produced by any node, initializer or graph input${where(scope)}` });
  }
  return issues;
}
