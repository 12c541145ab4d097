/**
 * diversity (DivPrune's greedy max-min on cosine distances) and k-center (greedy farthest-point on
 * Euclidean distances, seeded nearest the mean) end to end: the compiled model keeps exactly the
 * tokens the float64 TypeScript reference picks from the dense model's residual stream leaving the
 * layer, at batch 1 and 3, on onnxruntime-node CPU and WASM, in both lowerings (an ONNX Loop for
 * `--target cpu`, the steps unrolled for `--target webgpu`).
 *
 * fp32 and float64 can only disagree at a near tie, so every case also checks the reference's
 * margins (winning score minus the runner-up's, at every pick) are clear of fp32 rounding (≥ 1e-6).
 * The one exact tie real data has — the seed, when the token whose nearest neighbour is farthest
 * and that neighbour are each other's nearest — is exact in the graph too (its distances are made
 * symmetric), and the lower position wins in both.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { REPO_ROOT, describeShared, sharedModel } from "./helpers/shared.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { parseDataset, batchInput } from "../src/data/prds.js";
import { GraphProtoSchema, ModelProtoSchema, OperatorSetIdProtoSchema } from "../src/onnx/gen/onnx_pb.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { Graph, makeNode } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { NodeBuilder } from "../passes/builder.js";
import type { ScoreContext } from "../passes/criterion.js";
import { diversity, kCenter } from "../passes/criteria/diversity.js";
import { withOutputs, rows, unfoldProbs } from "./support/model-edit.js";
import { truncateToLayers } from "./support/synthetic-weights.js";
import { clsAttnKeep } from "./reference/cls-attn.js";
import { diversityKeep, divpruneSelect, kCenterSelect, type Selection } from "./reference/diversity.js";
import { expectDenseLogits, kept, keptStages, rejection, tinyFeeds, vitTiFeeds, vitTiModel } from "./support/cases.js";

type Method = "diversity" | "k-center";
const METHODS: Method[] = ["diversity", "k-center"];
const TARGETS = ["cpu", "webgpu"] as const;

/** The residual stream leaving `layer`, named by prunec's own analysis. */
function residualOf(model: Uint8Array, layer: number): string {
  return analyzeTransformer(new Graph(decodeModel(model).graph!)).layers[layer]!.residual!.output;
}

/** [B, N, D] float data as nested arrays. */
function tokens(data: Float32Array, dims: number[]): number[][][] {
  const [b, n, d] = dims as [number, number, number];
  return Array.from({ length: b }, (_, i) =>
    Array.from({ length: n }, (_, j) => Array.from(data.subarray((i * n + j) * d, (i * n + j + 1) * d))),
  );
}

async function stream(model: Uint8Array, feeds: Feeds, layer: number): Promise<number[][][]> {
  const name = residualOf(model, layer);
  const r = (await runNode(withOutputs(model, [name]), feeds, [name]))[name]!;
  return tokens(r.data as Float32Array, r.dims);
}

/** Picks whose margin is within fp32 rounding (an exact tie is fine only at the seed: see the header). */
function nearTies(selections: Selection[]): string[] {
  return selections.flatMap((s, e) =>
    s.margins.flatMap((m, step) =>
      (m === 0 && step > 0) || (m > 0 && m < 1e-6) ? [`example ${e} pick ${step}: margin ${m}`] : [],
    ),
  );
}

/**
 * `after layer L keep P% by M` in both lowerings keeps the reference's tokens on every feed, CPU and
 * WASM (`wasm: false` skips WASM). Returns the reference selections (for their margins).
 */
async function expectReference(
  model: Uint8Array,
  feeds: Feeds[],
  layer: number,
  percent: number,
  method: Method,
  wasm = true,
): Promise<Selection[]> {
  const spec = `after layer ${layer} keep ${percent}% by ${method}`;
  const pruned = TARGETS.map((target) => compile(model, spec, { exposeIndices: true, target }).model);
  const all: Selection[] = [];
  for (const f of feeds) {
    const ref = diversityKeep(await stream(model, f, layer), percent, 1, method);
    expect(ref.kept.length).toBe(f.pixel_values!.dims[0]);
    expect(nearTies(ref.selections)).toEqual([]);
    for (const p of pruned) {
      expect(await kept(p, f)).toEqual(ref.kept);
      if (wasm) expect(await kept(p, f, runWasm)).toEqual(ref.kept);
    }
    all.push(...ref.selections);
  }
  return all;
}

