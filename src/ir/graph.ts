/**
 * The graph IR: an index over a GraphProto (producer and consumer maps, initializers, constants,
 * topological order). Nodes stay the protobuf objects themselves, so attributes and unknown fields
 * pass through untouched; passes build new node objects instead of mutating shared ones.
 */
import { create } from "@bufbuild/protobuf";
import { Graph as DiGraph, alg } from "@dagrejs/graphlib";
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

export type { NodeProto, TensorProto, GraphProto, ValueInfoProto };

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

  constructor(proto: GraphProto) {
    this.proto = proto;
    for (const t of proto.initializer) this.initializers.set(t.name, t);
    for (const v of [...proto.input, ...proto.output, ...proto.valueInfo]) this.valueInfo.set(v.name, v);
    this.inputs = new Set(proto.input.map((i) => i.name).filter((n) => !this.initializers.has(n)));
    this.outputs = new Set(proto.output.map((o) => o.name));
    for (const n of proto.node) {
      for (const o of n.output) if (o) this.producer.set(o, n);
      for (const i of n.input) {
        if (!i) continue;
        const list = this.consumers.get(i);
        if (list) list.push(n);
        else this.consumers.set(i, [n]);
      }
    }
  }

  /** Nodes in a topological order that is stable (ties keep file order), so output is deterministic. */
  get order(): NodeProto[] {
    if (this.orderCache) return this.orderCache;
    const nodes = this.proto.node;
    const index = new Map(nodes.map((n, i) => [n, i]));
    // Exporters already write nodes topologically; keep that order when it is valid (the common case).
    const valid = nodes.every((n, i) => n.input.every((inp) => { const p = inp ? this.producer.get(inp) : undefined; return !p || index.get(p)! < i; }));
    if (valid) {
      this.orderCache = nodes.slice();
      return this.orderCache;
    }
    const g = new DiGraph({ directed: true });
    nodes.forEach((_, i) => g.setNode(String(i)));
    nodes.forEach((n, i) => {
      for (const inp of n.input) {
        const p = inp ? this.producer.get(inp) : undefined;
        if (p) g.setEdge(String(index.get(p)), String(i));
      }
    });
    if (!alg.isAcyclic(g)) throw new Error("graph has a cycle");
    const order = alg.topsort(g).map((k: string) => nodes[Number(k)]!);
    this.orderCache = order;
    return order;
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
    const init = this.initializers.get(name);
    if (init) return init;
    const p = this.producer.get(name);
    if (p && p.opType === "Constant" && p.domain === "") {
      const a = p.attribute.find((x) => x.name === "value");
      if (a?.t) return a.t;
    }
    if (p && p.opType === "Identity" && p.input[0]) return this.constantTensor(p.input[0]);
    return undefined;
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

  /** All nodes that `tensor` depends on (its transitive producers). */
  ancestors(tensor: string): Set<NodeProto> {
    const seen = new Set<NodeProto>();
    const stack: string[] = [tensor];
    while (stack.length) {
      const t = stack.pop()!;
      const p = this.producer.get(t);
      if (!p || seen.has(p)) continue;
      seen.add(p);
      for (const i of p.input) if (i) stack.push(i);
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
    if (typeof v === "string") return create(AttributeProtoSchema, { name: k, type: AT.STRING, s: new TextEncoder().encode(v) });
    if ("float" in v) return create(AttributeProtoSchema, { name: k, type: AT.FLOAT, f: v.float });
    return create(AttributeProtoSchema, { name: k, type: AT.TENSOR, t: v });
  });
  return create(NodeProtoSchema, { opType, input: inputs, output: outputs, name, attribute, domain });
}
