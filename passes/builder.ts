/**
 * Emits the nodes a pass adds, named `prunec/<stage>/<part>/<op>_<n>` so that a person reading
 * the model in Netron sees which stage and criterion made them. Knows the model's opset and writes
 * the opset-appropriate form of ops whose signature changed (axes as attribute vs input).
 */
import type { NodeProto, TensorProto } from "../src/ir/graph.js";
import { makeNode, type AttrValue } from "../src/ir/graph.js";
import { int64Tensor, doubleTensor, floatTensor } from "../src/onnx/tensor.js";

export class NodeBuilder {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];
  private counter = 0;

  constructor(
    readonly prefix: string,
    readonly opset: number,
  ) {}

  private fresh(op: string): string {
    return `${this.prefix}/${op}_${this.counter++}`;
  }

  /** Add a node with one output; returns the output tensor name. */
  op(
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue | { float: number }> = {},
    label?: string,
  ): string {
    const name = this.fresh(label ?? opType);
    const out = `${name}_output`;
    this.nodes.push(makeNode(opType, inputs, [out], name, attrs));
    return out;
  }

  /** Add a node with several outputs. */
  opN(
    opType: string,
    inputs: string[],
    outputs: number,
    attrs: Record<string, AttrValue | { float: number }> = {},
  ): string[] {
    const name = this.fresh(opType);
    const outs = Array.from({ length: outputs }, (_, i) => `${name}_output${i}`);
    this.nodes.push(makeNode(opType, inputs, outs, name, attrs));
    return outs;
  }

  int64(values: number[], dims?: number[], label = "const"): string {
    const name = this.fresh(label);
    this.initializers.push(int64Tensor(name, values, dims ?? [values.length]));
    return name;
  }

  /** Give the output of the added node that writes `tensor` a fixed name (a stage's result taking a tensor's name); returns it. */
  rename(tensor: string, name: string): string {
    const node = this.nodes.find((n) => n.output[0] === tensor);
    if (!node) throw new Error(`no node added by ${this.prefix} writes '${tensor}'`);
    node.output[0] = name;
    return name;
  }

  float(values: number[], dims?: number[], label = "const"): string {
    const name = this.fresh(label);
    this.initializers.push(floatTensor(name, values, dims ?? [values.length]));
    return name;
  }

  double(values: number[], dims?: number[], label = "const"): string {
    const name = this.fresh(label);
    this.initializers.push(doubleTensor(name, values, dims ?? [values.length]));
    return name;
  }

  /** A Reduce* op in the form the opset wants (axes became an input in opset 13 for ReduceSum, 18 for the others). */
  reduce(
    op: "ReduceMean" | "ReduceL2" | "ReduceSum" | "ReduceMax",
    x: string,
    axes: number[],
    keepdims: 0 | 1,
  ): string {
    if (this.opset >= (op === "ReduceSum" ? 13 : 18))
      return this.op(op, [x, this.int64(axes, undefined, "axes")], { keepdims });
    return this.op(op, [x], { axes, keepdims });
  }

  reduceMean(x: string, axes: number[], keepdims: 0 | 1): string {
    return this.reduce("ReduceMean", x, axes, keepdims);
  }

  unsqueeze(x: string, axes: number[]): string {
    if (this.opset >= 13) return this.op("Unsqueeze", [x, this.int64(axes, undefined, "axes")]);
    return this.op("Unsqueeze", [x], { axes });
  }

  squeeze(x: string, axes: number[]): string {
    if (this.opset >= 13) return this.op("Squeeze", [x, this.int64(axes, undefined, "axes")]);
    return this.op("Squeeze", [x], { axes });
  }

  /** x / max(‖x‖₂ along `axis`, eps): unit rows for cosine similarity; the labels name the norm and the result. */
  unitRows(x: string, axis: number, eps: number, normLabel: string, unitLabel: string): string {
    const norm = this.op("Max", [this.reduce("ReduceL2", x, [axis], 1), this.float([eps], [], "eps")], {}, normLabel);
    return this.op("Div", [x, norm], {}, unitLabel);
  }

  /** int64 [n]: 0, 1, …, n−1, for a count `n` held as int64 [1]. */
  range(n: string, label = "Range"): string {
    return this.op("Range", [this.int64([0], [], "zero"), this.squeeze(n, [0]), this.int64([1], [], "one")], {}, label);
  }

  /** x[..., start:end] along `axis` (end may be omitted: to the end). */
  slice(x: string, axis: number, start: number, end = Number.MAX_SAFE_INTEGER): string {
    return this.op("Slice", [x, this.int64([start]), this.int64([end]), this.int64([axis])]);
  }
}
