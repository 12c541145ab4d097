/**
 * Symbolic shape inference, in the spirit of onnxruntime's symbolic_shape_infer but small.
 *
 * Seeds: graph inputs' declared shapes (dim_params become symbols, missing dims fresh symbols),
 * initializer dims, Constant nodes. Nodes are then visited in topological order and each op's
 * rule (shape-ops.ts, shape-ops-nn.ts) gives its output shapes. Alongside shapes, the values of
 * small tensors are propagated symbolically (Shape(x) is x's dims, Gather picks one, Mul/Div
 * combine them...), because exporters compute Reshape targets at run time.
 *
 * Declared value_info (and graph output) shapes are believed: their ranks and sizes win, and
 * their symbols fill in whatever inference cannot determine (see `mergeDeclared`). Unknown ops
 * leave their outputs unknown (or declared); nothing here throws on a model.
 */
import { Graph, type GraphProto, type NodeProto, type ValueInfoProto } from "../ir/graph.js";
import type { Dim, Shape, ShapeMap } from "./dims.js";
import { DimAlgebra } from "./shape-expr.js";
import {
  MAX_VALUE_ELEMENTS,
  numericShape,
  elementCount,
  isSize,
  type Ctx,
  type Out,
  type Rule,
  type Val,
} from "./shape-ctx.js";
import { TENSOR_RULES, tensorOut } from "./shape-ops.js";
import { NN_RULES } from "./shape-ops-nn.js";

export { DimAlgebra } from "./shape-expr.js";

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** Rules by op type. Contrib ops (com.microsoft) share the table: their names do not clash. */
const RULES: Record<string, Rule> = { ...TENSOR_RULES, ...NN_RULES };

export interface ShapeAnalysis {
  shapes: ShapeMap;
  /** Values of small integer tensors (shape vectors, indices, sizes), row-major. */
  values: Map<string, Dim[]>;
  /** The algebra the symbolic dims were built with (to compare or combine them further). */
  algebra: DimAlgebra;
  /** Op types (domain-qualified when not ai.onnx) that have no shape rule here. */
  unhandled: Set<string>;
}

export interface ShapeOptions {
  /** Rethrow errors from op rules instead of leaving that node's outputs unknown (for tests). */
  strict?: boolean;
  /**
   * How declared value_info / graph output shapes combine with inferred ones at node outputs.
   * "fill" (default): declared ranks and numbers win, declared symbols only fill dims inference
   * could not determine. "trust": a declared dim always wins except a symbol against an inferred
   * number. "ignore": infer from the graph inputs alone.
   */
  declared?: DeclaredPolicy;
}

export type DeclaredPolicy = "fill" | "trust" | "ignore";

export function inferShapes(graph: Graph, options: ShapeOptions = {}): ShapeMap {
  return analyzeShapes(graph, options).shapes;
}

export function inferValues(graph: Graph, options: ShapeOptions = {}): Map<string, Dim[]> {
  return analyzeShapes(graph, options).values;
}

export function analyzeShapes(graph: Graph, options: ShapeOptions = {}): ShapeAnalysis {
  const run = new Inference(graph, {
    policy: options.declared ?? "fill",
    strict: options.strict ?? false,
    alg: new DimAlgebra(),
  });
  for (const name of graph.inputs) {
    const s = run.declared(name);
    if (s) run.shapes.set(name, s);
  }
  run.run();
  const values = new Map<string, Dim[]>();
  for (const [name, v] of run.values) if (!v.float) values.set(name, v.data);
  return { shapes: run.shapes, values, algebra: run.alg, unhandled: run.unhandled };
}

/**
 * `analyzeShapes(graph, { declared: "ignore" })` of a GraphProto, computed once per computation:
 * that inference reads the nodes, the initializers and the graph inputs, nothing else, so a graph
 * that differs from one already inferred only in its declarations (a step that refreshes output
 * shapes) gets the same analysis back. Compile's steps after the fold (output declarations,
 * per-token outputs, verification) share one inference this way. The arrays are the key:
 * GraphProtos and their lists are never mutated once built (passes copy).
 */
export function analyzeFromInputs(proto: GraphProto): ShapeAnalysis {
  const hit = fromInputs.get(proto.node);
  if (hit && hit.initializer === proto.initializer && hit.input === proto.input) return hit.analysis;
  const analysis = analyzeShapes(Graph.of(proto), { declared: "ignore" });
  fromInputs.set(proto.node, { initializer: proto.initializer, input: proto.input, analysis });
  return analysis;
}

const fromInputs = new WeakMap<
  readonly NodeProto[],
  { initializer: GraphProto["initializer"]; input: GraphProto["input"]; analysis: ShapeAnalysis }
>();

interface Settings {
  policy: DeclaredPolicy;
  strict: boolean;
  alg: DimAlgebra;
}

