/**
 * The unfused twin of a model: every com.microsoft.MultiHeadAttention node (separate q, k, v of
 * shape [batch, sequence, heads·head_size]) is replaced by its definition in plain ONNX ops, so the
 * twin materializes softmax(scale·q·kᵀ + attention_bias) as a tensor prunec reads directly. Tests
 * check the twin computes what the fused kernel does (model outputs) and then compare prunec's
 * recomputed scores on the fused model with the twin's.
 */
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { shallowCopy } from "../../src/ir/copy.js";
import { attr, attrInt, makeNode, type NodeProto, type TensorProto } from "../../src/ir/graph.js";
import { floatTensor, int64Tensor } from "../../src/onnx/tensor.js";

/** Replace each MHA node by Reshape/Transpose/MatMul/Softmax; `headSize` per node name (or one for all). */
export function unfuseMultiHeadAttention(bytes: Uint8Array, headSize: number): Uint8Array {
  const model = decodeModel(bytes);
  const g = model.graph!;
  const inits: TensorProto[] = [];
  const nodes: NodeProto[] = [];
  for (const mha of g.node) {
    if (mha.opType !== "MultiHeadAttention" || mha.domain !== "com.microsoft") {
      nodes.push(mha);
      continue;
    }
    const [q0, k0, v0, bias, padding, attnBias] = mha.input;
    if (!k0 || !v0 || padding || mha.input[6] || mha.input[7])
      throw new Error(`${mha.name}: only separate q/k/v without masks or caches are unfused`);
    const heads = attrInt(mha, "num_heads", 0);
    const width = heads * headSize;
    const scale = attr(mha, "scale")?.f || 1 / Math.sqrt(headSize);
    const p = `${mha.name}/unfused`;
    let count = 0;
    const add = (
      op: string,
      inputs: string[],
      attrs: Record<string, number | number[] | { float: number }> = {},
      output?: string,
    ): string => {
      const name = `${p}/${op}_${count++}`;
      const out = output ?? `${name}/output_0`;
      nodes.push(makeNode(op, inputs, [out], name, attrs));
      return out;
    };
    const constant = (t: TensorProto): string => {
      inits.push(t);
      return t.name;
    };
    const part = (x: string, i: number): string => {
      if (!bias) return x;
      const slice = add("Slice", [
        bias,
        constant(int64Tensor(`${p}/start${i}`, [i * width])),
        constant(int64Tensor(`${p}/end${i}`, [(i + 1) * width])),
        constant(int64Tensor(`${p}/axis${i}`, [0])),
      ]);
      return add("Add", [x, slice]);
    };
    const headsShape = constant(int64Tensor(`${p}/heads_shape`, [0, 0, heads, headSize]));
    const split = (x: string, perm: number[]): string => add("Transpose", [add("Reshape", [x, headsShape])], { perm });
    const qh = split(part(q0!, 0), [0, 2, 1, 3]);
    const kt = split(part(k0, 1), [0, 2, 3, 1]);
    const vh = split(part(v0, 2), [0, 2, 1, 3]);
    let s = add("Mul", [add("MatMul", [qh, kt]), constant(floatTensor(`${p}/scale`, [scale], []))]);
    if (attnBias) s = add("Add", [s, attnBias]);
    const probs = add("Softmax", [s], { axis: -1 });
    const o = add("Transpose", [add("MatMul", [probs, vh])], { perm: [0, 2, 1, 3] });
    add("Reshape", [o, constant(int64Tensor(`${p}/merge_shape`, [0, 0, width]))], {}, mha.output[0]);
  }
  const graph = shallowCopy(g, { node: nodes, initializer: [...g.initializer, ...inits] });
  return encodeModel(shallowCopy(model, { graph }));
}
