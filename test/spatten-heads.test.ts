/**
 * SpAtten's cascade head pruning (`after layer L keep heads … by spatten`, passes/head-stage.ts) on
 * the trained digits ViT (6 layers, 4 heads, torchvision's [B·H, N, N] attention), a batch of 3:
 * - each stage's kept heads equal the float64 reference written from the paper's equations
 *   (test/reference/spatten-heads.ts), fed the head outputs each layer computed in a reference
 *   model: the dense graph with every layer's P·V output multiplied by a per-head 0/1 mask input
 *   (an edit independent of prunec's gathers);
 * - the logits equal that reference model's with the reference's heads masked (≤ 1e-5);
 * - the pruned layers compute only the kept heads (their Softmax has B·K rows);
 * - the second stage's carried score matters: ranking its own layers alone keeps other heads.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { shallowCopy } from "../src/ir/copy.js";
import { Graph, makeNode } from "../src/ir/graph.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { valueInfo } from "../src/ir/value-info.js";
import { TensorProto_DataType as DT } from "../src/onnx/gen/onnx_pb.js";
import { REPO_ROOT } from "./helpers/shared.js";
import { maxAbsDiff, runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { digitsFeeds, firstErrorLine } from "./support/cases.js";
import { rows, withOutputs } from "./support/model-edit.js";
import { softmaxOutputs } from "./support/stage-tensors.js";
import { spattenHeads } from "./reference/spatten-heads.js";

const HEADS = 4;
const LAYERS = 6;
const model = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
/** Stage 0 after layer L0 keeps 3 heads, stage 1 after layer L1 keeps 2. */
const [L0, L1] = [2, 3];
const SPEC = `after layer ${L0} keep heads 75% by spatten\nafter layer ${L1} keep heads 2 by spatten`;
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Every layer's P·V output tensor (torchvision's [B·H, N, d]), as the analysis finds it. */
function headOutputs(bytes: Uint8Array): string[] {
  const info = analyzeTransformer(new Graph(decodeModel(bytes).graph!));
  return info.layers.map((l) => l.core!.pv!.output[0]!);
}

/**
 * The dense model with each layer's P·V output multiplied by an input `head_mask.L` [B·H, 1, 1]
 * (1 keeps a head, 0 removes it from that layer) and the masked outputs exposed as `head_out.L`.
 */
function maskedReference(bytes: Uint8Array): Uint8Array {
  const m = decodeModel(bytes);
  const g = m.graph!;
  const outputs = headOutputs(bytes);
  const nodes = g.node.map((n) => {
    const l = outputs.indexOf(n.output[0]!);
    return l < 0 ? n : shallowCopy(n, { output: [`${n.output[0]}/unmasked`] });
  });
  const masks = outputs.map((o, l) =>
    makeNode("Mul", [`${o}/unmasked`, `head_mask.${l}`], [o], `reference/head_mask_${l}`),
  );
  const exposed = outputs.map((o, l) => makeNode("Identity", [o], [`head_out.${l}`], `reference/head_out_${l}`));
  return encodeModel(
    shallowCopy(m, {
      graph: shallowCopy(g, {
        node: [...nodes, ...masks, ...exposed],
        input: [...g.input, ...outputs.map((_, l) => valueInfo(`head_mask.${l}`, DT.FLOAT, [undefined, 1, 1]))],
        output: [
          ...g.output,
          ...outputs.map((_, l) => valueInfo(`head_out.${l}`, DT.FLOAT, [undefined, undefined, undefined])),
        ],
      }),
    }),
  );
}

/** Masks [B·H, 1, 1] per layer: example b keeps `keptAt(l)[b]` in layer l (every head where undefined). */
function maskFeeds(batch: number, keptAt: (l: number) => number[][] | undefined): Feeds {
  const feeds: Feeds = {};
  for (let l = 0; l < LAYERS; l++) {
    const kept = keptAt(l);
    const data = new Float32Array(batch * HEADS).map((_, i) =>
      !kept || kept[Math.floor(i / HEADS)]!.includes(i % HEADS) ? 1 : 0,
    );
    feeds[`head_mask.${l}`] = { type: "float32", dims: [batch * HEADS, 1, 1], data };
  }
  return feeds;
}

/** Example b's head h output in layer l, from `head_out.l` [B·H, N, d]. */
function headOf(out: Awaited<ReturnType<typeof runNode>>, l: number, b: number, h: number): Float32Array {
  const t = out[`head_out.${l}`]!;
  const size = t.dims[1]! * t.dims[2]!;
  return (t.data as Float32Array).subarray((b * HEADS + h) * size, (b * HEADS + h + 1) * size);
}

