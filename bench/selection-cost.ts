/**
 * What the index lowering's selection costs at batch 1 (issue 19: "merge the two TopKs where one
 * suffices; measure the gain"). One stage `after layer 2 keep 25% by cls-attn` is compiled. Hand
 * edits of it are then timed side by side with it and with the oracle (the same count by a static
 * slice):
 *
 * - *one TopK*: the second TopK (indices ascending) removed. The kept set is the same, but in score
 *   order, which changes the outputs by float rounding and is wrong for any order-dependent
 *   consumer (rotary positions, causal decoders, exposed indices).
 * - *special tokens by Slice*: CLS is sliced from the stream and concatenated after the gather,
 *   instead of its index being expanded to the batch and concatenated to the kept indices.
 * - both edits together.
 *
 * Every session runs with one intra-op thread count, idle spinning off, in alternating blocks;
 * medians.
 *
 *   npx tsx bench/selection-cost.ts [MODEL] [--threads N] [--reps 30]
 */
import "./no-telemetry.js";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import * as ort from "onnxruntime-node";
import { compile } from "../src/compile.js";
import { AttributeProtoSchema, NodeProtoSchema, type ModelProto, type NodeProto } from "../src/onnx/gen/onnx_pb.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { int64Tensor } from "../src/onnx/tensor.js";

const SPEC = "after layer 2 keep 25% by cls-attn";
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { threads: { type: "string", default: "1" }, reps: { type: "string", default: "30" } },
});
const path = positionals[0] ?? "examples/digits/model.onnx";
const bytes = readFileSync(path);
const pruned = compile(bytes, SPEC).model;
const oracle = compile(bytes, SPEC, { oracle: true }).model;

function edited(model: Uint8Array, f: (m: ModelProto) => void): Uint8Array {
  const m = decodeModel(model);
  f(m);
  return encodeModel(m);
}
function stageNode(m: ModelProto, suffix: RegExp): NodeProto {
  const found = m.graph!.node.filter((n) => n.name.startsWith("prunec/stage0/") && suffix.test(n.name));
  if (found.length !== 1) throw new Error(`expected one stage node matching ${suffix}, found ${found.length}`);
  return found[0]!;
}
const int = (name: string, i: number) => create(AttributeProtoSchema, { name, i: BigInt(i), type: 2 });

function oneTopK(m: ModelProto): void {
  const g = m.graph!;
  const [first, second] = g.node.filter((n) => n.name.startsWith("prunec/stage0/") && n.opType === "TopK");
  if (!first || !second) throw new Error("expected two TopKs");
  for (const n of g.node) n.input = n.input.map((i) => (i === second.output[0] ? first.output[1]! : i));
  g.node = g.node.filter((n) => n !== second);
}

function specialTokensBySlice(m: ModelProto): void {
  const g = m.graph!;
  const gather = stageNode(m, /\/gather_tokens_\d+$/);
  const positions = stageNode(m, /\/to_token_positions_\d+$/);
  const kept = stageNode(m, /\/kept_positions_\d+$/);
  // The nodes that only build the [special | kept] index list.
  const drop = new Set<NodeProto>([kept, g.node.find((n) => n.output[0] === gather.input[1])!]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const n of g.node)
      if (
        !drop.has(n) &&
        n !== positions &&
        n.output.every((o) => g.node.some((r) => drop.has(r) && r.input.includes(o)))
      ) {
        if (n.output.some((o) => g.node.some((r) => !drop.has(r) && r.input.includes(o)))) continue;
        drop.add(n);
        grew = true;
      }
  }
  const stream = gather.input[0]!;
  g.initializer.push(int64Tensor("bench/axes2", [2]), int64Tensor("bench/zero", [0]), int64Tensor("bench/one", [1]));
  const replacement = [
    create(NodeProtoSchema, {
      name: "bench/unsqueeze",
      opType: "Unsqueeze",
      input: [positions.output[0]!, "bench/axes2"],
      output: ["bench/idx"],
    }),
    create(NodeProtoSchema, {
      name: "bench/gather",
      opType: "GatherND",
      input: [stream, "bench/idx"],
      output: ["bench/kept"],
      attribute: [int("batch_dims", 1)],
    }),
    create(NodeProtoSchema, {
      name: "bench/cls",
      opType: "Slice",
      input: [stream, "bench/zero", "bench/one", "bench/one"],
      output: ["bench/cls_row"],
    }),
    create(NodeProtoSchema, {
      name: "bench/concat",
      opType: "Concat",
      input: ["bench/cls_row", "bench/kept"],
      output: [gather.output[0]!],
      attribute: [int("axis", 1)],
    }),
  ];
  g.node.splice(g.node.indexOf(gather), 1, ...replacement);
  g.node = g.node.filter((n) => !drop.has(n));
}

const variants: [string, Uint8Array][] = [
  ["compiled (two TopKs)", pruned],
  ["one TopK", edited(pruned, oneTopK)],
  ["special tokens by Slice", edited(pruned, specialTokensBySlice)],
  ["both", edited(edited(pruned, oneTopK), specialTokensBySlice)],
  ["oracle (static slice)", oracle],
];
const threads = Number(values.threads);
const options: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: threads,
  logSeverityLevel: 3,
  extra: { session: { "intra_op.allow_spinning": "0" } },
};
const sessions = await Promise.all(variants.map(([, b]) => ort.InferenceSession.create(b, options)));
const inputInfo = decodeModel(bytes).graph!.input[0]!.type!.value;
const dims = (inputInfo.case === "tensorType" ? inputInfo.value.shape!.dim : []).map((d) =>
  d.value.case === "dimValue" ? Number(d.value.value) : 1,
);
const x = new ort.Tensor(
  "float32",
  Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i)),
  dims,
);
const run = async (s: ort.InferenceSession) =>
  (await s.run({ [s.inputNames[0]!]: x }))[s.outputNames[0]!]!.data as Float32Array;
const reference = await run(sessions[0]!);

const times: number[][] = variants.map(() => []);
for (let rep = 0; rep < Number(values.reps); rep++)
  for (const [i, s] of sessions.entries())
    for (let r = 0; r < 20; r++) {
      const t0 = performance.now();
      await s.run({ [s.inputNames[0]!]: x });
      times[i]!.push(performance.now() - t0);
    }
const median = (a: number[]) => [...a].sort((p, q) => p - q)[a.length >> 1]!;
const base = median(times[0]!);
console.log(`${path}, \`${SPEC}\`, batch 1, ${threads} thread(s), medians of ${times[0]!.length} runs\n`);
console.log("| variant | nodes | ms | of compiled | max abs Δ output vs compiled |");
console.log("|---|---|---|---|---|");
for (const [i, [name, b]] of variants.entries()) {
  const out = await run(sessions[i]!);
  const delta = name.startsWith("oracle")
    ? "(other tokens)"
    : Math.max(...out.map((v, k) => Math.abs(v - reference[k]!))).toExponential(1);
  console.log(
    `| ${name} | ${decodeModel(b).graph!.node.length} | ${median(times[i]!).toFixed(3)} | ${(median(times[i]!) / base).toFixed(3)} | ${delta} |`,
  );
}
