/**
 * Planning KV-cache stages (`keep kv` / `drop kv`): which layers, which press, what budget. Every
 * check that needs the model happens here, before anything is emitted; each failure names the spec
 * text and the model fact. Stream stages are planned by src/plan.ts.
 */
import type { ArgValue, SpecIR, StageIR, Span } from "../grammar/ir.js";
import { argsWithDefaults } from "../grammar/registry.js";
import { diagnosticAt, type Diagnostic } from "../grammar/diagnostics.js";
import type { LayerInfo, TransformerInfo } from "./analysis/transformer.js";
import type { Graph } from "./ir/graph.js";
import { kvCriterionModule } from "../passes/registry.js";
import { hasEvictableCache, type KvCriterionModule } from "../passes/kv/criterion.js";
import type { KvPlan } from "./plan-types.js";
import { setInput } from "./plan-sets.js";
import { DEFAULT_PERCENT, resolvedAmount } from "./plan-amount.js";

/** Layers whose attention keeps a KV cache prunec can evict from (present key and value outputs). */
export function cachedLayers(model: TransformerInfo): LayerInfo[] {
  return model.layers.filter(hasEvictableCache);
}

/** The layers a KV stage names, or a refusal. */
function layersOf(stage: StageIR, model: TransformerInfo): { ok: LayerInfo[] } | { why: string; span: Span } {
  const count = model.layers.length;
  const at = stage.layerSpan ?? stage.positionSpan;
  const resolve = (l: number) => (l < 0 ? count + l : l);
  const range = `the model has ${count} layers (0..${count - 1}, or -1..-${count} from the end)`;
  const p = stage.position;
  if (p.kind === "all-layers") {
    const layers = cachedLayers(model);
    return layers.length
      ? { ok: layers }
      : {
          why: `no layer of this model has a KV cache prunec can evict (GroupQueryAttention with present key/value outputs, or plain attention over Concat(past, current) graph outputs)${model.layers[0]?.cacheWhy ? `; layer 0: ${model.layers[0].cacheWhy}` : ""}`,
          span: stage.positionSpan,
        };
  }
  if (p.kind === "in-layer") {
    const l = resolve(p.layer);
    if (l < 0 || l >= count) return { why: `layer ${p.layer} is out of range: ${range}`, span: at };
    return { ok: [model.layers[l]!] };
  }
  if (p.kind === "in-layers") {
    const from = resolve(p.from);
    const to = resolve(p.to);
    if (from < 0 || from >= count || to < 0 || to >= count)
      return { why: `layers ${p.from}..${p.to} are out of range: ${range}`, span: at };
    if (from > to) return { why: `layers ${p.from}..${p.to} resolve to ${from}..${to}, an empty range`, span: at };
    return { ok: model.layers.slice(from, to + 1) };
  }
  return {
    why: "a KV-cache stage acts in layers: 'in layer L', 'in layers A..B', or no position (every layer)",
    span: stage.positionSpan,
  };
}

