/**
 * Spatial merges after the encoder. VLM vision towers shrink the token stream before the language
 * model sees it, and a pruning stage must respect how:
 *   - fold (Qwen2-VL, Qwen3.5): the stream leaving the last layer (through a norm) is reshaped so
 *     g consecutive tokens become one row of g·hidden: Reshape to [-1, g·hidden] or [N/g, g·hidden];
 *   - pool (Gemma-3): the token axis is reshaped into an h×w grid (hidden as channels) and pooled
 *     with a kh×kw kernel: Transpose → Reshape [B, hidden, h, w] → AveragePool.
 * Pure: reads the graph and the transformer analysis, returns facts.
 */
import { attr, type Graph, type NodeProto } from "../ir/graph.js";
import type { TransformerInfo } from "./transformer.js";
import type { Dim } from "./dims.js";

export interface SpatialMerge {
  kind: "fold" | "pool";
  /** Tokens merged into one output token. */
  groupSize: number;
  /** The token grid a pool runs over: [rows, cols]. */
  grid?: [number, number];
  /** Pool kernel: [kh, kw]. */
  kernel?: [number, number];
  /** The Reshape that folds, or the pooling node. */
  node: string;
}

/** Ops the stream passes through on its way to the merge: norms (fused or decomposed), casts, layout changes. */
const PASS_THROUGH: ReadonlySet<string> = new Set([
  "LayerNormalization",
  "SimplifiedLayerNormalization",
  "RMSNormalization",
  "Cast",
  "Identity",
  "Transpose",
  "Reshape",
  "Squeeze",
  "Unsqueeze",
  "Add",
  "Sub",
  "Mul",
  "Div",
  "Pow",
  "Sqrt",
  "ReduceMean",
]);
const POOLS: ReadonlySet<string> = new Set(["AveragePool", "MaxPool", "LpPool"]);
/** Steps walked from the last layer's output; a merge sits right after the final norm. */
const MAX_STEPS = 8;

export function spatialMerge(g: Graph, info: TransformerInfo): SpatialMerge | undefined {
  const start = info.layers.at(-1)?.residual?.output;
  const hidden = info.hidden;
  if (!start || hidden === undefined) return undefined;
  const seen = new Set<NodeProto>();
  let frontier = [start];
  for (let step = 0; step < MAX_STEPS && frontier.length; step++) {
    const next: string[] = [];
    for (const t of frontier) {
      for (const n of g.consumersOf(t)) {
        if (seen.has(n)) continue;
        seen.add(n);
        if (n.opType === "Reshape" && n.input[0] === t) {
          const fold = foldOf(g, info, n, hidden);
          if (fold) return fold;
        }
        if (POOLS.has(n.opType)) {
          const pool = poolOf(info, n, hidden);
          if (pool) return pool;
          continue;
        }
        if (PASS_THROUGH.has(n.opType) && n.domain === "") {
          for (const o of n.output) if (o) next.push(o);
        } else if (n.domain === "com.microsoft" && n.opType.endsWith("LayerNormalization")) next.push(n.output[0]!);
      }
    }
    frontier = next;
  }
  return undefined;
}

/** A Reshape of a [.., tokens, hidden] tensor whose last axis becomes g·hidden (g ≥ 2). */
function foldOf(g: Graph, info: TransformerInfo, n: NodeProto, hidden: number): SpatialMerge | undefined {
  const inShape = info.shapes.get(n.input[0]!);
  if (inShape?.at(-1) !== hidden) return undefined;
  const target = g.constant(n.input[1] ?? "");
  const last = info.shapes.get(n.output[0]!)?.at(-1) ?? target?.at(-1);
  if (typeof last !== "number" || last <= hidden || last % hidden !== 0) return undefined;
  // The rows keep their order and the token axis shrinks by g: same rank, or the batch-less [-1, g·D].
  if (target && target.length !== inShape.length) return undefined;
  return { kind: "fold", groupSize: last / hidden, node: n.name };
}

/** A non-overlapping NCHW pool over [B, hidden, h, w] whose h·w is the token count. */
function poolOf(info: TransformerInfo, n: NodeProto, hidden: number): SpatialMerge | undefined {
  const shape = info.shapes.get(n.input[0]!);
  if (shape?.length !== 4 || shape[1] !== hidden) return undefined;
  const [, , h, w] = shape;
  if (typeof h !== "number" || typeof w !== "number") return undefined;
  if (typeof info.tokens === "number" && h * w !== info.tokens) return undefined;
  const k = attr(n, "kernel_shape")?.ints.map(Number);
  const strides = attr(n, "strides")?.ints.map(Number);
  // Non-overlapping windows only (strides = kernel): then each output token merges kh·kw tokens.
  if (k?.length !== 2 || strides?.[0] !== k[0] || strides?.[1] !== k[1]) return undefined;
  const kernel: [number, number] = [k[0]!, k[1]!];
  return { kind: "pool", groupSize: kernel[0] * kernel[1], grid: [h, w], kernel, node: n.name };
}

/**
 * Where an `after encoder` stage acts: the graph output that carries one row per token, or per
 * merged token (a fold group or a pooling window), with the mapping from tokens to its rows.
 */
export interface EncoderOutput {
  tensor: string;
  tokenAxis: number;
  /** Rows of the output: tokens (prefix included), or merged tokens. */
  units: Dim;
  /** How tokens map to rows: one each, g consecutive tokens, or the tokens of each pooling window. */
  per: { kind: "token" } | { kind: "fold"; size: number } | { kind: "pool"; members: number[][] };
}

/** Tokens of each pooling window, windows in raster order (the order the pooled rows come out). */
export function poolMembers(grid: [number, number], kernel: [number, number]): number[][] {
  const [h, w] = grid;
  const [kh, kw] = kernel;
  const out: number[][] = [];
  for (let r = 0; r < h / kh; r++) {
    for (let c = 0; c < w / kw; c++) {
      const members: number[] = [];
      for (let i = 0; i < kh; i++) for (let j = 0; j < kw; j++) members.push((r * kh + i) * w + c * kw + j);
      out.push(members);
    }
  }
  return out;
}

export function encoderOutput(g: Graph, info: TransformerInfo): EncoderOutput | undefined {
  const axis = info.tokenAxis;
  if (axis === undefined || info.tokens === undefined) return undefined;
  const m = info.merge;
  let units: Dim | undefined;
  let per: EncoderOutput["per"];
  if (!m) {
    units = info.tokens;
    per = { kind: "token" };
  } else if (m.kind === "fold") {
    const node = g.order.find((n) => n.name === m.node);
    units = node ? info.shapes.get(node.output[0]!)?.[axis] : undefined;
    per = { kind: "fold", size: m.groupSize };
  } else {
    units = (m.grid![0] / m.kernel![0]) * (m.grid![1] / m.kernel![1]);
    per = { kind: "pool", members: poolMembers(m.grid!, m.kernel!) };
  }
  if (units === undefined) return undefined;
  const rank = info.batchAxis === undefined ? 2 : 3;
  for (const o of g.outputs) {
    const s = info.shapes.get(o);
    if (s?.length === rank && s[axis] === units) return { tensor: o, tokenAxis: axis, units, per };
  }
  return undefined;
}
