/**
 * Resolving a parsed spec against a model: every check that needs the model happens here, before
 * anything is emitted, and each failure names the spec text and the model fact that conflict.
 */
import type { SpecIR, StageIR, Span, TokenSetDecl } from "../grammar/ir.js";
import { argsWithDefaults } from "../grammar/registry.js";
import { clip, diagnosticAt, formatDiagnostics, type Diagnostic } from "../grammar/diagnostics.js";
import { closest } from "../grammar/suggest.js";
import type { Graph } from "./ir/graph.js";
import type { TransformerInfo } from "./analysis/transformer.js";
import type { Dim } from "./analysis/dims.js";
import type { InputFact } from "./analysis/inputs.js";
import { criterionModule, plannedCriterion, requiredSets } from "../passes/registry.js";
import type { StagePlan } from "./plan-types.js";
import type { StageFacts } from "../passes/criterion.js";
import { COUNT_CHECK, SELECTION_CHECKS, selectionKind } from "../passes/kinds/index.js";
import type { KindFacts, Refusal } from "../passes/kinds/kind.js";
import { paddingMode } from "../passes/front-padding.js";
import { refusal, type CellFacts, type SelectionKind, type StageOption } from "../passes/kinds/combinations.js";
import { optionRefusal } from "../passes/kinds/options.js";
import { restoreLayer, restoreWhere } from "../passes/restore.js";
import { keepCountStatic } from "../passes/amount.js";
import { planMerge } from "./plan-merge.js";
import { PrunecError } from "./errors.js";
import { DEFAULT_PERCENT, resolvedAmount } from "./plan-amount.js";
import { planKvStages } from "./plan-kv.js";
import { planHeadStages } from "./plan-heads.js";
import { cachedGqaBelow } from "../passes/host-mask.js";
import { planFrames } from "./plan-frames.js";
import { gridBound, planRecycleGrid } from "./plan-recycle.js";
import { setInput } from "./plan-sets.js";
import { halfRefusal } from "./plan-half.js";
import type { HeadPlan, KvPlan } from "./plan-types.js";

export { DEFAULT_PERCENT, resolvedAmount };

/** What the plan needs to know of a model input named by `tokens SET = input NAME`. */

/** `tokens SET = input NAME` naming an existing model input needs a boolean or integer [batch, sequence] mask. */
function checkSetInputs(spec: SpecIR, inputs: ReadonlyMap<string, InputFact>): Diagnostic[] {
  const out: Diagnostic[] = [];
  for (const t of spec.tokenSets) {
    if (t.source.kind !== "input") continue;
    const fact = inputs.get(t.source.input);
    if (!fact) continue; // a new boolean input will be added
    const maskTypes = ["bool", "int64", "int32", "uint8"];
    if (!maskTypes.includes(fact.elemType) || fact.rank !== 2) {
      out.push(
        diagnosticAt(
          spec.file,
          t.sourceSpan,
          `model input '${t.source.input}' is ${fact.elemType} of rank ${fact.rank}; a token set needs a boolean or integer [batch, sequence] mask`,
        ),
      );
    }
  }
  return out;
}

/** Token sets used (`of SET`) or required by criteria are declared in the spec. */
/**
 * What the file alone shows about its token sets: `of SET` naming a set it never declares (with a
 * did-you-mean when a declared set is close), and criteria that need sets it does not declare.
 * Run by the planner and by `check` without a model.
 */
export function checkSpecSets(spec: SpecIR): Diagnostic[] {
  const declared = new Set(spec.tokenSets.map((t) => t.name));
  const out: Diagnostic[] = [];
  for (const stage of spec.stages) {
    if (stage.of !== undefined && !declared.has(stage.of)) {
      // Candidates: the declared sets, and the sets the stage's criterion works on.
      const close =
        declared.size <= 64
          ? closest(stage.of, new Set([...declared, ...requiredSets(stage.criterion.name)]))
          : undefined;
      out.push(
        diagnosticAt(
          spec.file,
          stage.ofSpan ?? stage.span,
          `token set '${clip(stage.of)}' is not defined; declare it with 'tokens ${clip(stage.of)} = input NAME' (a boolean model input marking its positions)`,
          close,
        ),
      );
    }
    for (const set of requiredSets(stage.criterion.name)) {
      if (declared.has(set)) continue;
      const how = set === "instruction" ? "tokens instruction = after image" : `tokens ${set} = input ${set}_mask`;
      out.push(
        diagnosticAt(
          spec.file,
          stage.criterion.span,
          `${stage.criterion.name} needs the token set '${set}', which this spec does not declare; add '${how}'`,
        ),
      );
    }
  }
  return out;
}

