/**
 * What the matchers looked for and where matching stopped, per layer and for the model-level facts
 * (`prunec inspect --explain`). Built from an existing analysis by asking the same matchers again
 * with a trace (their walks are bounded or memoised, so this costs what the analysis cost); the
 * analysis itself is not changed by it.
 */
import type { Graph } from "../ir/graph.js";
import { findAttentionCores, softmaxMisses, type AttentionCore } from "./attention.js";
import { label, missText, nodeName, plainMiss, type Miss, type Step } from "./match.js";
import {
  clsMatch,
  layerOfName,
  layering,
  layeringWhy,
  residualMatch,
  tokenAxesWhy,
  type LayerInfo,
  type TransformerInfo,
} from "./transformer.js";
import type { Dim } from "./dims.js";

/** A Softmax that is not an attention anchor: why, and where the walk stopped. */
export interface SoftmaxMiss extends Miss {
  softmax: string;
}

export interface LayerExplanation {
  index: number;
  name: string | null;
  /** The attention anchor (or recurrent mixer) found, or why there is none. */
  attention: Step;
  /** The residual-block matcher's steps, in order: what each found, or why not and where it stopped. */
  residual: Step[];
  /** The block found: its layout and the stream entering and leaving it; null when not found. */
  block: { layout: "pre-norm" | "post-norm"; input: string; output: string } | null;
  /** When the block was not found: the whole reason, as the planner gives it (LayerInfo.residualWhy). */
  residualWhy: string | null;
  /** Softmax nodes named in this layer that are not attention (at most 5; `notAttentionOmitted` counts the rest). */
  notAttention: SoftmaxMiss[];
  notAttentionOmitted: number;
}

export interface Explanation {
  /** How the layers were numbered, and why. */
  layering: string;
  /** The token and batch axes, and why. */
  tokenAxis: string;
  /** Whether a CLS (special tokens) is prepended, and the Concat found or where the walk up stopped. */
  cls: string;
  /** Whether the token structure is proven (see token-structure.ts), with the reason. */
  tokenStructure: string;
  layers: LayerExplanation[];
  /** Softmax nodes that are not attention and belong to no layer (at most 20; `notAttentionOmitted` counts the rest). */
  notAttention: SoftmaxMiss[];
  notAttentionOmitted: number;
}

const LAYER_MISSES = 5;
const MODEL_MISSES = 20;

const shapeText = (s: readonly Dim[] | undefined) => (s ? `[${s.map((d) => String(d)).join(", ")}]` : "[?]");

function attentionStep(core: AttentionCore | undefined, l: LayerInfo, nodes: number): Step {
  const looked = "attention anchor";
  if (core?.kind === "matmul-softmax")
    return { looked, found: `${label(core.anchor)} between Q·Kᵀ ${label(core.qk!)} and P·V ${label(core.pv!)}` };
  if (core)
    return {
      looked,
      found: `${core.anchor.domain ? `${core.anchor.domain}.` : ""}${core.anchor.opType} '${nodeName(core.anchor)}'${core.heads ? `, ${core.heads} heads` : ""}`,
    };
  if (l.kind === "linear-attention")
    return { looked, found: "none; the layer carries recurrent state through control flow (linear attention)" };
  return {
    looked,
    miss: {
      why: `no Softmax between Q·Kᵀ and P·V and no fused attention op among the layer's ${nodes} nodes, and no recurrent state${l.name ? ` (nodes named '${l.name}')` : ""}`,
    },
  };
}

function tokenStructureText(info: TransformerInfo): string {
  if (info.unproven) return `not provable, so no stage compiles: ${info.unproven}`;
  const first = info.layers.find((l) => l.residual);
  if (!first?.residual) return "not checked: no layer's residual block was found";
  const stream = info.shapes.get(first.residual.input);
  return `proven: the residual stream entering layer ${first.index} ('${first.residual.input}') is ${shapeText(stream)}, with its tokens on one axis; no attention's known key count differs from ${String(info.tokens ?? "?")} tokens, and no layer's known width from ${String(info.hidden ?? "?")}`;
}