/** Every `keep kv` / `drop kv` stage of the spec, planned; refusals go to `diagnostics`. */
export function planKvStages(
  spec: SpecIR,
  model: TransformerInfo,
  graph: Graph | undefined,
  diagnostics: Diagnostic[],
  /** Layers after which the spec's stream stages act. */
  streamLayers: readonly number[] = [],
  /** Some stream stage leaves padding, masked or merged rows (adaptive counts, `with mask`, merges). */
  streamPadding = false,
  /** Of those, the layers after which a stage pads each example in front (passes/front-padding.ts). */
  frontPadded: readonly number[] = [],
): KvPlan[] {
  const plans: KvPlan[] = [];
  spec.stages.forEach((stage, index) => {
    if (stage.target !== "kv") return;
    const fail = (span: Span, message: string) => diagnostics.push(diagnosticAt(spec.file, span, message));
    const criterion = kvCriterionModule(stage.criterion.name);
    if (!criterion) {
      fail(stage.criterion.span, `'${stage.criterion.name}' does not score KV-cache entries`);
      return;
    }
    const layers = layersOf(stage, model);
    if ("why" in layers) {
      fail(layers.span, layers.why);
      return;
    }
    let ofSet: KvPlan["ofSet"];
    if (stage.of !== undefined) {
      const set = spec.tokenSets.find((t) => t.name === stage.of);
      if (!set) return; // reported by checkSpecSets
      const at = stage.ofSpan ?? stage.span;
      if (stage.ofEach) {
        fail(
          at,
          `'of each ${stage.of}' on the KV cache is not supported yet: write 'of ${stage.of}' (one budget for the set)`,
        );
        return;
      }
      const input = setInput(set, "KV-cache stages");
      if ("why" in input) {
        fail(at, input.why);
        return;
      }
      if (criterion.noSet) {
        fail(at, `'of ${stage.of}' with ${criterion.name}: ${criterion.noSet}`);
        return;
      }
      const below = layers.ok.find((l) => streamLayers.some((s) => s < l.index));
      if (below) {
        fail(
          at,
          `'of ${stage.of}' on layer ${below.index}'s cache: a stream stage above it keeps only some of the prompt's tokens there, and the set's mask marks the whole prompt`,
        );
        return;
      }
      ofSet = { name: stage.of, input: input.input };
    }
    const shortened = layers.ok.find((l) => streamLayers.some((s) => s < l.index));
    // Below a stream stage a decode-time stage marks pads from its carried scores, not the host's
    // mask (passes/kv-decode-stage.ts): only scores it carries per layer, behind GroupQueryAttention,
    // after stream stages that leave no padding or masked rows.
    const decodeBelow = (): string | undefined => {
      if (!shortened) return undefined;
      const form = criterion.decode?.(stage.criterion.args);
      if (form?.kind !== "received")
        return `${criterion.name} reads positions or one set for all layers, which a stream stage above makes differ per layer; below stream stages only h2o and a2sf evict while decoding`;
      const plain = layers.ok.find((l) => l.cache?.attention !== "GroupQueryAttention");
      if (plain)
        return `layer ${plain.index}'s cache is read by plain attention; below stream stages prunec evicts while decoding behind GroupQueryAttention only`;
      if (streamPadding)
        return `a stream stage above leaves masked, padding or merged rows in the cache; decode-time eviction below it is not supported yet`;
      return undefined;
    };
    const below = stage.during === "decode" ? decodeBelow() : undefined;
    if (below && shortened) {
      fail(stage.duringSpan ?? stage.span, `'during decode' on layer ${shortened.index}'s cache: ${below}`);
      return;
    }
    // The eviction rewrites the layer's attention from the dense op's inputs: the padding mask of
    // a stream stage above it that pads in front would be lost (its zero rows then attended).
    const padded = layers.ok.find((l) => frontPadded.some((s) => s < l.index));
    if (padded) {
      fail(
        stage.span,
        `evicting layer ${padded.index}'s cache: a stream stage above it counts per example and pads each example in front (linear-attention layers follow it), and the eviction's rewrite of the layer's attention would drop that padding's mask; not supported yet`,
      );
      return;
    }
    // A prefill eviction rewrites the layer's attention from the dense op's inputs: the mask of a
    // stream stage above that pads, masks or merges would be lost (measured: prefill logits moved
    // by 2.6 under 'keep kv 100%' below a per-example FastV stage in a padded batch).
    if (stage.during !== "decode" && shortened && streamPadding) {
      fail(
        stage.span,
        `'${stage.action} kv' on layer ${shortened.index}'s cache: a stream stage above leaves masked, padding or merged rows in the cache, and the eviction's rewrite of the layer's attention would drop their mask; not supported yet`,
      );
      return;
    }
    if (criterion.noStreamBelow && shortened) {
      fail(stage.criterion.span, `${criterion.name} on layer ${shortened.index}'s cache: ${criterion.noStreamBelow}`);
      return;
    }
    if (!graph) throw new Error("internal: KV-cache stages are planned with the model's graph");
    const args = argsWithDefaults(criterion, stage.criterion.args);
    for (const layer of layers.ok) {
      const prepared = criterion.prepareKv({ model, graph, layer, args });
      if ("why" in prepared) {
        fail(stage.criterion.span, `${criterion.name} cannot evict layer ${layer.index}'s cache: ${prepared.why}`);
        return;
      }
    }
    const amount = stage.amount ?? { kind: "percent" as const, value: DEFAULT_PERCENT };
    const drop = stage.action === "drop";
    if (criterion.fractionOnly && amount.kind !== "percent") {
      fail(
        stage.amountSpan ?? stage.actionSpan,
        `${criterion.name} spreads a fraction of the cache over the layers; write the amount as a percentage`,
      );
      return;
    }
    const text = resolvedAmount(stage).text;
    if (amount.kind !== "percent" && amount.kind !== "count") {
      fail(
        stage.amountSpan ?? stage.actionSpan,
        `'${amount.kind}' amounts are not supported on the KV cache; use a percentage or a count`,
      );
      return;
    }
    // kvpress keeps int(N·(1 − r)); r is the fraction dropped, computed in float64 as Python does.
    const ratio = amount.kind === "percent" ? (drop ? amount.value / 100 : 1 - amount.value / 100) : 0;
    const budget: KvPlan["budget"] =
      amount.kind === "percent" ? { kind: "fraction", value: 1 - ratio } : { kind: "count", value: amount.value, drop };
    let decode: KvPlan["decode"];
    if (stage.during !== "decode" && criterion.decodeOnly) {
      fail(stage.criterion.span, `${criterion.name}: ${criterion.decodeOnly}`);
      return;
    }
    if (stage.during === "decode") {
      const planned = decodeForm(stage, criterion, args, amount, drop, ofSet !== undefined);
      if ("why" in planned) {
        fail(planned.span, planned.why);
        return;
      }
      decode = planned.ok;
    }
    plans.push({
      stage: index,
      layers: layers.ok,
      criterion,
      args,
      budget,
      text,
      ...(ofSet ? { ofSet } : {}),
      ...(decode ? { decode } : {}),
    });
  });
  // A decode-time stage owns its layers' caches (and their score state); a prefill stage on some
  // of them composes with it: its press picks what competes for the decode budget at the prefill.
  for (const p of plans) {
    if (!p.decode) continue;
    for (const other of plans) {
      if (other === p || !other.layers.some((l) => p.layers.includes(l))) continue;
      const later = spec.stages[Math.max(p.stage, other.stage)]!;
      const earlierLine = spec.stages[Math.min(p.stage, other.stage)]!.span.line;
      const shared = p.layers.filter((l) => other.layers.includes(l));
      const refuse = (why: string) =>
        diagnostics.push(
          diagnosticAt(
            spec.file,
            later.positionSpan,
            `layer ${shared[0]!.index}'s cache already has a KV stage (line ${earlierLine}); ${why}`,
          ),
        );
      if (other.decode) refuse("a layer takes one 'during decode' stage");
      else if (p.prefill)
        refuse(
          `'during decode' composes with one prefill stage per layer, and line ${spec.stages[p.prefill.plan.stage]!.span.line} is one`,
        );
      else if (other.ofSet)
        refuse(`a prefill stage 'of ${other.ofSet.name}' does not compose with 'during decode' yet`);
      else if (other.criterion.fractionOnly)
        refuse(
          `${other.criterion.name} spreads its own budget over the layers, which does not compose with 'during decode' yet`,
        );
      else if (p.decode.kind !== "received")
        refuse(
          p.decode.kind === "positional"
            ? `${p.criterion.name} keeps positions, not scores; only h2o and a2sf compose with a prefill stage`
            : `${p.criterion.name} keeps one set for all its layers; only h2o and a2sf compose with a prefill stage`,
        );
      else p.prefill = { plan: other, layers: shared.map((l) => l.index) };
    }
  }
  return plans;
}

