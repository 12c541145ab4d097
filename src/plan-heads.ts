/**
 * Planning head stages (`keep heads P% by spatten after layer L`, SpAtten's cascade head pruning):
 * which layers, how many heads, which layers run the kept heads. Every check that needs the model
 * happens here, before anything is emitted; each refusal names the spec text and the model fact.
 * Lowered by passes/head-stage.ts.
 */
import type { SpecIR, Span } from "../grammar/ir.js";
import { diagnosticAt, type Diagnostic } from "../grammar/diagnostics.js";
import type { LayerInfo, TransformerInfo } from "./analysis/transformer.js";
import { dataInputs, type Graph } from "./ir/graph.js";
import { headCriterionModule } from "../passes/registry.js";
import { keepCountStatic } from "../passes/amount.js";
import type { HeadPlan, KvPlan, StagePlan } from "./plan-types.js";
import { DEFAULT_PERCENT, resolvedAmount } from "./plan-amount.js";

/**
 * Why heads cannot be gathered in this layer, or undefined. The pass gathers the kept heads of
 * Q·Kᵀ's two inputs and P·V's value input and spreads P·V's output back over all heads, so the
 * layer must compute attention from those MatMuls, with every tensor between Q·Kᵀ and the
 * Softmax either per head or shared by all heads.
 */
export function headsUngatherable(g: Graph, model: TransformerInfo, l: LayerInfo): string | undefined {
  const core = l.core;
  if (!core) return `layer ${l.index} (${l.kind}) has no attention heads`;
  if (!core.qk || !core.pv || !core.probs)
    return `layer ${l.index}'s attention is com.microsoft.${core.kind}, a fused op; prunec gathers heads in MatMul + Softmax attention only`;
  if (!l.probsLayout || !l.heads)
    return `prunec cannot tell layer ${l.index}'s heads (probabilities' layout or head count unknown)`;
  if (l.cache)
    return `layer ${l.index} keeps a KV cache (${l.cache.presentKey}) with every head; head stages do not rewrite caches yet`;
  // In every layout the head axis is third from the end ([B,H,q,k], [B·H,q,k], [H,q,k]): a tensor
  // combined with the logits between Q·Kᵀ and the Softmax must have 1 there (or lower rank).
  const qk = core.qk;
  const walk = (t: string, depth: number): string | undefined => {
    const n = g.producer.get(t);
    if (!n || n === qk || depth > 16) return undefined;
    for (const input of dataInputs(n)) {
      if (!input) continue;
      if (g.dependsOn(input, qk)) {
        const why = walk(input, depth + 1);
        if (why) return why;
        continue;
      }
      const s = model.shapes.get(input);
      if (s && s.length < 3) continue;
      if (s?.[s.length - 3] !== 1)
        return `layer ${l.index} combines '${input}' with its attention logits, and prunec cannot prove it is shared by every head`;
    }
    return undefined;
  };
  return walk(core.anchor.input[0]!, 0);
}

/** Every head stage of the spec, planned; refusals go to `diagnostics`. */
export function planHeadStages(
  spec: SpecIR,
  model: TransformerInfo,
  graph: Graph | undefined,
  diagnostics: Diagnostic[],
  stream: readonly StagePlan[],
  kv: readonly KvPlan[],
): HeadPlan[] {
  const plans: HeadPlan[] = [];
  const fail = (span: Span, message: string) => diagnostics.push(diagnosticAt(spec.file, span, message));
  const count = model.layers.length;
  // Whether every layer's heads can be gathered does not depend on the stage: asked once.
  const ungatherable =
    graph && spec.stages.some((s) => s.target === "heads")
      ? model.layers.map((l) => headsUngatherable(graph, model, l)).find((why) => why !== undefined)
      : undefined;
  spec.stages.forEach((stage, index) => {
    if (stage.target !== "heads") return;
    const criterion = headCriterionModule(stage.criterion.name);
    if (!criterion) {
      fail(stage.criterion.span, `'${stage.criterion.name}' does not rank attention heads`);
      return;
    }
    const p = stage.position;
    if (p.kind !== "after-layer") return; // reported by the grammar
    const at = stage.layerSpan ?? stage.positionSpan;
    const layerIndex = p.layer < 0 ? count + p.layer : p.layer;
    if (layerIndex < 0 || layerIndex >= count) {
      fail(
        at,
        `layer ${p.layer} is out of range: the model has ${count} layers (0..${count - 1}, or -1..-${count} from the end)`,
      );
      return;
    }
    if (layerIndex === count - 1) {
      fail(at, `after layer ${layerIndex} (the last) no layer is left whose heads could be pruned`);
      return;
    }
    const previous = plans.at(-1);
    if (previous && layerIndex <= previous.layer.index) {
      fail(
        at,
        `head stages must be in layer order: layer ${layerIndex} comes after a head stage at layer ${previous.layer.index}`,
      );
      return;
    }
    const first = previous ? previous.layer.index + 1 : 0;
    if (!graph) throw new Error("internal: head stages are planned with the model's graph");
    // The score sums layers first..L; the kept heads run in L+1.. : every one of them must be gatherable.
    if (ungatherable) {
      fail(stage.criterion.span, `${criterion.name} heads: ${ungatherable}`);
      return;
    }
    const heads = model.layers[0]!.heads!;
    const other = model.layers.find((l) => l.heads !== heads);
    if (other) {
      fail(at, `layer ${other.index} has ${other.heads} heads and layer 0 ${heads}; head stages need one head count`);
      return;
    }
    const headsIn = previous ? previous.keep : heads;
    const amount = stage.amount ?? { kind: "percent" as const, value: DEFAULT_PERCENT };
    const drop = stage.action === "drop";
    let keep: number;
    if (amount.kind === "count") {
      keep = drop ? headsIn - amount.value : Math.min(amount.value, headsIn);
    } else if (amount.kind === "percent") {
      const share = keepCountStatic(amount.value, headsIn);
      keep = drop ? headsIn - share : share;
    } else return; // mass/above: refused by the grammar
    if (keep < 1) {
      fail(stage.amountSpan ?? stage.span, `'${resolvedAmount(stage).text}' of ${headsIn} heads would keep none`);
      return;
    }
    // Stream stages below a head stage would score attention whose heads it removed; masks and
    // padding leave rows in the stream that the head magnitudes would count.
    const streamBelow = stream.find((s) => s.layer.index > layerIndex);
    if (streamBelow) {
      fail(
        at,
        `a stream stage after layer ${streamBelow.layer.index} (line ${spec.stages[streamBelow.stage]!.span.line}) reads attention whose heads this stage prunes; head stages must come after every stream stage for now`,
      );
      return;
    }
    const rows = stream.find((s) => s.mask || s.adaptive || s.merge);
    if (rows) {
      fail(
        at,
        `the stream stage on line ${spec.stages[rows.stage]!.span.line} leaves masked, padding or merged rows in the stream, which Σ|O_h| would count; head stages follow plain keep/drop stages only`,
      );
      return;
    }
    if (kv.length) {
      fail(at, "head stages and KV-cache stages in one spec are not supported yet");
      return;
    }
    plans.push({
      stage: index,
      layer: model.layers[layerIndex]!,
      criterion,
      heads,
      headsIn,
      keep,
      first,
      until: count - 1,
      text: resolvedAmount(stage).text,
    });
  });
  plans.forEach((p, i) => {
    const next = plans[i + 1];
    if (next) p.until = next.layer.index;
  });
  return plans;
}
