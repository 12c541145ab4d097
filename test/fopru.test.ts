/**
 * fopru (FoPru) end to end: the compiled model keeps exactly the tokens the TypeScript reference
 * picks from the dense model's own attention probabilities (head-mean patch×patch attention; column
 * or row mean, whichever has the larger variance, per example), for `strategy: rank` and for
 * `strategy: rows` (whole rows of the patch grid), at batch 1 and 3, on onnxruntime-node CPU and
 * WASM. The per-example choice between the two means is checked on crafted probabilities, since
 * on the real models the column mean always varies far more.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { describeShared, REPO_ROOT } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { GraphProtoSchema, ModelProtoSchema, OperatorSetIdProtoSchema } from "../src/onnx/gen/onnx_pb.js";
import { encodeModel } from "../src/onnx/io.js";
import { makeNode } from "../src/ir/graph.js";
import { NodeBuilder } from "../passes/builder.js";
import type { Attention } from "../passes/attention/attention-map.js";
import { fopruScores as emitFopruScores } from "../passes/criteria/fopru.js";
import { withOutputs, unfoldProbs } from "./support/model-edit.js";
import { clsAttnKeep, keepCount, type Probs } from "./reference/cls-attn.js";
import { fopruKeep, fopruRowsKeep, fopruScores } from "./reference/attention-scores.js";
import {
  expectKeptAsReference,
  rejection,
  tinyFeeds,
  digitsFeeds,
  kept,
  expectDenseLogits,
  vitTiModel,
  vitTiFeeds,
} from "./support/cases.js";

const probsOf = (layer: number) => `/encoder/layers/encoder_layer_${layer}/self_attention/Softmax_output_0`;

async function probs(model: Uint8Array, feeds: Feeds, layer: number, heads: number): Promise<Probs> {
  const name = probsOf(layer);
  const out = (await runNode(withOutputs(model, [name]), feeds, [name]))[name]!;
  return unfoldProbs(out.data as Float32Array, out.dims, heads);
}

/** `after layer L keep P% by fopru` (rank) or `fopru(strategy: rows)`, checked against the reference on CPU and WASM. */
async function expectReference(
  model: Uint8Array,
  feeds: Feeds[],
  layer: number,
  percent: number,
  heads: number,
  strategy: "rank" | "rows",
) {
  const spec = `after layer ${layer} keep ${percent}% by ${strategy === "rank" ? "fopru" : "fopru(strategy: rows)"}`;
  await expectKeptAsReference(model, spec, feeds, async (f) => {
    const p = await probs(model, f, layer, heads);
    const width = Math.round(Math.sqrt(p[0]![0]!.length - 1));
    const expected = strategy === "rank" ? fopruKeep(p, percent, 1) : fopruRowsKeep(p, keepCount(percent, width), 1);
    if (strategy === "rows") for (const r of expected) expectWholeRows(r, width, keepCount(percent, width));
    return expected;
  });
}

/** Kept positions (CLS = 0 in front) are CLS plus exactly `count` whole rows of the width×width grid. */
function expectWholeRows(positions: number[], width: number, count: number) {
  expect(positions[0]).toBe(0);
  const perRow = new Array<number>(width).fill(0);
  for (const t of positions.slice(1)) perRow[Math.floor((t - 1) / width)]!++;
  expect(perRow.filter((n) => n === width).length).toBe(count);
  expect(perRow.every((n) => n === 0 || n === width)).toBe(true);
}

