/**
 * The declared table of stage kinds × options (passes/kinds/combinations.ts), compiled cell by
 * cell: every selection kind with every subset of `with mask`, `with recycle`, `with renumber`.
 * A cell the table allows compiles and runs in onnxruntime (or, where the model lacks what the
 * option acts on, is refused with that model fact, named below); a cell the table refuses is
 * refused with the table's reason, at the option's line and column, and writes nothing.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, describeShared, sharedModel } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { PrunecError } from "../src/errors.js";
import { shortenToLayers, truncateToLayers } from "./support/synthetic-weights.js";
import { qwen35Feeds, withWeights } from "./support/graph-only-inputs.js";
import {
  buildDecoder,
  DECODER,
  generateWithImageMask,
  imagePrompt,
  promptBatch,
  type DecoderOptions,
} from "./support/decoder.js";
import {
  SELECTION_KINDS,
  SELECTION_OPTIONS,
  OPTION_PAIRS,
  STAGE_OPTIONS,
  refusal,
  type SelectionKind,
  type StageOption,
} from "../passes/kinds/combinations.js";

const tiny = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
const x = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
const tinyFeeds: Feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
const features = truncateToLayers(tiny, 4); // outputs the stream leaving its last layer: an encoder output

/** Each selection kind on a model where it applies (tiny ViT: 65 tokens, CLS, no position inputs). */
const ROWS: Record<
  Exclude<SelectionKind, "fold">,
  { model: Uint8Array; spec: string; facts: { criterion: string; unit?: string; what?: string } }
> = {
  "top-k": { model: tiny, spec: "after layer 1 keep 50% by cls-attn", facts: { criterion: "cls-attn" } },
  groups: {
    model: tiny,
    spec: "after layer 1 keep 50% by spatial-rows",
    facts: { criterion: "spatial-rows", unit: "grid row" },
  },
  greedy: { model: tiny, spec: "after layer 1 keep 50% by diversity", facts: { criterion: "diversity" } },
  adaptive: {
    model: tiny,
    spec: "after layer 1 keep mass 90% by cls-attn",
    facts: { criterion: "cls-attn", what: "'mass' keeps a number of tokens that depends on the input" },
  },
  "after-encoder": { model: features, spec: "after encoder keep 25% by cls-attn", facts: { criterion: "cls-attn" } },
  merge: { model: tiny, spec: "after layer 1 merge 25% by similarity", facts: { criterion: "similarity" } },
};

/** The model fact that refuses an allowed option on the tiny ViT: it has no position inputs to renumber. */
const NO_POSITIONS =
  "'with renumber' after layer 1: the layers below read no per-token positions (position ids or rotary tables) to renumber";

const subsets: StageOption[][] = [
  [],
  ...STAGE_OPTIONS.map((o) => [o]),
  ["mask", "recycle"],
  ["mask", "renumber"],
  ["recycle", "renumber"],
  ["mask", "recycle", "renumber"],
  ["renumber", "restore"],
];

describe("stage kinds × options: the declared table, cell by cell", () => {
  it("the table covers every selection kind and option, and every pair of options is declared once", () => {
    expect(Object.keys(SELECTION_OPTIONS).sort()).toEqual([...SELECTION_KINDS].sort());
    for (const k of SELECTION_KINDS)
      expect(Object.keys(SELECTION_OPTIONS[k]).sort()).toEqual([...STAGE_OPTIONS].sort());
    const pairs = OPTION_PAIRS.map((p) => [...p.options].sort().join("+")).sort();
    expect(pairs).toEqual(["mask+recycle", "mask+renumber", "mask+restore", "recycle+renumber", "recycle+restore"]);
  });

  for (const [kind, row] of Object.entries(ROWS) as [Exclude<SelectionKind, "fold">, (typeof ROWS)["top-k"]][]) {
    for (const options of subsets) {
      const text = options.length ? `${row.spec} with ${options.join(", ")}` : row.spec;
      const verdict = refusal(kind, new Set(options), row.facts);
      it(`${kind} ${options.length ? `with ${options.join(", ")}` : "alone"}: ${verdict ? "refused with the table's reason" : "compiles and runs"}`, async () => {
        let error: unknown;
        let model: Uint8Array | undefined;
        try {
          model = compile(row.model, text, { specName: "t.prune" }).model;
        } catch (e) {
          error = e;
        }
        if (verdict) {
          expect(error).toBeInstanceOf(PrunecError);
          const message = (error as PrunecError).message;
          // Pointed at the first written option the reason names.
          const column = Math.min(...verdict.at.map((o) => text.indexOf(o, row.spec.length))) + 1;
          expect(message).toContain(`t.prune:1:${column}: error: ${verdict.why}`);
          expect((error as PrunecError).kind).toBe("apply");
          return;
        }
        if (options.includes("renumber")) {
          // Allowed by the table; this model has nothing to renumber (the decoder below has).
          expect((error as Error | undefined)?.message).toBe(NO_POSITIONS);
          return;
        }
        expect(error).toBeUndefined();
        const out = await runNode(model!, tinyFeeds);
        for (const t of Object.values(out))
          if (t.data instanceof Float32Array) expect(t.data.every(Number.isFinite)).toBe(true);
      });
    }
  }
});

