/**
 * Real decoder graphs (../shared/models/graph-only) cut down to run in tests: the first `keep`
 * layers, the model's own final norm (reading what layer `keep`'s pre-norm reads: the stream, or a
 * fused Skip norm's two summands) and a small synthetic LM head of `vocab` columns in place of the
 * 248k–262k-column one (float, also where the export's is quantized). Cache inputs/outputs of the removed layers go; everything else is the export's.
 */
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { Graph, makeNode, type NodeProto } from "../../src/ir/graph.js";
import { shallowCopy } from "../../src/ir/copy.js";
import { floatTensor } from "../../src/onnx/tensor.js";
import { valueInfo } from "../../src/ir/value-info.js";
import { analyzeTransformer } from "../../src/analysis/transformer.js";
import { isSkipNorm } from "../../src/analysis/residual.js";
import { mulberry32 } from "../../src/random.js";
import { eliminateDeadCode } from "./synthetic-weights.js";
import type { Feeds, Outputs } from "../helpers/ort.js";

/** Layer index in a cache tensor's name (past_key_values.3.key, present_conv.3, …), if any. */
function cacheLayer(name: string): number | undefined {
  const m = /^(past|present)[^.]*\.(\d+)(\.|$)/.exec(name);
  return m ? Number(m[2]) : undefined;
}

export function cutDecoder(bytes: Uint8Array, keep: number, vocab: number, seed = 1): Uint8Array {
  const model = decodeModel(bytes);
  const proto = model.graph!;
  const g = new Graph(proto);
  const info = analyzeTransformer(g);
  const last = info.layers.at(-1)!.residual!;
  const finalNorm = last.outputNorm ?? g.consumersOf(last.output).find((n) => n.opType.endsWith("LayerNormalization"));
  const next = info.layers[keep]?.residual?.norm.node;
  if (!finalNorm || !next) throw new Error(`cutDecoder: no final norm, or no layer ${keep} pre-norm`);
  const summands = isSkipNorm(finalNorm) ? 2 : 1;
  const rewired = shallowCopy(finalNorm, {
    input: [...next.input.slice(0, summands), ...finalNorm.input.slice(summands)],
  });

  const head = proto.node.find((n) => n.output[0] === "logits");
  if (!head) throw new Error("cutDecoder: no node writing 'logits'");
  // A float MatMul keeps its input (Gemma slices the rows to num_logits_to_keep first); a quantized
  // head (Qwen3.5's MatMulInteger chain) is replaced by a float MatMul on the final norm's output.
  const headInput = head.opType === "MatMul" ? head.input[0]! : finalNorm.output[0]!;
  const hidden = info.hidden!;
  const random = mulberry32(seed);
  const weight = floatTensor(
    "test/lm_head",
    Array.from({ length: hidden * vocab }, () => (random() - 0.5) * 0.1),
    [hidden, vocab],
  );
  const node = proto.node.map(
    (n): NodeProto =>
      n === finalNorm
        ? rewired
        : n === head
          ? makeNode("MatMul", [headInput, weight.name], ["logits"], "test/lm_head/MatMul")
          : n,
  );
  const kept = (name: string) => (cacheLayer(name) ?? 0) < keep;
  const logits = proto.output.find((o) => o.name === "logits")!;
  const dims =
    logits.type!.value.case === "tensorType"
      ? logits.type!.value.value.shape!.dim.map((d) =>
          d.value.case === "dimValue" ? Number(d.value.value) : (d.value.value as string),
        )
      : [];
  const cut = shallowCopy(proto, {
    node,
    initializer: [...proto.initializer, weight],
    input: proto.input.filter((i) => kept(i.name)),
    output: proto.output
      .filter((o) => kept(o.name))
      .map((o) => (o === logits ? valueInfo("logits", 1, [...dims.slice(0, -1), vocab]) : o)),
  });
  return encodeModel(shallowCopy(model, { graph: eliminateDeadCode(new Graph(cut), cut) }));
}