describe("fopru's scoring subgraph on crafted probabilities", () => {
  // [B,H,N,N] probabilities with CLS in front (N = 5, a 2×2 grid), all values multiples of 1/64 so
  // fp32 and the float64 reference agree exactly (ties included).
  const f = [0, 1 / 16, 2 / 16, 4 / 16];
  const patch: ((i: number, j: number) => number)[] = [
    (i) => f[i]! + 1 / 8, // rows differ, columns equal: the row mean varies more
    (_i, j) => f[j]! + 1 / 8, // columns differ: the column mean varies more
    (i, j) => f[i]! + f[3 - j]!, // equal variances (the column means are the row means reversed): the row mean (strict '>')
  ];
  const n = 5;
  const heads = 2;
  const example = (b: number) =>
    Array.from({ length: heads }, (_, h) =>
      Array.from({ length: n }, (_, i) =>
        // CLS row and column hold values that would change the choice if they were not excluded.
        Array.from(
          { length: n },
          (_, j) => (i === 0 ? j / 8 : j === 0 ? i / 4 : patch[b]!(i - 1, j - 1)) + (h === 0 ? 1 / 64 : -1 / 64),
        ),
      ),
    );
  const input = [0, 1, 2].map(example);

  function scoringModel(): Uint8Array {
    const b = new NodeBuilder("t", 17);
    const attention: Attention = {
      kind: "materialized",
      index: 0,
      probs: "probs",
      logits: "logits",
      layout: { form: "batch,heads,q,k" },
      pv: undefined,
    };
    const out = emitFopruScores(b, attention, 1);
    const io = (name: string, dims: (number | string)[]) => ({
      name,
      type: {
        value: {
          case: "tensorType" as const,
          value: {
            elemType: 1,
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
      node: [...b.nodes, makeNode("Identity", [out], ["scores"], "out")],
      initializer: b.initializers,
      input: [io("probs", ["B", heads, n, n])],
      output: [io("scores", ["B", n - 1])],
    } as never);
    return encodeModel(
      create(ModelProtoSchema, {
        irVersion: 8n,
        opsetImport: [create(OperatorSetIdProtoSchema, { domain: "", version: 17n })],
        graph,
      }),
    );
  }

  it("picks the mean that varies more per example in one batch, the row mean on a tie (CPU and WASM)", async () => {
    const reference = input.map((ex) => fopruScores(ex, 1));
    expect(reference.map((r) => r.chose)).toEqual(["rows", "columns", "rows"]);
    const feeds: Feeds = { probs: { type: "float32", dims: [3, heads, n, n], data: Float32Array.from(input.flat(3)) } };
    for (const run of [runNode, runWasm]) {
      const out = (await run(scoringModel(), feeds, ["scores"])).scores!;
      expect(out.dims).toEqual([3, n - 1]);
      const got = Array.from(out.data as Float32Array);
      expect([got.slice(0, 4), got.slice(4, 8), got.slice(8)]).toEqual(reference.map((r) => r.scores));
    }
  });
});

describe("fopru on the built-in tiny ViT (4 layers, 2 heads, 8×8 grid)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
  const feeds = tinyFeeds();

  it("rank, after layer 1 keep 25%: exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    await expectReference(model, feeds, 1, 25, 2, "rank");
  });

  it("rows, after layer 2 keep 25% (2 of 8 rows): whole rows, exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    const { report } = compile(model, "after layer 2 keep 25% by fopru(strategy: rows)");
    expect(report.stages[0]).toMatchObject({ tokensIn: 65, tokensOut: 17 });
    await expectReference(model, feeds, 2, 25, 2, "rows");
  });

  it("rows: a token count must fill whole rows; 16 tokens are 2 rows", async () => {
    const byCount = compile(model, "after layer 2 keep 16 tokens by fopru(strategy: rows)", {
      exposeIndices: true,
    }).model;
    const expected = fopruRowsKeep(await probs(model, feeds[1]!, 2, 2), 2, 1);
    expect(await kept(byCount, feeds[1]!)).toEqual(expected);
    expect(rejection(model, "after layer 2 keep 12 tokens by fopru(strategy: rows)")).toBe(
      "s.prune:1:20: error: this stage keeps whole grid rows of 8 tokens; 12 is not a multiple of 8\n 1 | after layer 2 keep 12 tokens by fopru(strategy: rows)\n   |                    ^~~~~~~~~",
    );
  });

  it("rank as the second stage after cls-attn: reads the once-pruned model's probabilities", async () => {
    const spec = "after layer 0 keep 50% by cls-attn\nafter layer 2 keep 25% by fopru";
    const { model: pruned, report } = compile(model, spec, { exposeIndices: true });
    expect(report.stages.map((s) => [s.criterion, s.tokensIn, s.tokensOut])).toEqual([
      ["cls-attn", 65, 33],
      ["fopru", 33, 9],
    ]);
    const once = compile(model, "after layer 0 keep 50% by cls-attn").model;
    for (const f of feeds) {
      const first = clsAttnKeep(await probs(model, f, 0, 2), 50, 1);
      const second = fopruKeep(await probs(once, f, 2, 2), 25, 1);
      expect(second[0]!.length).toBe(9);
      for (const run of [runNode, runWasm]) {
        expect(await kept(pruned, f, run, 0)).toEqual(first);
        expect(await kept(pruned, f, run, 1)).toEqual(second);
      }
    }
  });

  it("keep 100% gives outputs equal to the original's (≤ 1e-5), both strategies", async () => {
    for (const spec of ["after layer 1 keep 100% by fopru", "after layer 1 keep 100% by fopru(strategy: rows)"]) {
      await expectDenseLogits(model, compile(model, spec).model, feeds[1]!);
    }
  });

  const rejected: [string, string, string][] = [
    [
      "an unknown strategy, naming the allowed ones",
      "after layer 2 keep 50% by fopru(strategy: cols)",
      "s.prune:1:27: error: fopru cannot run after layer 2: strategy 'cols' is not one of rank, rows\n 1 | after layer 2 keep 50% by fopru(strategy: cols)\n   |                           ^~~~~",
    ],
    [
      "rows after an earlier stage (the prunable tokens are no longer the grid)",
      "after layer 0 keep 50% by cls-attn\nafter layer 2 keep 50% by fopru(strategy: rows)",
      "s.prune:2:27: error: fopru cannot run after layer 2: strategy 'rows' needs the full patch grid, but an earlier stage already pruned it (33 of 65 tokens enter this stage)\n 2 | after layer 2 keep 50% by fopru(strategy: rows)\n   |                           ^~~~~",
    ],
  ];
  it.each(rejected)("rejects %s", (_what, spec, message) => {
    expect(rejection(model, spec)).toBe(message);
  });
});

