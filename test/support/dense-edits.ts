/**
 * Test-only edits of dense models, for proving what a pruned model computes:
 *
 * - `maskKeys`: the dense model in which the tokens a stage dropped are masked out as keys of every
 *   attention below the stage (-1e9 added to their logits). Below a stage, a pruned model's kept
 *   tokens attend only to kept tokens with their own biases, masks and positions, so its rows must
 *   equal this model's rows at the kept positions, provided the per-token side tensors (attention
 *   biases and masks, rotary positions and tables) were carried with the kept tokens.
 * - `freezeDynamicQuantization`: DynamicQuantizeLinear computes one scale and zero point from the
 *   range of the whole tensor, i.e. over all tokens, so a pruned int8 model quantizes its kept tokens
 *   with other parameters than the dense one. Replacing the op by QuantizeLinear with the parameters
 *   it had in a dense run makes quantization elementwise (and the dense model's outputs unchanged
 *   for that input), so that rows can be compared exactly.
 * - `carriedTensors`: which side tensors a compiled stage gathers.
 */
import { create } from "@bufbuild/protobuf";
import {
  TensorProto_DataType as DT,
  TensorProtoSchema,
  type GraphProto,
  type TensorProto,
} from "../../src/onnx/gen/onnx_pb.js";
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { shallowCopy } from "../../src/ir/copy.js";
import { Graph, makeNode, type NodeProto } from "../../src/ir/graph.js";
import { floatTensor } from "../../src/onnx/tensor.js";
import { analyzeTransformer } from "../../src/analysis/transformer.js";
import { valueInfo } from "../../src/ir/value-info.js";

/** Added to the logits of masked keys. */
export const MASKED = -1e9;

/**
 * The model with the keys not in `kept` (of `tokens`) masked in the attention of every layer from
 * `fromLayer` on: a float [1, tokens] row of 0 (kept) / -1e9 (dropped) is added to MultiHeadAttention's
 * attention_bias (input 5) or to the input of a MatMul + Softmax layer's Softmax; it broadcasts over
 * batch, heads and queries. Fp32 logits and biases only (what the models tested here use).
 */
export function maskKeys(
  modelBytes: Uint8Array,
  fromLayer: number,
  kept: readonly number[],
  tokens: number,
  untilLayer = Number.POSITIVE_INFINITY,
): Uint8Array {
  const keep = new Set(kept);
  const mask = floatTensor(
    "test/masked_keys",
    Array.from({ length: tokens }, (_, j) => (keep.has(j) ? 0 : MASKED)),
    [1, tokens],
  );
  return withKeyMask(
    modelBytes,
    fromLayer,
    mask.name,
    (g) => shallowCopy(g, { initializer: [...g.initializer, mask] }),
    untilLayer,
  );
}

/**
 * The same edit with the row as a graph input `key_mask` (float [1, total length]), for decoders
 * with a KV cache, whose key count grows with each decode step; also adds to GroupQueryAttention's
 * attention_bias (input 10).
 */
export function maskKeysInput(modelBytes: Uint8Array, fromLayer: number): Uint8Array {
  return withKeyMask(modelBytes, fromLayer, "key_mask", (g) =>
    shallowCopy(g, { input: [...g.input, valueInfo("key_mask", 1, [1, "total_sequence_length"])] }),
  );
}

