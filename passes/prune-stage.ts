/**
 * A keep/drop stage, as a pipeline over its kinds (passes/kinds/): set up on the current graph
 * (refreshed facts, the stream's names, per-token tensors read below, the criterion's scorer), score,
 * select (the selection kind the stage's plan and target give, passes/kinds/index.ts), then either
 * mask (passes/kinds/mask.ts) or gather the stream, append the recycled token, carry the token
 * sets and side tensors (renumbered or not), mask padding below, and splice (passes/splice.ts).
 *
 * Pre:  plan validated by `planStages` (layer has a residual block, the criterion's prepare() is
 *       ok, the options combine as passes/kinds/combinations.ts declares).
 * Post: a new GraphProto in which every consumer of the layer's output residual sees K' tokens;
 *       stale value_info below the stage is dropped; constant shapes holding the old token count at
 *       the token axis are retargeted; the splice's ensures() held. The input graph is not mutated.
 */
import { Graph, type GraphProto, type NodeProto } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import { batchDim, valueInfo } from "../src/ir/value-info.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import type { Dim } from "../src/analysis/dims.js";
import { refreshFacts } from "../src/analysis/refresh.js";
import { isSkipNorm } from "../src/analysis/residual.js";
import type { StagePlan } from "../src/plan-types.js";
import { NodeBuilder } from "./builder.js";
import type { ScoreContext } from "./criterion.js";
import { meanOverGroups } from "./select-groups.js";
import { findSideInputs, gatherSideInputs } from "./carry-tokens.js";
import { addKeyBias } from "./mask-recycle.js";
import { rewriteCachedAttention } from "./cached-attention.js";
import { gatherTokens, denseName } from "./gather-tokens.js";
import { prunedStreamInfo, retargetShapeConstants, streamElemType } from "./retarget.js";
import { splice } from "./splice.js";
import type { StreamState } from "./stream-state.js";
import type { LowerOptions, StageLowering, StageSetup } from "./kinds/kind.js";
import { chooseSelection } from "./kinds/index.js";
import { lowerMask } from "./kinds/mask.js";
import { appendRecycled } from "./kinds/recycle.js";
import { cachedAfter, carryPadState, paddingMode, padStateNames, validityBias, zeroRows } from "./front-padding.js";
import { renumberedSides } from "./kinds/renumber.js";
import { attentionMask, cachedGqaBelow, hostColumns, lastColumns } from "./host-mask.js";
import { restoreBelow } from "./restore.js";
import { frameInputs, withFramePast, withFramePresent, writePresent } from "./frames.js";

/** float: the element type of the padding validity pair (onnx TensorProto.FLOAT). */
const FLOAT = 1;

