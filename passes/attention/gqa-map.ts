/**
 * Attention behind com.microsoft.GroupQueryAttention (decoders as transformers.js exports them):
 * the logits are recomputed in fp32 from the op's query and its present key (past + current keys,
 * after rotary), with the key heads repeated over their query-head group, the op's scale, its
 * attention_bias, its causal mask (a query at position p sees keys up to p) and its sliding window
 * (local_window_size w: the w keys p−w+1..p). Rotary inside the op (do_rotary=1) is moved out of it first
 * (passes/explicit-rotary.ts), so q and the present key are both rotated. Only the key
 * columns of the current tokens are returned, so scores line up with the tokens in the stream (at
 * prefill: all of them).
 */
import type { LayerInfo } from "../../src/analysis/transformer.js";
import type { AttentionCore } from "../../src/analysis/attention.js";
import { attr, attrInt, type NodeProto } from "../../src/ir/graph.js";
import type { NodeBuilder } from "../builder.js";
import type { Prepared } from "../criterion.js";

const FLOAT = 1;

/** A com.microsoft.GroupQueryAttention whose logits prunec recomputes. */
export interface GqaAttention {
  kind: "GroupQueryAttention";
  index: number;
  node: NodeProto;
  heads: number;
  kvHeads: number;
  headSize: number;
}

/** The layer's GroupQueryAttention (`core`, the layer's core), recomputable, or why it cannot be recomputed. */
export function gqaAttention(layer: LayerInfo, core: AttentionCore, where: string): Prepared<GqaAttention> {
  const n = core.anchor;
  if (!n.input[1] || !n.input[2])
    return { why: `${where} takes packed q/k/v in one tensor; prunec recomputes attention from separate q and k only` };
  // Rotary inside the op is moved out of it before any stage (passes/explicit-rotary.ts).
  if (attrInt(n, "do_rotary", 0) !== 0 && (!n.input[7] || !n.input[8]))
    return { why: `${where} rotates q/k (do_rotary=1) without cos/sin caches` };
  if ((attr(n, "softcap")?.f ?? 0) !== 0)
    return { why: `${where} uses a logit softcap, which prunec's recompute does not apply` };
  if (!layer.heads || !layer.headSize || !core.kvHeads)
    return { why: `the number of heads, key/value heads or the head size of ${where} could not be determined` };
  if (layer.fusedInputRank !== 3)
    return {
      why: `${where} takes q of rank ${layer.fusedInputRank ?? "unknown"}; prunec recomputes attention from [batch, sequence, heads·head_size] inputs`,
    };
  return {
    ok: {
      kind: "GroupQueryAttention",
      index: layer.index,
      node: n,
      heads: layer.heads,
      kvHeads: core.kvHeads,
      headSize: layer.headSize,
    },
  };
}

/**
 * [B,H,S,S'] logits of the current tokens' queries over the current tokens' keys (S' = S), or with
 * `columns: "all"` over every key the op attends (S' = T: past and current; KV-cache stages).
 */
