/**
 * Residual-stream analysis of the two transformers.js VLM decoders in ../shared/models/graph-only:
 *
 * - Gemma-3 4B (fp32): plain Add + SimplifiedLayerNormalization blocks (sandwich norms), with
 *   per-head q_norm / k_norm on the query and key paths that the pre-norm search walks through.
 * - Qwen3.5 0.8B (int8, MatMulInteger): hybrid, GroupQueryAttention every 4th layer and gated
 *   delta-net linear attention (an `If` on prefill vs decode) elsewhere; every residual add is fused
 *   into a com.microsoft SkipSimplifiedLayerNormalization, whose output 3 (input_skip_bias_sum) is
 *   the residual stream. The final norm omits that output.
 *
 * Then the decoder spec `tokens image = input image_mask / after layer L drop 50% of image by
 * last-token-attn` is compiled against both.
 */
import { expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { describeShared, sharedModel } from "./helpers/shared.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { shallowCopy } from "../src/ir/copy.js";
import { floatTensor } from "../src/onnx/tensor.js";
import { Graph } from "../src/ir/graph.js";
import { analyzeTransformer, type TransformerInfo } from "../src/analysis/transformer.js";
import { inspectModel } from "../src/inspect.js";
import { compile } from "../src/compile.js";
import { checkSpec } from "../src/check.js";
import { PrunecError } from "../src/errors.js";
import { denseName } from "../passes/gather-tokens.js";

const GEMMA = "graph-only/gemma-3-4b-vlm/decoder_model_merged.onnx";
const QWEN35 = "graph-only/qwen3.5-0.8b-vlm-int8/decoder_model_merged_quantized.onnx";
const SET_SPEC = (layer: number) =>
  `tokens image = input image_mask\nafter layer ${layer} drop 50% of image by last-token-attn`;

const cache = new Map<string, { bytes: Uint8Array; g: Graph; info: TransformerInfo }>();
function load(rel: string) {
  let hit = cache.get(rel);
  if (!hit) {
    const bytes = readFileSync(sharedModel(rel));
    const g = new Graph(decodeModel(bytes, rel).graph!);
    hit = { bytes, g, info: analyzeTransformer(g, rel) };
    cache.set(rel, hit);
  }
  return hit;
}

/** Stream facts shared by both decoders. */
function expectStream(info: TransformerInfo, hidden: number): void {
  expect(info.tokenAxis).toBe(1);
  expect(info.batchAxis).toBe(0);
  expect(info.hidden).toBe(hidden);
  expect(info.tokens).toBe("sequence_length");
  expect(info.cls).toEqual({ present: false, prefixTokens: 0 });
  // The first layer's input is the embeddings the decoder takes.
  expect(info.layers[0]!.residual!.input).toBe("inputs_embeds");
  // One stream from layer to layer.
  for (let i = 1; i < info.layers.length; i++)
    expect(info.layers[i]!.residual!.input).toBe(info.layers[i - 1]!.residual!.output);
}

describeShared("decoder residual streams (transformers.js Gemma-3 and Qwen3.5)", () => {
  it("gemma-3: every layer (GroupQueryAttention) has a plain Add + norm block; the pre-norm is input_layernorm, not q_norm/k_norm", () => {
    const { g, info } = load(GEMMA);
    expect(info.layers).toHaveLength(34);
    expect(info.layers.every((l) => l.kind === "GroupQueryAttention" && l.residual)).toBe(true);
    expectStream(info, 2560);
    for (const l of info.layers) {
      const r = l.residual!;
      expect(r.norm.node.name).toBe(`/model/layers.${l.index}/input_layernorm/LayerNorm`);
      expect(r.mid).toBe(`/model/layers.${l.index}/Add_1/output_0`);
      expect(r.output).toBe(`/model/layers.${l.index}/Add_2/output_0`);
      expect(r.outputNorm).toBeUndefined();
      expect(r.outputMissing).toBeUndefined();
      expect(g.producer.get(r.output)!.opType).toBe("Add");
    }
  });

  it("qwen3.5: Skip-norm blocks; the stream leaving layer L is output 3 of the Skip norm feeding layer L+1 (the final norm's is omitted)", () => {
    const { g, info } = load(QWEN35);
    expect(info.layers).toHaveLength(24);
    expectStream(info, 1024);
    const gqa = info.layers.filter((l) => l.kind === "GroupQueryAttention");
    expect(gqa.map((l) => l.index)).toEqual([3, 7, 11, 15, 19, 23]);
    // Linear-attention layers get a block too: around the `If` mixer, between the same Skip norms.
    expect(info.layers.filter((l) => l.kind === "linear-attention" && l.residual)).toHaveLength(18);
    for (const l of info.layers) {
      const r = l.residual!;
      const next =
        l.index === 23
          ? "/model/layers.24/final_norm_layernorm/SkipLayerNorm"
          : `/model/layers.${l.index + 1}/input_layernorm/SkipLayerNorm`;
      // Layer 0's pre-norm is a plain norm on the embeddings; the others are Skip norms (their sum is `input`).
      expect(r.norm.node.opType).toBe(
        l.index === 0 ? "SimplifiedLayerNormalization" : "SkipSimplifiedLayerNormalization",
      );
      if (l.index > 0) expect(r.input).toBe(r.norm.node.output[3]);
      expect(r.mid).toBe(`/model/layers.${l.index}/post_attention_layernorm/output_3`);
      expect(r.outputNorm!.name).toBe(next);
      if (l.index < 23) {
        expect(r.output).toBe(`/model/layers.${l.index + 1}/input_layernorm/output_3`);
        expect(r.outputMissing).toBeUndefined();
        // Produced by one node (as output 3), read only below the layer: the next layer's post-attention Skip norm.
        expect(g.producer.get(r.output)).toBe(r.outputNorm);
        expect(r.outputNorm!.output.indexOf(r.output)).toBe(3);
        expect(g.consumersOf(r.output).map((n) => n.name)).toEqual([
          `/model/layers.${l.index + 1}/post_attention_layernorm/SkipLayerNorm`,
        ]);
      }
    }
    // The final norm writes only output 0: the stream leaving layer 23 is a name a stage must add as its output 3.
    const last = info.layers[23]!.residual!;
    expect(last.outputMissing).toBe(true);
    expect(last.outputNorm!.output).toEqual(["/model/layers.24/final_norm_layernorm/output_0"]);
    expect(last.output).toBe("/model/layers.24/final_norm_layernorm/SkipLayerNorm/input_skip_bias_sum");
    expect(g.producer.has(last.output) || g.consumers.has(last.output)).toBe(false);
  });

  it("inspect: Qwen3.5 hosts attention stages at its GroupQueryAttention layers but the last, not at linear-attention ones; last-token-attn at every Gemma-3 layer (rotary inside the op is moved out)", () => {
    const report = (rel: string) => inspectModel(load(rel).bytes, rel);
    const q = report(QWEN35);
    expect(q.hidden).toBe(1024);
    expect(q.tokenAxis).toBe(1);
    expect(q.batchAxis).toBe(0);
    expect(q.tokens).toBe("sequence_length");
    const at = (r: ReturnType<typeof report>, name: string) =>
      r.layers.filter((l) => l.criteria.find((c) => c.name === name)?.ok).map((l) => l.index);
    // Layer 23's stream exists only inside the final norm.
    expect(at(q, "pagerank")).toEqual([3, 7, 11, 15, 19]);
    expect(at(q, "norm")).toHaveLength(23);
    expect(q.layers[2]!.criteria.find((c) => c.name === "pagerank")!.why).toMatch(/linear-attention/);
    expect(q.layers.every((l) => l.residual !== null)).toBe(true);

    const gm = report(GEMMA);
    expect(gm.hidden).toBe(2560);
    expect(gm.layers.every((l) => l.residual !== null)).toBe(true);
    expect(at(gm, "last-token-attn")).toHaveLength(34);
    expect(at(gm, "norm")).toHaveLength(34);
  });

  it("gemma-3: a norm stage after layer 1 gathers the plain Add's stream", () => {
    const { bytes } = load(GEMMA);
    const out = decodeModel(
      compile(bytes, "tokens image = input image_mask\nafter layer 1 drop 50% of image by norm").model,
    );
    const g = new Graph(out.graph!);
    expect(g.inputs.has("image_mask")).toBe(true);
    const r = "/model/layers.1/Add_2/output_0";
    expect(g.producer.get(denseName(r))!.name).toBe("/model/layers.1/Add_2");
    expect(g.producer.get(r)!.opType).toBe("GatherND");
    // Plain form: layer 2 reads only the gathered stream.
    expect(g.consumersOf(denseName(r)).every((n) => n.name.startsWith("prunec/"))).toBe(true);
  });

  it("qwen3.5 (Skip form): stages compile at attention layers; a linear-attention layer and the last layer are rejected before writing; per-example counts over linear layers compile with --kv-state (padding in front as zero rows), and are rejected without it, with renumber, or past a norm with a bias", () => {
    const { bytes } = load(QWEN35);
    const message = (spec: string, kvState = false, model = bytes) => {
      try {
        compile(model, spec, { specName: "q.prune", ...(kvState ? { kvState } : {}) });
      } catch (e) {
        if (e instanceof PrunecError) return e.message.split("\n")[0];
        throw e;
      }
      return "compiled";
    };
    expect(message("after layer 3 drop 50% by norm")).toBe("compiled");
    expect(message("after layer 7 keep 75% by pagerank")).toBe("compiled");
    expect(message("after layer 2 keep 75% by pagerank")).toMatch(
      /^q\.prune:1:27: error: pagerank cannot run after layer 2: .*linear-attention/,
    );
    expect(message("after layer 23 keep 50% by norm")).toMatch(
      /^q\.prune:1:13: error: the residual stream leaving layer 23 \(the last\) exists only inside com\.microsoft\.SkipSimplifiedLayerNormalization .*final_norm_layernorm/,
    );
    // Per-example counts before linear attention: each example's padding first, as zero rows
    // (passes/front-padding.ts; exact per test/hybrid-stage.test.ts). The later caches keep the
    // padding, so the slots' validity must travel with them (--kv-state).
    expect(message(SET_SPEC(3), true)).toBe("compiled");
    expect(message("after layer 3 keep mass 90% by norm", true)).toBe("compiled");
    expect(message(SET_SPEC(3))).toBe(
      "q.prune:2:20: error: this stage's count differs per example and linear-attention layers follow, so each example's padding rows come first; layer 7 keeps them in its KV cache, where later calls (decode steps) would attend to them, and the host's attention mask cannot say where they are: compile with --kv-state, which carries each cache slot's validity from call to call (past_key_values.stageN.prunec_valid → present.stageN.prunec_valid)",
    );
    // A KV-cache stage below would rewrite layer 7's attention without the padding's mask.
    expect(message(`${SET_SPEC(3)}\nin layer 7 keep kv 50% by knorm`, true)).toBe(
      "q.prune:3:1: error: evicting layer 7's cache: a stream stage above it counts per example and pads each example in front (linear-attention layers follow it), and the eviction's rewrite of the layer's attention would drop that padding's mask; not supported yet",
    );
    // check refuses what compile refuses, with the same options.
    expect(checkSpec(SET_SPEC(3), "q.prune", { bytes, name: "q.onnx" }, { kvState: true }).ok).toBe(true);
    expect(checkSpec(SET_SPEC(3), "q.prune", { bytes, name: "q.onnx" }).refusal?.message).toMatch(/--kv-state/);
    expect(message(`${SET_SPEC(3)} with renumber`, true)).toBe(
      "q.prune:2:20: error: this stage's count differs per example and linear-attention layers follow, so each example's padding comes first, before its kept tokens; 'with renumber' would number the padding rows as tokens",
    );
    // A zero row stays zero only through norms without a bias: give layer 5's pre-norm one.
    const model = decodeModel(bytes);
    const g = model.graph!;
    const norm = "/model/layers.5/input_layernorm/SkipLayerNorm";
    const biased = encodeModel(
      shallowCopy(model, {
        graph: shallowCopy(g, {
          node: g.node.map((n) =>
            n.name === norm ? shallowCopy(n, { input: [...n.input.slice(0, 3), "test/norm_bias"] }) : n,
          ),
          initializer: [...g.initializer, floatTensor("test/norm_bias", new Array<number>(1024).fill(0), [1024])],
        }),
      }),
    );
    expect(message(SET_SPEC(3), true, biased)).toBe(
      `q.prune:2:20: error: this stage's count differs per example, so batches pad to the largest count; before linear-attention layers prunec pads with zero rows in front of each example, but layer 4's norm ${norm} adds a bias (input 3), so a zero padding row would not stay zero`,
    );
  });
});
