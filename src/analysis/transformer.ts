/**
 * Transformer analysis: the layer stack (attention block and residual stream per layer, heads,
 * head size), the token and batch axes, the token count, and whether a CLS token is prepended.
 * Pure: reads a Graph, returns facts; passes decide what they can do with them.
 */
import { type Graph, attr, attrInt, dataInputs, type NodeProto } from "../ir/graph.js";
import { findAttentionCores, type AttentionCore, type AttentionKind } from "./attention.js";
import { matchLinearResidualBlock, matchResidualBlock, type ResidualBlock } from "./residual.js";
import { capped, label, missText, type Miss, type Step } from "./match.js";
import { analyzeShapes } from "./shapes.js";
import { tokenStructureProblem } from "./token-structure.js";
import type { Dim, Shape, ShapeMap } from "./dims.js";
import { PrunecError } from "../errors.js";
import { spatialMerge, encoderOutput, type SpatialMerge, type EncoderOutput } from "./merge.js";
import { assertWellFormed } from "./well-formed.js";
import { layerCache, type LayerCache } from "./kv-cache.js";
import { queryRotary, type QueryRotary } from "./rotary.js";
import { patchGrid, type PatchGrid } from "./patch-grid.js";

export type LayerKind = AttentionKind | "linear-attention" | "unknown";

export interface LayerInfo {
  index: number;
  /** Name prefix exporters gave the layer, e.g. `/encoder/layers/encoder_layer_3`. */
  name?: string;
  kind: LayerKind;
  core?: AttentionCore;
  residual?: ResidualBlock;
  /**
   * When `residual` was not found: why, and where matching stopped ("no Add (or Skip norm) sums x_in
   * with the attention output (…) at tensor '…'; as a post-norm block: …"), from `residualMatch`.
   */
  residualWhy?: string;
  heads?: number;
  headSize?: number;
  /** Probability layout of a materialized attention map. */
  probsLayout?: "batch*heads,q,k" | "heads,q,k" | "batch,heads,q,k";
  quantization?: "MatMulInteger" | "MatMulNBits";
  rotary: boolean;
  /** Rank of a fused attention op's query and key inputs, when both are known and equal. */
  fusedInputRank?: number;
  /** The layer's KV cache (present/past names, plain attention's mask operands), or why there is none prunec can evict. */
  cache?: LayerCache;
  cacheWhy?: string;
  /** Where the layer's query is before rotary and which constant tables rotate it, or why prunec cannot tell (src/analysis/rotary.ts). */
  queryRotary?: QueryRotary;
  queryRotaryWhy?: string;
}

export interface TransformerInfo {
  layers: LayerInfo[];
  hidden?: number;
  /** Axes of the residual stream tensor [.., tokens, .., hidden]. */
  tokenAxis?: number;
  batchAxis?: number;
  tokens?: Dim;
  cls: { present: boolean; index?: number; prefixTokens: number };
  shapes: ShapeMap;
  /** A spatial merge of the stream after the last layer (Qwen 2×2 fold, Gemma pooling), see merge.ts. */
  merge?: SpatialMerge;
  /** Where `after encoder` stages act (a graph output with a row per token or merged token). */
  encoderOutput?: EncoderOutput;
  /** Why prunec cannot prove the token structure (token-structure.ts); every stage is refused with it. */
  unproven?: string;
  /** The patch grid of the prunable tokens entering the first layer (./patch-grid.ts), or why it is not proven. */
  patchGrid?: { ok: PatchGrid } | { why: string };
}

const LAYER_NAME = /^(.*?(?:^|[/.])(?:layers|layer|blocks|block|h|encoder_layer|resblocks)[._](\d+))(?=[/._:]|$)/;

export function layerOfName(name: string): { prefix: string; index: number } | undefined {
  const m = LAYER_NAME.exec(name);
  return m ? { prefix: m[1]!, index: Number(m[2]) } : undefined;
}

function quantizationOf(nodes: NodeProto[]): LayerInfo["quantization"] {
  if (nodes.some((n) => n.opType === "MatMulNBits")) return "MatMulNBits";
  if (nodes.some((n) => n.opType === "MatMulInteger")) return "MatMulInteger";
  return undefined;
}