export const applyStage: StageLowering = (proto, dense, densePlan, state, options) => {
  const s = setUp(proto, dense, densePlan, state, options);
  const { b, plan, model } = s;
  const choice = chooseSelection(s);
  const sel = choice.module.select(s);
  if (plan.mask) return lowerMask(s, sel);

  if (!sel.indices && !sel.output)
    throw new Error(`${choice.module.name} returned neither positions nor a gathered stream`);
  let indices = sel.indices;
  let output = sel.output ?? s.gather(indices!, sel.source);
  // Padding in front of linear-attention layers is zero rows (passes/front-padding.ts).
  const elemType = streamElemType(s.g, s.residual);
  if (sel.zeroRows) output = zeroRows(b, output, sel.zeroRows, elemType);
  /** The positions the stream was gathered at, when known (what token sets follow). */
  const positions = indices;
  if (plan.recycle) ({ output, indices } = appendRecycled(s, output, indices!));

  // Token sets' memberships follow the kept tokens (the recycled token belongs to none).
  const sets =
    positions && model.batchAxis === 0
      ? followSets(b, state.sets, positions, plan.recycle === true)
      : new Map(state.sets);
  // A cascade criterion's running score follows the kept tokens to the next stage.
  const running = s.scorer.kind === "score" ? s.scorer.cumulative?.(s.ctx) : undefined;
  const cumulative =
    running && positions && model.batchAxis === 0
      ? b.op("GatherElements", [running, positions], { axis: 1 }, "cumulative_kept")
      : undefined;
  // Padding in front stays in the later caches: its validity is carried from call to call and
  // masks those slots at every call (the plan required a later cache and --kv-state).
  if (sel.zeroRows && !options.kvState)
    throw new Error(`stage ${plan.stage}: padding in front needs --kv-state (checked by the plan)`);
  // The default padding (extra tokens after the kept ones, masked) stays in the later caches too:
  // with --kv-state its validity is carried the same way, so decode steps keep it masked (the
  // host's mask counts dense tokens and cannot say which slots it fills).
  const carriedPadding =
    !sel.zeroRows &&
    options.kvState &&
    plan.adaptive &&
    sel.validBias &&
    !plan.encoder &&
    cachedAfter(model, plan.layer.index + 1).length > 0
      ? b.op("Less", [sel.validBias, b.float([0], [], "zero_bias")], {}, "padding_rows")
      : undefined;
  const padState =
    sel.zeroRows && paddingMode(model, plan.layer.index + 1) === "front"
      ? carryPadState(b, plan.stage, sel.zeroRows)
      : carriedPadding
        ? carryPadState(b, plan.stage, carriedPadding)
        : undefined;
  // Cached attention below the stage: per-layer sequence lengths and key-padding bias.
  const replaced = plan.encoder
    ? new Map<NodeProto, NodeProto>()
    : rewriteCachedAttention(
        b,
        model,
        dense,
        plan.layer.index + 1,
        padState ?? sel.validBias,
        // Its padding (and validity) covers the layers down to the next stage, which pads anew below.
        plan.padUntil,
        // Which host-mask columns the caches below line up with (passes/host-mask.ts).
        hostColumns([plan], plan.layer.index + 1),
      );
  // Side tensors read below the stage follow the kept tokens.
  const tokenCount = () => b.slice(b.op("Shape", [s.stream]), 0, s.tokenAxis, s.tokenAxis + 1);
  const gathered = plan.renumber
    ? renumberedSides(s, indices!, tokenCount)
    : gatherSideInputs(b, s.sides, indices!, s.batched, tokenCount);
  if (sel.validBias && plan.adaptive) {
    // Each example keeps its own count: the padding up to the batch's largest count is masked out
    // of every later attention, so each example computes exactly its batch-1 result. Only up to
    // the next stage: it never keeps padding as a real token, and pads anew.
    const keys = b.unsqueeze(sel.validBias, [1, 2]);
    const until = plan.padUntil ?? model.layers.length - 1;
    for (const [n, r2] of addKeyBias(b, model, plan.layer.index + 1, keys, {
      label: "skip_padding",
      until,
      // Zero padding rows in front need no mask there (checked by the plan).
      linear: sel.zeroRows ? "skip" : "refuse",
      resolve: (t) => gathered.get(t) ?? t,
    }))
      replaced.set(n, r2);
  }
  const carried = new Map(s.sides.map((x) => [gathered.get(x.tensor) ?? x.tensor, { axes: x.axes, rank: x.rank }]));
  // The stage's result takes the residual's name, so every consumer and graph output reads it.
  b.rename(output, s.r);
  const renames = new Map([[s.r, s.stream]]);
  if (s.normalized) {
    const normalized = s.gather(indices!, denseName(s.normalized));
    // The norm has no bias (checked by the plan): the normalized zero row is zero too.
    b.rename(sel.zeroRows ? zeroRows(b, normalized, sel.zeroRows, elemType) : normalized, s.normalized);
    renames.set(s.normalized, denseName(s.normalized));
  }
  // `across frames`: the criterion's state for the next call, a graph output (passes/frames.ts).
  const frameDims = plan.frames ? frameStateDims(s, sel.exposed ?? indices) : undefined;
  // The original producer of r now writes r/dense; stage nodes go right after it (their inputs,
  // the layer's probabilities and r/dense, all exist by then).
  const names = padState ? padStateNames(plan.stage) : undefined;
  const withPast = frameDims ? withFramePast(proto, plan.stage, frameDims) : proto;
  const spliced = splice(names ? withPadStateInput(withPast, names) : withPast, {
    label: `stage ${plan.stage} (${plan.criterion.name} after layer ${plan.layer.index})`,
    after: s.r,
    rename: renames,
    nodes: b.nodes,
    initializers: b.initializers,
    replaced,
    sides: { gathered, belowNodes: s.belowNodes },
    retarget: (nodes) => retargetShapeConstants(s.g, nodes, s.below, plan, model),
    // Shapes recorded below the stage describe the dense model; ORT would reject them. The pruned
    // stream's own shape is declared instead: ORT cannot infer it through the selection subgraph,
    // and without it later fusions (e.g. Add+Gelu → BiasGelu) are skipped.
    staleInfo: s.below,
    info: plan.encoder ? [] : prunedStreamInfo(proto, model, plan, s.r, elemType),
  });
  const withPresent = frameDims ? withFramePresent(spliced, plan.stage, frameDims) : spliced;
  const graph = names ? withPadStateOutput(withPresent, names) : withPresent;
  const exposed = sel.exposed ?? indices;
  if (plan.restore && !indices)
    throw new Error(`stage ${plan.stage}: 'with restore' needs the gathered positions (checked by the plan)`);
  const restore = plan.restore
    ? {
        kind: "scatter" as const,
        at: plan.restore.at,
        input: s.stream,
        rows: indices!,
        ...(sel.validBias && plan.adaptive ? { padding: sel.validBias } : {}),
      }
    : undefined;
  const record = {
    lowering: sel.lowering,
    ...(restore ? { restore } : {}),
    ...(exposed ? { indices: exposed } : {}),
    ...(sel.counts ? { counts: sel.counts } : {}),
    ...(choice.note ? { loweringNote: choice.note } : {}),
  };
  return {
    graph,
    effect: {
      tokens: plan.tokensOut,
      added: b.nodes,
      record,
      carried,
      ...(sel.validBias ? { validBias: sel.validBias } : {}),
      ...(cumulative ? { cumulative } : {}),
      sets,
    },
  };
};