export function gqaLogits(
  b: NodeBuilder,
  gqa: GqaAttention,
  columns: "current" | "all" = "current",
  /** Only the last `lastRows` queries (SnapKV's window): rows [B,H,w,·], positions still absolute. */
  lastRows?: number,
): string {
  const n = gqa.node;
  if (attrInt(n, "do_rotary", 0) !== 0)
    throw new Error(
      `internal: layer ${gqa.index}'s GroupQueryAttention still rotates inside the op (explicit-rotary did not run)`,
    );
  const heads = gqa.heads;
  const kvHeads = gqa.kvHeads;
  const d = gqa.headSize;
  const q = b.op(
    "Transpose",
    [
      b.op("Reshape", [
        b.op("Cast", [lastRows ? lastQueries(b, n.input[0]!, 1, lastRows) : n.input[0]!], { to: FLOAT }, "query_fp32"),
        b.int64([0, 0, heads, d], [4], "q_heads"),
      ]),
    ],
    { perm: [0, 2, 1, 3] },
  ); // [B,H,S,D]
  // All keys the op attends: its present key (past + current), else the current key input.
  const keys = n.output[1]
    ? b.op("Cast", [n.output[1]], { to: FLOAT }, "present_key_fp32") // [B,kvH,T,D]
    : b.op(
        "Transpose",
        [
          b.op("Reshape", [
            b.op("Cast", [n.input[1]!], { to: FLOAT }, "key_fp32"),
            b.int64([0, 0, kvHeads, d], [4], "k_heads"),
          ]),
        ],
        { perm: [0, 2, 1, 3] },
      );
  const group = heads / kvHeads;
  const repeated = b.op(
    "Reshape",
    [
      b.op("Expand", [b.unsqueeze(keys, [2]), b.int64([1, 1, group, 1, 1], [5], "group")]),
      b.int64([0, heads, -1, d], [4], "all_heads"),
    ],
    {},
    "repeat_kv",
  ); // [B,H,T,D]
  const scaleAttr = attr(n, "scale")?.f;
  const scale = scaleAttr ? scaleAttr : 1 / Math.sqrt(d);
  let s = b.op(
    "Mul",
    [
      b.op("MatMul", [q, b.op("Transpose", [repeated], { perm: [0, 1, 3, 2] })], {}, "query_key"),
      b.float([scale], [], "scale"),
    ],
    {},
    "scaled",
  ); // [B,H,S,T]
  if (n.input[10])
    s = b.op(
      "Add",
      [
        s,
        b.op(
          "Cast",
          [lastRows ? lastQueries(b, n.input[10], 2, lastRows) : n.input[10]],
          { to: FLOAT },
          "attention_bias_fp32",
        ),
      ],
      {},
      "with_attention_bias",
    );
  // Causal: query i (absolute position T−S+i) sees keys 0..T−S+i.
  const shape = b.op("Shape", [s]);
  const sLen = b.squeeze(b.slice(shape, 0, 2, 3), [0]);
  const tLen = b.squeeze(b.slice(shape, 0, 3, 4), [0]);
  const past = b.op("Sub", [tLen, sLen], {}, "past_length");
  const zero = b.int64([0], [], "zero");
  const one = b.int64([1], [], "one");
  const rows = b.unsqueeze(b.op("Add", [b.op("Range", [zero, sLen, one], {}, "query_positions"), past]), [1]); // [S,1]
  const cols = b.op("Range", [zero, tLen, one], {}, "key_positions"); // [T]
  let allowed = b.op("LessOrEqual", [cols, rows], {}, "causal");
  // Sliding window (local_window_size w > 0): the op keeps the w keys p−w+1..p (onnxruntime 1.30
  // CPU and WASM, measured against a float64 reference in test/gqa-rotary.test.ts).
  const window = attrInt(n, "local_window_size", -1);
  if (window > 0)
    allowed = b.op(
      "And",
      [allowed, b.op("Greater", [cols, b.op("Sub", [rows, b.int64([window], [], "window")])], {}, "in_window")],
      {},
      "local",
    );
  s = b.op("Where", [allowed, s, b.float([-1e9], [], "masked")], {}, "causal_logits");
  if (columns === "all") return s;
  // Keep the current tokens' key columns (T−S..T−1): the tokens the stage selects from.
  return b.op(
    "Slice",
    [s, b.unsqueeze(past, [0]), b.unsqueeze(tLen, [0]), b.int64([3], [1], "key_axis")],
    {},
    "current_keys",
  );
}

/** The last `count` rows of `t` along `axis` (all of them when there are fewer). */
function lastQueries(b: NodeBuilder, t: string, axis: number, count: number): string {
  return b.op(
    "Slice",
    [
      t,
      b.int64([-count], [1], "last_rows"),
      b.int64([Number.MAX_SAFE_INTEGER], [1], "to_end"),
      b.int64([axis], [1], "row_axis"),
    ],
    {},
    "window_queries",
  );
}