/** Group nodes by the layer index in their names: exporters keep module paths in node names. */
function nodesByLayerName(g: Graph): Map<number, { prefix: string; nodes: NodeProto[] }> {
  const groups = new Map<number, { prefix: string; nodes: NodeProto[] }>();
  for (const n of g.order) {
    const l = layerOfName(n.name);
    if (!l) continue;
    const grp = groups.get(l.index);
    if (grp) grp.nodes.push(n);
    else groups.set(l.index, { prefix: l.prefix, nodes: [n] });
  }
  return groups;
}

/** Linear-attention layers carry recurrent state through control flow (prefill vs decode paths). */
function isStateful(nodes: NodeProto[]): boolean {
  return nodes.some(isStatefulNode);
}

function isStatefulNode(n: NodeProto): boolean {
  return n.opType === "If" || n.opType === "Scan" || n.opType === "Loop";
}

function isContiguous(keys: number[]): boolean {
  return keys.length > 0 && keys.every((k, i) => k === i);
}

/** How the layers are numbered: the layer groups named in node names, and whether they are used. */
export interface Layering {
  groups: Map<number, { prefix: string; nodes: NodeProto[] }>;
  /** Layer indices named in node names, less a trailing group that is no layer (a final norm). */
  keys: number[];
  /** True when the names number the layers (contiguous from 0, every anchor named); else anchor order. */
  named: boolean;
}

export function layering(g: Graph, cores: readonly AttentionCore[]): Layering {
  const groups = nodesByLayerName(g);
  const layerKeys = [...groups.keys()].sort((a, b) => a - b);
  // Exporters file the final norm under `layers.N` too (transformers.js): a trailing group with
  // neither attention nor recurrent state is not a layer.
  while (
    layerKeys.length &&
    !cores.some((c) => layerOfName(c.anchor.name)?.index === layerKeys.at(-1)) &&
    !isStateful(groups.get(layerKeys.at(-1)!)!.nodes)
  ) {
    layerKeys.pop();
  }
  return {
    groups,
    keys: layerKeys,
    named: isContiguous(layerKeys) && cores.every((c) => layerOfName(c.anchor.name) !== undefined),
  };
}

/** Why the layers are numbered as they are (for explanations). */
export function layeringWhy(l: Layering, cores: readonly AttentionCore[]): string {
  if (l.named)
    return `numbered by the module paths in node names (e.g. '${l.groups.get(l.keys[0]!)!.prefix}'): ${l.keys.length} layers`;
  const order = `numbered by attention anchor order (${cores.length} anchors)`;
  if (!l.keys.length)
    return `no node name carries a layer index ('layers.N', 'layer.N', 'blocks.N', 'block.N', 'h.N', 'encoder_layer_N', 'resblocks.N'): ${order}`;
  if (!isContiguous(l.keys))
    return `the layer indices in node names (${capped(l.keys.map(String), 6)}) do not run from 0 without gaps: ${order}`;
  const unnamed = cores.find((c) => layerOfName(c.anchor.name) === undefined)!;
  return `attention anchor ${label(unnamed.anchor)} has no layer index in its name: ${order}`;
}