function withKeyMask(
  modelBytes: Uint8Array,
  fromLayer: number,
  mask: string,
  declare: (g: GraphProto) => GraphProto,
  untilLayer = Number.POSITIVE_INFINITY,
): Uint8Array {
  const model = decodeModel(modelBytes);
  const graph = model.graph!;
  const anchors = new Map<NodeProto, number>();
  for (const l of analyzeTransformer(new Graph(graph)).layers)
    if (l.index >= fromLayer && l.index <= untilLayer && l.core) anchors.set(l.core.anchor, l.index);
  if (!anchors.size) throw new Error(`maskKeys: no attention at layer ${fromLayer} or later`);
  const node: NodeProto[] = [];
  for (const n of graph.node) {
    const layer = anchors.get(n);
    if (layer === undefined) {
      node.push(n);
      continue;
    }
    const slot =
      n.opType === "Softmax" ? 0 : n.opType === "MultiHeadAttention" ? 5 : n.opType === "GroupQueryAttention" ? 10 : -1;
    if (slot < 0 || !n.input[slot])
      throw new Error(
        `maskKeys: layer ${layer}'s ${n.opType} '${n.name}' has no logits or attention_bias input to add the mask to`,
      );
    const masked = `test/layer${layer}/masked_logits`;
    node.push(makeNode("Add", [n.input[slot], mask], [masked], `test/layer${layer}/mask_keys`));
    node.push(shallowCopy(n, { input: n.input.map((x, i) => (i === slot ? masked : x)) }));
  }
  return encodeModel(shallowCopy(model, { graph: declare(shallowCopy(graph, { node })) }));
}

/** A DynamicQuantizeLinear node and the outputs holding its scale and zero point. */
export interface DynamicQuantizer {
  node: string;
  scale: string;
  zeroPoint: string;
}

/** DynamicQuantizeLinear nodes that compute from `tensor` (e.g. the residual stream a stage prunes). */
export function dynamicQuantizersBelow(modelBytes: Uint8Array, tensor: string): DynamicQuantizer[] {
  const g = new Graph(decodeModel(modelBytes).graph!);
  const below = g.descendants(tensor);
  return g.order
    .filter((n) => n.opType === "DynamicQuantizeLinear" && below.has(n))
    .map((n) => ({ node: n.name, scale: n.output[1]!, zeroPoint: n.output[2]! }));
}

/**
 * The model with each named DynamicQuantizeLinear replaced by QuantizeLinear with a fixed scale and
 * uint8 zero point (its scale and zero-point outputs become those constants).
 */
export function freezeDynamicQuantization(
  modelBytes: Uint8Array,
  frozen: ReadonlyMap<string, { scale: number; zeroPoint: number }>,
): Uint8Array {
  const model = decodeModel(modelBytes);
  const graph = model.graph!;
  const initializer: TensorProto[] = [];
  const node: NodeProto[] = [];
  const done = new Set<string>();
  for (const n of graph.node) {
    const f = n.opType === "DynamicQuantizeLinear" ? frozen.get(n.name) : undefined;
    if (!f) {
      node.push(n);
      continue;
    }
    const scale = floatTensor(`${n.name}/frozen_scale`, [f.scale], []);
    const zeroPoint = create(TensorProtoSchema, {
      name: `${n.name}/frozen_zero_point`,
      dataType: DT.UINT8,
      dims: [],
      rawData: Uint8Array.of(f.zeroPoint),
    });
    initializer.push(scale, zeroPoint);
    node.push(
      makeNode("QuantizeLinear", [n.input[0]!, scale.name, zeroPoint.name], [n.output[0]!], `${n.name}/frozen`),
    );
    if (n.output[1]) node.push(makeNode("Identity", [scale.name], [n.output[1]], `${n.name}/frozen_scale_output`));
    if (n.output[2])
      node.push(makeNode("Identity", [zeroPoint.name], [n.output[2]], `${n.name}/frozen_zero_point_output`));
    done.add(n.name);
  }
  const missing = [...frozen.keys()].filter((k) => !done.has(k));
  if (missing.length)
    throw new Error(`freezeDynamicQuantization: no DynamicQuantizeLinear named ${missing.join(", ")}`);
  return encodeModel(
    shallowCopy(model, { graph: shallowCopy(graph, { node, initializer: [...graph.initializer, ...initializer] }) }),
  );
}

/**
 * The model's tensors that stage `stage` of a compiled model gathers with the kept tokens (the
 * inputs of its `carry_tokens` subgraphs that the stage did not compute itself), sorted.
 */
