/**
 * The graph IR: an index over a GraphProto (producer and consumer maps, initializers, constants,
 * topological order). Nodes stay the protobuf objects themselves, so attributes and unknown fields
 * pass through untouched; passes build new node objects instead of mutating shared ones.
 */
import { create } from "@bufbuild/protobuf";
import {
  AttributeProtoSchema,
  AttributeProto_AttributeType as AT,
  NodeProtoSchema,
  type AttributeProto,
  type GraphProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from "../onnx/gen/onnx_pb.js";
import { readNumbers } from "../onnx/tensor.js";
import { PrunecError } from "../errors.js";

export type { NodeProto, TensorProto, GraphProto, ValueInfoProto };

/** An ONNX Constant node (default domain). */
export function isConstantNode(n: NodeProto): boolean {
  return n.opType === "Constant" && n.domain === "";
}

/**
 * The tensors a node computes from. A Constant takes no inputs in ONNX; onnxruntime turns Constant
 * nodes into initializers and ignores any inputs a (malformed) one lists, so they are not data
 * edges here either: no walk, order or cycle goes through them.
 */
export function dataInputs(n: NodeProto): readonly string[] {
  return isConstantNode(n) && n.input.length ? [] : n.input;
}

/**
 * The outer-scope names a node's subgraphs (If / Loop / Scan bodies) read: names no node, input or
 * initializer of the subgraph defines. They are dependencies of the node for ordering, though not
 * data inputs of it in ONNX's sense.
 */
export function outerReads(n: NodeProto): string[] {
  const reads = new Set<string>();
  const visit = (g: GraphProto, outer: ReadonlySet<string>) => {
    const defined = new Set<string>([...g.input.map((v) => v.name), ...g.initializer.map((t) => t.name)]);
    for (const m of g.node) {
      for (const i of dataInputs(m)) if (i && !defined.has(i) && !outer.has(i)) reads.add(i);
      for (const a of m.attribute) {
        for (const sub of a.g ? [a.g, ...a.graphs] : a.graphs) visit(sub, new Set([...outer, ...defined]));
      }
      for (const o of m.output) defined.add(o);
    }
  };
  for (const a of n.attribute) for (const sub of a.g ? [a.g, ...a.graphs] : a.graphs) visit(sub, new Set());
  return [...reads];
}

/** A dependency cycle: `node` reads `tensor`, which `path` (data-flow order, ending at `node`) computes from node's own output. */
export interface Cycle {
  node: NodeProto;
  tensor: string;
  path: NodeProto[];
}

/** How messages name a node: its name, else its position in the file. */
export function nodeLabel(g: GraphProto, n: NodeProto): string {
  return n.name ? `'${n.name}'` : `#${g.node.indexOf(n)}`;
}

/** "node 'a' (Relu) reads 'x', which is computed from its own output (a → b → a)". */
export function cycleText(g: GraphProto, c: Cycle): string {
  const p = c.path;
  // Long cycles are shortened (and labels computed only for the nodes shown).
  const shown =
    p.length > 8
      ? [
          ...p.slice(0, 4).map((n) => nodeLabel(g, n)),
          `… ${p.length - 6} more …`,
          ...p.slice(-2).map((n) => nodeLabel(g, n)),
        ]
      : p.map((n) => nodeLabel(g, n));
  return `node ${nodeLabel(g, c.node)} (${c.node.opType}) reads '${c.tensor}', which is computed from its own output (a cycle: ${[nodeLabel(g, c.node), ...shown].join(" → ")})`;
}

/** Graph.of's indexes, held as long as their GraphProto is. */
const indexes = new WeakMap<GraphProto, Graph>();

export class Graph {
  readonly proto: GraphProto;
  readonly producer = new Map<string, NodeProto>();
  readonly consumers = new Map<string, NodeProto[]>();
  readonly initializers = new Map<string, TensorProto>();
  readonly valueInfo = new Map<string, ValueInfoProto>();
  readonly inputs: ReadonlySet<string>;
  readonly outputs: ReadonlySet<string>;
  private orderCache: NodeProto[] | undefined;
  private readonly constantCache = new Map<string, number[] | undefined>();
  private indexCache: Map<NodeProto, number> | undefined;

  /**
   * The index of `proto`, built once: GraphProtos are never mutated once built (passes copy), so
   * the steps of a compile that read the same graph (the analysis, a stage's set-up, a splice's
   * placement) share one index and its caches (order, constants) instead of rebuilding them.
   */
  static of(proto: GraphProto): Graph {
    let g = indexes.get(proto);
    if (!g) {
      g = new Graph(proto);
      indexes.set(proto, g);
    }
    return g;
  }

  constructor(proto: GraphProto) {
    this.proto = proto;
    for (const t of proto.initializer) this.initializers.set(t.name, t);
    for (const list of [proto.input, proto.output, proto.valueInfo])
      for (const v of list) this.valueInfo.set(v.name, v);
    this.inputs = new Set(proto.input.map((i) => i.name).filter((n) => !this.initializers.has(n)));
    this.outputs = new Set(proto.output.map((o) => o.name));
    for (const n of proto.node) {
      for (const o of n.output) if (o) this.producer.set(o, n);
      for (const i of dataInputs(n)) {
        if (!i) continue;
        const list = this.consumers.get(i);
        if (list) list.push(n);
        else this.consumers.set(i, [n]);
      }
    }
  }

  /**
   * Nodes in a topological order: file order when that is one (exporters write nodes sorted), else
   * the file order repaired as little as possible: of the nodes whose inputs are all computed, the
   * earliest in the file comes next (Kahn's algorithm by position). A node a pass placed before one
   * of its producers moves down to just after it; nothing else moves. A cycle is a
   * PrunecError("format"), named by a depth-first walk (iterative: a chain of any length cannot
   * overflow the stack).
   */
  get order(): NodeProto[] {
    if (this.orderCache) return this.orderCache;
    const sorted = this.sort();
    if (!Array.isArray(sorted))
      throw new PrunecError("format", `the graph has a cycle: ${cycleText(this.proto, sorted)}`);
    this.orderCache = sorted;
    return sorted;
  }

  /** A dependency cycle, if the graph has one. */
  findCycle(): Cycle | undefined {
    if (this.orderCache) return undefined;
    const sorted = this.sort();
    if (Array.isArray(sorted)) {
      this.orderCache = sorted;
      return undefined;
    }
    return sorted;
  }

  private sort(): NodeProto[] | Cycle {
    const nodes = this.proto.node;
    // A node with subgraphs also waits for the outer-scope values its bodies read.
    const reads = (n: NodeProto): readonly string[] =>
      n.attribute.some((a) => a.g || a.graphs.length) ? [...dataInputs(n), ...outerReads(n)] : dataInputs(n);
    // Exporters already write nodes topologically; keep that order when it is valid (the common
    // case): every producer a node reads was met before it.
    const met = new Set<NodeProto>();
    const valid = nodes.every((n) => {
      const ok = reads(n).every((inp) => {
        const p = inp ? this.producer.get(inp) : undefined;
        return !p || met.has(p);
      });
      met.add(n);
      return ok;
    });
    if (valid) return nodes.slice();
    const index = new Map(nodes.map((n, i) => [n, i]));
    // Producers of each node by position (deduplicated, ascending: the cycle walk's order).
    const preds: number[][] = nodes.map((n) => {
      // Insertion into a short sorted list: a node reads a handful of tensors.
      const ps: number[] = [];
      for (const inp of reads(n)) {
        const p = inp ? this.producer.get(inp) : undefined;
        if (!p) continue;
        const at = index.get(p)!;
        let k = ps.length;
        while (k > 0 && ps[k - 1]! > at) k--;
        if (ps[k - 1] !== at) ps.splice(k, 0, at);
      }
      return ps;
    });
    const stable = earliestFirst(preds);
    if (stable) return stable.map((i) => nodes[i]!);
    return this.cycleOf(nodes, preds);
  }

  /** A cycle of a graph whose nodes cannot all be ordered (`preds`: producers by position). */
  private cycleOf(nodes: readonly NodeProto[], preds: readonly number[][]): Cycle {
    const hasSuccessor = new Uint8Array(nodes.length);
    for (const ps of preds) for (const p of ps) hasSuccessor[p] = 1;
    const state = new Uint8Array(nodes.length); // 0 unvisited, 1 on the walk's path, 2 done
    const walk = (root: number): Cycle | undefined => {
      const stack: [number, number][] = [[root, 0]];
      state[root] = 1;
      while (stack.length) {
        const top = stack[stack.length - 1]!;
        const [n, k] = top;
        if (k < preds[n]!.length) {
          top[1] = k + 1;
          const p = preds[n]![k]!;
          if (state[p] === 1) {
            // n reads p's output, and p is computed from n: the path from p down to n closes the cycle.
            const at = stack.findIndex(([m]) => m === p);
            const path = stack
              .slice(at)
              .map(([m]) => nodes[m]!)
              .reverse();
            const reader = nodes[n]!;
            const tensor = dataInputs(reader).find((i) => i && this.producer.get(i) === nodes[p]) ?? "?";
            return { node: reader, tensor, path: [...path.slice(1), reader] };
          }
          if (state[p] === 0) {
            state[p] = 1;
            stack.push([p, 0]);
          }
          continue;
        }
        stack.pop();
        state[n] = 2;
      }
      return undefined;
    };
    for (let i = 0; i < nodes.length; i++) {
      if (hasSuccessor[i] || state[i]) continue;
      const cycle = walk(i);
      if (cycle) return cycle;
    }
    // Nodes no sink depends on lie on (or feed only) cycles.
    for (let i = 0; i < nodes.length; i++) {
      if (state[i]) continue;
      const cycle = walk(i);
      if (cycle) return cycle;
    }
    throw new Error("no cycle found in a graph Kahn's algorithm could not order (a prunec bug)");
  }

  /** Position of a node in `order`. */
  position(n: NodeProto): number {
    if (!this.indexCache) this.indexCache = new Map(this.order.map((m, i) => [m, i]));
    const p = this.indexCache.get(n);
    if (p === undefined) throw new Error(`node ${n.name} is not in the graph`);
    return p;
  }

  consumersOf(tensor: string): NodeProto[] {
    return this.consumers.get(tensor) ?? [];
  }

  /** The value of a small constant tensor (initializer or Constant node), if it is one. */
  constant(name: string): number[] | undefined {
    if (this.constantCache.has(name)) return this.constantCache.get(name);
    const t = this.constantTensor(name);
    const value = t ? readNumbers(t) : undefined;
    this.constantCache.set(name, value);
    return value;
  }

  constantTensor(name: string): TensorProto | undefined {
    // Identity chains are followed iteratively, each tensor once: a malformed model may loop them.
    // (The set is made only when a chain is followed: analyses ask this of most tensors they walk.)
    let seen: Set<string> | undefined;
    for (let t = name; ; ) {
      const init = this.initializers.get(t);
      if (init) return init;
      const p = this.producer.get(t);
      if (p && isConstantNode(p)) {
        const a = p.attribute.find((x) => x.name === "value");
        if (a?.t) return a.t;
      }
      if (!(p && p.opType === "Identity" && p.input[0])) return undefined;
      t = p.input[0];
      seen ??= new Set([name]);
      if (seen.has(t)) return undefined;
      seen.add(t);
    }
  }

  isConstant(name: string): boolean {
    return this.constantTensor(name) !== undefined;
  }

  /** All nodes reachable forward from `tensor` (its transitive consumers). */
  descendants(tensor: string, limit = Infinity): Set<NodeProto> {
    const seen = new Set<NodeProto>();
    const stack = [...this.consumersOf(tensor)];
    while (stack.length && seen.size < limit) {
      const n = stack.pop()!;
      if (seen.has(n)) continue;
      seen.add(n);
      for (const o of n.output) for (const c of this.consumersOf(o)) if (!seen.has(c)) stack.push(c);
    }
    return seen;
  }

  /**
   * Whether `node` is among the nodes `tensor` depends on (`ancestors(tensor).has(node)`), without
   * collecting them all: producers placed before `node` in `order` cannot lead back to it, so the
   * walk stays between the two (a layer's nodes, not the whole graph above it).
   */
  dependsOn(tensor: string, node: NodeProto): boolean {
    const floor = this.position(node);
    const seen = new Set<NodeProto>();
    const stack: string[] = [tensor];
    while (stack.length) {
      const p = this.producer.get(stack.pop()!);
      if (!p || seen.has(p)) continue;
      if (p === node) return true;
      seen.add(p);
      if (this.position(p) < floor) continue;
      for (const i of dataInputs(p)) if (i) stack.push(i);
    }
    return false;
  }

  /** All nodes that `tensor` depends on (its transitive producers). */
  ancestors(tensor: string): Set<NodeProto> {
    const seen = new Set<NodeProto>();
    const stack: string[] = [tensor];
    while (stack.length) {
      const t = stack.pop()!;
      const p = this.producer.get(t);
      if (!p || seen.has(p)) continue;
      seen.add(p);
      for (const i of dataInputs(p)) if (i) stack.push(i);
    }
    return seen;
  }
}

export function attr(n: NodeProto, name: string): AttributeProto | undefined {
  return n.attribute.find((a) => a.name === name);
}

export function attrInt(n: NodeProto, name: string, dflt: number): number {
  const a = attr(n, name);
  return a ? Number(a.i) : dflt;
}

export type AttrValue = number | number[] | string | TensorProto;

/** Build a node; integer attributes are written as INT, arrays as INTS, `float:` prefix forces FLOAT. */
export function makeNode(
  opType: string,
  inputs: string[],
  outputs: string[],
  name: string,
  attrs: Record<string, AttrValue | { float: number }> = {},
  domain = "",
): NodeProto {
  const attribute: AttributeProto[] = Object.entries(attrs).map(([k, v]) => {
    if (typeof v === "number") return create(AttributeProtoSchema, { name: k, type: AT.INT, i: BigInt(v) });
    if (Array.isArray(v)) return create(AttributeProtoSchema, { name: k, type: AT.INTS, ints: v.map(BigInt) });
    if (typeof v === "string")
      return create(AttributeProtoSchema, { name: k, type: AT.STRING, s: new TextEncoder().encode(v) });
    if ("float" in v) return create(AttributeProtoSchema, { name: k, type: AT.FLOAT, f: v.float });
    return create(AttributeProtoSchema, { name: k, type: AT.TENSOR, t: v });
  });
  return create(NodeProtoSchema, { opType, input: inputs, output: outputs, name, attribute, domain });
}

/**
 * Positions 0..n−1 in topological order (`preds[i]`: the positions node i reads from), the
 * earliest ready position first: the file order where it is already valid, each other node just
 * after the last of its producers. Undefined when a cycle leaves some node unordered.
 */
function earliestFirst(preds: readonly (readonly number[])[]): number[] | undefined {
  const n = preds.length;
  const waiting = new Int32Array(n);
  const successors: number[][] = Array.from({ length: n }, () => []);
  preds.forEach((ps, i) => {
    waiting[i] = ps.length;
    for (const p of ps) successors[p]!.push(i);
  });
  // A binary min-heap of ready positions.
  const heap: number[] = [];
  const push = (x: number) => {
    let i = heap.push(x) - 1;
    while (i > 0) {
      const up = (i - 1) >> 1;
      if (heap[up]! <= x) break;
      heap[i] = heap[up]!;
      i = up;
    }
    heap[i] = x;
  };
  const pop = (): number => {
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= heap.length) break;
        const c = l + 1 < heap.length && heap[l + 1]! < heap[l]! ? l + 1 : l;
        if (heap[c]! >= last) break;
        heap[i] = heap[c]!;
        i = c;
      }
      heap[i] = last;
    }
    return top;
  };
  for (let i = 0; i < n; i++) if (waiting[i] === 0) push(i);
  const order: number[] = [];
  while (heap.length) {
    const i = pop();
    order.push(i);
    for (const s of successors[i]!) {
      waiting[s] = waiting[s]! - 1;
      if (waiting[s] === 0) push(s);
    }
  }
  return order.length === n ? order : undefined;
}