describe("diversity and k-center selections on crafted tokens (exact values: ties, duplicates, zero vectors)", () => {
  // D = 4, one prefix token (never selected), 8 prunable tokens. Every norm, cosine and squared
  // distance below is exact in fp32, so ties are exact in the graph and in the reference alike.
  const h = [1, 1, 1, 1];
  const examples = [
    [[9, 9, 9, 9], [2, 0, 0, 0], [4, 0, 0, 0], [0, 0.5, 0, 0], h, [1, -1, 1, -1], [0, 0, 0, 0], [-2, 0, 0, 0], h],
    [[9, 9, 9, 9], ...Array.from({ length: 8 }, () => [0, 0, 0, 0])], // all zero: every distance ties
    [[0, 0, 0, 0], h, h, h, [0, 0, 3, 0], [0, 0, 3, 0], [0, -1, 0, 0], [0, -1, 0, 0], [0, 0, 0, 0]],
  ];

  function selectionModel(method: Method, keep: number, target: "cpu" | "webgpu", batched: boolean): Uint8Array {
    const b = new NodeBuilder("t", 17);
    const ctx = {
      b,
      model: batched ? { batchAxis: 0, tokenAxis: 1 } : { tokenAxis: 0 },
      stream: "stream",
      prefix: 1,
      tokens: 9,
      keep,
      target,
      args: {},
    } as unknown as ScoreContext;
    const prepared = (method === "diversity" ? diversity : kCenter).prepare(ctx);
    if (!("ok" in prepared) || prepared.ok.kind !== "select") throw new Error(`${method} does not select`);
    const out = prepared.ok.select(ctx);
    const io = (name: string, elemType: number, dims: (number | string)[]) => ({
      name,
      type: {
        value: {
          case: "tensorType" as const,
          value: {
            elemType,
            shape: {
              dim: dims.map((x) => ({
                value:
                  typeof x === "number"
                    ? { case: "dimValue" as const, value: BigInt(x) }
                    : { case: "dimParam" as const, value: x },
              })),
            },
          },
        },
      },
    });
    const graph = create(GraphProtoSchema, {
      name: "g",
      node: [...b.nodes, makeNode("Identity", [out], ["picks"], "out")],
      initializer: b.initializers,
      input: [io("stream", 1, batched ? ["B", 9, 4] : [9, 4])],
      output: [io("picks", 7, [batched ? "B" : 1, keep])],
    } as never);
    return encodeModel(
      create(ModelProtoSchema, {
        irVersion: 8n,
        opsetImport: [create(OperatorSetIdProtoSchema, { domain: "", version: 17n })],
        graph,
      }),
    );
  }

  const reference = (method: Method, x: number[][], k: number) =>
    (method === "diversity" ? divpruneSelect : kCenterSelect)(x.slice(1), k);

  it("the reference's own picks on these tokens: first position wins ties, zero tokens sit at distance 1 (cosine), no token is picked twice", () => {
    // Example 0, cosine: the zero token (5: distance 1 to every token) and −a (6: nearest at 1) tie
    // for the seed, 5 wins; every d is then 1 and the first token, a, follows; 2a (distance 0 to a)
    // and the second h (0 to the first) come last.
    expect(divpruneSelect(examples[0]!.slice(1), 8).order).toEqual([5, 0, 2, 6, 3, 4, 1, 7]);
    // All zero: every distance is 1 (cosine) or 0 (Euclidean): the lowest positions, in order.
    expect(divpruneSelect(examples[1]!.slice(1), 8).order).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(kCenterSelect(examples[1]!.slice(1), 8).order).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    for (const x of examples) for (const m of METHODS) expect(new Set(reference(m, x, 8).order).size).toBe(8);
  });

  it("batch 3 and batch-less, keep 1, 3 and 8 of 8: the graph picks what the reference picks, both lowerings, CPU and WASM", async () => {
    const data = Float32Array.from(examples.flat(2));
    for (const method of METHODS) {
      for (const k of [1, 3, 8]) {
        const expected = examples.map((x) => reference(method, x, k).order.sort((a, c) => a - c));
        for (const target of TARGETS) {
          const batched = selectionModel(method, k, target, true);
          for (const run of [runNode, runWasm]) {
            const out = (await run(batched, { stream: { type: "float32", dims: [3, 9, 4], data } }, ["picks"])).picks!;
            expect(rows(out.data as BigInt64Array, out.dims), `${method} keep ${k} ${target} ${run.name}`).toEqual(
              expected,
            );
          }
          const single = selectionModel(method, k, target, false);
          const out = (
            await runNode(single, { stream: { type: "float32", dims: [9, 4], data: data.slice(0, 36) } }, ["picks"])
          ).picks!;
          expect(rows(out.data as BigInt64Array, out.dims)).toEqual([expected[0]]);
        }
      }
    }
  });
});