/** The stream stages of a spec, planned (its KV-cache stages are checked too: see planSpec). */
export function planStages(
  spec: SpecIR,
  model: TransformerInfo,
  inputs: ReadonlyMap<string, InputFact> = new Map(),
): StagePlan[] {
  return planSpec(spec, model, inputs).stream;
}

/** Every stage of a spec, planned: stream stages (this file) and KV-cache stages (src/plan-kv.ts); all refusals in one error. */
export function planSpec(
  spec: SpecIR,
  model: TransformerInfo,
  inputs: ReadonlyMap<string, InputFact> = new Map(),
  /** The graph `model` describes (KV-cache presses read constants of it); needed when the spec has KV stages. */
  graph?: Graph,
  /** `--kv-state`: state pairs may carry what the caches hold from call to call. */
  options: { kvState?: boolean } = {},
): { stream: StagePlan[]; kv: KvPlan[]; heads: HeadPlan[] } {
  const diagnostics: Diagnostic[] = [...checkSpecSets(spec), ...checkSetInputs(spec, inputs)];
  const plans: StagePlan[] = [];
  const fail = (span: Span, message: string): void => {
    diagnostics.push(diagnosticAt(spec.file, span, message));
  };
  const count = model.layers.length;
  let tokens: Dim | undefined = model.tokens;
  let lastLayer = -1;
  let masked = false;
  let adaptive = false;
  let merged = false;
  // Declared sets by name (the first declaration), looked up per stage without rescanning the list.
  const sets = new Map<string, TokenSetDecl>();
  for (const t of spec.tokenSets) if (!sets.has(t.name)) sets.set(t.name, t);

  spec.stages.forEach((stage, i) => {
    if (stage.target !== "stream") return; // planned by planKvStages and planHeadStages
    if (model.unproven) {
      fail(stage.positionSpan, `prunec cannot prove this model's token structure: ${model.unproven}`);
      return;
    }
    const plan = planOne(spec, sets, stage, i, model, tokens, lastLayer + 1, adaptive, fail, options.kvState ?? false);
    if (!plan) return;
    // `across frames`: state carried from call to call (src/plan-frames.ts).
    const framed = planFrames(stage, plan, model, plans.at(-1), (p) => spec.stages[p.stage]!.span.line);
    if (framed) {
      fail(framed.span, framed.why);
      return;
    }
    // An `across frames` state read below its stage (VLA-Pruner's action rows) needs the rows that stage left.
    const reader = plans.find((p) => p.frames && p.criterion.frames?.readsLayer);
    const read = reader?.criterion.frames?.readsLayer?.(reader.args);
    if (reader && read !== undefined && plan.layer.index < read) {
      fail(
        stage.layerSpan ?? stage.positionSpan,
        `a stage after layer ${plan.layer.index} would change the rows that ${reader.criterion.name} (line ${spec.stages[reader.stage]!.span.line}) reads at layer ${read} for its next state; put it after layer ${read} or later`,
      );
      return;
    }
    // A cascade's running score starts at layer 0 and follows the kept tokens: only its own stages before it.
    const cascade = plan.criterion.cascade;
    if (cascade) {
      const other = plans.find((p) => p.criterion.name !== plan.criterion.name);
      if (other) {
        fail(
          stage.criterion.span,
          `${plan.criterion.name} after a stage by ${other.criterion.name} (line ${spec.stages[other.stage]!.span.line}): ${cascade}`,
        );
        return;
      }
      if (stage.options.length) {
        fail(
          stage.optionSpans[0] ?? stage.span,
          `${plan.criterion.name} takes no 'with' options: its running score follows exactly the kept tokens`,
        );
        return;
      }
    }
    if (masked && !plan.mask) {
      fail(
        stage.positionSpan,
        "an earlier stage is 'with mask', so its dropped tokens are still in the stream; later stages must be 'with mask' too",
      );
      return;
    }
    if (masked && typeof plan.tokensIn !== "number") {
      fail(
        stage.positionSpan,
        "a second 'with mask' stage needs a static token count (it ranks among the tokens still unmasked)",
      );
      return;
    }
    if (masked && plan.adaptive?.kind === "criterion") {
      fail(
        stage.criterion.span,
        `${plan.criterion.name} after a 'with mask' stage is not supported: it would cut its chunks over every token in the stream, the masked ones included`,
      );
      return;
    }
    if (masked && plan.criterion.dropsAtMostHalf) {
      fail(
        stage.criterion.span,
        `${plan.criterion.name} after a 'with mask' stage is not supported: its partition would count the masked tokens, which are still in the stream`,
      );
      return;
    }
    if (merged && plan.ofSet) {
      fail(
        stage.ofSpan ?? stage.span,
        `'of ${plan.ofSet.name}' after a merge stage is not supported: merged tokens belong to no single set`,
      );
      return;
    }
    merged ||= plan.merge !== undefined;
    adaptive ||= plan.adaptive !== undefined;
    // Masked stages leave every token in the stream: later criteria score all of them.
    if (masked && model.tokens !== undefined) plan.scoredTokens = model.tokens;
    masked ||= plan.mask === true;
    if (plan.layer.index <= lastLayer) {
      fail(
        stage.layerSpan ?? stage.positionSpan,
        `stages must be in layer order: layer ${plan.layer.index} comes after a stage at layer ${lastLayer}`,
      );
      return;
    }
    lastLayer = plan.layer.index;
    tokens = plan.tokensOut;
    plans.push(plan);
  });
  checkRestorePoints(spec, plans, model, fail);
  plans.forEach((p, i) => {
    // Padding of a per-example stage is masked up to the next stage, which pads anew, or up to its
    // restore point, where the padding rows become the real tokens they were dropped as.
    if (p.adaptive) p.padUntil = Math.min(plans[i + 1]?.layer.index ?? count - 1, p.restore?.at ?? count - 1);
    // A merge stage read by a later one hands it ToMe's token order (passes/merge-stage.ts).
    if (p.merge && plans.some((q) => q.merge?.sizesFrom === p.stage)) p.merge.feedsMerge = true;
  });
  // FlowCut's remaining pruning layers: up to the schedule's last adaptive FlowCut stage.
  const flowcuts = plans.filter((p) => p.adaptive?.kind === "flowcut");
  for (const p of flowcuts)
    if (p.adaptive?.kind === "flowcut") p.adaptive.rpl = flowcuts.at(-1)!.layer.index - p.layer.index;
  const kv = planKvStages(
    spec,
    model,
    graph,
    diagnostics,
    plans.map((p) => p.layer.index),
    plans.some((p) => p.mask || p.adaptive || p.merge),
    plans.filter((p) => p.adaptive && paddingMode(model, p.layer.index + 1) === "front").map((p) => p.layer.index),
  );
  const heads = planHeadStages(spec, model, graph, diagnostics, plans, kv);
  if (count === 0)
    diagnostics.push(
      diagnosticAt(spec.file, { line: 1, column: 1, endLine: 1, endColumn: 1 }, "the model has no transformer layers"),
    );
  if (diagnostics.length) {
    diagnostics.sort((a, b) => a.line - b.line || a.column - b.column);
    throw new PrunecError("apply", formatDiagnostics(diagnostics, spec.text), diagnostics);
  }
  return { stream: plans, kv, heads };
}

