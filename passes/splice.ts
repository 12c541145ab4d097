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
 *   7. the nodes are put in topological order: the file order, repaired as little as possible
 *      (Graph.order: a node placed before one of its producers moves to just after it).
 *
 * A stage acting in many layers applies its layers' splices as one (`spliceLayers`).
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
  let nodes = placed(proto, [s]);
  if (s.sides) nodes = rewireSideInputs(nodes, s.sides.gathered, new Set([...s.sides.belowNodes].map(replace)));
  const retargeted = s.retarget?.(nodes) ?? { nodes, initializers: [] };
  return sortedAndChecked(proto, s.label, retargeted.nodes, [s, { initializers: retargeted.initializers }]);
}

/** One part of `spliceLayers`: a layer's splice, without side tensors or a last rewrite. */
export type LayerSplice = Omit<Splice, "sides" | "retarget">;

/**
 * A stage that acts in many layers (a KV stage) as ONE splice: each part's nodes go right after
 * its own `after`, every part's renames and replacements apply, then one sort and one `ensures`
 * under `label`. Splicing layer by layer re-indexed, re-sorted and re-checked the whole graph per
 * layer: quadratic in a deep decoder. Pre: the parts rename, replace and write disjoint things
 * (each part is its own layer's), which is checked.
 */
export function spliceLayers(proto: GraphProto, label: string, parts: readonly LayerSplice[]): GraphProto {
  return sortedAndChecked(proto, label, placed(proto, parts), parts);
}

/** The graph with `nodes`, the parts' initializers appended and their value_info changes, sorted; `ensures` held. */
function sortedAndChecked(
  proto: GraphProto,
  label: string,
  nodes: NodeProto[],
  parts: readonly Pick<Splice, "initializers" | "staleInfo" | "info">[],
): GraphProto {
  const stale = new Set(parts.flatMap((p) => [...(p.staleInfo ?? [])]));
  const graph = shallowCopy(proto, {
    node: nodes,
    initializer: [...proto.initializer, ...parts.flatMap((p) => p.initializers)],
    valueInfo: [...proto.valueInfo.filter((v) => !stale.has(v.name)), ...parts.flatMap((p) => p.info ?? [])],
  });
  const sorted = shallowCopy(graph, { node: Graph.of(graph).order });
  ensures(proto, sorted, label);
  return sorted;
}

/**
 * The node list with each part's nodes right after the node producing its `after` (first in the
 * graph when absent; parts at one point in their order), the producers' outputs renamed and the
 * replaced nodes swapped for their copies.
 */
function placed(proto: GraphProto, parts: readonly LayerSplice[]): NodeProto[] {
  const index = parts.some((p) => p.after !== undefined) ? Graph.of(proto) : undefined;
  const rename = new Map<string, string>();
  const replaced = new Map<NodeProto, NodeProto>();
  const front: NodeProto[] = [];
  const behind = new Map<NodeProto, NodeProto[]>();
  for (const p of parts) {
    for (const [from, to] of p.rename ?? []) {
      if (rename.has(from)) throw new Error(`${p.label}: '${from}' is renamed by two parts of one splice`);
      rename.set(from, to);
    }
    for (const [from, to] of p.replaced ?? []) {
      if (replaced.has(from)) throw new Error(`${p.label}: node '${from.name}' is replaced by two parts of one splice`);
      replaced.set(from, to);
    }
    if (p.after === undefined) {
      front.push(...p.nodes);
      continue;
    }
    const producer = index?.producer.get(p.after);
    if (!producer) throw new Error(`${p.label}: no node produces '${p.after}' (splice precondition)`);
    const list = behind.get(producer);
    if (list) list.push(...p.nodes);
    else behind.set(producer, [...p.nodes]);
  }
  const out = [...front];
  for (const n of proto.node) {
    // A producer may itself be rewired (a KV stage's own attention): rename the rewired copy.
    const base = replaced.get(n) ?? n;
    out.push(
      n.output.some((o) => rename.has(o))
        ? shallowCopy(base, { output: base.output.map((o) => rename.get(o) ?? o) })
        : base,
    );
    const next = behind.get(n);
    if (next) out.push(...next);
  }
  return out;
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
