/**
 * What every stream-shrinking stage (keep/drop, merge) must fix below itself besides its own nodes:
 * the declared shape of the pruned stream, and constant shapes that hold the old token count.
 */
import type { Graph, GraphProto, NodeProto } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import type { ResidualBlock } from "../src/analysis/residual.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import type { Dim, ShapeMap } from "../src/analysis/dims.js";
import { inferShapes } from "../src/analysis/shapes.js";
import { int64Tensor } from "../src/onnx/tensor.js";
import { batchDim, valueInfo } from "../src/ir/value-info.js";
import { PrunecError } from "../src/errors.js";
import type { StagePlan } from "../src/plan-types.js";

/** Element type of the residual stream (from the pre-norm's scale), when known. */
export function streamElemType(g: Graph, residual: ResidualBlock): number | undefined {
  const scale = residual.norm.scale;
  return scale ? g.constantTensor(scale)?.dataType : undefined;
}

/** [batch, K', hidden] of the pruned stream, when every part of it is known. */
export function prunedStreamInfo(
  proto: GraphProto,
  model: TransformerInfo,
  plan: StagePlan,
  r: string,
  elemType: number | undefined,
) {
  const batch = batchDim(proto);
  if (
    model.batchAxis !== 0 ||
    model.tokenAxis !== 1 ||
    typeof plan.tokensOut !== "number" ||
    !model.hidden ||
    !elemType ||
    batch === undefined
  )
    return [];
  return [valueInfo(r, elemType, [batch, plan.tokensOut, model.hidden])];
}

/**
 * Reshape/Expand/Tile/ConstantOfShape below the stage whose shape is a constant naming the old token
 * count would break at run time. A Reshape whose constant has the count exactly at the token axis is
 * retargeted; anything else is refused before writing.
 */
export function retargetShapeConstants(
  g: Graph,
  nodes: NodeProto[],
  below: Set<string>,
  plan: StagePlan,
  model: TransformerInfo,
): { nodes: NodeProto[]; initializers: ReturnType<typeof int64Tensor>[] } {
  const initializers: ReturnType<typeof int64Tensor>[] = [];
  if (typeof plan.tokensIn !== "number" || typeof plan.tokensOut !== "number" || plan.tokensIn === plan.tokensOut) {
    return { nodes, initializers };
  }
  const oldN = plan.tokensIn;
  // The current graph's shapes (earlier stages already changed their token counts), on demand.
  let shapes: ShapeMap | undefined;
  const currentShapes = (): ShapeMap => (shapes ??= inferShapes(g));
  const shapeInput: Record<string, number> = { Reshape: 1, Expand: 1, Tile: 1, ConstantOfShape: 0 };
  const out = nodes.map((n) => {
    const slot = shapeInput[n.opType];
    if (slot === undefined || n.domain !== "" || !n.input.some((i) => below.has(i))) return n;
    const name = n.input[slot];
    const value = name ? g.constant(name) : undefined;
    if (!value) return n;
    // A fully explicit Reshape target can fix the token count without naming it ([N·B, D]).
    const explicit = n.opType === "Reshape" && value.every((d) => d > 0);
    if (!value.includes(oldN) && !(explicit && (currentShapes().get(n.input[0]!) ?? []).includes(oldN))) return n;
    const fixed =
      n.opType === "Reshape"
        ? retargetReshape(currentShapes().get(n.input[0]!), value, oldN, plan.tokensOut as number, model.tokenAxis)
        : undefined;
    if (fixed) {
      const t = int64Tensor(`prunec/stage${plan.stage}/retarget/${n.name || name}`, fixed);
      initializers.push(t);
      return shallowCopy(n, { input: n.input.map((inp, i) => (i === slot ? t.name : inp)) });
    }
    throw new PrunecError(
      "apply",
      `node '${n.name}' (${n.opType}) after layer ${plan.layer.index} has the token count ${oldN} baked into its constant shape [${value.join(", ")}]; prunec cannot retarget it`,
    );
  });
  return { nodes: out, initializers };
}

/**
 * The constant target of a Reshape below a stage, with the token count n replaced by k; undefined
 * when prunec cannot prove which target entry counts tokens.
 *
 * Proof, with `input` the Reshape's input dims in the current graph (all static): the token count
 * stands on exactly one side as a single axis, with P elements' worth of axes before it and a
 * stride S after it; the other side must have, after axes of the same product P, one axis of size
 * n·S/s whose following axes multiply to s (s dividing S). That axis holds the tokens as its
 * leading factor (token-major): it is split or merged with what follows, never with what precedes,
 * so scaling it by k/n keeps the element layout (e.g. sequence-first attention's [N, B·H, d] →
 * [N·B, D] → [N, B, D]). Without static input dims (a symbolic batch) or with a 0 / -1 entry in
 * the target, the single entry equal to n is taken when it stands at the stream's token axis.
 */
function retargetReshape(
  input: readonly Dim[] | undefined,
  target: readonly number[],
  n: number,
  k: number,
  tokenAxis: number | undefined,
): number[] | undefined {
  const product = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);
  const unique = (xs: readonly (number | string)[]) =>
    xs.indexOf(n) >= 0 && xs.indexOf(n) === xs.lastIndexOf(n) ? xs.indexOf(n) : -1;
  const dims = input?.every((d): d is number => typeof d === "number") ? input : undefined;
  if (!dims || target.some((d) => d <= 0)) {
    const at = unique(target);
    if (at < 0 || at !== tokenAxis) return undefined;
    return target.map((d, i) => (i === at ? k : d));
  }
  if (product(dims) !== product(target)) return undefined;
  /** On side `to`, the axis holding tokens of stride `stride` after `before` elements' worth of axes. */
  const align = (to: readonly number[], before: number, stride: number): number => {
    for (let j = 0; j < to.length; j++) {
      if (product(to.slice(0, j)) !== before) continue;
      const after = product(to.slice(j + 1));
      if (stride % after === 0 && to[j] === (n * stride) / after) return j;
    }
    return -1;
  };
  const i = unique(dims);
  if (i >= 0) {
    const stride = product(dims.slice(i + 1));
    const j = align(target, product(dims.slice(0, i)), stride);
    return j < 0 ? undefined : target.map((d, x) => (x === j ? (k * stride) / product(target.slice(j + 1)) : d));
  }
  const j = unique(target);
  if (j < 0 || align(dims, product(target.slice(0, j)), product(target.slice(j + 1))) < 0) return undefined;
  return target.map((d, x) => (x === j ? k : d));
}
