/**
 * Fold the exporter's shape arithmetic below a stage (issue 19).
 *
 * Exporters compute reshape targets at run time: Shape → Gather → Unsqueeze → Concat → Reshape,
 * a dozen small nodes per layer. onnxruntime folds a Shape only when its input's whole shape is
 * static, and the batch axis is not, so they run at every call; below a stage they cost as much as
 * in the dense model while the layers around them got cheaper. Where shape inference proves an
 * int64 tensor's every element a number (a token count the stage fixed, a hidden size), the tensor
 * becomes an initializer of that value and the nodes that only computed it go.
 *
 * Only nodes below a stage are touched, so a spec without stages still compiles to the input graph.
 * The values come from inference over the graph inputs alone (declared shapes ignored), the same
 * inference verification trusts. Pure.
 */
import type { GraphProto, NodeProto, TensorProto } from "../src/onnx/gen/onnx_pb.js";
import { TensorProto_DataType as DT } from "../src/onnx/gen/onnx_pb.js";
import { Graph, attrInt, outerReads } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import { analyzeFromInputs } from "../src/analysis/shapes.js";
import { int64Tensor } from "../src/onnx/tensor.js";

/** Ops whose int64 results are shape arithmetic: folded when inference knows their value. */
const ARITHMETIC = new Set([
  "Shape",
  "Size",
  "Gather",
  "Unsqueeze",
  "Squeeze",
  "Concat",
  "Slice",
  "Reshape",
  "Identity",
  "Cast",
  "Add",
  "Sub",
  "Mul",
  "Div",
  "Mod",
  "Max",
  "Min",
  "Neg",
  "Abs",
  "ReduceProd",
]);

/** Ops whose output is int64 whatever their inputs are. */
const ALWAYS_INT64 = new Set(["Shape", "Size"]);

/** Ops whose output has the element type of their first input. */
const TYPE_OF_FIRST = new Set([
  "Gather",
  "Unsqueeze",
  "Squeeze",
  "Slice",
  "Reshape",
  "Identity",
  "Neg",
  "Abs",
  "ReduceProd",
]);

/** Larger values are weights or data, not shapes. */
const MAX_ELEMENTS = 64;

/** Tensors of element type int64, as far as the graph shows it (initializers, Constant nodes, the ops above). */
function int64Tensors(g: Graph): Set<string> {
  const int64 = new Set<string>();
  for (const [name, t] of g.initializers) if (t.dataType === DT.INT64) int64.add(name);
  for (const n of g.order) {
    const out = n.output[0];
    if (!out) continue;
    const inputs = n.input.filter((i) => i !== "");
    let is = false;
    if (n.opType === "Constant") is = n.attribute.find((a) => a.name === "value")?.t?.dataType === DT.INT64;
    else if (ALWAYS_INT64.has(n.opType)) is = true;
    else if (n.opType === "Cast") is = attrInt(n, "to", 0) === DT.INT64;
    else if (TYPE_OF_FIRST.has(n.opType)) is = int64.has(inputs[0] ?? "");
    else if (ARITHMETIC.has(n.opType)) is = inputs.length > 0 && inputs.every((i) => int64.has(i));
    if (is && n.domain === "") int64.add(out);
  }
  return int64;
}

/**
 * Pre: `roots` are the tensors the stages act on (each stage's stream before its selection).
 * Post: the same graph computing the same values, each foldable int64 tensor below a root now an
 * initializer, and the arithmetic nodes nothing reads any more removed.
 */
export function foldShapeArithmetic(proto: GraphProto, roots: readonly string[]): GraphProto {
  const g = Graph.of(proto);
  const below = new Set<NodeProto>();
  for (const r of roots) for (const n of g.descendants(r)) below.add(n);
  if (!below.size) return proto;
  const int64 = int64Tensors(g);
  const { values, shapes } = analyzeFromInputs(proto);
  // Tensors a subgraph reads from outside: such a read is no edge in `consumers`, but it keeps its producer.
  const outer = new Set(
    proto.node.flatMap((n) => (n.attribute.some((a) => a.g || a.graphs.length) ? outerReads(n) : [])),
  );
  const known = (t: string): number[] | undefined => {
    const v = values.get(t);
    const s = shapes.get(t);
    if (!v || !s || v.length > MAX_ELEMENTS || !v.every((d) => typeof d === "number")) return undefined;
    if (!s.every((d) => typeof d === "number")) return undefined;
    return v as number[];
  };
  const folded = new Set<NodeProto>();
  for (const n of below) {
    const out = n.output[0];
    if (n.domain !== "" || !ARITHMETIC.has(n.opType) || n.output.length !== 1 || !out) continue;
    if (!int64.has(out) || g.outputs.has(out) || !known(out)) continue;
    folded.add(n);
  }
  if (!folded.size) return proto;
  // An initializer for each folded value something outside the folded set still reads.
  const initializers: TensorProto[] = [];
  for (const n of folded) {
    const out = n.output[0]!;
    const readers = g.consumersOf(out);
    if (outer.has(out) || readers.some((r) => !folded.has(r))) {
      const t = int64Tensor(out, known(out)!, shapes.get(out) as number[]);
      t.docString = `prunec: folded from ${n.opType} '${n.name}' (its value is known below the stage)`;
      initializers.push(t);
    }
  }
  // Then the arithmetic that only fed folded values, from the folded nodes back.
  const removed = new Set(folded);
  const used = (t: string) => g.outputs.has(t) || outer.has(t) || g.consumersOf(t).some((r) => !removed.has(r));
  // A node's producers are looked at once it goes; Constant nodes (the exporter's axes and indices)
  // are never below a stage, having no inputs, but go with the last node that read them.
  const work = [...folded].flatMap((n) => n.input);
  while (work.length) {
    const p = g.producer.get(work.pop()!);
    if (!p || removed.has(p) || p.domain !== "") continue;
    if (!((below.has(p) && ARITHMETIC.has(p.opType)) || p.opType === "Constant")) continue;
    if (p.output.some((o) => o && used(o))) continue;
    removed.add(p);
    work.push(...p.input);
  }
  // So do the initializers (the same constants, stored) that only removed nodes read: onnxruntime warns of each one left.
  const declaredInputs = new Set(proto.input.map((i) => i.name)); // an initializer listed as an input stays
  const orphaned = new Set(
    [...removed].flatMap((n) => n.input.filter((i) => g.initializers.has(i) && !declaredInputs.has(i) && !used(i))),
  );
  return shallowCopy(proto, {
    node: proto.node.filter((n) => !removed.has(n)),
    initializer: [...proto.initializer.filter((t) => !orphaned.has(t.name)), ...initializers],
  });
}
