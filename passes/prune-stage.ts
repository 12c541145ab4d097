/**
 * One pruning stage: score the prunable tokens with the stage's criterion, keep the top K with the
 * special tokens in front, and gather the residual stream leaving the layer.
 *
 * Pre:  plan validated by `planStage` (layer has a residual block, the criterion supports it).
 * Post: a new GraphProto in which every consumer of the layer's output residual sees K' tokens;
 *       stale value_info below the stage is dropped; constant shapes holding the old token count at
 *       the token axis are retargeted. The input graph is not mutated.
 */
import { Graph, type GraphProto, type NodeProto } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import type { LayerInfo, TransformerInfo } from "../src/analysis/transformer.js";
import type { Dim, ShapeMap } from "../src/analysis/dims.js";
import { inferShapes } from "../src/analysis/shapes.js";
import { int64Tensor } from "../src/onnx/tensor.js";
import { batchDim, valueInfo } from "../src/ir/value-info.js";
import { NodeBuilder } from "./builder.js";
import type { ScoreContext } from "./criterion.js";
import { keepCountDynamic } from "./amount.js";
import { selectTopK, withPrefix } from "./select-topk.js";
import { selectGroups, selectFolded, meanOverGroups } from "./select-groups.js";
import { findSideInputs, gatherSideInputs, rewireSideInputs, type SideInput, type TokenAxes } from "./carry-tokens.js";
import { addKeyBias, keptOneHot, maskBias, recycledToken } from "./mask-recycle.js";
import { countPerExample, selectAdaptive } from "./adaptive.js";
import { rewriteCachedAttention } from "./cached-attention.js";
import { attentionOf, clsRowScores } from "./attention/attention-map.js";
import { selectAndGatherFloat } from "./select-gather-float.js";
import { gatherTokens, denseName } from "./gather-tokens.js";
import { PrunecError } from "../src/errors.js";
import { isSkipNorm } from "../src/analysis/residual.js";
import type { StagePlan } from "../src/plan-types.js";

export interface StageResult {
  graph: GraphProto;
  /** int64 [batch, K'] kept positions, numbered as the stage's input tokens (when asked for). */
  indices: string | undefined;
  added: NodeProto[];
  lowering: Lowering;
  /** `--target webgpu` asked for the float-keys lowering and this stage could not have it: why. */
  loweringNote?: string;
  /** Side tensors this stage gathered (name → token axes), for later stages to gather again. */
  carried: Map<string, TokenAxes>;
  /** `with mask`: the additive key bias [B,N] of every token dropped so far. */
  maskBias?: string;
  /** Adaptive amounts: int64 [B] tokens each example keeps (prefix included). */
  counts?: string;
  /** Adaptive amounts: float [B, K'] key bias, −1e9 on the padding positions of the stage's output. */
  validBias?: string;
  /** Token sets' membership [B, K'] (bool) after this stage, for later `of SET` stages. */
  sets: Map<string, string>;
}

/**
 * `index`: int64 index arithmetic (TopK, re-sort, offsets), the default;
 * `float-keys`: WebGPU-resident selection (passes/select-gather-float.ts).
 */
export type Lowering = "index" | "float-keys";

export interface StageOptions {
  opset: number;
  target: "cpu" | "webgpu";
  /** Emit the int64 kept positions (for --expose-indices) even when the lowering does not need them. */
  expose: boolean;
  /** Side tensors carried by earlier stages (see carry-tokens.ts). */
  carried?: ReadonlyMap<string, TokenAxes>;
  /** The key bias of earlier `with mask` stages (see mask-recycle.ts). */
  maskBias?: string;
  /** The padding bias of the previous stage when its count was per example (see adaptive.ts). */
  validBias?: string;
  /** Token sets' membership [B, N] (bool) as earlier stages left it, by set name. */
  sets?: ReadonlyMap<string, string>;
}

