/**
 * Real decoder graphs (../shared/models/graph-only) cut down to run in tests: the first `keep`
 * layers, the model's own final norm (reading what layer `keep`'s pre-norm reads: the stream, or a
 * fused Skip norm's two summands) and a small synthetic LM head of `vocab` columns in place of the
 * 262k-column one. Cache inputs/outputs of the removed layers go; everything else is the export's.
 */
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { Graph, type NodeProto } from "../../src/ir/graph.js";
import { shallowCopy } from "../../src/ir/copy.js";
import { floatTensor } from "../../src/onnx/tensor.js";
import { valueInfo } from "../../src/ir/value-info.js";
import { analyzeTransformer } from "../../src/analysis/transformer.js";
import { isSkipNorm } from "../../src/analysis/residual.js";
import { mulberry32 } from "../../passes/criteria/fixed-order.js";
import { eliminateDeadCode } from "./synthetic-weights.js";

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
  const next = info.layers[keep]?.residual?.norm;
  if (!finalNorm || !next) throw new Error(`cutDecoder: no final norm, or no layer ${keep} pre-norm`);
  const summands = isSkipNorm(finalNorm) ? 2 : 1;
  const rewired = shallowCopy(finalNorm, { input: [...next.input.slice(0, summands), ...finalNorm.input.slice(summands)] });

  const head = proto.node.find((n) => n.output[0] === "logits" && n.opType === "MatMul");
  if (!head) throw new Error("cutDecoder: no MatMul writing 'logits'");
  const hidden = info.hidden!;
  const random = mulberry32(seed);
  const weight = floatTensor("test/lm_head", Array.from({ length: hidden * vocab }, () => (random() - 0.5) * 0.1), [hidden, vocab]);
  const node = proto.node.map((n): NodeProto => (n === finalNorm ? rewired : n === head ? shallowCopy(n, { input: [n.input[0]!, weight.name] }) : n));
  const kept = (name: string) => (cacheLayer(name) ?? 0) < keep;
  const logits = proto.output.find((o) => o.name === "logits")!;
  const dims = logits.type!.value.case === "tensorType" ? logits.type!.value.value.shape!.dim.map((d) => (d.value.case === "dimValue" ? Number(d.value.value) : (d.value.value as string))) : [];
  const cut = shallowCopy(proto, {
    node,
    initializer: [...proto.initializer, weight],
    input: proto.input.filter((i) => kept(i.name)),
    output: proto.output.filter((o) => kept(o.name)).map((o) => (o === logits ? valueInfo("logits", 1, [...dims.slice(0, -1), vocab]) : o)),
  });
  return encodeModel(shallowCopy(model, { graph: eliminateDeadCode(new Graph(cut), cut) }));
}