export function analyzeTransformer(g: Graph, source = "model"): TransformerInfo {
  // A malformed graph (dangling input, two producers of a tensor, a cycle, inexact dims) is a bad model, refused before any walk.
  assertWellFormed(g, source);
  const { shapes, values } = analyzeShapes(g);
  const cores = findAttentionCores(g);
  const { groups, keys: layerKeys, named } = layering(g, cores);

  const layers: LayerInfo[] = [];
  const coreLayer = (c: AttentionCore): number | undefined => layerOfName(c.anchor.name)?.index;
  if (named) {
    // Named layers: a layer without an attention anchor is linear attention if it carries state.
    for (const index of layerKeys) {
      const grp = groups.get(index)!;
      const core = cores.find((c) => coreLayer(c) === index);
      const kind: LayerKind = core ? core.kind : isStateful(grp.nodes) ? "linear-attention" : "unknown";
      layers.push(describeLayer(g, shapes, values, index, kind, core, grp.prefix, grp.nodes));
    }
  } else {
    cores.forEach((core, index) =>
      layers.push(describeLayer(g, shapes, values, index, core.kind, core, undefined, [])),
    );
  }
  if (layers.length === 0 || cores.length === 0) {
    throw new PrunecError(
      "analysis",
      `${source}: no transformer layers found (looked for Softmax between a Q·Kᵀ MatMul and a P·V MatMul, and for com.microsoft MultiHeadAttention/Attention/GroupQueryAttention nodes; found none)`,
    );
  }

  const first = layers.find((l) => l.residual);
  const residualShape = first?.residual ? shapes.get(first.residual.input) : undefined;
  const info: TransformerInfo = { layers, cls: { present: false, prefixTokens: 0 }, shapes };
  const hidden = residualShape?.at(-1);
  if (typeof hidden === "number") info.hidden = hidden;
  if (residualShape) {
    const axes = tokenAndBatchAxes(g, residualShape);
    info.tokenAxis = axes.token;
    if (axes.batch !== undefined) info.batchAxis = axes.batch;
    info.tokens = residualShape[axes.token]!;
    if (first?.residual) {
      info.cls = detectCls(g, shapes, first.residual.input, axes.token);
      info.patchGrid = patchGrid(g, shapes, first.residual.input, info.cls.prefixTokens);
    }
  }
  for (const l of layers) fillHeads(l, shapes, info.hidden);
  const unproven = tokenStructureProblem(g, shapes, layers, info.tokens, info.hidden);
  if (unproven) info.unproven = unproven;
  const merge = spatialMerge(g, info);
  if (merge) info.merge = merge;
  const out = encoderOutput(g, info);
  if (out) info.encoderOutput = out;
  return info;
}

function describeLayer(
  g: Graph,
  shapes: ShapeMap,
  values: Map<string, Dim[]>,
  index: number,
  kind: LayerKind,
  core: AttentionCore | undefined,
  name: string | undefined,
  nodes: NodeProto[],
): LayerInfo {
  const layer: LayerInfo = { index, kind, rotary: core?.rotary ?? false };
  if (name) layer.name = name;
  // Fields in the order they always had (core before residual).
  if (core) layer.core = core;
  const residual = residualMatch(g, kind, core, nodes);
  if ("ok" in residual) layer.residual = residual.ok;
  else layer.residualWhy = missText(residual);
  if (core) {
    if (core.heads) layer.heads = core.heads;
    if (!core.probs) {
      const rank = shapes.get(core.query)?.length;
      if (rank !== undefined && (core.key === undefined || shapes.get(core.key)?.length === rank))
        layer.fusedInputRank = rank;
    }
    if (core.probs) {
      const rank = shapes.get(core.probs)?.length;
      if (rank === 4) layer.probsLayout = "batch,heads,q,k";
      else if (rank === 3) layer.probsLayout = batchless(g, shapes) ? "heads,q,k" : "batch*heads,q,k";
    }
  }
  const q = nodes.length ? quantizationOf(nodes) : core ? quantizationAbove(g, core.query) : undefined;
  if (q) layer.quantization = q;
  const cache = layerCache(g, shapes, core);
  if ("ok" in cache) layer.cache = cache.ok;
  else layer.cacheWhy = cache.why;
  if (core) {
    const rotary = queryRotary(g, shapes, values, core);
    if ("ok" in rotary) layer.queryRotary = rotary.ok;
    else layer.queryRotaryWhy = rotary.why;
  }
  return layer;
}

/**
 * The residual block of a layer (around its attention core, or its recurrent mixer), or why it was
 * not found and where matching stopped; given `trace`, every step looked for.
 */
export function residualMatch(
  g: Graph,
  kind: LayerKind,
  core: AttentionCore | undefined,
  nodes: readonly NodeProto[],
  trace?: Step[],
): { ok: ResidualBlock } | Miss {
  if (core) return matchResidualBlock(g, core, trace);
  // The residual stream around the recurrent mixer (a stage may act after such a layer too).
  const mixer = kind === "linear-attention" ? nodes.find(isStatefulNode) : undefined;
  if (mixer) return matchLinearResidualBlock(g, mixer, nodes, trace);
  return {
    why: `the layer has no attention anchor and no recurrent mixer (If, Scan or Loop) among its ${nodes.length} nodes: there is no block to match`,
  };
}

const NBITS = 1;
const INTEGER = 2;
const quantCache = new WeakMap<Graph, Map<NodeProto, number>>();

/**
 * `quantizationOf` over every node `t` depends on, from one pass in topological order per graph
 * (collecting each anchor's ancestors would be quadratic in a deep model without layer names).
 */