function planOne(
  spec: SpecIR,
  sets: ReadonlyMap<string, TokenSetDecl>,
  stage: StageIR,
  index: number,
  model: TransformerInfo,
  tokensIn: Dim | undefined,
  firstLayer: number,
  afterAdaptive: boolean,
  fail: (span: Span, message: string) => void,
  kvState: boolean,
): StagePlan | undefined {
  const pos = stage.position;
  if (pos.kind === "before-layer-0") {
    fail(stage.positionSpan, "'before layer 0' stages are not supported yet; use 'after layer L' or 'after encoder'");
    return undefined;
  }
  // The grammar gives these positions to KV-cache stages only.
  if (pos.kind === "in-layers" || pos.kind === "all-layers") {
    fail(
      stage.positionSpan,
      "a stage on the residual stream acts once: 'after layer L', 'in layer L' or 'after encoder'",
    );
    return undefined;
  }
  const count = model.layers.length;
  const encoder = pos.kind === "after-encoder";
  const resolved = pos.kind === "after-encoder" ? count - 1 : pos.layer < 0 ? count + pos.layer : pos.layer;
  if (pos.kind !== "after-encoder" && (resolved < 0 || resolved >= count)) {
    fail(
      stage.layerSpan ?? stage.positionSpan,
      `layer ${pos.layer} is out of range: the model has ${count} layers (0..${count - 1}, or -1..-${count} from the end)`,
    );
    return undefined;
  }
  const layer = model.layers[resolved]!;
  // Undeclared token sets are reported by checkSpecSets; nothing else about this stage is meaningful.
  if (stage.of !== undefined && !sets.has(stage.of)) return undefined;
  if (requiredSets(stage.criterion.name).some((set) => !sets.has(set))) return undefined;
  // The layers below a stage hold fewer tokens in their caches; prunec rewrites how a layer reads
  // its shorter cache (the mask's key columns at prefill and decode) only for GroupQueryAttention.
  const plainCache = encoder
    ? undefined
    : model.layers.slice(resolved + 1).find((l) => l.cache?.attention === "matmul-softmax");
  if (plainCache) {
    fail(
      stage.layerSpan ?? stage.positionSpan,
      `layer ${plainCache.index} keeps a KV cache behind plain attention (its present key is Concat(past, k)); a stage on the stream before it would shorten that cache, and prunec rewrites a layer's reading of a shortened cache only behind GroupQueryAttention so far (a KV-cache stage, 'keep kv', evicts such a cache)`,
    );
    return undefined;
  }
  // Merging (ToMe) and its criterion are planned on their own (src/plan-merge.ts).
  if (stage.action === "merge" || stage.criterion.name === "similarity")
    return planMerge(spec, stage, index, model, layer, tokensIn, firstLayer, fail);
  let ofSet: string | undefined;
  if (stage.of !== undefined) {
    const set = setInput(sets.get(stage.of)!, "stages");
    if ("why" in set) {
      fail(stage.ofSpan ?? stage.span, set.why);
      return undefined;
    }
    ofSet = set.input;
  }
  const criterion = criterionModule(stage.criterion.name);
  if (!criterion) {
    const planned = plannedCriterion(stage.criterion.name);
    fail(
      stage.criterion.span,
      `criterion '${stage.criterion.name}'${planned ? ` (${planned.reference})` : ""} is part of the language, but prunec cannot compile it yet`,
    );
    return undefined;
  }
  const args = argsWithDefaults(criterion, stage.criterion.args);
  const prefix = model.cls.prefixTokens;
  const facts: StageFacts = { model, layer, args, tokensIn, firstLayer, prefix };
  const prepared = criterion.prepare(facts);
  if ("why" in prepared) {
    fail(
      stage.criterion.span,
      `${criterion.name} cannot run ${encoder ? `after the encoder (scored at its last layer, ${resolved})` : `after layer ${resolved}`}: ${prepared.why}`,
    );
    return undefined;
  }
  const scorer = prepared.ok;
  // Sets whose model input the criterion reads itself (VLA-Pruner's action rows).
  const readSets: Record<string, string> = {};
  for (const name of criterion.readsSets ?? []) {
    const set = setInput(sets.get(name)!, criterion.name);
    if ("why" in set) {
      fail(stage.criterion.span, set.why);
      return undefined;
    }
    readSets[name] = set.input;
  }
  if (scorer.kind === "select" && ofSet === undefined && !encoder && cachedGqaBelow(model, resolved)) {
    fail(
      stage.criterion.span,
      `${criterion.name} selects tokens without scores, and above a KV cache a stage without 'of SET' must rank the host's left padding below every real token (the cached layers below then read their pads from the host mask's last columns)`,
    );
    return undefined;
  }
  if (!layer.residual || model.tokenAxis === undefined || tokensIn === undefined) {
    fail(
      stage.layerSpan ?? stage.positionSpan,
      `the residual stream leaving layer ${resolved} could not be found (looked for pre-norm → attention → Add → norm → MLP → Add)${layer.residualWhy ? `: ${layer.residualWhy}` : ""}`,
    );
    return undefined;
  }
  if (!encoder && layer.residual.outputMissing) {
    // The stream leaving the last layer is fused into the final norm, which omits it (output 3).
    const n = layer.residual.outputNorm;
    const where = n ? `${n.domain ? `${n.domain}.` : ""}${n.opType} (node '${n.name}')` : "a fused norm";
    fail(
      stage.layerSpan ?? stage.positionSpan,
      `the residual stream leaving layer ${resolved} (the last) exists only inside ${where}, the final norm; a stage after the last layer would prune only the LM head's rows: use an earlier layer`,
    );
    return undefined;
  }
  if (ofSet !== undefined && model.batchAxis !== 0) {
    fail(
      stage.ofSpan ?? stage.span,
      `'of ${stage.of}' needs a batch-first residual stream (the set's mask is [batch, sequence])`,
    );
    return undefined;
  }
  const seqFirst = model.batchAxis === 1 && model.tokenAxis === 0;
  if (model.batchAxis !== undefined && !(model.batchAxis === 0 && model.tokenAxis === 1) && !seqFirst) {
    fail(
      stage.positionSpan,
      `the model's residual stream has tokens on axis ${model.tokenAxis} and the batch on axis ${model.batchAxis}; prunec prunes [batch, tokens, hidden] and sequence-first [tokens, batch, hidden] streams`,
    );
    return undefined;
  }
  const merge = model.merge;
  if (!encoder && merge?.kind === "pool") {
    fail(
      stage.layerSpan ?? stage.positionSpan,
      `the encoder output is pooled over the ${merge.grid?.join("×") ?? "?"} token grid (node '${merge.node}'), which needs every token; prune 'after encoder' instead (it keeps whole pooled tokens)`,
    );
    return undefined;
  }
  const groups = scorer.kind === "score" ? scorer.groups : undefined;
  const fold = !encoder && merge?.kind === "fold" ? merge.groupSize : undefined;
  const amount = stage.amount ?? { kind: "percent" as const, value: DEFAULT_PERCENT };
  const drop = stage.action === "drop";
  const flowcutAdaptive = criterion.name === "flowcut" && Number(args["adaptive"] ?? 0) === 1;
  const adaptiveKind = amount.kind === "mass" || amount.kind === "above";
  if (stage.ofEach && (adaptiveKind || flowcutAdaptive)) {
    fail(
      stage.amountSpan ?? stage.ofSpan ?? stage.span,
      `'of each ${stage.of}' gives each span of the set its own share or count: write 'keep P%' or 'keep K tokens', not '${adaptiveKind ? amount.kind : "flowcut(adaptive: 1)"}'`,
    );
    return undefined;
  }
  if (adaptiveKind && ofSet === undefined && criterion.adaptiveNeedsSet) {
    fail(
      stage.amountSpan ?? stage.actionSpan,
      `'${amount.kind}' with ${criterion.name} needs 'of SET': ${criterion.adaptiveNeedsSet}`,
    );
    return undefined;
  }
  // What makes this stage's count differ per example, if anything (the adaptive selection kind).
  const inherited = adaptiveKind
    ? `'${amount.kind}' keeps a number of tokens that depends on the input`
    : flowcutAdaptive
      ? "flowcut(adaptive: 1) keeps a number of tokens that depends on the input"
      : ofSet !== undefined
        ? `'of ${stage.ofEach ? "each " : ""}${stage.of}' counts each example's own ${stage.of} tokens`
        : afterAdaptive
          ? "an earlier stage kept a number of tokens that depends on the input, so this one counts per example"
          : undefined;
  // A criterion that counts itself (crops) keeps at most the stage's static budget, per example.
  const ownCount = inherited === undefined && criterion.ownCount !== undefined;
  const what = inherited ?? criterion.ownCount;
  const kindFacts: KindFacts = {
    model,
    layer: resolved,
    criterion,
    scorer: scorer.kind,
    groups,
    fold,
    afterEncoder: encoder,
    merge,
    prefix,
    tokensIn,
    options: new Set(stage.options),
    kvState,
    perExample:
      what === undefined
        ? undefined
        : {
            what,
            adaptive: adaptiveKind,
            flowcut: flowcutAdaptive,
            afterAdaptive,
            own: ownCount,
            drop,
            amount: amount.kind,
            keepText: resolvedAmount(stage).text.replace(/^drop /, ""),
          },
  };
  const spanOf = (r: Refusal): Span =>
    r.at === "criterion"
      ? stage.criterion.span
      : r.at === "amount"
        ? (stage.amountSpan ?? stage.actionSpan)
        : r.at === "layer"
          ? (stage.layerSpan ?? stage.positionSpan)
          : stage.positionSpan;
  // The selection kinds' own checks (passes/kinds/), then the options' table and checks, then the count's.
  for (const check of SELECTION_CHECKS) {
    const refused = check(kindFacts);
    if (refused) {
      fail(spanOf(refused), refused.why);
      return undefined;
    }
  }
  const plan: StagePlan = {
    stage: index,
    layer,
    percent: amount.value,
    drop,
    criterion,
    args,
    tokensIn,
    tokensOut: tokensIn,
    prefix,
    firstLayer,
    ...(criterion.readsSets ? { readSets } : {}),
  };
  if (groups) plan.groups = groups;
  if (fold) plan.fold = fold;
  const selection = selectionKind({ scorer: scorer.kind, fold, groups, encoder, perExample: what !== undefined });
  if (
    !applyOptions(
      stage,
      plan,
      selection,
      { criterion: criterion.name, ...(groups ? { unit: groups.unit } : {}), ...(what ? { what } : {}) },
      model,
      fail,
    )
  )
    return undefined;
  const counted = COUNT_CHECK(kindFacts) ?? halfRefusal(kindFacts, amount, drop);
  if (counted) {
    fail(spanOf(counted), counted.why);
    return undefined;
  }
  if (what !== undefined && !ownCount) {
    if (adaptiveKind) plan.adaptive = { kind: amount.kind as "mass" | "above", value: amount.value };
    else if (flowcutAdaptive) plan.adaptive = { kind: "flowcut", target: amount.value, rpl: 0 };
    else plan.adaptive = { kind: amount.kind as "percent" | "count", value: amount.value, drop };
    const label =
      amount.kind === "mass"
        ? `mass(${amount.value}%)`
        : amount.kind === "above"
          ? `above(${amount.value})`
          : flowcutAdaptive
            ? `flowcut(${amount.value})`
            : `${stage.action}(${resolvedAmount(stage).text})`;
    plan.tokensOut = `${prefix}+${label}`;
    if (ofSet !== undefined) {
      plan.ofSet = { name: stage.of ?? ofSet, input: ofSet, ...(stage.ofEach ? { each: true } : {}) };
      plan.tokensOut = `${prefix}+others+${label} of ${stage.ofEach ? "each " : ""}${stage.of}`;
    }
    return plan;
  }
  if (encoder && model.encoderOutput) {
    const out = model.encoderOutput;
    plan.encoder = out;
    plan.scoredTokens = tokensIn;
    // The output's rows: tokens, or merged tokens of the tokens that reach it.
    if (out.per.kind === "fold" && tokensIn !== model.tokens)
      plan.tokensIn = typeof tokensIn === "number" ? tokensIn / out.per.size : `${String(tokensIn)}/${out.per.size}`;
    else if (out.per.kind !== "token") plan.tokensIn = out.units;
    plan.tokensOut = plan.tokensIn;
    tokensIn = plan.tokensIn;
  }
  // `with recycle(grid: a)`: VFlowOpt's grid-group recycling (src/plan-recycle.ts).
  const grid = stage.optionArgs?.recycle?.["grid"];
  const gridSpan = stage.optionSpans[stage.options.indexOf("recycle")] ?? stage.span;
  if (grid !== undefined && typeof tokensIn !== "number") {
    fail(
      gridSpan,
      `'with recycle(grid: ${String(grid)})' needs a static token count; the model has ${String(tokensIn)} tokens`,
    );
    return undefined;
  }
  if (typeof tokensIn !== "number") {
    if (amount.kind === "count") {
      fail(
        stage.amountSpan ?? stage.actionSpan,
        `token counts need a static token count; the model has ${String(tokensIn)} tokens`,
      );
      return undefined;
    }
    const kept = `${drop ? "drop" : "keep"}(${amount.value}%,${String(tokensIn)}-${prefix})`;
    plan.tokensOut = fold
      ? `${fold}*${drop ? "drop" : "keep"}(${amount.value}%,${String(tokensIn)}/${fold})`
      : `${prefix}+${kept}${plan.recycle ? "+1" : ""}`;
    return plan;
  }
  const prunable = tokensIn - prefix;
  if (fold && prunable % fold !== 0) {
    fail(
      stage.layerSpan ?? stage.positionSpan,
      `${prunable} tokens enter this stage, not a whole number of ${fold}-token merge groups (node '${merge?.node ?? "?"}')`,
    );
    return undefined;
  }
  // Grouped selections count groups: a percentage applies to the groups, a token count must fill whole groups.
  const size = groups ? groups.members[0]!.length : (fold ?? 1);
  const units = groups ? groups.members.length : prunable / size;
  const unit = groups ? groups.unit : `${fold}-token merge group`;
  let keep: number;
  if (amount.kind === "count") {
    if (amount.value % size !== 0) {
      fail(
        stage.amountSpan ?? stage.actionSpan,
        `this stage keeps whole ${unit}s of ${size} tokens; ${amount.value} is not a multiple of ${size}`,
      );
      return undefined;
    }
    keep = drop ? units - amount.value / size : amount.value / size;
  } else keep = drop ? units - keepCountStatic(amount.value, units) : keepCountStatic(amount.value, units);
  if (keep < 1 || keep > units) {
    const what =
      size > 1
        ? `${keep} of ${units} ${unit}s`
        : `${keep} of ${prunable} prunable ${encoder && model.encoderOutput!.per.kind !== "token" ? "merged tokens" : "tokens"}`;
    fail(
      stage.amountSpan ?? stage.actionSpan,
      `this stage would keep ${what} after layer ${resolved}; it must keep between 1 and ${units}`,
    );
    return undefined;
  }
  if (ownCount) {
    plan.adaptive = { kind: "criterion", budget: keep };
    plan.tokensOut = `${prefix}+${criterion.name}(≤${keep})`;
    return plan;
  }
  if (grid !== undefined) {
    if (criterion.usesBudget || criterion.dropsAtMostHalf) {
      fail(
        gridSpan,
        `'with recycle(grid: ${String(grid)})' keeps a number of tokens that depends on the input, but ${criterion.name} ${criterion.usesBudget ? "sizes its selection from the stage's budget, which must be one static count" : "bounds how many tokens a stage may drop, and the grid drops more"}`,
      );
      return undefined;
    }
    const planned = planRecycleGrid(model, resolved, tokensIn, prefix, keep, Number(grid));
    if ("why" in planned) {
      fail(gridSpan, planned.why);
      return undefined;
    }
    plan.adaptive = planned.ok;
    plan.tokensOut = `${prefix}+grid(≤${gridBound(planned.ok, prunable)})`;
    return plan;
  }
  plan.keep = keep;
  plan.tokensOut = prefix + keep * size + (plan.recycle ? 1 : 0);
  if (plan.recycle && keep === units) {
    fail(
      stage.optionSpans[0] ?? stage.span,
      "'with recycle' on a stage that keeps every token: there is nothing to recycle",
    );
    return undefined;
  }
  return plan;
}

