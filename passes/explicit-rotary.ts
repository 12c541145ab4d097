/**
 * GroupQueryAttention with do_rotary=1 (Gemma-3 as transformers.js exports it) rotates q and k
 * inside the op, at positions it derives from its sequence lengths. Below a stage a layer holds
 * fewer tokens, so the op would number the kept tokens 0..K'−1, and decode steps from the shorter
 * past: kept tokens must keep their original positions (FastV; language.md). This pass moves the
 * rotation out of the op into com.microsoft.RotaryEmbedding nodes (same caches, same
 * interleaving) fed positions computed as the op computes them (onnxruntime's
 * GeneratePositionIds): at the first prompt (sequence = total length) position s, otherwise
 * seqlens_k[b] + 1 − S + s. On the dense model it changes nothing (tested); a stage then gathers
 * the positions with the kept tokens like any per-token side tensor.
 *
 * Pre:  the GroupQueryAttention nodes take separate q, k, v (gqaAttention, attention/gqa-map.ts);
 *       else PrunecError.
 * Post: those nodes have do_rotary=0 and read q/k rotated by `prunec/rotary/...` nodes; the
 *       positions tensor (int64 [batch, sequence]) is returned, to be carried by stages.
 */
import type { GraphProto, NodeProto } from "../src/onnx/gen/onnx_pb.js";
import { Graph, attrInt, makeNode } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import { splice } from "./splice.js";
import type { LayerInfo, TransformerInfo } from "../src/analysis/transformer.js";
import type { AttentionCore } from "../src/analysis/attention.js";
import { PrunecError } from "../src/errors.js";
import { NodeBuilder } from "./builder.js";

const INT64 = 7;
const COS = 7;
const SIN = 8;

/** Whether the layer's attention op rotates q/k itself (GroupQueryAttention do_rotary=1); narrows `core`. */
export function rotatesInside(layer: LayerInfo): layer is LayerInfo & { core: AttentionCore } {
  const core = layer.core;
  return core !== undefined && core.kind === "GroupQueryAttention" && attrInt(core.anchor, "do_rotary", 0) === 1;
}

/** The rotary width (2 × the cos cache's columns); the cache must be a constant [positions, rotary_dim/2]. */
function rotaryWidth(g: Graph, n: NodeProto, layer: number, modelName: string): number {
  const dims = g.constantTensor(n.input[COS] ?? "")?.dims;
  if (!n.input[SIN] || !dims || dims.length !== 2) {
    throw new PrunecError(
      "apply",
      `${modelName}: layer ${layer}'s GroupQueryAttention (node '${n.name}') rotates q/k inside the op (do_rotary=1); prunec moves that rotation out of the op and needs constant cos/sin caches [positions, rotary_dim/2]`,
    );
  }
  return 2 * Number(dims[1]);
}

/** The rewritten graph and its positions tensor (undefined when no layer needed it). */
export function explicitRotary(
  proto: GraphProto,
  info: TransformerInfo,
  from: number,
  opset: number,
  modelName: string,
): { graph: GraphProto; positions?: string; added: NodeProto[] } {
  const layers = info.layers.slice(from).filter(rotatesInside);
  const head = layers[0];
  if (!head) return { graph: proto, added: [] };
  const g = Graph.of(proto);
  const b = new NodeBuilder("prunec/rotary", opset);
  const first = head.core.anchor;
  // Positions as the op derives them, from the first rewritten layer's sequence lengths (every layer
  // shares them) and the stream entering the first layer: a tensor of no layer, so the residual
  // analysis, walking up from q and k, does not meet another layer's norms through the positions.
  const entering = info.layers[0]?.residual?.input ?? first.input[0]!;
  const s = b.slice(b.op("Shape", [entering]), 0, info.tokenAxis ?? 1, (info.tokenAxis ?? 1) + 1); // [1]
  const steps = b.range(s, "steps"); // [S]
  // seqlens_k is [B] by the op's definition; exports also feed [B, 1].
  const seqlens = b.op("Reshape", [b.op("Cast", [first.input[5]!], { to: INT64 }), b.int64([-1], [1], "flat")]); // [B]
  const total = b.op("Reshape", [b.op("Cast", [first.input[6]!], { to: INT64 }), b.int64([1], [1], "one_dim")]); // [1]
  const past = b.op("Sub", [b.op("Add", [seqlens, b.int64([1], [1], "one")]), s], {}, "past_length"); // [B]
  const later = b.op("Add", [b.unsqueeze(past, [1]), steps], {}, "later_positions"); // [B,S]
  const positions = b.op("Where", [b.op("Equal", [s, total], {}, "first_prompt"), steps, later], {}, "positions"); // [B,S]
  const replaced = new Map<NodeProto, NodeProto>();
  for (const l of layers) {
    const n = l.core.anchor;
    const width = rotaryWidth(g, n, l.index, modelName);
    const rotate = (input: string, heads: number, part: string): string => {
      const out = `prunec/rotary/layer${l.index}/${part}`;
      b.nodes.push(
        makeNode(
          "RotaryEmbedding",
          [input, positions, n.input[COS]!, n.input[SIN]!],
          [out],
          `${out}/RotaryEmbedding`,
          {
            interleaved: attrInt(n, "rotary_interleaved", 0),
            num_heads: heads,
            rotary_embedding_dim: width,
          },
          "com.microsoft",
        ),
      );
      return out;
    };
    const q = rotate(n.input[0]!, attrInt(n, "num_heads", 0), "query");
    const k = rotate(n.input[1]!, attrInt(n, "kv_num_heads", 0), "key");
    const attrs = n.attribute.map((a) => (a.name === "do_rotary" ? shallowCopy(a, { i: 0n }) : a));
    replaced.set(n, shallowCopy(n, { input: [q, k, ...n.input.slice(2)], attribute: attrs }));
  }
  // The added nodes read tensors computed further down: the splice restores a topological order.
  const graph = splice(proto, { label: "explicit rotary", nodes: b.nodes, initializers: b.initializers, replaced });
  return { graph, positions, added: b.nodes };
}