describe("spatten heads: SpAtten's cascade head pruning on the digits ViT", () => {
  it("two stages (after layer 2 keep 75%, after layer 3 keep 2), batch of 3: kept heads and logits equal the reference's; pruned layers run K heads; CPU and WASM agree", async () => {
    const feeds = digitsFeeds()[1]!;
    const batch = feeds.pixel_values!.dims[0]!;
    const compiled = compile(model, SPEC, { exposeIndices: true }).model;
    const softmax = softmaxOutputs(compiled);
    const out = await runNode(withOutputs(compiled, softmax), feeds);
    const reference = maskedReference(model);
    const run = (keptAt: (l: number) => number[][] | undefined) =>
      runNode(reference, { ...feeds, ...maskFeeds(batch, keptAt) });

    // Stage 0 sums layers 0..L0 of the dense model.
    const dense = await run(() => undefined);
    const stage0 = Array.from(
      { length: batch },
      (_, b) =>
        spattenHeads(
          [{ layers: range(0, L0).map((l) => [0, 1, 2, 3].map((h) => headOf(dense, l, b, h))), keep: 3 }],
          HEADS,
        )[0]!,
    );
    // Stage 1 adds layers L0+1..L1, which already run stage 0's heads.
    const afterStage0 = await run((l) => (l > L0 ? stage0 : undefined));
    const both = Array.from({ length: batch }, (_, b) => {
      const layer = (src: typeof dense, l: number) =>
        [0, 1, 2, 3].map((h) => (stage0[b]!.includes(h) || l <= L0 ? headOf(src, l, b, h) : undefined));
      return spattenHeads(
        [
          { layers: range(0, L0).map((l) => layer(dense, l)), keep: 3 },
          { layers: range(L0 + 1, L1).map((l) => layer(afterStage0, l)), keep: 2 },
        ],
        HEADS,
      );
    });
    const stage1 = both.map((s) => s[1]!);
    const exposed = (i: number) => {
      const t = out[`prunec.stage${i}.heads`]!;
      return rows(t.data as BigInt64Array, t.dims);
    };
    expect(exposed(0)).toEqual(stage0);
    expect(exposed(1)).toEqual(stage1);

    const final = await run((l) => (l > L1 ? stage1 : l > L0 ? stage0 : undefined));
    expect(maxAbsDiff(out["logits"]!.data as Float32Array, final["logits"]!.data as Float32Array)).toBeLessThan(1e-5);
    // Pruning heads changed the logits (the test could fail).
    expect(maxAbsDiff(out["logits"]!.data as Float32Array, dense["logits"]!.data as Float32Array)).toBeGreaterThan(
      1e-3,
    );
    // Layers up to L0 attend with all 4 heads, then 3 up to L1, then 2 (Softmax rows B·K).
    expect(softmax.map((s) => out[s]!.dims[0])).toEqual(
      range(0, LAYERS - 1).map((l) => batch * (l <= L0 ? 4 : l <= L1 ? 3 : 2)),
    );

    // Without stage 0's carried importance, stage 1 would keep other heads for some example.
    const alone = Array.from(
      { length: batch },
      (_, b) =>
        spattenHeads(
          [
            {
              layers: range(L0 + 1, L1).map((l) =>
                [0, 1, 2, 3].map((h) => (stage0[b]!.includes(h) ? headOf(afterStage0, l, b, h) : new Float32Array(1))),
              ),
              keep: 2,
            },
          ],
          HEADS,
        )[0]!,
    );
    expect(alone).not.toEqual(stage1);

    const wasm = await runWasm(compiled, feeds, ["logits", "prunec.stage1.heads"]);
    expect(maxAbsDiff(wasm["logits"]!.data as Float32Array, out["logits"]!.data as Float32Array)).toBeLessThan(1e-5);
  });

  it("refuses what it cannot do, at the spec's line:column", () => {
    const message = (spec: string) => firstErrorLine(model, spec);
    expect(message("after layer 5 keep heads 50% by spatten")).toBe(
      "s.prune:1:13: error: after layer 5 (the last) no layer is left whose heads could be pruned",
    );
    expect(message("after layer 1 keep heads 50% by cls-attn")).toBe(
      "s.prune:1:33: error: criterion 'cls-attn' does not rank attention heads (head criteria: spatten)",
    );
    expect(message("after layer 1 keep heads 50% by spatten\nafter layer 3 keep 50% by cls-attn")).toBe(
      "s.prune:1:13: error: a stream stage after layer 3 (line 2) reads attention whose heads this stage prunes; head stages must come after every stream stage for now",
    );
    expect(message("after layer 1 drop heads 4 by spatten")).toBe(
      "s.prune:1:26: error: 'drop heads 4' of 4 heads would keep none",
    );
    expect(message("after layer 1 keep heads 2 tokens by spatten")).toBe(
      "s.prune:1:26: error: a head stage counts heads, not tokens: write 'keep heads 2'",
    );
    expect(message("in layer 1 keep heads 2 by spatten")).toBe(
      "s.prune:1:1: error: a 'keep heads' stage prunes the heads of every layer after it: write 'after layer L'",
    );
    expect(message("after layer 0 keep 50% by cls-attn with mask\nafter layer 2 keep heads 2 by spatten")).toBe(
      "s.prune:2:13: error: the stream stage on line 1 leaves masked, padding or merged rows in the stream, which Σ|O_h| would count; head stages follow plain keep/drop stages only",
    );
    expect(message("after layer 0 keep 50% by cls-attn\nafter layer 2 keep heads 2 by spatten")).toBe("compiled");
    expect(message("after layer 2 keep heads 2 by spatten\nafter layer 1 keep heads 1 by spatten")).toBe(
      "s.prune:2:13: error: head stages must be in layer order: layer 1 comes after a head stage at layer 2",
    );
    expect(message("after layer 1 keep heads mass 50% by spatten")).toBe(
      "s.prune:1:26: error: 'mass' amounts are not supported for heads: write 'keep heads P%' or 'keep heads K'",
    );
    expect(message("after layer 1 during decode keep heads 2 by spatten")).toBe(
      "s.prune:1:15: error: 'during decode' is for KV-cache stages ('keep kv' / 'drop kv'): a 'keep heads' stage prunes heads once, for the layers after it",
    );
    expect(message("after layer 1 keep heads 2 by spatten with mask")).toBe(
      "s.prune:1:44: error: options apply to stream stages: a 'keep heads' stage takes no 'with' options",
    );
  });
});
