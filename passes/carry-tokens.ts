/**
 * Carrying per-token side tensors with the kept tokens. Layers below a stage read tensors that
 * were computed above it and are indexed by token: attention biases / masks [.., N, N], rotary
 * position ids [1, N], position tables added or multiplied in. After the stage each must hold the
 * kept tokens' rows (and columns), in the kept order, or the layers below would mix positions (or
 * fail on shapes). Rotary caches indexed by position ids are not gathered: their ids are.
 *
 * Pre:  `below` holds every tensor computed from the stage's residual; `indices` are the kept
 *       token positions int64 [batch, K'] (batch 1 for batch-less models).
 * Post: consumers below the stage read gathered copies; the map of carried tensors (name → token
 *       axes) lets a later stage gather them again.
 */
import type { Graph, NodeProto } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import type { Dim, ShapeMap } from "../src/analysis/dims.js";
import type { NodeBuilder } from "./builder.js";
import { CACHED_INPUTS } from "./cached-attention.js";

/** Inputs that hold values about shapes or positions into a table, never per-token rows. */
const NOT_TOKEN_ROWS: Readonly<Record<string, readonly number[]>> = {
  Reshape: [1],
  Expand: [1],
  Tile: [1],
  Slice: [1, 2, 3, 4],
  ConstantOfShape: [0],
  Range: [0, 1, 2],
  Shape: [0],
  Size: [0],
  RotaryEmbedding: [2, 3],
  GatherND: [1],
  // Rewritten per layer by cached-attention.ts (sequence lengths, key-padding bias); rotary caches.
  GroupQueryAttention: [...Object.values(CACHED_INPUTS), 7, 8, 9],
};
/** Ops that combine a side tensor with the token stream position by position. */
const ELEMENTWISE: ReadonlySet<string> = new Set(["Add", "Sub", "Mul", "Div", "Where", "And", "Or", "Equal"]);

export interface TokenAxes {
  /** Axes indexed by token. */
  axes: number[];
  rank: number;
  /** Rows indexed by example·tokens + token on axis 0 (a table flattened over batch and tokens). */
  flat?: boolean;
}

export interface SideInput extends TokenAxes {
  tensor: string;
}

export interface CarryContext {
  graph: Graph;
  shapes: ShapeMap;
  /** Tensors carried by earlier stages (their dense shapes no longer say which axes are tokens). */
  carried: ReadonlyMap<string, TokenAxes>;
  /** The model's dense token count: shapes of tensors computed above the first stage use it. */
  denseTokens: Dim;
  batched: boolean;
}

function tokenAxes(
  ctx: CarryContext,
  node: NodeProto,
  slot: number,
  t: string,
  below: ReadonlySet<string>,
): TokenAxes | undefined {
  // RotaryEmbedding fed ids computed from the stream's own shape (0..B·N−1, as Qwen3.5's M-RoPE
  // exports number them) reads its cos/sin inputs as per-token tables, one row per (example,
  // token), computed from the caller's positions: those rows follow the kept tokens.
  if (
    node.opType === "RotaryEmbedding" &&
    (slot === 2 || slot === 3) &&
    node.input[1] &&
    below.has(node.input[1]) &&
    !ctx.graph.isConstant(t)
  ) {
    return { axes: [0], rank: 2, flat: true };
  }
  if (NOT_TOKEN_ROWS[node.opType]?.includes(slot)) return undefined;
  const known = ctx.carried.get(t);
  if (known) return known;
  const shape = ctx.shapes.get(t);
  if (!shape) return undefined;
  const constant = ctx.graph.isConstant(t);
  const special =
    (node.opType === "MultiHeadAttention" && (slot === 4 || slot === 5)) ||
    (node.opType === "RotaryEmbedding" && slot === 1);
  // A constant joins the stream only through elementwise ops; a weight matrix never holds rows per token.
  if (constant && !special && !ELEMENTWISE.has(node.opType)) return undefined;
  // Elementwise with a tensor computed from the stream: axes that line up (by broadcasting) with
  // its token axes are token axes too, whatever the side tensor's own symbol says (e.g. a mask's
  // `total_sequence_length` key axis, which equals the sequence length without a cache).
  const partner = ELEMENTWISE.has(node.opType) ? node.input.find((i, k) => k !== slot && i && below.has(i)) : undefined;
  const partnerShape = partner ? ctx.shapes.get(partner) : undefined;
  const aligned = (axis: number): boolean => {
    if (!partnerShape || shape[axis] === 1) return false;
    const p = partnerShape[axis + partnerShape.length - shape.length];
    return p === ctx.denseTokens;
  };
  const axes: number[] = [];
  shape.forEach((d, axis) => {
    if (d !== ctx.denseTokens && !aligned(axis)) return;
    if (ctx.batched && axis === 0 && shape.length > 1) return;
    // A constant's last axis broadcasts against the hidden axis (a bias of N features), unless it is square in N.
    if (constant && !special && axis === shape.length - 1 && shape.at(-2) !== ctx.denseTokens) return;
    axes.push(axis);
  });
  return axes.length ? { axes, rank: shape.length } : undefined;
}