describe("diversity and k-center on the built-in tiny ViT (64 patches + CLS)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
  const feeds = tinyFeeds();

  it.each(METHODS)(
    "%s after layer 1 keep 25%: exact kept sets at batch 1 and 3, Loop and unrolled lowerings, CPU and WASM",
    async (method) => {
      await expectReference(model, feeds, 1, 25, method);
    },
  );

  it("lowerings: cpu is one Loop of k − 1 iterations (ArgMax, GatherND, Min in its body); webgpu unrolls them, no Loop", () => {
    for (const method of METHODS) {
      const spec = `after layer 1 keep 25% by ${method}`; // 16 of 64
      const loop = decodeModel(compile(model, spec).model).graph!;
      const loops = loop.node.filter((n) => n.opType === "Loop");
      expect(loops.length).toBe(1);
      const body = loops[0]!.attribute.find((a) => a.name === "body")!.g!;
      expect(body.node.map((n) => n.opType)).toEqual(["ArgMax", "GatherND", "Min", "Identity"]);
      const trips = new Graph(loop).constant(loops[0]!.input[0]!);
      expect(trips).toEqual([15]);
      const unrolled = decodeModel(compile(model, spec, { target: "webgpu" }).model).graph!;
      const ops = (op: string) => unrolled.node.filter((n) => n.name.startsWith("prunec/") && n.opType === op).length;
      expect(ops("Loop")).toBe(0);
      // 15 picks after the seed, one ArgMax each (+1 for diversity's seed; k-center's is an ArgMin);
      // one GatherND row for the seed and one per pick but the last, a running Min per pick but the
      // last (the stage's token gather and the symmetrising Min not counted).
      expect([ops("ArgMax"), ops("GatherND") - 1, ops("Min") - 1]).toEqual(
        method === "diversity" ? [16, 15, 14] : [15, 15, 14],
      );
    }
  });

  it("diversity, then k-center, as the second stage after cls-attn: reads the once-pruned model's residual stream", async () => {
    const probs = "/encoder/layers/encoder_layer_0/self_attention/Softmax_output_0";
    const once = compile(model, "after layer 0 keep 50% by cls-attn").model;
    const pruned = METHODS.map((method) =>
      TARGETS.map((target) => {
        const { model: m, report } = compile(
          model,
          `after layer 0 keep 50% by cls-attn\nafter layer 2 keep 25% by ${method}`,
          { exposeIndices: true, target },
        );
        expect(report.stages.map((s) => [s.criterion, s.tokensIn, s.tokensOut])).toEqual([
          ["cls-attn", 65, 33],
          [method, 33, 9],
        ]);
        return m;
      }),
    );
    for (const f of feeds) {
      const p = (await runNode(withOutputs(model, [probs]), f, [probs]))[probs]!;
      const first = clsAttnKeep(unfoldProbs(p.data as Float32Array, p.dims, 2), 50, 1);
      const onceStream = await stream(once, f, 2);
      for (const [m, method] of METHODS.entries()) {
        const second = diversityKeep(onceStream, 25, 1, method);
        expect(nearTies(second.selections)).toEqual([]);
        for (const p of pruned[m]!)
          for (const run of [runNode, runWasm]) expect(await keptStages(p, f, run, 2)).toEqual([first, second.kept]);
      }
    }
  });

  it("keep 100% gives outputs equal to the original's (≤ 1e-5); keep 1 token keeps the seed alone", async () => {
    const layer1 = await stream(model, feeds[1]!, 1);
    for (const method of METHODS) {
      const seed = diversityKeep(layer1, 100 / 64, 1, method).kept;
      expect(seed.map((k) => k.length)).toEqual([2, 2, 2]);
      for (const target of TARGETS) {
        await expectDenseLogits(
          model,
          compile(model, `after layer 1 keep 100% by ${method}`, { target }).model,
          feeds[1]!,
        );
        expect(
          await kept(
            compile(model, `after layer 1 keep 1 tokens by ${method}`, { exposeIndices: true, target }).model,
            feeds[1]!,
          ),
        ).toEqual(seed);
      }
    }
  });
});

