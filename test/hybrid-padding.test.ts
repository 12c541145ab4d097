/**
 * Issue 16's hybrid-model question, measured on the real Qwen3.5 decoder (transformers.js export,
 * int8, cut to 8 layers: gated delta-net linear attention in 0–2 and 4–6, GroupQueryAttention in 3
 * and 7; synthetic weights): do padding rows placed in FRONT of a prompt leave a zero-initialised
 * recurrence exact? Zero rows, masked (`attention_mask` 0, position 1, HF's left-padding
 * convention), leave the last row's logits and every linear layer's conv and recurrent states
 * bit-identical to the unpadded run, through the attention layers too: the projections, the causal
 * convolution and l2norm of a zero row are zero, so S_t = exp(g)·S_{t−1} stays 0. Non-zero rows,
 * masked the same way, do not: the export does not mask padding in its linear layers. So a
 * per-example stage on a hybrid model can pad exactly only with zero rows in front (not yet
 * compiled: stages pad after the kept tokens and are refused over linear layers).
 */
import { readFileSync } from "node:fs";
import { expect } from "vitest";
import { describeShared, itShared, sharedModel } from "./helpers/shared.js";
import { maxAbsDiff, runNode, type Outputs } from "./helpers/ort.js";
import { cutDecoder, decoderFeeds } from "./support/decoder-cut.js";
import { uniform, withWeights } from "./support/graph-only-inputs.js";

const QWEN35 = "graph-only/qwen3.5-0.8b-vlm-int8/decoder_model_merged_quantized.onnx";
const HIDDEN = 1024;
const N = 12;
const PADS = 4;

describeShared("padding in front of a zero-initialised recurrence (Qwen3.5, 8 layers)", () => {
  itShared(
    "4 zero rows in front, masked: the last logits and every conv/recurrent state bit-identical to the unpadded run; 4 random rows in front: not",
    async () => {
      const dense = cutDecoder(readFileSync(sharedModel(QWEN35)), 8, 256);
      await withWeights(dense, 1, { "model.onnx": dense }, async (path) => {
        const prompt = uniform(N * HIDDEN, 3);
        const alone = await runNode(path("model.onnx"), decoderFeeds(dense, { embeds: prompt, rows: N, total: N }));
        const padded = async (pad: Float32Array): Promise<Outputs> => {
          const rows = N + PADS;
          const embeds = new Float32Array(rows * HIDDEN);
          embeds.set(pad, 0);
          embeds.set(prompt, PADS * HIDDEN);
          const feeds = decoderFeeds(dense, { embeds, rows, total: rows });
          const mask = feeds["attention_mask"]!.data as BigInt64Array;
          mask.fill(0n, 0, PADS);
          const positions = feeds["position_ids"]!.data as BigInt64Array;
          for (let k = 0; k < positions.length; k++) {
            const j = k % rows;
            positions[k] = j < PADS ? 1n : BigInt(j - PADS);
          }
          return runNode(path("model.onnx"), feeds);
        };
        const states = Object.keys(alone).filter((n) => /^present_(conv|recurrent)\.\d+$/.test(n));
        expect(states).toHaveLength(12); // 6 linear layers × conv and recurrent
        const lastLogits = (o: Outputs) => (o["logits"]!.data as Float32Array).slice(-256);
        const differences = (o: Outputs) => [
          maxAbsDiff(lastLogits(o), lastLogits(alone)),
          ...states.map((n) => maxAbsDiff(o[n]!.data as Float32Array, alone[n]!.data as Float32Array)),
        ];
        expect(differences(await padded(new Float32Array(PADS * HIDDEN)))).toEqual(new Array(13).fill(0));
        const noisy = differences(await padded(uniform(PADS * HIDDEN, 9)));
        expect(Math.max(...noisy)).toBeGreaterThan(1e-3);
      });
    },
    300_000,
  );
});
