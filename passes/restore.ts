/**
 * `with restore` (issue 17): the stage's dropped tokens come back at the last layer's output, so
 * every graph output keeps one row per input token and the pruned model is a drop-in replacement
 * for a dense-prediction model (segmentation, depth, patch features).
 *
 * Semantics (DToP, methods.md §30): a token dropped by a stage keeps the hidden state it had when
 * it was dropped (the stage's input row, the residual leaving the stage's layer); a kept token
 * carries what the layers below computed. DToP's canvas holds each token's mask logits from the
 * head where it exited; here every token leaves through the model's own final norm and head, fed
 * its exit-layer features (the per-layer heads DToP trains are not part of a plain model).
 *
 * Lowering: at the last layer's output Y (the rows the last stage kept), stages are undone last to
 * first: Z = ScatterElements(X_i, P_i, Y) on the token axis, where X_i is stage i's input (the
 * residual it gathered from, `<r>/dense`) and P_i its kept positions in X_i's rows; Z has X_i's
 * rows and is the Y of the stage before. A per-example count's padding rows (real tokens masked
 * as keys below the stage) take their X_i row back, as a token dropped there.
 *
 * A merge stage is undone as tomesd does (`tomesd/merge.py`, unmerge; methods.md §29): every input
 * token takes the output of the row it was merged into (an unmerged token its own), Z = U·Y with
 * the stage's one-hot assignment U [B, N_in, N_out] (passes/merge-stage.ts).
 *
 * Pre (src/plan.ts, passes/kinds/options.ts `restoreWhy`): every stage after a restoring one
 * restores too; the stream is batch-first or batch-less; no layer keeps a KV cache; the last
 * layer's output is a tensor of its own; the stages gathered by int64 positions.
 * Post: the last layer's output tensor has the first restoring stage's input rows; nodes below it
 * (final norm, head) were left as the dense model had them (stages do not retarget or regather
 * there: prune-stage.ts `restoreBelow`).
 */
import type { ArgValue } from "../grammar/ir.js";
import type { GraphProto, NodeProto } from "../src/ir/graph.js";
import { Graph } from "../src/ir/graph.js";
import type { TransformerInfo } from "../src/analysis/transformer.js";
import { refreshFacts } from "../src/analysis/refresh.js";
import { NodeBuilder } from "./builder.js";
import { gatherTokens } from "./gather-tokens.js";
import { splice } from "./splice.js";

/** What a restoring stage records for the restore step; `at`: the layer at whose output it restores. */
export type RestoreRecord = { at: number } & (
  | {
      kind: "scatter";
      /** The stage's input stream (the residual it gathered from). */
      input: string;
      /** int64 [B, K]: the positions it gathered, in its input's rows. */
      rows: string;
      /** float [B, K]: −1e9 on padding rows of a per-example count (they restore as dropped). */
      padding?: string;
    }
  | {
      /** tomesd's unmerge: each input token takes the output row it was merged into. */
      kind: "unmerge";
      /** [B, N_in, N_out] one-hot (of the stream's element type): input token p landed in output row i. */
      assign: string;
    }
);

/**
 * The layer at whose output `with restore` puts the tokens back: its `layer` argument (negative
 * counts from the end, as stage positions do), or the last layer. May be out of range (restoreWhy says so).
 */
export function restoreLayer(model: TransformerInfo, args: Readonly<Record<string, ArgValue>> | undefined): number {
  const n = model.layers.length;
  const written = args?.["layer"];
  if (typeof written !== "number") return n - 1;
  return written < 0 ? n + written : written;
}

/** "the last layer's output" or "layer 8's output": where a stage's tokens come back, for messages. */
export function restoreWhere(model: TransformerInfo, at: number): string {
  return at === model.layers.length - 1 ? "the last layer's output" : `layer ${at}'s output`;
}

