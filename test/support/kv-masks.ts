/**
 * The "masked dense" counterpart of a KV-cache stage (`keep kv … by PRESS`), for decoders whose
 * attention is com.microsoft GroupQueryAttention: the dense model in which, per layer and per query
 * head, the cache entries the stage evicted are masked out of that layer's attention (MASKED added
 * to their logits). A KV stage evicts per KV head, so the mask is [1, num_heads, 1, total]: query
 * head h gets the row of its KV head floor(h / G) (G = num_heads / kv_num_heads, HF `repeat_kv`).
 *
 * Fed all zeros at prefill (the stage's op attends over its whole cache at that call) and, at decode
 * steps, MASKED on the evicted positions of the prompt, the dense model computes what an evicting
 * model computes with its shorter caches, provided the kept keys keep their positions (rotary
 * phases) and the new token gets its dense position.
 */
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { shallowCopy } from "../../src/ir/copy.js";
import { Graph, makeNode, type NodeProto } from "../../src/ir/graph.js";
import { analyzeTransformer } from "../../src/analysis/transformer.js";
import { valueInfo } from "../../src/ir/value-info.js";
import type { TensorLike } from "../helpers/ort.js";
import { MASKED } from "./dense-edits.js";

/** GroupQueryAttention's attention_bias input slot (onnxruntime contrib op). */
const BIAS = 10;

/** The name of layer L's mask input added by `maskKvHeadsInput`. */
export const kvMaskName = (layer: number) => `test_kv_mask.${layer}`;

/**
 * The model with a float input `test_kv_mask.L` [1, num_heads, 1, total_sequence_length] per layer L
 * of `layers`, added to that layer's GroupQueryAttention attention_bias (input 10; created when the
 * op has none). Throws when a layer's attention is not a GroupQueryAttention.
 */
export function maskKvHeadsInput(modelBytes: Uint8Array, layers: readonly number[]): Uint8Array {
  const model = decodeModel(modelBytes);
  const graph = model.graph!;
  const info = analyzeTransformer(new Graph(graph));
  const anchors = new Map<NodeProto, { layer: number; heads: number }>();
  for (const l of layers) {
    const core = info.layers[l]?.core;
    if (core?.anchor.opType !== "GroupQueryAttention")
      throw new Error(`maskKvHeadsInput: layer ${l} has no GroupQueryAttention`);
    const heads = Number(core.anchor.attribute.find((a) => a.name === "num_heads")?.i ?? 0);
    anchors.set(core.anchor, { layer: l, heads });
  }
  const node: NodeProto[] = [];
  const inputs = [];
  for (const n of graph.node) {
    const at = anchors.get(n);
    if (!at) {
      node.push(n);
      continue;
    }
    const mask = kvMaskName(at.layer);
    inputs.push(valueInfo(mask, 1, [1, at.heads, 1, "total_sequence_length"]));
    const input = [...n.input];
    while (input.length <= BIAS) input.push("");
    let bias = mask;
    if (input[BIAS]) {
      bias = `test/layer${at.layer}/kv_masked_bias`;
      node.push(makeNode("Add", [input[BIAS], mask], [bias], `test/layer${at.layer}/mask_kv_heads`));
    }
    input[BIAS] = bias;
    node.push(shallowCopy(n, { input }));
  }
  return encodeModel(shallowCopy(model, { graph: shallowCopy(graph, { node, input: [...graph.input, ...inputs] }) }));
}

/**
 * The mask feed of one layer at a call with `total` keys: 0 everywhere when `kept` is undefined
 * (prefill); else, for query head h, 0 at the positions `kept[floor(h / G)]` holds and at every
 * position ≥ `prompt` (tokens generated after the eviction), MASKED on the other prompt positions.
 */
export function kvMaskFeed(
  kept: readonly (readonly number[])[] | undefined,
  heads: number,
  prompt: number,
  total: number,
): TensorLike {
  const data = new Float32Array(heads * total);
  if (kept) {
    const group = heads / kept.length;
    for (let h = 0; h < heads; h++) {
      const keep = new Set(kept[Math.floor(h / group)]!);
      for (let j = 0; j < prompt; j++) if (!keep.has(j)) data[h * total + j] = MASKED;
    }
  }
  return { type: "float32", dims: [1, heads, 1, total], data };
}