/** What `decoderFeeds` fills in beyond the declared inputs' defaults. */
export interface DecoderStep {
  embeds: Float32Array;
  /** Rows fed (the prompt at prefill, 1 at a decode step). */
  rows: number;
  /** Attention-mask length: past + rows. */
  total: number;
  /** Position of the first row (positions run on from it; M-RoPE's three axes alike). */
  firstPosition?: number;
  /** The previous run's outputs: each past_* input takes its present* output. */
  past?: Outputs;
  /** Fills an image_mask input (batch × rows values, example by example). */
  image?: readonly boolean[];
  /** Examples in the batch (1 unless given); `embeds` then holds every example's rows. */
  batch?: number;
}

/** The present output a past input is fed from (past_key_values.L.x ← present.L.x, past_conv.L ← present_conv.L, …). */
const presentOf = (input: string) => input.replace(/^past_key_values\./, "present.").replace(/^past_/, "present_");

/**
 * Feeds for a cut decoder (batch 1 unless `batch` says), from its declared inputs: the given embeddings, an all-ones
 * attention mask, positions firstPosition.. (M-RoPE's [3, 1, rows] too), one logit row, the
 * previous run's caches and states (empty caches and zero states at prefill), `image` as the
 * image_mask; any other float input zero-filled (the caller overrides it).
 */
export function decoderFeeds(bytes: Uint8Array, step: DecoderStep): Feeds {
  const { embeds, rows, total, firstPosition = 0, past, image, batch = 1 } = step;
  const sizes: Record<string, number> = {
    batch_size: batch,
    sequence_length: rows,
    total_sequence_length: total,
    past_sequence_length: 0,
  };
  const feeds: Feeds = {};
  for (const i of decodeModel(bytes).graph!.input) {
    const previous = past?.[presentOf(i.name)];
    const t = i.type!.value.value as {
      elemType: number;
      shape: { dim: { value: { case: string; value: unknown } }[] };
    };
    const dims = t.shape.dim.map((d) => {
      if (d.value.case === "dimValue") return Number(d.value.value);
      const size = sizes[d.value.value as string];
      // A past state prunec adds (`--kv-state`, its own length name) starts empty, as the caches
      // do (with a previous run, its present's own dims are fed).
      if (size === undefined && i.name.startsWith("past")) return 0;
      if (size === undefined)
        throw new Error(`decoderFeeds: no size for ${i.name}'s dimension ${String(d.value.value)}`);
      return size;
    });
    const count = dims.reduce((a, b) => a * b, 1);
    if (i.name === "inputs_embeds") feeds[i.name] = { type: "float32", dims, data: embeds };
    else if (i.name === "attention_mask")
      feeds[i.name] = { type: "int64", dims, data: new BigInt64Array(count).fill(1n) };
    else if (i.name === "position_ids")
      feeds[i.name] = {
        type: "int64",
        dims,
        data: BigInt64Array.from({ length: count }, (_, k) => BigInt(firstPosition + (k % rows))),
      };
    else if (i.name === "num_logits_to_keep") feeds[i.name] = { type: "int64", dims: [], data: BigInt64Array.of(1n) };
    else if (i.name === "image_mask" && image)
      feeds[i.name] = { type: "bool", dims, data: Uint8Array.from(image, Number) };
    else if (previous && i.name.startsWith("past"))
      feeds[i.name] = { type: "float32", dims: previous.dims, data: previous.data as Float32Array };
    else if (t.elemType === 1) feeds[i.name] = { type: "float32", dims, data: new Float32Array(count) };
    else throw new Error(`decoderFeeds: input ${i.name} of type ${t.elemType}`);
  }
  return feeds;
}

/**
 * The model with `tensors` made graph inputs (float [batch, tokens, hidden]) and whatever computed
 * only them removed: runs the layers below a cut on a stream the caller supplies (e.g. the dense
 * model's rows at a pruned set of tokens, an independent reference for a pruned model).
 */
export function injectStream(bytes: Uint8Array, tensors: readonly string[], hidden: number): Uint8Array {
  const model = decodeModel(bytes);
  const proto = model.graph!;
  const set = new Set(tensors);
  const node = proto.node.map((n) =>
    n.output.some((o) => set.has(o)) ? shallowCopy(n, { output: n.output.map((o) => (set.has(o) ? "" : o)) }) : n,
  );
  const g = shallowCopy(proto, {
    node,
    input: [...proto.input, ...tensors.map((t) => valueInfo(t, 1, ["batch_size", "sequence_length", hidden]))],
  });
  return encodeModel(shallowCopy(model, { graph: eliminateDeadCode(new Graph(g), g) }));
}
