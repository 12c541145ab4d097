/**
 * spatten (SpAtten's cascade, passes/criteria/spatten.ts) on the built-in tiny ViT (64 patches +
 * CLS, 4 layers, 2 heads), a batch of 2: the kept positions of each stage equal the reference
 * written from the paper's equations (test/reference/spatten.ts), fed the attention maps each
 * layer computed (layer 0 over all 65 tokens; layers 1 and 2 over the first stage's kept tokens).
 * The second stage's running score carries the first stage's: the test also checks that summing
 * its own layers alone would keep a different set, so a lost carry cannot pass.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compile } from "../src/compile.js";
import { REPO_ROOT } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, runWasm, type Feeds } from "./helpers/ort.js";
import { rows, unfoldProbs, withOutputs } from "./support/model-edit.js";
import { softmaxOutputs } from "./support/stage-tensors.js";
import { firstErrorLine } from "./support/cases.js";
import { spattenCascade } from "./reference/spatten.js";

const HEADS = 2;
const model = readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
const x = readNpy(join(REPO_ROOT, "examples", "tiny-vit", "ref_in.npy"));
const feeds: Feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
const SPEC = "after layer 0 keep 75% by spatten\nafter layer 2 keep 50% by spatten";

describe("spatten: cumulative attention carried across layers and stages", () => {
  it("two stages (after layer 0 keep 75%, after layer 2 keep 50%), batch of 2: both stages' kept positions equal the reference's, on CPU and WASM", async () => {
    const compiled = compile(model, SPEC, { exposeIndices: true }).model;
    const probs = softmaxOutputs(compiled).slice(0, 3);
    const out = await runNode(withOutputs(compiled, probs), feeds);
    const maps = probs.map((name) => unfoldProbs(out[name]!.data as Float32Array, out[name]!.dims, HEADS));
    const batch = x.shape[0]!;
    for (let b = 0; b < batch; b++) {
      const want = spattenCascade(
        [
          { layers: [maps[0]![b]!], keepPercent: 75 },
          { layers: [maps[1]![b]!, maps[2]![b]!], keepPercent: 50 },
        ],
        1,
      );
      const stage = (i: number) => {
        const t = out[`prunec.stage${i}.indices`]!;
        return rows(t.data as BigInt64Array, t.dims)[b];
      };
      expect([b, stage(0), stage(1)]).toEqual([b, want.kept[0], want.kept[1]]);
      // Without the carried score the second stage would keep another set.
      const alone = spattenCascade([{ layers: [maps[1]![b]!, maps[2]![b]!], keepPercent: 50 }], 1);
      expect(alone.kept[0]).not.toEqual(want.kept[1]);
    }
    const wasm = await runWasm(compiled, feeds, ["prunec.stage0.indices", "prunec.stage1.indices"]);
    for (const i of [0, 1])
      expect(Array.from(wasm[`prunec.stage${i}.indices`]!.data as BigInt64Array)).toEqual(
        Array.from(out[`prunec.stage${i}.indices`]!.data as BigInt64Array),
      );
  });

  it("refuses a stage of another criterion before it and 'with' options, at the criterion's line:column", () => {
    const message = (spec: string): string => firstErrorLine(model, spec);
    expect(message("after layer 0 keep 75% by cls-attn\nafter layer 2 keep 50% by spatten")).toBe(
      "s.prune:2:27: error: spatten after a stage by cls-attn (line 1): SpAtten's running score starts at layer 0 and follows the kept tokens from stage to stage, so every earlier stage on the stream must be spatten too",
    );
    expect(message("after layer 1 keep 50% by spatten with mask")).toBe(
      "s.prune:1:40: error: spatten takes no 'with' options: its running score follows exactly the kept tokens",
    );
    expect(message("after layer 0 keep 75% by spatten\nafter layer 2 keep 50% by cls-attn")).toBe("compiled");
  });
});
