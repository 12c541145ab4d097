/**
 * Planning `across frames` (issue 17; lowered by passes/frames.ts): a stream stage whose criterion
 * reads the state the previous call of the model left. Every check that needs the model, with the
 * spec text it points at; the planned stage is marked `frames` and its output count says that the
 * first call keeps every token.
 */
import type { Span, StageIR } from "../grammar/ir.js";
import type { TransformerInfo } from "./analysis/transformer.js";
import type { StagePlan } from "./plan-types.js";
import { CRITERIA } from "../passes/registry.js";

/** Criteria that carry state across frames, for messages. */
function carriers(): string {
  return CRITERIA.filter((c) => c.frames)
    .map((c) => c.name)
    .join(", ");
}

/**
 * Marks `plan` as an `across frames` stage, or says why it cannot be one (or why its criterion
 * needs `across frames`). `earlier`: the stream stage planned before it, if any.
 */
export function planFrames(
  stage: StageIR,
  plan: StagePlan,
  model: TransformerInfo,
  earlier: StagePlan | undefined,
  lineOf: (p: StagePlan) => number,
): { why: string; span: Span } | undefined {
  const carry = plan.criterion.frames;
  if (!stage.across) {
    if (!carry?.required) return undefined;
    return {
      span: stage.criterion.span,
      why: `${plan.criterion.name} needs 'across frames': ${carry.required} (write '... by ${plan.criterion.name} across frames')`,
    };
  }
  const span = stage.acrossSpan ?? stage.span;
  const refuse = (why: string, at: Span = span) => ({ why: `'across frames' ${why}`, span: at });
  if (!carry)
    return refuse(
      `needs a criterion that reads the previous call, and ${plan.criterion.name} carries nothing from one call to the next (criteria that do: ${carriers()})`,
      stage.criterion.span,
    );
  if (plan.merge) return refuse("on a 'merge' stage is not supported: a merge keeps no per-token state between calls");
  if (plan.encoder)
    return refuse(
      "after the encoder is not supported yet: write 'after layer L' (the stage's input rows are compared)",
    );
  if (model.batchAxis === undefined)
    return refuse(
      "needs a batch axis on the residual stream (each example is its own sequence of frames); this model's stream is [tokens, hidden]",
    );
  const cached = model.layers.find((l) => l.cache);
  if (cached)
    return refuse(
      `runs the model once per frame, but layer ${cached.index} keeps a KV cache, so this model's calls are decode steps of one sequence, not frames`,
    );
  if (earlier)
    return refuse(
      `compares each token with the same position in the previous call, so the stage must see every token: the stage after layer ${earlier.layer.index} (line ${lineOf(earlier)}) drops tokens before it`,
    );
  if (plan.fold) return refuse("inside an encoder that folds tokens into merge groups is not supported yet");
  if (carry.counts) {
    // The criterion counts each example's set members itself (every one while its state fills up).
    const amount = plan.adaptive;
    if (!plan.ofSet || plan.ofSet.each || !amount || (amount.kind !== "percent" && amount.kind !== "count"))
      return refuse(
        `with ${plan.criterion.name} needs 'of SET' with 'keep P%' or 'keep K tokens' (one budget per example over one set): ${carry.counts}`,
        stage.amountSpan ?? span,
      );
  } else if (plan.adaptive)
    return refuse(
      `keeps one count for the whole batch (every token at the first call), but this stage's count differs per example (${amountWhy(stage)})`,
      stage.amountSpan ?? stage.ofSpan ?? span,
    );
  if (stage.options.length)
    return refuse(
      `takes no 'with' options yet (the first call keeps every token, which '${stage.options[0]}' is not written for)`,
      stage.optionSpans[0] ?? span,
    );
  plan.frames = true;
  // At the first call every token stays; afterwards the stage's own count.
  if (plan.tokensOut !== plan.tokensIn)
    plan.tokensOut = `${String(plan.tokensOut)} (${String(plan.tokensIn)} at the first frame)`;
  return undefined;
}

function amountWhy(stage: StageIR): string {
  if (stage.of !== undefined) return `'of ${stage.of}'`;
  if (stage.amount?.kind === "mass" || stage.amount?.kind === "above") return `'${stage.amount.kind}'`;
  return "its criterion's own count";
}