/** Writes an `across frames` stage's next state (the scorer's `next`) and returns its dims after the batch. */
function frameStateDims(s: StageSetup, positions: string | undefined): (Dim | undefined)[] {
  const { plan, scorer, ctx, model } = s;
  const carry = plan.criterion.frames;
  if (scorer.kind !== "score" || !scorer.next || !carry || !positions)
    throw new Error(`stage ${plan.stage}: ${plan.criterion.name} carries nothing across frames (checked by the plan)`);
  writePresent(s.b, plan.stage, scorer.next(ctx, { positions }));
  return carry.dims(plan.tokensIn, model.hidden);
}

/** Everything the stage's kinds read, on the current graph (facts refreshed: earlier stages rewired nodes). */
function setUp(
  proto: GraphProto,
  dense: TransformerInfo,
  densePlan: StagePlan,
  state: StreamState,
  options: LowerOptions,
): StageSetup {
  const g = Graph.of(proto);
  const model = refreshFacts(dense, g);
  const layer = model.layers[densePlan.layer.index];
  const residual = layer?.residual;
  if (!layer || !residual || model.tokenAxis === undefined || model.tokens === undefined)
    throw new Error(`stage ${densePlan.stage}: the plan found a residual stream the refreshed facts lack`);
  const plan: StagePlan = { ...densePlan, layer };
  const tokenAxis = model.tokenAxis;
  // The tensor the stage gathers: the residual leaving the layer, or the encoder's output.
  const r = plan.encoder?.tensor ?? residual.output;
  const b = new NodeBuilder(`prunec/stage${plan.stage}/${plan.criterion.name}`, options.opset);
  // A masked stage removes nothing: it reads the stream where it is.
  const stream = plan.mask ? r : denseName(r);
  // Skip form: the fused add+norm writing the stream (its output 3) also writes it normalized
  // (output 0), which the next layer reads: that one is gathered at the same positions.
  const normalized = plan.encoder ? undefined : skipNormalized(g, r);
  // With `with restore` the nodes below the restore point see every token again: they are not the stage's.
  const restored = plan.restore ? restoreBelow(g, dense, plan.restore.at) : new Set<NodeProto>();
  const belowNodes = new Set(
    [...g.descendants(r), ...(normalized ? g.descendants(normalized) : [])].filter((n) => !restored.has(n)),
  );
  const below = new Set([...belowNodes].flatMap((n) => n.output));
  below.add(r);
  if (normalized) below.add(normalized);
  const batched = model.batchAxis !== undefined;
  const sides = findSideInputs(
    { graph: g, shapes: model.shapes, carried: state.carried, denseTokens: model.tokens, batched },
    belowNodes,
    below,
  );
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
    // Criteria that use the budget (hiprune's anchors) count it in tokens; one that counts itself
    // (crops) keeps at most its static budget.
    keep:
      plan.keep !== undefined
        ? plan.keep * unitSize(plan)
        : plan.adaptive?.kind === "criterion"
          ? plan.adaptive.budget
          : undefined,
    target: options.target,
    keyBias: state.validBias ?? state.maskBias,
    ...(plan.ofSet ? { ofSet: plan.ofSet } : {}),
    ...(state.sets.size ? { sets: state.sets } : {}),
    ...(state.cumulative ? { cumulative: state.cumulative } : {}),
    // `across frames`: the state the previous call left (passes/frames.ts).
    ...(plan.frames ? { frame: frameInputs(b, plan.stage) } : {}),
    ...(plan.adaptive ? { amount: plan.adaptive } : {}),
    ...(plan.readSets ? { setInputs: new Map(Object.entries(plan.readSets)) } : {}),
  };
  // The plan proved the criterion's facts on the dense model; its scorer reads this graph's nodes.
  const prepared = plan.criterion.prepare(ctx);
  if ("why" in prepared)
    throw new Error(
      `internal: ${plan.criterion.name} after layer ${plan.layer.index} was planned, but on the stage's graph ${prepared.why}`,
    );
  const scorer = prepared.ok;
  // Merged selections rank groups: the mean score of their tokens.
  // The bench's oracle (kinds/oracle.ts) chooses no tokens: it emits no scores either.
  const scores = scorer.kind === "select" || options.oracle ? "" : unitScores(b, scorer.score(ctx), plan);
  // After masked stages, tokens already dropped must not be picked again.
  const skip = state.maskBias ?? state.validBias;
  const unmasked = skip && scores ? b.op("Add", [scores, b.slice(skip, 1, plan.prefix)], {}, "skip_masked") : scores;
  const hostPads = hostPadRank(b, proto, model, plan, stream, tokenAxis);
  const ranked =
    hostPads && scorer.kind !== "select" && scores ? b.op("Add", [unmasked, hostPads], {}, "host_pads_last") : unmasked;
  const gather = (positions: string, source = stream) =>
    gatherTokens(b, source, positions, {
      tokenAxis,
      ...(model.batchAxis !== undefined ? { batchAxis: model.batchAxis } : {}),
    });
  return {
    proto,
    g,
    model,
    dense,
    plan,
    residual,
    tokenAxis,
    state,
    options,
    b,
    r,
    stream,
    normalized,
    belowNodes,
    below,
    sides,
    batched,
    tokens,
    ctx,
    scorer,
    scores,
    ranked,
    gather,
  };
}

