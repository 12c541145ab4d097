/**
 * The one way a pass inserts nodes into a graph. Every stage kind (keep, mask, merge, and the
 * rotary rewrite) describes its change as a `Splice`; `splice` applies it in a fixed order and
 * ends with `ensures`:
 *
 *   1. the producers of the `rename`d tensors write them under their new names (the stage's result
 *      takes the old name, so every consumer and graph output reads the stage's result);
 *   2. the stage's nodes go right after that producer;
 *   3. existing nodes are swapped for their `replaced` copies (key biases, cached-attention inputs);
 *   4. consumers below the stage read the `gathered` copies of side tensors (carry-tokens.ts);
 *   5. `retarget` rewrites constant shapes naming the old token count (prune-stage.ts);
 *   6. value_info of tensors computed below the stage is dropped (it described the dense model) and
 *      the stage's own declared shapes are added;
 *   7. the nodes are put in topological order (file order is kept when it already is one).
 *
 * Post (`ensures`): every node input is produced before it is read, one producer per tensor,
 * unique node names, every graph output produced, and no value_info names a tensor nothing
 * produces; issues the input graph already had are not blamed on the splice. A failure is a prunec
 * bug, reported as PrunecError "verify" naming the splice. The input graph is not mutated.
 */
import { Graph, type GraphProto, type NodeProto, type TensorProto, type ValueInfoProto } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import { issueKey, structureIssues } from "../src/verify/structure.js";
import { rewireSideInputs } from "./carry-tokens.js";
import { PrunecError } from "../src/errors.js";

export interface Splice {
  /** Who splices, for messages: "stage 2 (merge)". */
  label: string;
  /** The new nodes go right after the node that produces this tensor (first in the graph when absent). */
  after?: string;
  /** Outputs renamed at their producers (old → new name): that node's, or another's (a cache's value). */
  rename?: ReadonlyMap<string, string>;
  nodes: readonly NodeProto[];
  initializers: readonly TensorProto[];
  /** Existing nodes replaced by rewired copies. */
  replaced?: ReadonlyMap<NodeProto, NodeProto>;
  /** Side tensors gathered by the stage: the `below` nodes (as found before the splice) read the copies. */
  sides?: { gathered: ReadonlyMap<string, string>; belowNodes: ReadonlySet<NodeProto> };
  /** A last rewrite of the node list, with the initializers it adds. */
  retarget?: (nodes: NodeProto[]) => { nodes: NodeProto[]; initializers: readonly TensorProto[] };
  /** Tensors whose recorded value_info no longer holds. */
  staleInfo?: ReadonlySet<string>;
  /** Declared shapes of tensors the stage writes. */
  info?: readonly ValueInfoProto[];
}

export function splice(proto: GraphProto, s: Splice): GraphProto {
  const replace = (n: NodeProto) => s.replaced?.get(n) ?? n;
  let nodes = [...inserted(proto, s)].map(replace);
  if (s.sides) nodes = rewireSideInputs(nodes, s.sides.gathered, new Set([...s.sides.belowNodes].map(replace)));
  const retargeted = s.retarget?.(nodes) ?? { nodes, initializers: [] };
  const stale = s.staleInfo ?? new Set<string>();
  const graph = shallowCopy(proto, {
    node: retargeted.nodes,
    initializer: [...proto.initializer, ...s.initializers, ...retargeted.initializers],
    valueInfo: [...proto.valueInfo.filter((v) => !stale.has(v.name)), ...(s.info ?? [])],
  });
  const sorted = shallowCopy(graph, { node: new Graph(graph).order });
  ensures(proto, sorted, s.label);
  return sorted;
}

/** The node list with the splice's nodes in place and the producer's outputs renamed. */
function inserted(proto: GraphProto, s: Splice): NodeProto[] {
  if (s.after === undefined) return [...s.nodes, ...proto.node];
  const producer = new Graph(proto).producer.get(s.after);
  if (!producer) throw new Error(`${s.label}: no node produces '${s.after}' (splice precondition)`);
  const rename = s.rename ?? new Map<string, string>();
  // A producer may itself be rewired (a KV stage's own attention): rename the rewired copy.
  const renamed = (n: NodeProto): NodeProto => {
    const base = s.replaced?.get(n) ?? n;
    return n.output.some((o) => rename.has(o))
      ? shallowCopy(base, { output: base.output.map((o) => rename.get(o) ?? o) })
      : n;
  };
  const at = proto.node.indexOf(producer);
  const nodes = rename.size ? proto.node.map(renamed) : proto.node;
  return [...nodes.slice(0, at + 1), ...s.nodes, ...nodes.slice(at + 1)];
}

/** A graph's structural issues plus value_info naming tensors nothing produces, as messages by key. */
function problems(g: GraphProto): Map<string, string> {
  // A splice's result is the next splice's (and compile step's) input: check each graph once.
  const known = checked.get(g);
  if (known) return known;
  const out = new Map(structureIssues(g).map((i) => [issueKey(i), i.message]));
  const produced = new Set([
    ...g.input.map((i) => i.name),
    ...g.initializer.map((t) => t.name),
    ...g.node.flatMap((n) => n.output),
  ]);
  for (const v of g.valueInfo)
    if (!produced.has(v.name))
      out.set(`stale-info\u0000${v.name}`, `value_info describes '${v.name}', which nothing produces`);
  checked.set(g, out);
  return out;
}

/** Graphs are never mutated once built (passes copy), so a graph's problems can be remembered. */
const checked = new WeakMap<GraphProto, Map<string, string>>();

/** The splice's post-condition (see the module comment); `before` is the graph it was applied to. */
export function ensures(before: GraphProto, after: GraphProto, label: string): void {
  const had = problems(before);
  const added = [...problems(after)].filter(([key]) => !had.has(key));
  if (added.length) {
    const shown = added.slice(0, 3).map(([, m]) => m);
    throw new PrunecError(
      "verify",
      `${label}: the rewritten graph is not well formed: ${shown.join("; ")}${added.length > 3 ? ` (and ${added.length - 3} more)` : ""} (a prunec bug: please report it)`,
    );
  }
}