/** Why `with restore` cannot put the stage's (after layer `layer`) tokens back at layer `at`'s output, or undefined. */
export function restoreWhy(model: TransformerInfo, layer: number, at: number): string | undefined {
  const n = model.layers.length;
  if (layer >= n - 1)
    return "'with restore' on a stage after the last layer changes nothing: its dropped tokens come back at once";
  if (at < 0 || at >= n) return `'with restore(layer: …)' names layer ${at}, but the model has layers 0 to ${n - 1}`;
  if (at <= layer)
    return `'with restore(layer: ${at})' must name a layer after the stage's (${layer}): the dropped tokens come back at that layer's output`;
  const cached = model.layers.find((l) => l.cache);
  if (cached)
    return `'with restore' gives every input token an output row, but layer ${cached.index} keeps a KV cache, which would hold the kept tokens only`;
  const r = model.layers[at]?.residual;
  const where = restoreWhere(model, at);
  if (!r) return `'with restore' acts at ${where}, whose residual block prunec did not find`;
  if (r.outputMissing || r.outputNorm)
    return `'with restore' acts at ${where}, which here exists only inside a fused add+norm (${r.outputNorm?.opType ?? "its final norm"})`;
  if (model.batchAxis !== undefined && model.batchAxis !== 0)
    return "'with restore' needs a batch-first (or batch-less) residual stream";
  return undefined;
}

/** Layer `at`'s output, where dropped tokens are restored (the stages leave nodes below it alone). */
export function restorePoint(model: TransformerInfo, at: number): string | undefined {
  return model.layers[at]?.residual?.output;
}

/** Nodes below the restore point (layer `at`'s output), where `with restore` gives back every token. */
export function restoreBelow(g: Graph, dense: TransformerInfo, at: number): Set<NodeProto> {
  const point = restorePoint(dense, at);
  return point ? g.descendants(point) : new Set();
}

/**
 * Every restore point in turn, the latest stage's first: the plan (src/plan.ts) made the points nest
 * (a later stage restores at or before an earlier one's point) and put every stage above the first
 * point, so undoing the records last to first meets the points in layer order.
 */
export function restoreTokens(
  proto: GraphProto,
  dense: TransformerInfo,
  records: readonly RestoreRecord[],
  opset: number,
): GraphProto {
  const b = new NodeBuilder("prunec/restore", opset);
  let g = proto;
  const undo = [...records].reverse();
  while (undo.length) {
    const at = undo[0]!.at;
    const here = undo.findIndex((r) => r.at !== at);
    g = restoreAt(g, dense, undo.splice(0, here < 0 ? undo.length : here), at, b);
  }
  return g;
}

/** Undoes `records` (last stage first) at layer `at`'s output. */
function restoreAt(
  proto: GraphProto,
  dense: TransformerInfo,
  records: readonly RestoreRecord[],
  at: number,
  b: NodeBuilder,
): GraphProto {
  const model = refreshFacts(dense, Graph.of(proto));
  const point = restorePoint(model, at);
  if (!point || model.tokenAxis === undefined)
    throw new Error(`restore: layer ${at}'s output was found by the plan but not on the pruned graph`);
  const first = b.nodes.length;
  const firstInit = b.initializers.length;
  const pruned = `${point}/pruned`;
  const tokenAxis = model.tokenAxis;
  const layout = { tokenAxis, ...(model.batchAxis !== undefined ? { batchAxis: model.batchAxis } : {}) };
  let y = pruned;
  for (const rec of records) {
    if (rec.kind === "unmerge") {
      y = b.op("MatMul", [rec.assign, y], {}, "unmerge");
      continue;
    }
    let updates = y;
    if (rec.padding) {
      // Padding rows are real tokens the stage did not count: they come back as dropped there.
      const pad = b.unsqueeze(b.op("Less", [rec.padding, b.float([0], [], "zero_bias")], {}, "padding_rows"), [2]);
      updates = b.op("Where", [pad, gatherTokens(b, rec.input, rec.rows, layout), y], {}, "padding_as_dropped");
    }
    // Positions as the updates' shape: [B,K] → [B,K,D] (batch-less: [K] → [K,D]).
    const rows =
      model.batchAxis === undefined ? b.unsqueeze(b.squeeze(rec.rows, [0]), [1]) : b.unsqueeze(rec.rows, [2]);
    const at = b.op("Expand", [rows, b.op("Shape", [updates])], {}, "restore_positions");
    y = b.op("ScatterElements", [rec.input, at, updates], { axis: tokenAxis }, "restore_dropped");
  }
  b.rename(y, point);
  return splice(proto, {
    label: `restore (with restore) at layer ${at}`,
    after: point,
    rename: new Map([[point, pruned]]),
    nodes: b.nodes.slice(first),
    initializers: b.initializers.slice(firstInit),
    staleInfo: new Set([point]),
  });
}