export function applyStage(proto: GraphProto, dense: TransformerInfo, densePlan: StagePlan, options: StageOptions): StageResult {
  const opset = options.opset;
  const g = new Graph(proto);
  // Earlier stages rewired some nodes (new objects, same names): criteria must read the current ones.
  const model = withCurrentNodes(dense, g);
  const plan: StagePlan = { ...densePlan, layer: model.layers[densePlan.layer.index]! };
  const residual = plan.layer.residual!;
  // The tensor the stage gathers: the residual leaving the layer, or the encoder's output.
  const r = plan.encoder?.tensor ?? residual.output;
  const b = new NodeBuilder(`prunec/stage${plan.stage}/${plan.criterion.name}`, opset);

  // A masked stage removes nothing: it reads the stream where it is.
  const stream = plan.mask ? r : denseName(r);
  // Skip form: the fused add+norm writing the stream (its output 3) also writes it normalized
  // (output 0), which the next layer reads: that one is gathered at the same positions.
  const normalized = plan.encoder ? undefined : skipNormalized(g, r);
  const belowNodes = new Set([...g.descendants(r), ...(normalized ? g.descendants(normalized) : [])]);
  const below = new Set([...belowNodes].flatMap((n) => n.output));
  below.add(r);
  if (normalized) below.add(normalized);
  const batched = model.batchAxis !== undefined;
  const sides = findSideInputs({ graph: g, shapes: model.shapes, carried: options.carried ?? new Map(), denseTokens: model.tokens!, batched }, belowNodes, below);
  const tokens = typeof plan.tokensIn === "number" ? plan.tokensIn : undefined;
  // Criteria read a batch-first stream: a sequence-first [N, B, D] one is shown to them transposed.
  const seqFirst = model.tokenAxis === 0 && model.batchAxis === 1;
  const scoredStream = plan.encoder && plan.encoder.tensor !== residual.output ? residual.output : stream;
  const ctx: ScoreContext = {
    graph: g,
    model: seqFirst ? { ...model, tokenAxis: 1, batchAxis: 0 } : model,
    layer: plan.layer,
    args: plan.args,
    tokensIn: plan.scoredTokens ?? plan.tokensIn,
    firstLayer: plan.firstLayer,
    b,
    prefix: plan.prefix,
    // After the encoder the criterion still scores the tokens leaving the last layer.
    stream: seqFirst ? b.op("Transpose", [scoredStream], { perm: [1, 0, 2] }, "scored_batch_first") : scoredStream,
    tokens: typeof plan.scoredTokens === "number" ? plan.scoredTokens : tokens,
    // Criteria that use the budget (hiprune's anchors) count it in tokens.
    keep: plan.keep === undefined ? undefined : plan.keep * unitSize(plan),
    target: options.target,
    keyBias: options.validBias ?? options.maskBias,
    ...(plan.ofSet ? { ofSet: plan.ofSet } : {}),
    ...(options.sets?.size ? { sets: options.sets } : {}),
  };
  let output: string;
  let indices: string | undefined;
  let counts: string | undefined;
  /** What --expose-indices shows when it differs from the gather positions (adaptive: padding as -1). */
  let exposed: string | undefined;
  let validBias: string | undefined;
  const gather = (positions: string, source = stream) => gatherTokens(b, source, positions, { tokenAxis: model.tokenAxis!, ...(model.batchAxis !== undefined ? { batchAxis: model.batchAxis } : {}) });
  let lowering: Lowering = "index";
  const floatKeys = options.target === "webgpu" ? floatKeysFor(model, plan, tokens, sides, options, normalized) : undefined;
  /** The positions the stream was gathered at, when known (what token sets follow). */
  let positions: string | undefined;
  // The plan proved the criterion's facts on the dense model; its scorer reads this graph's nodes.
  const prepared = plan.criterion.prepare(ctx);
  if ("why" in prepared) throw new Error(`internal: ${plan.criterion.name} after layer ${plan.layer.index} was planned, but on the stage's graph ${prepared.why}`);
  const scorer = prepared.ok;
  const selector = scorer.kind === "select" ? scorer.select : undefined;
  // Merged selections rank groups: the mean score of their tokens.
  const scores = scorer.kind === "select" ? "" : unitScores(b, scorer.score(ctx), plan);
  // After masked stages, tokens already dropped must not be picked again.
  const skip = options.maskBias ?? options.validBias;
  const ranked = skip && !selector ? b.op("Add", [scores, b.slice(skip, 1, plan.prefix)], {}, "skip_masked") : scores;
  if (selector) {
    indices = withPrefix(b, selector(ctx), plan.prefix);
    output = gather(indices);
  } else if (plan.fold) {
    indices = selectFolded(b, scores, keepTensor(b, scores, plan), plan.fold);
    output = gather(indices);
  } else if (plan.groups) {
    if (plan.keep === undefined) throw new Error("grouped criteria need a static token count (checked by the plan)");
    indices = selectGroups(b, scores, plan.keep, plan.groups.members, plan.prefix);
    output = gather(indices);
  } else if (floatKeys && "counts" in floatKeys) {
    lowering = "float-keys";
    const sel = selectAndGatherFloat(b, scores, stream, floatKeys.counts.tokens - plan.prefix, floatKeys.counts.keep, plan.prefix);
    output = sel.output;
    if (options.expose) indices = withPrefix(b, b.squeeze(sel.positions, [2]), plan.prefix);
  } else if (plan.adaptive) {
    const clsAttention = () => {
      const attention = attentionOf(plan.layer);
      if ("why" in attention) throw new Error(`internal: FlowCut's adaptive count after layer ${plan.layer.index} reads its CLS attention, but ${attention.why}`);
      return clsRowScores(b, attention.ok, plan.prefix);
    };
    let sel: ReturnType<typeof selectAdaptive>;
    if (plan.ofSet) {
      const set = restrictToSet(b, plan, options, scores);
      const count = countPerExample(b, plan.adaptive, { scores, ranked: set.setScores, real: set.members, clsAttention, minimum: 0 });
      // Tokens outside the set are all kept: they rank first.
      sel = selectAdaptive(b, set.ranked, b.op("Add", [set.others, count], {}, "kept_total"), plan.prefix);
    } else {
      const real = realCount(b, scores, options.validBias, plan.prefix, model.batchAxis === undefined);
      sel = selectAdaptive(b, ranked, countPerExample(b, plan.adaptive, { scores, ranked, real, clsAttention }), plan.prefix);
    }
    if (plan.mask) return finishMasked(proto, g, model, plan, b, sel.realIndices, stream, options.sets, sel.counts);
    // (Masked: nothing is gathered, so the positions are exposed with padding as -1 too.)
    indices = sel.indices;
    counts = sel.counts;
    exposed = sel.realIndices;
    output = gather(indices);
    validBias = sel.padBias;
  } else {
    indices = selectTopK(b, ranked, keepTensor(b, scores, plan), plan.prefix);
    if (plan.mask) return finishMasked(proto, g, model, plan, b, indices, stream, options.sets);
    output = gather(indices);
    positions = indices;
    if (plan.recycle) {
      if (normalized) throw new PrunecError("apply", `'with recycle' after layer ${plan.layer.index}: the stream leaves the layer through a fused skip normalization, whose normalized output has no recycled token`);
      if (sides.length) throw new PrunecError("apply", `'with recycle' after layer ${plan.layer.index}: the layers below read per-token tensors (${sides.map((x) => `'${x.tensor}'`).sort().join(", ")}) that have no row for the recycled token`);
      const kept = keptOneHot(b, indices, stream, model.tokenAxis!);
      const extra = recycledToken(b, stream, scores, kept, plan.prefix, batched);
      output = b.op("Concat", [output, extra], { axis: model.tokenAxis! }, "with_recycled");
      // The exposed positions say which output token is the recycled one: -1.
      const batch = b.slice(b.op("Shape", [indices]), 0, 0, 1);
      const minusOne = b.op("Expand", [b.int64([-1], [1, 1], "recycled_position"), b.op("Concat", [batch, b.int64([1])], { axis: 0 })]);
      indices = b.op("Concat", [indices, minusOne], { axis: 1 }, "kept_and_recycled");
    }
  }

  positions ??= indices;
  // Token sets' memberships follow the kept tokens (the recycled token belongs to none).
  const sets = positions && model.batchAxis === 0 ? followSets(b, options.sets ?? new Map(), positions, plan.recycle === true) : new Map(options.sets ?? []);
  // Side tensors read below the stage follow the kept tokens.
  // Cached attention below the stage: per-layer sequence lengths and key-padding bias.
  const padMask = plan.encoder ? new Map<NodeProto, NodeProto>() : rewriteCachedAttention(b, model, dense, plan.layer.index + 1, validBias);
  const tokenCount = () => b.slice(b.op("Shape", [stream]), 0, model.tokenAxis!, model.tokenAxis! + 1);
  const gathered = plan.renumber ? renumbered(b, plan, sides, indices!, batched, tokenCount) : gatherSideInputs(b, sides, indices!, batched, tokenCount);
  if (validBias && plan.adaptive) {
    // Each example keeps its own count: the padding up to the batch's largest count is masked out
    // of every later attention, so each example computes exactly its batch-1 result. Only up to
    // the next stage: it never keeps padding as a real token, and pads anew.
    const keys = b.unsqueeze(validBias, [1, 2]);
    for (const [n, r2] of addKeyBias(b, model, plan.layer.index + 1, keys, { label: "skip_padding", until: plan.padUntil!, resolve: (t) => gathered.get(t) ?? t })) padMask.set(n, r2);
  }
  const carried = new Map(sides.map((s) => [gathered.get(s.tensor)!, { axes: s.axes, rank: s.rank }]));
  // The stage's result takes the residual's name, so every consumer and graph output reads it.
  const last = b.nodes.find((n) => n.output[0] === output)!;
  last.output[0] = r;
  if (normalized) {
    const gatheredNorm = gather(indices!, denseName(normalized));
    b.nodes.find((n) => n.output[0] === gatheredNorm)!.output[0] = normalized;
  }

  // The original producer of r now writes r/dense; stage nodes go right after it (their inputs,
  // the layer's probabilities and r/dense, all exist by then).
  const producer = g.producer.get(r)!;
  const renamed = shallowCopy(producer, { output: producer.output.map((o) => (o === r ? stream : o === normalized ? denseName(normalized) : o)) });
  const at = proto.node.indexOf(producer);
  const nodes = rewireSideInputs(
    [...proto.node.slice(0, at), renamed, ...b.nodes, ...proto.node.slice(at + 1)].map((n) => padMask.get(n) ?? n),
    gathered,
    new Set([...belowNodes].map((n) => padMask.get(n) ?? n)),
  );
  const retargeted = retargetShapeConstants(g, nodes, below, plan, model);
  const graph = shallowCopy(proto, {
    node: retargeted.nodes,
    initializer: [...proto.initializer, ...b.initializers, ...retargeted.initializers],
    // Shapes recorded below the stage describe the dense model; ORT would reject them. The pruned
    // stream's own shape is declared instead: ORT cannot infer it through the selection subgraph,
    // and without it later fusions (e.g. Add+Gelu → BiasGelu) are skipped.
    valueInfo: [...proto.valueInfo.filter((v) => !below.has(v.name)), ...(plan.encoder ? [] : prunedStreamInfo(proto, model, plan, r, streamElemType(g, plan.layer)))],
  });
  // A side tensor may be computed after the stage's anchor point in file order: re-sort when any is gathered.
  const sorted = sides.length || padMask.size ? shallowCopy(graph, { node: new Graph(graph).order }) : graph;
  // Selections with a lowering of their own (greedy loops, groups, folds) say so instead.
  const loweringNote = options.target !== "webgpu" || lowering === "float-keys" ? undefined : selector || plan.fold || plan.groups ? ownLowering(plan, selector !== undefined) : floatKeys && "why" in floatKeys ? floatKeys.why : undefined;
  return { graph: sorted, indices: exposed ?? indices, added: b.nodes, lowering, ...(loweringNote ? { loweringNote } : {}), carried, sets, ...(counts ? { counts } : {}), ...(validBias ? { validBias } : {}) };
}