/** The decode-time form of a `during decode` stage, or why it cannot have one. */
function decodeForm(
  stage: StageIR,
  criterion: KvCriterionModule,
  args: Readonly<Record<string, ArgValue>>,
  amount: { kind: string; value: number },
  drop: boolean,
  ofSet: boolean,
): { ok: NonNullable<KvPlan["decode"]> } | { why: string; span: Span } {
  if (!criterion.decode)
    return {
      why: `${criterion.name} scores the cache once, at the prefill; 'during decode' takes a press with a rule for every call: h2o, a2sf or streaming`,
      span: stage.criterion.span,
    };
  if (amount.kind !== "count" || drop)
    return {
      why: "a decode-time budget is a number of entries each KV head keeps: write 'during decode keep kv K tokens'",
      span: stage.amountSpan ?? stage.actionSpan,
    };
  if (ofSet)
    return {
      why: "'of SET' is not supported during decode: the tokens generated belong to no set",
      span: stage.ofSpan ?? stage.span,
    };
  const form = criterion.decode(args);
  if (form.kind === "cascade") return { ok: { budget: amount.value, ...form } };
  if (form.kind === "positional") {
    if (form.sinks > amount.value)
      return {
        why: `sinks (${form.sinks}) is more than the budget (${amount.value}): the sinks alone would not fit`,
        span: stage.criterion.span,
      };
    return { ok: { budget: amount.value, ...form } };
  }
  if (form.recent > amount.value)
    return {
      why: `recent (${form.recent}) is more than the budget (${amount.value}): the recent entries alone would not fit`,
      span: stage.criterion.span,
    };
  if (!(form.forget > 0 && form.forget <= 1))
    return { why: `forget must be in (0, 1], got ${form.forget}`, span: stage.criterion.span };
  return { ok: { budget: amount.value, ...form } };
}