function tokenAxisText(g: Graph, info: TransformerInfo): string {
  const first = info.layers.find((l) => l.residual);
  if (!first?.residual) return "unknown: no layer's residual block was found";
  const shape = info.shapes.get(first.residual.input);
  if (!shape || info.tokenAxis === undefined)
    return `unknown: the shape of the stream entering layer ${first.index} ('${first.residual.input}') was not inferred`;
  const axes = `token axis ${info.tokenAxis}, ${info.batchAxis === undefined ? "no batch axis" : `batch axis ${info.batchAxis}`}`;
  return `${axes}: the stream entering layer ${first.index} is ${shapeText(shape)}; ${tokenAxesWhy(g, shape)}`;
}

function clsText(g: Graph, info: TransformerInfo): string {
  const first = info.layers.find((l) => l.residual);
  if (!first?.residual || info.tokenAxis === undefined) return "not looked for: the token axis is unknown";
  // The walk that set info.cls, asked again for its reason (at most a few steps).
  const m = clsMatch(g, info.shapes, first.residual.input, info.tokenAxis);
  return `${m.cls.present ? "yes" : "no"}: ${m.why}`;
}

/**
 * When no layer is found at all: why each Softmax is not attention (at most 20 lines, then a count),
 * or that the graph has no Softmax and no fused attention op.
 */
export function explainNoAttention(g: Graph): string[] {
  const misses = softmaxMisses(g);
  if (!misses.length) return ["no Softmax node (default domain) and no com.microsoft attention op in the graph"];
  const lines = misses
    .slice(0, MODEL_MISSES)
    .map(({ softmax, miss }) => `Softmax '${nodeName(softmax)}' is not attention: ${missText(miss)}`);
  if (misses.length > MODEL_MISSES)
    lines.push(`and ${misses.length - MODEL_MISSES} more Softmax nodes that are not attention`);
  return lines;
}

export function explainTransformer(g: Graph, info: TransformerInfo): Explanation {
  const cores = findAttentionCores(g);
  const grouping = layering(g, cores);
  const misses = softmaxMisses(g);
  const layerOf = new Map(info.layers.map((l) => [l.index, l]));
  const perLayer = new Map<number, SoftmaxMiss[]>();
  const perLayerOmitted = new Map<number, number>();
  const modelMisses: SoftmaxMiss[] = [];
  let modelOmitted = 0;
  for (const { softmax, miss } of misses) {
    const entry: SoftmaxMiss = { softmax: nodeName(softmax), ...plainMiss(miss) };
    const index = grouping.named ? layerOfName(softmax.name)?.index : undefined;
    if (index !== undefined && layerOf.has(index)) {
      const list = perLayer.get(index) ?? [];
      perLayer.set(index, list);
      if (list.length < LAYER_MISSES) list.push(entry);
      else perLayerOmitted.set(index, (perLayerOmitted.get(index) ?? 0) + 1);
    } else if (modelMisses.length < MODEL_MISSES) modelMisses.push(entry);
    else modelOmitted++;
  }
  const layers = info.layers.map((l): LayerExplanation => {
    const nodes = grouping.named ? (grouping.groups.get(l.index)?.nodes ?? []) : [];
    const trace: Step[] = [];
    residualMatch(g, l.kind, l.core, nodes, trace);
    return {
      index: l.index,
      name: l.name ?? null,
      attention: attentionStep(l.core, l, nodes.length),
      residual: trace,
      block: l.residual ? { layout: l.residual.layout, input: l.residual.input, output: l.residual.output } : null,
      residualWhy: l.residualWhy ?? null,
      notAttention: perLayer.get(l.index) ?? [],
      notAttentionOmitted: perLayerOmitted.get(l.index) ?? 0,
    };
  });
  return {
    layering: layeringWhy(grouping, cores),
    tokenAxis: tokenAxisText(g, info),
    cls: clsText(g, info),
    tokenStructure: tokenStructureText(info),
    layers,
    notAttention: modelMisses,
    notAttentionOmitted: modelOmitted,
  };
}