/**
 * Whether the float-keys (WebGPU-resident) selection can serve a stage (its static counts), or why not. It
 * orders one static count of batch-first tokens and gathers the stream alone; anything else keeps
 * the index lowering, whose int64 arithmetic onnxruntime-web runs on the CPU.
 */
function floatKeysFor(
  model: TransformerInfo,
  plan: StagePlan,
  tokens: number | undefined,
  sides: readonly { tensor: string }[],
  options: StageOptions,
  normalized: string | undefined,
): { why: string } | { counts: { tokens: number; keep: number } } {
  const why = (text: string) => ({ why: text });
  if (model.batchAxis !== 0) return why(model.batchAxis === undefined ? "the stream has no batch axis" : "the stream is sequence-first");
  if (plan.keep === undefined) return why("the count differs per example");
  if (tokens === undefined) return why("the token count is symbolic");
  if (sides.length) return why(`the layers below read per-token tensors (${sides.map((x) => `'${x.tensor}'`).sort().join(", ")}) that are gathered by index`);
  if (plan.mask) return why("'with mask' builds its key bias from the kept indices");
  if (plan.recycle) return why("'with recycle' needs the kept indices");
  if (options.sets?.size) return why("token sets follow the kept indices");
  if (normalized) return why("the fused skip norm's normalized output is gathered by index too");
  return { counts: { tokens, keep: plan.keep } };
}

