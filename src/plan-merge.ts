/**
 * Planning `merge` stages (ToMe's bipartite soft matching, passes/merge-stage.ts): every check a
 * merge needs of the spec and the model, before anything is emitted. Called by src/plan.ts for
 * every stage that merges or names the `similarity` criterion.
 *
 * Amounts: `merge P%` merges r = round-half-up(P/100 · Np) of the Np prunable tokens (computed in
 * integers from the percentage as written, like keep counts), `merge K tokens` merges K; no amount
 * merges 50%. ToMe caps r at ⌊(N − protected)/2⌋ silently (`r = min(r, (t - protected) // 2)` in
 * tome/merge.py); here a larger r is an error, and so is r = 0 (a stage that merges nothing).
 * Tokens out: N − r (static: the token count must be known).
 */
import type { SpecIR, StageIR, Span } from "../grammar/ir.js";
import { argsWithDefaults } from "../grammar/registry.js";
import type { TransformerInfo, LayerInfo } from "./analysis/transformer.js";
import type { Dim } from "./analysis/dims.js";
import type { StagePlan } from "./plan-types.js";
import { percentRatio } from "../passes/amount.js";
import { maskUnavailable } from "../passes/mask-recycle.js";
import { criterionModule } from "../passes/registry.js";
import { refusal } from "../passes/kinds/combinations.js";
import { optionRefusal } from "../passes/kinds/options.js";
import { restoreLayer } from "../passes/restore.js";

// ToMe's criterion, through the registry like every criterion the planner reads.
const similarity =
  criterionModule("similarity") ??
  (() => {
    throw new Error("the criterion registry has no similarity module");
  })();

/** Percentage merged when a merge stage omits its amount (the language's default amount). */
const DEFAULT_MERGE_PERCENT = 50;

/** round-half-up(P/100 · n) in integers (P as written: 12.5% of 196 = 24.5 → 25). */
export function mergeCountStatic(percent: number, n: number): number {
  const { num, den } = percentRatio(percent);
  return Math.floor((2 * num * n + 100 * den) / (200 * den));
}

/** The most tokens one ToMe step can merge: ⌊(N − protected)/2⌋, and no more than the unprotected A tokens. */
export function maxMerge(tokens: number, prefix: number): number {
  const unprotectedA = Math.ceil(tokens / 2) - Math.ceil(prefix / 2);
  return Math.max(0, Math.min(Math.floor((tokens - prefix) / 2), unprotectedA));
}