function quantizationAbove(g: Graph, t: string): LayerInfo["quantization"] {
  let flags = quantCache.get(g);
  if (!flags) {
    const f = new Map<NodeProto, number>();
    for (const n of g.order) {
      let bits = n.opType === "MatMulNBits" ? NBITS : n.opType === "MatMulInteger" ? INTEGER : 0;
      for (const i of dataInputs(n)) {
        const p = i ? g.producer.get(i) : undefined;
        if (p) bits |= f.get(p) ?? 0;
      }
      f.set(n, bits);
    }
    quantCache.set(g, (flags = f));
  }
  const p = g.producer.get(t);
  const bits = p ? (flags.get(p) ?? 0) : 0;
  return bits & NBITS ? "MatMulNBits" : bits & INTEGER ? "MatMulInteger" : undefined;
}

/** Models whose first input has no batch axis (token-flattened vision towers such as Qwen2-VL's). */
function batchless(g: Graph, shapes: ShapeMap): boolean {
  const firstInput = [...g.inputs][0];
  const s = firstInput ? shapes.get(firstInput) : undefined;
  return s !== undefined && s.length === 2;
}

function fillHeads(l: LayerInfo, shapes: ShapeMap, hidden: number | undefined): void {
  const core = l.core;
  if (!core) return;
  if (l.probsLayout === "batch,heads,q,k" && core.probs) {
    const h = shapes.get(core.probs)?.[1];
    if (typeof h === "number") l.heads = h;
  }
  if (core.qk) {
    // Q·Kᵀ takes q as [.., tokens, head_size].
    const hs = shapes.get(core.query)?.at(-1);
    if (typeof hs === "number") l.headSize = hs;
  }
  if (!core.qk && l.heads && l.fusedInputRank === 3) {
    // Fused ops take q as [batch, sequence, heads·head_size]; its width need not equal the hidden size.
    const width = shapes.get(core.query)?.at(-1);
    if (typeof width === "number" && width % l.heads === 0) l.headSize = width / l.heads;
  }
  if (l.probsLayout === "heads,q,k" && core.probs) {
    const h = shapes.get(core.probs)?.[0];
    if (typeof h === "number") l.heads = h;
  }
  // Only whole numbers: an inconsistent graph (a broken export) must leave them unknown, not fractional.
  if (l.heads === undefined && l.headSize && hidden && hidden % l.headSize === 0) l.heads = hidden / l.headSize;
  if (l.headSize === undefined && l.heads && hidden && hidden % l.heads === 0) l.headSize = hidden / l.heads;
}

/** The symbolic name of the first graph input's axis 0 (its batch dimension), if it has one. */
function batchSymbol(g: Graph): string | undefined {
  const firstInput = [...g.inputs][0];
  const batchSym = firstInput ? g.valueInfo.get(firstInput) : undefined;
  const dim0 = batchSym?.type?.value.case === "tensorType" ? batchSym.type.value.value.shape?.dim[0] : undefined;
  return dim0?.value.case === "dimParam" ? dim0.value.value : undefined;
}

function tokenAndBatchAxes(g: Graph, residual: Shape): { token: number; batch?: number } {
  if (residual.length === 2) return { token: 0 };
  const batchName = batchSymbol(g);
  // Sequence-first residual streams carry the batch symbol at axis 1.
  if (batchName !== undefined && residual[1] === batchName && residual[0] !== batchName) return { token: 0, batch: 1 };
  return { token: 1, batch: 0 };
}

const PASS_THROUGH: ReadonlySet<string> = new Set([
  "Expand",
  "Tile",
  "Cast",
  "Identity",
  "Reshape",
  "Unsqueeze",
  "Where",
]);

/**
 * Learned tokens: a weight [.., k, hidden] whose other leading dims are 1 (one CLS, or a DeiT-style
 * [1, 2, D] cls + distillation pair), possibly expanded over the batch. Returns k, or 0.
 */
function learnedTokens(g: Graph, t: string, depth = 0): number {
  const init = g.constantTensor(t);
  if (init) {
    const dims = init.dims.map(Number);
    if (dims.length <= 1) return dims.length;
    const k = dims.at(-2)!;
    return dims.slice(0, -2).every((d) => d === 1) && k >= 1 ? k : 0;
  }
  const p = g.producer.get(t);
  if (!p || depth > 4 || !PASS_THROUGH.has(p.opType)) return 0;
  return p.input[0] !== undefined ? learnedTokens(g, p.input[0], depth + 1) : 0;
}