/** Stages whose selection has its own lowering under --target webgpu (not a fallback), or undefined. */
function ownLowering(plan: StagePlan, selects: boolean): string | undefined {
  if (selects) return undefined; // greedy selection: unrolled for WebGPU by the criterion itself
  if (plan.fold) return "it keeps whole merge groups (index lowering)";
  if (plan.groups) return `it keeps whole ${plan.groups.unit}s (index lowering)`;
  return undefined;
}

/**
 * A `with mask` stage: the kept positions become a key bias added to the attention logits of every
 * later layer; the stream and all shapes stay as they are.
 */
function finishMasked(
  proto: GraphProto,
  g: Graph,
  model: TransformerInfo,
  plan: StagePlan,
  b: NodeBuilder,
  indices: string,
  stream: string,
  sets: ReadonlyMap<string, string> | undefined,
  counts?: string,
): StageResult {
  const bias = maskBias(b, keptOneHot(b, indices, stream, model.tokenAxis!));
  const rewired = addKeyBias(b, model, plan.layer.index + 1, b.unsqueeze(bias, [1, 2]), { label: "mask" });
  const producer = g.producer.get(stream)!;
  const at = proto.node.indexOf(producer);
  const nodes = [...proto.node.slice(0, at + 1), ...b.nodes, ...proto.node.slice(at + 1)].map((n) => rewired.get(n) ?? n);
  const graph = shallowCopy(proto, { node: nodes, initializer: [...proto.initializer, ...b.initializers] });
  // The mask's Adds read logits computed further down: restore a topological order.
  return { graph: shallowCopy(graph, { node: new Graph(graph).order }), indices, added: b.nodes, lowering: "index", carried: new Map(), sets: new Map(sets ?? []), maskBias: bias, ...(counts ? { counts } : {}) };
}