/** Inference over one graph; a subgraph (If branch) gets its own, reading outer names through `parent`. */
class Inference implements Ctx {
  readonly alg: DimAlgebra;
  readonly shapes: ShapeMap = new Map();
  readonly values = new Map<string, Val>();
  readonly unhandled: Set<string>;

  constructor(
    private readonly graph: Graph,
    private readonly settings: Settings,
    private readonly parent?: Inference,
  ) {
    this.alg = settings.alg;
    this.unhandled = parent?.unhandled ?? new Set();
    for (const [name, t] of graph.initializers)
      this.shapes.set(
        name,
        t.dims.map((d) => (d >= 0n && d <= MAX_SAFE ? Number(d) : this.alg.fresh())),
      );
  }

  run(): void {
    for (const n of nodesInOrder(this.graph)) {
      const rule = RULES[n.opType];
      if (!rule) this.unhandled.add(n.domain && n.domain !== "ai.onnx" ? `${n.domain}:${n.opType}` : n.opType);
      let outs: readonly (Out | undefined)[] = NONE;
      try {
        if (rule) outs = rule(n, this);
      } catch (e) {
        if (this.settings.strict) throw e;
      }
      for (let i = 0; i < n.output.length; i++) {
        const name = n.output[i];
        if (name) this.record(name, outs[i]);
      }
    }
  }

  shape(name: string | undefined): Shape | undefined {
    if (!name) return undefined;
    return this.shapes.get(name) ?? this.parent?.shape(name);
  }

  value(name: string | undefined): Val | undefined {
    if (!name) return undefined;
    const v = this.values.get(name);
    if (v) return v;
    // Initializers are read lazily: only the few that feed shape computations are ever decoded.
    const t = this.graph.initializers.get(name);
    if (!t) return this.shapes.has(name) ? undefined : this.parent?.value(name);
    const read = tensorOut(t).value;
    if (read) this.values.set(name, read);
    return read;
  }

  subgraph(g: GraphProto): (Shape | undefined)[] {
    const sub = new Inference(Graph.of(g), this.settings, this);
    sub.run();
    const declared = (name: string): Shape | undefined =>
      this.settings.policy === "ignore" ? undefined : sub.declared(name);
    return g.output.map((o) => sub.shape(o.name) ?? declared(o.name));
  }

  /** The shape value_info (or a graph input/output) declares for `name`; missing dims are fresh. */
  declared(name: string): Shape | undefined {
    const vi: ValueInfoProto | undefined = this.graph.valueInfo.get(name);
    const t = vi?.type?.value;
    if (t?.case !== "tensorType" || !t.value.shape) return undefined;
    return t.value.shape.dim.map((d) => {
      if (d.value.case === "dimValue" && d.value.value >= 0n && d.value.value <= MAX_SAFE) return Number(d.value.value);
      if (d.value.case === "dimParam" && d.value.value) return d.value.value;
      return this.alg.fresh();
    });
  }

  record(name: string, out: Out | undefined): void {
    const declared = this.settings.policy === "ignore" ? undefined : this.declared(name);
    const merged = mergeDeclared(this.alg, out?.shape, declared, this.settings.policy === "trust");
    if (!merged) return;
    // A rule fed a malformed model's values can compute NaN, negative or inexact sizes: those are unknown.
    const shape = merged.every(isSize) ? merged : merged.map((d) => (isSize(d) ? d : this.alg.fresh()));
    this.shapes.set(name, shape);
    const v = out?.value;
    const dims = numericShape(shape);
    // A value must agree with the final shape (a declared shape may have overridden the rank).
    if (v && dims && elementCount(dims) === v.data.length && v.data.length <= MAX_VALUE_ELEMENTS)
      this.values.set(name, v);
  }
}

const NONE: readonly (Out | undefined)[] = [];

function nodesInOrder(graph: Graph): NodeProto[] {
  try {
    return graph.order;
  } catch {
    return graph.proto.node; // a cyclic graph: file order is the best guess
  }
}

/**
 * Combine an inferred shape with a declared one. The declaration is believed (its rank, its
 * numbers), but a declared symbol is only a name: exporters often give one axis several names
 * ("num_tokens", "seq", ...), so by default an inferred symbol, which relates the dim to the
 * graph inputs, is kept. A number always beats a symbol: the symbol can only stand for it.
 */
function mergeDeclared(
  alg: DimAlgebra,
  inferred: Shape | undefined,
  declared: Shape | undefined,
  trustSymbols: boolean,
): Shape | undefined {
  if (!declared) return inferred;
  if (!inferred || inferred.length !== declared.length) return declared;
  return declared.map((d, i) => {
    const x = inferred[i]!;
    if (typeof d === "number" || typeof x === "number") return typeof d === "number" ? d : x;
    if (alg.isFresh(x)) return d;
    return trustSymbols && !alg.isFresh(d) ? d : x;
  });
}