/** Walk back from the first block's input to a Concat along the token axis that prepends learned tokens. */
function detectCls(g: Graph, shapes: ShapeMap, start: string, streamTokenAxis: number): TransformerInfo["cls"] {
  return clsMatch(g, shapes, start, streamTokenAxis).cls;
}

const CLS_STEPS = 8;
const CLS_THROUGH = ["Add", "Dropout", "Identity", "Cast"];

/** `detectCls`, with why: the Concat found and what it prepends, or where the walk up stopped. */
export function clsMatch(
  g: Graph,
  shapes: ShapeMap,
  start: string,
  streamTokenAxis: number,
): { cls: TransformerInfo["cls"]; why: string } {
  const none = (why: string) => ({ cls: { present: false, prefixTokens: 0 }, why });
  let t = start;
  let tokenAxis = streamTokenAxis;
  for (let steps = 0; steps < CLS_STEPS; steps++) {
    const p = g.producer.get(t);
    if (!p)
      return none(
        `walking up from '${start}' to a Concat on the token axis: '${t}' is ${g.inputs.has(t) ? "a graph input" : "computed by no node"}`,
      );
    if (p.opType === "Concat") {
      const rank = shapes.get(t)?.length ?? 3;
      const axis = attrInt(p, "axis", 0);
      if ((axis + rank) % rank !== tokenAxis)
        return none(`${label(p)} joins axis ${axis}, not the token axis (${tokenAxis})`);
      let prefix = 0;
      const learned: string[] = [];
      let stop: string | undefined;
      for (const inp of p.input) {
        const k = learnedTokens(g, inp);
        if (!k) {
          stop = inp;
          break;
        }
        prefix += k;
        learned.push(`'${inp}' (${k})`);
      }
      if (prefix > 0)
        return {
          cls: { present: true, index: 0, prefixTokens: prefix },
          why: `${label(p)} on the token axis prepends ${prefix} learned token${prefix > 1 ? "s" : ""}: ${capped(learned, 3)}`,
        };
      return none(
        `${label(p)} joins the token axis, but its first input '${stop ?? ""}' is not a learned token (a weight [1, k, hidden], possibly expanded over the batch)`,
      );
    }
    if (p.opType === "Transpose" && p.input[0]) {
      // Sequence-first exports transpose [batch, tokens, hidden] once before the first layer.
      const perm = attr(p, "perm")?.ints.map(Number);
      if (!perm || perm[tokenAxis] === undefined) return none(`${label(p)} has no perm for the token axis`);
      tokenAxis = perm[tokenAxis]!;
      t = p.input[0];
      continue;
    }
    // Position embeddings are added, dropout/casts pass through: follow the activation operand.
    const next = p.input.find((i) => i && !g.isConstant(i));
    if (!next || !CLS_THROUGH.includes(p.opType)) {
      return none(
        `walking up from '${start}' to a Concat on the token axis, the walk stopped at ${label(p)}${CLS_THROUGH.includes(p.opType) ? ", which reads no activation" : `: it follows only ${CLS_THROUGH.join(", ")} and Transpose`}`,
      );
    }
    t = next;
  }
  return none(`no Concat on the token axis within ${CLS_STEPS} ops above '${start}'`);
}

/** Why the stream's token and batch axes are where `tokenAndBatchAxes` puts them. */
export function tokenAxesWhy(g: Graph, residual: Shape): string {
  if (residual.length === 2) return "the stream has rank 2 ([tokens, hidden]): tokens on axis 0, no batch axis";
  const axes = tokenAndBatchAxes(g, residual);
  const batch = batchSymbol(g);
  if (axes.token === 0)
    return `sequence-first [tokens, batch, hidden]: the first input's batch dimension '${String(batch)}' is the stream's axis 1`;
  const firstInput = [...g.inputs][0] ?? "";
  return `batch-first [batch, tokens, hidden]${batch === undefined ? ` (the default: the first input '${firstInput}' has no symbolic batch dimension)` : ` (the first input's batch dimension '${batch}' is not at the stream's axis 1)`}`;
}