function keepTensor(b: NodeBuilder, scores: string, plan: StagePlan): string {
  if (plan.keep !== undefined) return b.int64([plan.keep], [1], "k");
  const n = b.slice(b.op("Shape", [scores]), 0, 1, 2);
  return keepCountDynamic(b, n, plan.percent, plan.drop);
}

/**
 * `with renumber`: positional side tensors (one token axis) read at rows 0..K'−1, masks (two) at
 * the kept rows. Flattened per-token tables (M-RoPE's three position axes) have no contiguous
 * numbering: rejected.
 */
function renumbered(b: NodeBuilder, plan: StagePlan, sides: SideInput[], indices: string, batched: boolean, tokens: () => string): Map<string, string> {
  const where = `'with renumber' after layer ${plan.layer.index}`;
  const flat = sides.find((s) => s.flat);
  if (flat) throw new PrunecError("apply", `${where}: the layers below read '${flat.tensor}', a rotary table with one row per example and token (multi-axis positions, as M-RoPE's), which has no contiguous renumbering`);
  const positional = sides.filter((s) => s.axes.length === 1);
  if (!positional.length) throw new PrunecError("apply", `${where}: the layers below read no per-token positions (position ids or rotary tables) to renumber`);
  const k = b.slice(b.op("Shape", [indices]), 0, 1, 2);
  const counting = b.op("Expand", [b.unsqueeze(b.range(k, "renumbered"), [0]), b.op("Shape", [indices])], {}, "renumbered_rows"); // [B,K']
  return new Map([...gatherSideInputs(b, positional, counting, batched, tokens), ...gatherSideInputs(b, sides.filter((s) => s.axes.length !== 1), indices, batched, tokens)]);
}