/**
 * Restoring undoes the stages last to first, each at its own point (passes/restore.ts), so:
 * - a stage after a restoring one restores too, or its dropped rows would have no place in the
 *   earlier stage's rows;
 * - the points nest: a later stage's tokens come back at or before an earlier one's point (the
 *   earlier stage's rows must be whole again before its own tokens can be put back among them);
 * - each point is after its stage (restoreWhy), so every stage acts above the first point: the
 *   stream below a point is never pruned again.
 */
function checkRestorePoints(
  spec: SpecIR,
  plans: readonly StagePlan[],
  model: TransformerInfo,
  fail: (span: Span, message: string) => void,
): void {
  const restoring = plans.find((p) => p.restore);
  if (!restoring?.restore) return;
  const where = restoreWhere(model, restoring.restore.at);
  const line = spec.stages[restoring.stage]!.span.line;
  const later = plans.filter((p) => p.stage > restoring.stage);
  const unrestored = later.find((p) => !p.restore);
  if (unrestored) {
    fail(
      spec.stages[unrestored.stage]!.positionSpan,
      `the stage after layer ${restoring.layer.index} (line ${line}) restores its dropped tokens at ${where}, so every later stage must too: add 'with restore' here`,
    );
    return;
  }
  let outer = restoring;
  for (const p of later) {
    const at = p.restore!.at;
    if (at > outer.restore!.at) {
      const s = spec.stages[p.stage]!;
      fail(
        s.optionSpans[s.options.indexOf("restore")] ?? s.span,
        `this stage restores at ${restoreWhere(model, at)}, after the stage on line ${spec.stages[outer.stage]!.span.line} restores at ${restoreWhere(model, outer.restore!.at)}: a later stage's tokens must come back first, at or before that layer`,
      );
      return;
    }
    outer = p;
  }
}

