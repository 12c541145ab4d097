/**
 * What a model must be before analysis reads it (issue 13): a graph onnxruntime could load. A
 * malformed model is refused here as a bad input (PrunecError "format", exit 3, naming the node
 * and the tensor), never left to crash or mislead an analysis:
 * - every node input is produced (by a node, an initializer, a graph input or an outer scope), each
 *   tensor has one producer (two nodes writing one tensor: both are named), every graph output is
 *   produced (src/verify/structure.ts, the same check compile runs on its output). Nodes out of
 *   file order are fine (they are sorted), a cycle is not. Duplicate node names are tolerated, as
 *   onnxruntime does. A Constant's inputs are ignored, as onnxruntime does (see `dataInputs`);
 * - every declared dimension is exact as a JavaScript number (|d| ≤ 2^53 − 1), so no size is
 *   rounded on the way through prunec; a tensor's dimensions are not negative.
 * Linear in the model's size.
 */
import { PrunecError } from "../errors.js";
import { cycleText, type Graph } from "../ir/graph.js";
import type { GraphProto, TensorProto, ValueInfoProto } from "../onnx/gen/onnx_pb.js";
import { structureIssues, type StructureIssueKind } from "../verify/structure.js";

/** Structural issues that make a model unloadable (the others are tolerated: see above). */
const FATAL: ReadonlySet<StructureIssueKind> = new Set(["missing-input", "duplicate-output", "unproduced-output"]);

const MAX_DIM = BigInt(Number.MAX_SAFE_INTEGER);

/** Throws PrunecError("format") naming what makes `g` malformed; `source` names the model in the message. */
export function assertWellFormed(g: Graph, source: string): void {
  const problem = wellFormedProblem(g);
  if (problem) throw new PrunecError("format", `${source}: the input model is invalid: ${problem}`);
}

/** Why `g` is not a model onnxruntime could load, or undefined. */
export function wellFormedProblem(g: Graph): string | undefined {
  const dims = dimProblem(g.proto, "");
  if (dims) return dims;
  const fatal = structureIssues(g.proto).filter((i) => FATAL.has(i.kind));
  const more = fatal.length - 1;
  if (fatal.length) return fatal[0]!.message + (more ? ` (and ${more} more such problem${more > 1 ? "s" : ""})` : "");
  const cycle = g.findCycle();
  return cycle ? `the graph has a cycle: ${cycleText(g.proto, cycle)}` : undefined;
}

function dimProblem(graph: GraphProto, scope: string): string | undefined {
  const where = scope ? ` in subgraph ${scope}` : "";
  for (const t of graph.initializer) {
    const p = tensorDims(t);
    if (p) return `initializer '${t.name}'${where} ${p}`;
  }
  const declared: [string, ValueInfoProto[]][] = [
    ["graph input", graph.input],
    ["graph output", graph.output],
    ["value_info", graph.valueInfo],
  ];
  for (const [what, list] of declared) {
    for (const v of list) {
      const t = v.type?.value;
      const shape = t?.case === "tensorType" ? t.value.shape : undefined;
      const at =
        shape?.dim.findIndex(
          (d) => d.value.case === "dimValue" && (d.value.value > MAX_DIM || d.value.value < -MAX_DIM),
        ) ?? -1;
      if (at >= 0) {
        return `${what} '${v.name}'${where} declares dimension ${String(shape!.dim[at]!.value.value)} at axis ${at}, more than prunec represents exactly (2^53 - 1)`;
      }
    }
  }
  for (const [k, n] of graph.node.entries()) {
    const label = n.name ? `'${n.name}'` : `#${k}`;
    for (const a of n.attribute) {
      const p = a.t ? tensorDims(a.t) : undefined;
      if (p) return `node ${label} (${n.opType})${where}: its ${a.name} tensor ${p}`;
      for (const sub of [...(a.g ? [a.g] : []), ...a.graphs]) {
        const inner = dimProblem(sub, `${scope ? `${scope}/` : ""}${n.name || `#${k}`}/${a.name}`);
        if (inner) return inner;
      }
    }
  }
  return undefined;
}

/** What is wrong with a tensor's dims, or undefined. */
function tensorDims(t: TensorProto): string | undefined {
  const at = t.dims.findIndex((d) => d < 0n || d > MAX_DIM);
  if (at < 0) return undefined;
  const d = t.dims[at]!;
  return d < 0n
    ? `has dimension ${d} at axis ${at}: a tensor's dimensions are never negative`
    : `has dimension ${d} at axis ${at}, more than prunec represents exactly (2^53 - 1)`;
}
