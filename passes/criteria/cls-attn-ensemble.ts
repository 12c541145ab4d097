/**
 * cls-attn-ensemble (VTC-CLS, methods.md §2): s_j = Σ_{l=A..B} mean_h A^(l)[h,0,j] over the
 * prunable keys j: the CLS row of every layer in the range, averaged over heads, then **summed**
 * over the layers (VTC-CLS slices `attentions[start:-1]` and sums them; no mean over layers).
 *
 * Every layer of the range must see the tokens this stage selects from (firstLayer..stage layer):
 * a layer before firstLayer ran before an earlier stage pruned, and one after the stage layer has
 * not run when the stage selects. Layers up to the stage layer are evaluated before the stage's
 * gather, which reads the stream leaving the stage layer.
 */
import type { CriterionModule, Prepared, StageFacts } from "../criterion.js";
import type { NodeBuilder } from "../builder.js";
import { attentionOf, keyScores, probabilities, type Attention } from "../attention/attention-map.js";
import { clsUnavailable } from "./cls-attn.js";

/** The `layers` argument as written (negative layers count from the end), or undefined. */
function writtenRange(facts: StageFacts): [number, number] | undefined {
  const v = facts.args["layers"];
  return Array.isArray(v) ? v : undefined;
}

/** A written layer number resolved against the model (negative counts from the end). */
const resolve = (model: StageFacts["model"], l: number): number => (l < 0 ? model.layers.length + l : l);

/** The attention of every layer of the `written` range, or why the range cannot be summed at this stage. */
function checkRange(facts: StageFacts, written: [number, number]): Prepared<Attention[]> {
  const text = `${written[0]}..${written[1]}`;
  const count = facts.model.layers.length;
  const outside = written.find((l) => l < -count || l >= count);
  if (outside !== undefined)
    return {
      why: `layer ${outside} of layers ${text} is out of range: the model has ${count} layers (0..${count - 1}, or -1..-${count} from the end)`,
    };
  const lo = resolve(facts.model, written[0]);
  const hi = resolve(facts.model, written[1]);
  const stage = facts.layer.index;
  const shown = lo === written[0] && hi === written[1] ? `layers ${text}` : `layers ${text} (layers ${lo}..${hi})`;
  if (lo > hi) return { why: `${shown} is empty; write the range from its first to its last layer` };
  if (lo < facts.firstLayer) {
    return {
      why: `${shown} starts at layer ${lo}, which saw different tokens: an earlier stage pruned after layer ${facts.firstLayer - 1}, so the range must lie within ${facts.firstLayer}..${stage}`,
    };
  }
  if (hi > stage) {
    return {
      why: `${shown} ends at layer ${hi}, which has not run when this stage selects after layer ${stage}; the range must lie within ${facts.firstLayer}..${stage}`,
    };
  }
  const attentions: Attention[] = [];
  for (const l of facts.model.layers.slice(lo, hi + 1)) {
    const attention = attentionOf(l);
    if ("why" in attention) return { why: `${shown} includes ${attention.why}` };
    attentions.push(attention.ok);
  }
  return { ok: attentions };
}

/** s [B,Np]: Σ over the layers' head-mean CLS rows, prunable keys only (layers added in order). */
export function clsEnsembleScores(b: NodeBuilder, layers: Attention[], prefix: number): string {
  const perLayer = layers.map((l) => keyScores(b, probabilities(b, l, "cls"), prefix, (p) => p));
  return perLayer.slice(1).reduce((sum, s) => b.op("Add", [sum, s], {}, "sum_layers"), perLayer[0]!);
}

export const clsAttnEnsemble: CriterionModule = {
  name: "cls-attn-ensemble",
  paddingSafe: true,
  summary: "sum over a layer range of the CLS query's attention, mean over heads (VTC-CLS, methods.md §2)",
  args: { layers: { type: "range", doc: "first..last layer whose CLS attention is summed (inclusive)" } },
  needs:
    "a CLS token; attention probabilities (MatMul + Softmax, or recomputed behind MultiHeadAttention) at every layer of the range",
  prepare(facts) {
    // The stage layer first: `inspect` asks with the defaults only (no range), and these are the model facts it reports.
    const cls = clsUnavailable(facts.model);
    if (cls) return { why: cls };
    const stage = attentionOf(facts.layer);
    if ("why" in stage) return stage;
    const written = writtenRange(facts);
    if (!written) {
      return {
        why: `it needs the layer range whose CLS attention it sums, e.g. cls-attn-ensemble(layers: ${facts.firstLayer}..${facts.layer.index})`,
      };
    }
    const range = checkRange(facts, written);
    if ("why" in range) return range;
    return { ok: { kind: "score", score: ({ b, prefix }) => clsEnsembleScores(b, range.ok, prefix) } };
  },
};