/**
 * `with mask` / `with recycle` / `with renumber`: the declared table says whether they combine with
 * each other and with the stage's selection kind (passes/kinds/combinations.ts); each option then
 * checks what it needs of the model (passes/kinds/options.ts). False when rejected.
 */
function applyOptions(
  stage: StageIR,
  plan: StagePlan,
  selection: SelectionKind,
  cell: CellFacts,
  model: TransformerInfo,
  fail: (span: Span, message: string) => void,
): boolean {
  const written = new Set(stage.options);
  const spanOf = (option: StageOption) => stage.optionSpans[stage.options.indexOf(option)] ?? stage.span;
  /** Of the options a message names, the one written first. */
  const first = (options: readonly StageOption[]) =>
    [...options].sort((a, b) => stage.options.indexOf(a) - stage.options.indexOf(b))[0]!;
  const refused = refusal(selection, written, cell);
  if (refused) {
    fail(spanOf(first(refused.at.filter((o) => written.has(o)))), refused.why);
    return false;
  }
  const unmet = optionRefusal(written, { model, layer: plan.layer.index, args: stage.optionArgs ?? {} });
  if (unmet) {
    fail(spanOf(unmet.option), unmet.why);
    return false;
  }
  for (const o of written) {
    if (o === "restore") plan.restore = { at: restoreLayer(model, stage.optionArgs?.restore) };
    // With a grid the dropped tokens are recycled into kept ones (src/plan-recycle.ts), nothing is appended.
    else if (o === "recycle" && stage.optionArgs?.recycle?.["grid"] !== undefined) continue;
    else plan[o] = true;
  }
  return true;
}