/** Side inputs of nodes below the stage, each once. */
export function findSideInputs(
  ctx: CarryContext,
  belowNodes: Iterable<NodeProto>,
  below: ReadonlySet<string>,
): SideInput[] {
  const found = new Map<string, TokenAxes>();
  for (const n of belowNodes) {
    n.input.forEach((t, slot) => {
      if (!t || below.has(t) || found.has(t)) return;
      const axes = tokenAxes(ctx, n, slot, t, below);
      if (axes) found.set(t, axes);
    });
  }
  return [...found].map(([tensor, axes]) => ({ tensor, ...axes }));
}

/**
 * Emit the gathers: returns side tensor → gathered tensor. `tokens` (int64 [1]): the stage's input
 * token count, for tables flattened over batch and tokens.
 */
export function gatherSideInputs(
  b: NodeBuilder,
  sides: SideInput[],
  indices: string,
  batched: boolean,
  tokens: () => string,
): Map<string, string> {
  const out = new Map<string, string>();
  const tables = sides.filter((s) => s.flat);
  if (tables.length) {
    // Row b·N + k of example b's kept token k.
    const batch = b.slice(b.op("Shape", [indices]), 0, 0, 1);
    const starts = b.op("Mul", [b.unsqueeze(b.range(batch, "examples"), [1]), tokens()], {}, "example_rows");
    const rowsAt = b.op("Reshape", [b.op("Add", [indices, starts]), b.int64([-1], [1], "flat")], {}, "flat_rows");
    for (const s of tables) out.set(s.tensor, b.op("Gather", [s.tensor, rowsAt], { axis: 0 }, "carry_tokens"));
  }
  sides = sides.filter((s) => !s.flat);
  if (!sides.length) return out;
  if (!batched) {
    const flat = b.squeeze(indices, [0]);
    for (const s of sides)
      out.set(
        s.tensor,
        s.axes.reduce((t, axis) => b.op("Gather", [t, flat], { axis }, "carry_tokens"), s.tensor),
      );
    return out;
  }
  const idx = b.unsqueeze(indices, [2]); // [B, K', 1] for GatherND over axis 1
  const batch = b.slice(b.op("Shape", [indices]), 0, 0, 1);
  for (const s of sides) {
    const rank = s.rank;
    // One row per example: a tensor shared by the batch (dim 0 = 1) is expanded first.
    let t = b.op(
      "Expand",
      [s.tensor, b.op("Concat", [batch, b.int64(Array(rank - 1).fill(1))], { axis: 0 })],
      {},
      "per_example",
    );
    for (const axis of s.axes) {
      const perm = [0, axis, ...[...Array(rank).keys()].filter((a) => a !== 0 && a !== axis)];
      const inverse = perm.map((_, i) => perm.indexOf(i));
      const front = axis === 1 ? t : b.op("Transpose", [t], { perm });
      const gathered = b.op("GatherND", [front, idx], { batch_dims: 1 }, "carry_tokens");
      t = axis === 1 ? gathered : b.op("Transpose", [gathered], { perm: inverse });
    }
    out.set(s.tensor, t);
  }
  return out;
}

/** Nodes with side inputs replaced by their gathered copies. */
export function rewireSideInputs(
  nodes: NodeProto[],
  gathered: ReadonlyMap<string, string>,
  belowNodes: ReadonlySet<NodeProto>,
): NodeProto[] {
  if (!gathered.size) return nodes;
  return nodes.map((n) =>
    belowNodes.has(n) && n.input.some((i) => gathered.has(i))
      ? shallowCopy(n, { input: n.input.map((i) => gathered.get(i) ?? i) })
      : n,
  );
}