describe("fopru on the trained digits ViT (6 layers, 4 heads, 8×8 grid)", () => {
  const model = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
  const feeds = digitsFeeds();
  it("rank, after layer 2 keep 50%: exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    await expectReference(model, feeds, 2, 50, 4, "rank");
  });
  it("rows, after layer 1 keep 50% (4 of 8 rows): whole rows, exact kept sets", async () => {
    await expectReference(model, feeds, 1, 50, 4, "rows");
  });
  it("keep 100% gives outputs equal to the original's (≤ 1e-5)", async () => {
    await expectDenseLogits(model, compile(model, "after layer 3 keep 100% by fopru").model, feeds[1]!);
  });
});

describeShared("fopru on the torchvision ViT-Ti (vit-ti16-cls-randinit, 14×14 grid)", () => {
  it("rank after layer 11 keep 25% and rows after layer 1 keep 50% (7 of 14 rows): exact kept sets at batch 1 and 3, CPU and WASM", async () => {
    const model = vitTiModel();
    const feeds = vitTiFeeds();
    await expectReference(model, feeds, 11, 25, 3, "rank");
    await expectReference(model, feeds, 1, 50, 3, "rows");
  });
});

describe("spatial-rows", () => {
  it("is fopru(strategy: rows) under the language's name: the same kept positions", async () => {
    const model = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
    const x = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
    const feeds: Feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
    const kept = async (spec: string) =>
      (await runNode(compile(model, spec, { exposeIndices: true }).model, feeds, ["prunec.stage0.indices"]))[
        "prunec.stage0.indices"
      ]!.data;
    const alias = await kept("after layer 1 keep 25% by spatial-rows");
    expect(alias).toEqual(await kept("after layer 1 keep 25% by fopru(strategy: rows)"));
    expect(alias.length).toBe(2 * (1 + 16)); // batch 2: CLS + 2 of 8 rows of 8
  });
});