/**
 * float [B, N'−prefix]: −1e9 on the host's pads among the stage's input rows, 0 elsewhere, for a
 * stage without a set above cached GroupQueryAttention layers; undefined where none is needed. Such
 * a stage never keeps a pad over a real token, which is what lets the caches below read the host
 * mask's last columns (passes/host-mask.ts). Its input rows' pads are the host mask's last N'
 * columns by the same invariant (the prefill's mask has exactly N columns; a decode step's new rows
 * are real).
 */
function hostPadRank(
  b: NodeBuilder,
  proto: GraphProto,
  model: TransformerInfo,
  plan: StagePlan,
  stream: string,
  tokenAxis: number,
): string | undefined {
  if (plan.ofSet || plan.encoder || model.batchAxis !== 0) return undefined;
  const mask = attentionMask(proto);
  if (!mask || !cachedGqaBelow(model, plan.layer.index)) return undefined;
  const rows = b.slice(b.op("Shape", [stream]), 0, tokenAxis, tokenAxis + 1);
  const real = b.op("Cast", [lastColumns(b, mask, rows)], { to: FLOAT }, "host_rows_real");
  return b.slice(validityBias(b, real, "host_pad_bias", "host_pads"), 1, plan.prefix);
}

/** Output 0 of the fused Skip norm whose output 3 is the stream `r`, if r leaves through one. */
function skipNormalized(g: Graph, r: string): string | undefined {
  const n = g.producer.get(r);
  return n && isSkipNorm(n) && n.output[3] === r && n.output[0] ? n.output[0] : undefined;
}

/** Token scores [B,N'] → scores of the units the stage selects: fold groups or pooling windows (after the encoder). */
function unitScores(b: NodeBuilder, tokenScores: string, plan: StagePlan): string {
  const per = plan.encoder?.per;
  if (plan.fold || per?.kind === "fold") {
    const size = plan.fold ?? (per as { size: number }).size;
    return b.reduceMean(
      b.op("Reshape", [tokenScores, b.int64([0, -1, size], [3], "groups_shape")], {}, "fold_groups"),
      [2],
      0,
    );
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

/** Each token set's membership [B, N'] after a stage that kept `positions` [B, N'] (plus a recycled non-member). */
function followSets(
  b: NodeBuilder,
  sets: ReadonlyMap<string, string>,
  positions: string,
  recycled: boolean,
): Map<string, string> {
  return new Map(
    [...sets].map(([name, member]) => {
      let after = b.op("GatherElements", [b.op("Cast", [member], { to: 7 }), positions], { axis: 1 }); // int64 [B,K']
      if (recycled) after = b.op("Pad", [after, b.int64([0, 0, 0, 1], [4], "one_more")], {}, "recycled_not_member");
      return [name, b.op("Cast", [after], { to: 9 }, "set_after")];
    }),
  );
}

/** The graph with a stage's padding validity input declared: float [batch, prunec_stageN_past]. */
function withPadStateInput(graph: GraphProto, names: ReturnType<typeof padStateNames>): GraphProto {
  const dims = [batchDim(graph) ?? "batch", names.pastDim];
  return shallowCopy(graph, { input: [...graph.input, valueInfo(names.past, FLOAT, dims)] });
}

/** The graph with the validity's present output declared: float [batch, prunec_stageN_cache]. */
function withPadStateOutput(graph: GraphProto, names: ReturnType<typeof padStateNames>): GraphProto {
  const dims = [batchDim(graph) ?? "batch", names.presentDim];
  return shallowCopy(graph, { output: [...graph.output, valueInfo(names.present, FLOAT, dims)] });
}
