/**
 * The options' own checks (what each needs of the model), run by the planner after the option
 * table (./combinations.ts) allowed the combination. Each returns undefined or why not.
 */
import type { TransformerInfo } from "../../src/analysis/transformer.js";
import { maskUnavailable } from "../mask-recycle.js";
import type { StageOption } from "./combinations.js";
import { restoreLayer, restoreWhy } from "../restore.js";
import type { ArgValue } from "../../grammar/ir.js";

export interface OptionFacts {
  model: TransformerInfo;
  /** The stage's layer (the options act on the layers after it). */
  layer: number;
  /** The arguments written for options (`with restore(layer: 8)`), by option. */
  args: Partial<Record<StageOption, Readonly<Record<string, ArgValue>>>>;
}

export interface OptionModule {
  option: StageOption;
  summary: string;
  check(f: OptionFacts): string | undefined;
}

/** Every option gathers, masks or renumbers batch-first [batch, tokens, hidden] tensors. */
function batchFirst(option: StageOption, f: OptionFacts): string | undefined {
  const seqFirst = f.model.batchAxis === 1 && f.model.tokenAxis === 0;
  return seqFirst
    ? `'with ${option}' needs a batch-first residual stream; this model's stream is sequence-first [tokens, batch, hidden]`
    : undefined;
}

/** The first written option (in OPTIONS' order) whose own check refuses the model, and why. */
export function optionRefusal(
  written: ReadonlySet<StageOption>,
  f: OptionFacts,
): { option: StageOption; why: string } | undefined {
  for (const o of OPTIONS) {
    const why = written.has(o.option) ? o.check(f) : undefined;
    if (why) return { option: o.option, why };
  }
  return undefined;
}

export const OPTIONS: readonly OptionModule[] = [
  {
    option: "mask",
    summary: "keep every token; a key bias (−1e9 on the dropped ones) on every later attention's logits",
    check: (f) => {
      const why = maskUnavailable(f.model, f.layer + 1);
      return why ? `'with mask' adds a key bias to every later attention, but ${why}` : batchFirst("mask", f);
    },
  },
  {
    option: "recycle",
    summary:
      "append the score-weighted mean of the dropped tokens as one extra token; with `grid: a`, VFlowOpt's recycling into one kept token per grid cell (passes/kinds/recycle-grid.ts)",
    check: (f) => batchFirst("recycle", f),
  },
  {
    option: "renumber",
    summary: "the kept tokens take positions 0..K'−1 below the stage (position ids, rotary tables)",
    check: (f) => batchFirst("renumber", f),
  },
  {
    option: "restore",
    summary:
      "put the dropped tokens back at the output of layer `layer` (default: the last), with the hidden state they had when dropped: the layers after it and every output see one row per token",
    check: (f) => restoreWhy(f.model, f.layer, restoreLayer(f.model, f.args.restore)),
  },
];