/** Output 0 of the fused Skip norm whose output 3 is the stream `r`, if r leaves through one. */
function skipNormalized(g: Graph, r: string): string | undefined {
  const n = g.producer.get(r);
  return n && isSkipNorm(n) && n.output[3] === r && n.output[0] ? n.output[0] : undefined;
}

/** Element type of the residual stream (from the pre-norm's scale), when known. */
export function streamElemType(g: Graph, layer: LayerInfo): number | undefined {
  const scale = layer.residual!.norm.scale;
  return scale ? g.constantTensor(scale)?.dataType : undefined;
}

/** [batch, K', hidden] of the pruned stream, when every part of it is known. */
export function prunedStreamInfo(proto: GraphProto, model: TransformerInfo, plan: StagePlan, r: string, elemType: number | undefined) {
  const batch = batchDim(proto);
  if (model.batchAxis !== 0 || model.tokenAxis !== 1 || typeof plan.tokensOut !== "number" || !model.hidden || !elemType || batch === undefined) return [];
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
    const fixed = n.opType === "Reshape" ? retargetReshape(currentShapes().get(n.input[0]!), value, oldN, plan.tokensOut as number, model.tokenAxis) : undefined;
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
function retargetReshape(input: readonly Dim[] | undefined, target: readonly number[], n: number, k: number, tokenAxis: number | undefined): number[] | undefined {
  const product = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);
  const unique = (xs: readonly (number | string)[]) => (xs.indexOf(n) >= 0 && xs.indexOf(n) === xs.lastIndexOf(n) ? xs.indexOf(n) : -1);
  const dims = input && input.every((d): d is number => typeof d === "number") ? input : undefined;
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

/** The analysis's layers with their attention nodes replaced by the graph's current ones (same outputs). */
export function withCurrentNodes(model: TransformerInfo, g: Graph): TransformerInfo {
  const now = (n: NodeProto | undefined) => (n ? g.producer.get(n.output[0]!) ?? n : undefined);
  const layers = model.layers.map((l) => {
    if (!l.core) return l;
    const core = { ...l.core, anchor: now(l.core.anchor)! };
    if (l.core.qk) core.qk = now(l.core.qk)!;
    if (l.core.pv) core.pv = now(l.core.pv)!;
    return { ...l, core };
  });
  return { ...model, layers };
}

/** Token scores [B,N'] → scores of the units the stage selects: fold groups or pooling windows (after the encoder). */
function unitScores(b: NodeBuilder, tokenScores: string, plan: StagePlan): string {
  const per = plan.encoder?.per;
  if (plan.fold || per?.kind === "fold") {
    const size = plan.fold ?? (per as { size: number }).size;
    return b.reduceMean(b.op("Reshape", [tokenScores, b.int64([0, -1, size], [3], "groups_shape")], {}, "fold_groups"), [2], 0);
  }
  if (per?.kind === "pool") return meanOverGroups(b, tokenScores, per.members);
  return tokenScores;
}

/** Tokens per unit the stage selects: 1, or the fold / pooling window size. */
function unitSize(plan: StagePlan): number {
  const per = plan.encoder?.per;
  if (per?.kind === "fold") return per.size;
  if (per?.kind === "pool") return per.members[0]!.length;
  return plan.fold ?? 1;
}

/** int64 [B,1]: prunable tokens of each example that are not padding from an earlier adaptive stage. */
function realCount(b: NodeBuilder, scores: string, validBias: string | undefined, prefix: number, batchless: boolean): string {
  if (validBias) {
    const real = b.op("Equal", [b.slice(validBias, 1, prefix), b.float([0], [], "zero_bias")], {}, "is_real");
    return b.reduce("ReduceSum", b.op("Cast", [real], { to: 7 }), [1], 1);
  }
  const shape = b.op("Shape", [scores]);
  const n = b.unsqueeze(b.slice(shape, 0, 1, 2), [0]); // [1,1]
  if (batchless) return n;
  return b.op("Expand", [n, b.op("Concat", [b.slice(shape, 0, 0, 1), b.int64([1])], { axis: 0 })], {}, "real_count"); // [B,1]
}

/**
 * `of SET`: which prunable tokens are set members (and not padding from an earlier stage), how
 * many each example has, how many other real tokens it has, and the ranking that keeps every
 * non-member first (members by score, padding last).
 */
function restrictToSet(b: NodeBuilder, plan: StagePlan, options: StageOptions, scores: string) {
  const member = b.slice(b.op("Cast", [options.sets?.get(plan.ofSet!.name) ?? plan.ofSet!.input], { to: 9 }, "set_mask"), 1, plan.prefix); // [B,Np]
  const big = b.float([1e9], [], "big");
  const count = (t: string) => b.reduce("ReduceSum", b.op("Cast", [t], { to: 7 }), [1], 1); // [B,1]
  // Padding left by an earlier per-example stage is neither a member nor another token.
  const isReal = options.validBias ? b.op("Equal", [b.slice(options.validBias, 1, plan.prefix), b.float([0], [], "zero_bias")], {}, "is_real") : undefined;
  const memberReal = isReal ? b.op("And", [member, isReal], {}, "member_real") : member;
  const otherReal = isReal ? b.op("And", [b.op("Not", [member]), isReal], {}, "other_real") : b.op("Not", [member]);
  const others = isReal ? b.op("Where", [isReal, big, b.op("Neg", [big])]) : big;
  const ranked = b.op("Where", [memberReal, scores, others], {}, "set_first");
  const setScores = b.op("Where", [memberReal, scores, b.op("Neg", [big])], {}, "set_scores");
  return { members: count(memberReal), others: count(otherReal), ranked, setScores };
}

/** Each token set's membership [B, N'] after a stage that kept `positions` [B, N'] (plus a recycled non-member). */
function followSets(b: NodeBuilder, sets: ReadonlyMap<string, string>, positions: string, recycled: boolean): Map<string, string> {
  return new Map(
    [...sets].map(([name, member]) => {
      let after = b.op("GatherElements", [b.op("Cast", [member], { to: 7 }), positions], { axis: 1 }); // int64 [B,K']
      if (recycled) after = b.op("Pad", [after, b.int64([0, 0, 0, 1], [4], "one_more")], {}, "recycled_not_member");
      return [name, b.op("Cast", [after], { to: 9 }, "set_after")];
    }),
  );
}