describe("diversity and k-center on the trained digits ViT (64 patches + CLS)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
  const set = parseDataset(readFileSync(join(REPO_ROOT, "examples", "digits", "sample.prds")));
  // Example 0 alone; examples 3..5 (example 5 has an exact seed tie at layer 2, see below).
  const feeds: Feeds[] = [batchInput(set, 0, 1), batchInput(set, 3, 6)].map((x) => ({
    pixel_values: { type: "float32", dims: x.dims, data: x.data },
  }));

  it("diversity after layer 2 keep 25% (16 of 64): exact kept sets at batch 1 and 3, both lowerings, CPU and WASM; an exact seed tie goes to the lower position", async () => {
    const selections = await expectReference(model, feeds, 2, 25, "diversity");
    // Example 5 (the last): two tokens that are each other's nearest neighbour tie for the seed.
    expect(selections.map((s) => s.margins[0])).toContain(0);
  });

  it("k-center after layer 2 keep 25%: exact kept sets at batch 1 and 3, both lowerings, CPU and WASM", async () => {
    await expectReference(model, feeds, 2, 25, "k-center");
  });
});

describeShared("diversity and k-center on the torchvision ViT-Ti (196 patches + CLS)", () => {
  it("after layer 3 keep 25% (49 of 196): exact kept sets at batch 1 and 3, both lowerings, CPU and WASM (WASM at batch 3: the Loop)", async () => {
    const model = vitTiModel();
    const feeds = vitTiFeeds();
    const name = residualOf(model, 3);
    const exposed = withOutputs(model, [name]);
    const streams: number[][][][] = [];
    for (const f of feeds) {
      const r = (await runNode(exposed, f, [name]))[name]!;
      streams.push(tokens(r.data as Float32Array, r.dims));
    }
    for (const method of METHODS) {
      const refs = streams.map((s) => diversityKeep(s, 25, 1, method));
      for (const r of refs) expect(nearTies(r.selections)).toEqual([]);
      expect(refs.map((r) => r.kept.map((k) => k.length))).toEqual([[50], [50, 50, 50]]);
      for (const target of TARGETS) {
        const pruned = compile(model, `after layer 3 keep 25% by ${method}`, { exposeIndices: true, target }).model;
        expect(await kept(pruned, feeds[0]!)).toEqual(refs[0]!.kept);
        expect(await kept(pruned, feeds[0]!, runWasm)).toEqual(refs[0]!.kept);
        expect(await kept(pruned, feeds[1]!)).toEqual(refs[1]!.kept);
        if (target === "cpu") expect(await kept(pruned, feeds[1]!, runWasm)).toEqual(refs[1]!.kept);
      }
    }
  });

  it("a model whose token count is symbolic is rejected: the greedy loop needs a static count", () => {
    // Qwen2-VL's vision tower cut before its 2×2 merger: `hw` tokens, batch-less [hw, 1280].
    const cut = truncateToLayers(
      readFileSync(sharedModel("graph-only/qwen2-vl-2b-vision-tower-torchexport/model.onnx")),
      2,
    );
    for (const method of METHODS) {
      const spec = `after layer 0 keep 25% by ${method}`;
      expect(rejection(cut, spec)).toBe(
        `s.prune:1:27: error: ${method} needs a static token count (its selection loop runs a fixed number of steps); the model has hw tokens\n 1 | ${spec}\n   |                           ^${"~".repeat(method.length - 1)}`,
      );
    }
  });
});
