/**
 * The patch grid behind the prunable tokens, proven from the graph (never guessed from a square
 * count): walking up from the first layer's input, the stream is
 *
 *   Conv(pixels) [B, D, H, W] → Reshape [B, D, H·W] → Transpose(0, 2, 1) [B, H·W, D]
 *     → Concat(special tokens, patches) on the token axis → Add(position table) / Dropout / Cast …
 *
 * so prunable token j (after the special prefix) is the patch at row ⌊j/W⌋, column j mod W: a
 * raster of H rows of W patches. Anything else on the way (another layout, a reorder, a patch
 * merger) leaves the grid unproven, with the reason.
 */
import { type Graph, attr, attrInt, type NodeProto } from "../ir/graph.js";
import type { ShapeMap } from "./dims.js";
import { label } from "./match.js";

export interface PatchGrid {
  rows: number;
  cols: number;
  /** The Conv whose output positions the prunable tokens are, in raster order. */
  conv: string;
}

/** Ops between the patch Concat and the first layer that leave every row where it is. */
const ROW_PRESERVING = ["Add", "Dropout", "Identity", "Cast"];
const STEPS = 8;

/**
 * The grid of the `prefix`-prefixed batch-first stream entering the first layer at `start`, or why
 * it could not be proven.
 */
export function patchGrid(
  g: Graph,
  shapes: ShapeMap,
  start: string,
  prefix: number,
): { ok: PatchGrid } | { why: string } {
  const why = (text: string) => ({ why: text });
  let t = start;
  let concat: NodeProto | undefined;
  for (let steps = 0; steps < STEPS && !concat; steps++) {
    const p = g.producer.get(t);
    if (!p) return why(`walking up from '${start}' to the patch embedding, '${t}' is computed by no node`);
    if (p.opType === "Concat") {
      concat = p;
      break;
    }
    // Position tables are added and dropout passes through: both leave each row at its position.
    const activations = p.input.filter((i) => i && !g.isConstant(i));
    if (!ROW_PRESERVING.includes(p.opType) || activations.length !== 1)
      return why(
        `walking up from '${start}' to the patch embedding, the walk stopped at ${label(p)} (it follows ${ROW_PRESERVING.join(", ")} with one activation operand)`,
      );
    t = activations[0]!;
  }
  if (!concat) return why(`no Concat of the special tokens and the patches within ${STEPS} ops above '${start}'`);
  const rank = shapes.get(concat.output[0]!)?.length;
  const axis = attrInt(concat, "axis", 0);
  if (rank !== 3 || (axis + rank) % rank !== 1)
    return why(`${label(concat)} does not join a batch-first [batch, tokens, hidden] stream on its token axis`);
  const parts = concat.input.map((i) => shapes.get(i)?.[1]);
  const front = parts.slice(0, -1);
  if (front.some((n) => typeof n !== "number") || front.reduce<number>((a, n) => a + Number(n), 0) !== prefix)
    return why(
      `${label(concat)} does not put the ${prefix} special token${prefix === 1 ? "" : "s"} in front of one patch tensor`,
    );
  const patches = concat.input.at(-1)!;
  const transpose = g.producer.get(patches);
  const perm = transpose?.opType === "Transpose" ? attr(transpose, "perm")?.ints.map(Number) : undefined;
  if (!transpose || perm?.join(",") !== "0,2,1")
    return why(
      `the patches '${patches}' are not the transpose (0, 2, 1) of a [batch, hidden, patches] tensor${transpose ? ` (${label(transpose)})` : ""}`,
    );
  const flat = transpose.input[0]!;
  const reshape = g.producer.get(flat);
  const conv = reshape?.opType === "Reshape" ? g.producer.get(reshape.input[0]!) : undefined;
  if (!reshape || !conv || conv.opType !== "Conv")
    return why(`'${flat}' is not a Conv's [batch, hidden, H, W] output flattened by a Reshape`);
  const spatial = shapes.get(conv.output[0]!);
  const out = shapes.get(flat);
  if (spatial?.length !== 4 || out?.length !== 3)
    return why(`the shapes of ${label(conv)} and ${label(reshape)} are not known as [B, D, H, W] → [B, D, H·W]`);
  const [, d, h, w] = spatial;
  if (typeof h !== "number" || typeof w !== "number")
    return why(`${label(conv)} writes a ${String(h)}×${String(w)} grid; a static one is needed`);
  // The Reshape keeps batch and channels and flattens H and W row-major (ONNX Reshape's order).
  if (out[1] !== d || out[2] !== h * w || spatial[0] !== out[0])
    return why(
      `${label(reshape)} maps [${spatial.map(String).join(", ")}] to [${out.map(String).join(", ")}], not [B, D, H·W]`,
    );
  return { ok: { rows: h, cols: w, conv: conv.name } };
}