export function planMerge(
  spec: SpecIR,
  stage: StageIR,
  index: number,
  model: TransformerInfo,
  layer: LayerInfo,
  tokensIn: Dim | undefined,
  firstLayer: number,
  fail: (span: Span, message: string) => void,
): StagePlan | undefined {
  const name = stage.criterion.name;
  if (stage.action !== "merge") {
    fail(
      stage.actionSpan,
      `similarity pairs tokens to merge them (ToMe); it does not rank tokens to ${stage.action}: write 'merge P% by similarity' (P% of the prunable tokens merge into their most similar partners)`,
    );
    return undefined;
  }
  if (name !== similarity.name) {
    fail(
      stage.criterion.span,
      `'merge' pairs tokens by key similarity (ToMe); use 'by similarity' (${name} ranks tokens for 'keep' and 'drop')`,
    );
    return undefined;
  }
  const resolved = layer.index;
  const where = `after layer ${resolved}`;
  if (stage.position.kind === "after-encoder") {
    fail(
      stage.positionSpan,
      "'merge' after the encoder is not supported yet; merge after a layer ('after layer L merge P% by similarity')",
    );
    return undefined;
  }
  if (stage.amount && stage.amount.kind !== "percent" && stage.amount.kind !== "count") {
    fail(
      stage.amountSpan ?? stage.actionSpan,
      `'${stage.amount.kind}' amounts are not supported with 'merge'; use a percentage or a token count`,
    );
    return undefined;
  }
  if (stage.of !== undefined) {
    fail(
      stage.ofSpan ?? stage.span,
      `'of ${stage.of}': stages restricted to a token set are not supported yet; without 'of', a stage acts on all non-special tokens`,
    );
    return undefined;
  }
  const refused = refusal("merge", new Set(stage.options), { criterion: "similarity" });
  if (refused) {
    const at = stage.options.findIndex((o) => refused.at.includes(o));
    fail(stage.optionSpans[at] ?? stage.span, refused.why);
    return undefined;
  }
  const args = argsWithDefaults(similarity, stage.criterion.args);
  const prefix = model.cls.prefixTokens;
  const prepared = similarity.prepare({ model, layer, args, tokensIn, firstLayer, prefix });
  if ("why" in prepared) {
    fail(stage.criterion.span, `similarity cannot run ${where}: ${prepared.why}`);
    return undefined;
  }
  if (!layer.residual || model.tokenAxis === undefined || tokensIn === undefined) {
    fail(
      stage.layerSpan ?? stage.positionSpan,
      `the residual stream leaving layer ${resolved} could not be found (looked for pre-norm → attention → Add → norm → MLP → Add)${layer.residualWhy ? `: ${layer.residualWhy}` : ""}`,
    );
    return undefined;
  }
  if (typeof tokensIn !== "number") {
    fail(
      stage.actionSpan,
      `'merge' needs a static token count (the matching splits the tokens into two fixed halves); ${index > 0 ? "this stage receives" : "the model has"} ${String(tokensIn)} tokens`,
    );
    return undefined;
  }
  if (model.batchAxis !== 0 || model.tokenAxis !== 1) {
    fail(
      stage.positionSpan,
      `'merge' needs a batch-first residual stream [batch, tokens, hidden]; this model's stream has tokens on axis ${model.tokenAxis}${model.batchAxis === undefined ? " and no batch axis" : ` and the batch on axis ${model.batchAxis}`}`,
    );
    return undefined;
  }
  const merged = model.merge;
  if (merged) {
    const what =
      merged.kind === "fold"
        ? `folds ${merged.groupSize} consecutive tokens into one`
        : `is pooled over the ${merged.grid?.join("×") ?? ""} token grid`;
    fail(
      stage.layerSpan ?? stage.positionSpan,
      `the encoder output ${what} (node '${merged.node}'), which needs the tokens in their original grid; merging tokens inside this encoder is not supported`,
    );
    return undefined;
  }
  const proportional = args["proportional"];
  const weighted = args["weighted"];
  for (const [name, v] of [
    ["proportional", proportional],
    ["weighted", weighted],
  ] as const)
    if (v !== 0 && v !== 1) {
      fail(
        stage.criterion.argSpans[name] ?? stage.criterion.span,
        `argument '${name}' of 'similarity' must be 0 or 1, got ${String(v)}`,
      );
      return undefined;
    }
  if (proportional === 1) {
    const blocked = maskUnavailable(model, resolved + 1);
    if (blocked) {
      fail(
        stage.criterion.argSpans["proportional"] ?? stage.criterion.span,
        `proportional attention adds log(size) to every later attention's logits, but ${blocked}`,
      );
      return undefined;
    }
  }

  // The sizes a merge weighs by come from the previous merge stage; a keep/drop stage in between
  // would have to gather them, which it does not do.
  let sizesFrom: number | undefined;
  for (let k = index - 1; k >= 0; k--) {
    const earlier = spec.stages[k]!;
    if (earlier.action === "merge") {
      sizesFrom = k;
      break;
    }
  }
  if (sizesFrom !== undefined) {
    const between = spec.stages.slice(sizesFrom + 1, index).find((s) => s.action !== "merge");
    if (between) {
      fail(
        stage.actionSpan,
        `a '${between.action}' stage (line ${between.span.line}) between two 'merge' stages is not supported yet: the token sizes this merge weighs by are not carried through it`,
      );
      return undefined;
    }
  }
  // A proportional stage's log-size bias is replaced by the next merge stage's, so all agree.
  const previous = sizesFrom !== undefined ? spec.stages[sizesFrom]! : undefined;
  const previousProportional = previous
    ? argsWithDefaults(similarity, previous.criterion.args)["proportional"]
    : undefined;
  if (previous && previousProportional !== proportional) {
    fail(
      stage.criterion.span,
      `every 'merge' stage of a spec must use the same proportional attention: the merge stage on line ${previous.span.line} has proportional: ${String(previousProportional)}, this one ${String(proportional)}`,
    );
    return undefined;
  }

  const prunable = tokensIn - prefix;
  const amount = stage.amount ?? { kind: "percent" as const, value: DEFAULT_MERGE_PERCENT };
  const r = amount.kind === "count" ? amount.value : mergeCountStatic(amount.value, prunable);
  const most = maxMerge(tokensIn, prefix);
  if (r < 1 || r > most) {
    const asked = amount.kind === "count" ? `${r} tokens` : `${amount.value}% of ${prunable} prunable tokens = ${r}`;
    fail(
      stage.amountSpan ?? stage.actionSpan,
      `this stage would merge ${asked} ${where}; it must merge between 1 and ${most} (each merged token joins a partner in the other half of the bipartite matching: at most ⌊(${tokensIn} − ${prefix})/2⌋)`,
    );
    return undefined;
  }
  const plan: StagePlan = {
    stage: index,
    layer,
    percent: amount.kind === "percent" ? amount.value : (100 * r) / prunable,
    drop: false,
    keep: prunable - r,
    criterion: similarity,
    args,
    tokensIn,
    tokensOut: tokensIn - r,
    prefix,
    firstLayer,
    merge: {
      r,
      ...(sizesFrom !== undefined ? { sizesFrom } : {}),
      proportional: proportional === 1,
      ...(weighted === 0 ? { unweighted: true } : {}),
    },
  };
  // The options the table allowed (only `with restore`: tomesd's unmerge) check the model too.
  const unmet = optionRefusal(new Set(stage.options), { model, layer: layer.index, args: stage.optionArgs ?? {} });
  if (unmet) {
    fail(stage.optionSpans[stage.options.indexOf(unmet.option)] ?? stage.span, unmet.why);
    return undefined;
  }
  if (stage.options.includes("restore")) plan.restore = { at: restoreLayer(model, stage.optionArgs?.restore) };
  return plan;
}