describe("'with renumber' where the table allows it, on a decoder with position ids", () => {
  const WIDE: DecoderOptions = { ...DECODER, headSize: 16 };
  const decoder = buildDecoder({ attention: "gqa" }, WIDE);
  const prompt = imagePrompt([5, 6, 7], [9, 10, 11, 12]);
  const cases: [SelectionKind, string][] = [
    ["top-k", "after layer 1 keep 50% by norm with renumber"],
    ["adaptive", "tokens image = input image_mask\nafter layer 1 drop 50% of image by last-token-attn with renumber"],
  ];
  for (const [kind, spec] of cases) {
    it(`${kind}: compiles and generates`, async () => {
      expect(SELECTION_OPTIONS[kind].renumber).toBe("ok");
      const model = compile(decoder, spec).model;
      const got = await generateWithImageMask(
        model,
        "cpu",
        promptBatch([prompt.tokens], "left", [prompt.image]),
        2,
        WIDE,
      );
      expect(got.tokens[0]!.length).toBe(2);
    });
  }
});

describeShared("the fold row, inside Qwen3.5's vision encoder (whole 2×2 merge groups; synthetic weights)", () => {
  const file = "graph-only/qwen3.5-0.8b-vlm-int8/vision_encoder_quantized.onnx";
  const spec = "after layer 0 keep 50% by norm";
  const facts = { criterion: "norm" };
  for (const options of subsets) {
    const text = options.length ? `${spec} with ${options.join(", ")}` : spec;
    const verdict = refusal("fold", new Set(options), facts);
    it(`fold ${options.length ? `with ${options.join(", ")}` : "alone"}: ${verdict ? "refused with the table's reason" : "compiles and runs"}`, async () => {
      const short = shortenToLayers(readFileSync(sharedModel(file)), 1);
      let error: unknown;
      let model: Uint8Array | undefined;
      try {
        model = compile(short, text, { specName: "t.prune" }).model;
      } catch (e) {
        error = e;
      }
      if (verdict) {
        const column = Math.min(...verdict.at.map((o) => text.indexOf(o, spec.length))) + 1;
        expect((error as Error).message).toContain(`t.prune:1:${column}: error: ${verdict.why}`);
        return;
      }
      if (options.includes("restore")) {
        // Allowed by the table; cut to one layer, the stage is after the last layer.
        expect((error as Error | undefined)?.message).toContain(
          `t.prune:1:${text.indexOf("restore", spec.length) + 1}: error: 'with restore' on a stage after the last layer changes nothing: its dropped tokens come back at once`,
        );
        return;
      }
      if (options.includes("renumber")) {
        // Allowed by the table; cut to one layer, nothing below the stage reads positions.
        expect((error as Error | undefined)?.message).toBe(NO_POSITIONS.replace("after layer 1", "after layer 0"));
        return;
      }
      expect(error).toBeUndefined();
      await withWeights(short, 1, { "pruned.onnx": model! }, async (path) => {
        const out = await runNode(path("pruned.onnx"), qwen35Feeds([[1, 8, 8]], 1));
        expect(out.image_features!.dims).toEqual([8, 1024]);
      });
    }, 120_000);
  }
});