export function carriedTensors(compiled: Uint8Array, stage: number): string[] {
  const g = new Graph(decodeModel(compiled).graph!);
  const prefix = `prunec/stage${stage}/`;
  const found = new Set<string>();
  for (const n of g.order) {
    if (!n.name.startsWith(prefix) || !/carry_tokens/.test(n.name)) continue;
    let t = n.input[0]!;
    for (let p = g.producer.get(t); p?.name.startsWith(prefix); p = g.producer.get(t)) t = p.input[0]!;
    found.add(t);
  }
  return [...found].sort();
}

/**
 * DToP's canvas (methods.md §30) as an edit of the dense model, for `with restore`: each stage
 * `{ layer, kept, at }` (kept: dense positions that survive it and every stage before; at: the layer
 * at whose output it restores, the last by default) masks the other tokens' keys in layers
 * layer + 1 .. at (`maskKeys`), and what reads layer `at`'s output reads instead, per token, the
 * residual leaving the stage's layer (its exit features) for a token the stage did not keep, or
 * layer `at`'s output for one it kept. Stages are undone last first, as restore points nest.
 * Batch 1 (the rows are constants).
 */
export function canvasReference(
  modelBytes: Uint8Array,
  stages: readonly { layer: number; kept: readonly number[]; at?: number }[],
  tokens: number,
): Uint8Array {
  const count = analyzeTransformer(new Graph(decodeModel(modelBytes).graph!)).layers.length;
  const atOf = (s: { at?: number }) => s.at ?? count - 1;
  let bytes = modelBytes;
  stages.forEach((s, i) => {
    bytes = maskKeys(bytes, s.layer + 1, s.kept, tokens, atOf(s));
    // maskKeys names its nodes and row after the layer: give each stage's edit its own names.
    const m = decodeModel(bytes);
    const rename = (x: string) => (x.startsWith("test/") && !/_s\d+$/.test(x) ? `${x}_s${i}` : x);
    const g = m.graph!;
    bytes = encodeModel(
      shallowCopy(m, {
        graph: shallowCopy(g, {
          node: g.node.map((n) =>
            shallowCopy(n, { name: rename(n.name), input: n.input.map(rename), output: n.output.map(rename) }),
          ),
          initializer: g.initializer.map((t) => shallowCopy(t, { name: rename(t.name) })),
        }),
      }),
    );
  });
  let model = decodeModel(bytes);
  const layers = analyzeTransformer(new Graph(model.graph!)).layers;
  [...stages].reverse().forEach((s, j) => {
    const graph = model.graph!;
    const point = layers[atOf(s)]?.residual?.output;
    const exit = layers[s.layer]?.residual?.output;
    if (!point || !exit) throw new Error(`canvasReference: no residual leaving layer ${atOf(s)} or ${s.layer}`);
    const keep = new Set(s.kept);
    const member = create(TensorProtoSchema, {
      name: `test/canvas_kept_${j}`,
      dataType: DT.BOOL,
      dims: [1n, BigInt(tokens), 1n],
      rawData: Uint8Array.from({ length: tokens }, (_, t) => (keep.has(t) ? 1 : 0)),
    });
    // The point's producer now writes `<point>/live`; the canvas takes the point's name, so every
    // reader (and an earlier canvas at the same point) reads the restored rows.
    const live = `${point}/live_${j}`;
    const node = graph.node.map((n) =>
      n.output.includes(point) ? shallowCopy(n, { output: n.output.map((x) => (x === point ? live : x)) }) : n,
    );
    const at = node.findIndex((n) => n.output.includes(live));
    const where = makeNode(
      "Where",
      [member.name, live, exit === point ? live : exit],
      [point],
      `test/canvas_where_${j}`,
    );
    model = shallowCopy(model, {
      graph: shallowCopy(graph, {
        node: [...node.slice(0, at + 1), where, ...node.slice(at + 1)],
        initializer: [...graph.initializer, member],
      }),
    });
  });
  return encodeModel(model);
}
