/**
 * SpAtten's cascade head pruning (`after layer L keep heads … by spatten`, passes/head-stage.ts) on
 * the trained digits ViT (6 layers, 4 heads, torchvision's [B·H, N, N] attention; two cascaded
 * stages, a batch of 3) and an HF-style ViT ([B, H, N, N], a logit bias shared by the heads):
 * - each stage's kept heads equal the float64 reference written from the paper's equations
 *   (test/reference/spatten-heads.ts), fed the head outputs each layer computed in a reference
 *   model: the dense graph with every layer's P·V output multiplied by a per-head 0/1 mask input
 *   (an edit independent of prunec's gathers), the earlier stages' heads already masked;
 * - the logits equal that reference model's with every stage's heads masked (≤ 1e-5), and differ
 *   from the dense logits;
 * - the pruned layers compute only the kept heads (their Softmax has K heads);
 * - the second stage's carried score matters: ranking its own layer alone keeps other heads.
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
import { buildFusedVit, FUSED_VIT, fusedVitFeeds } from "./support/fused-vit.js";
import { unfuseMultiHeadAttention } from "./support/unfuse.js";
import { rows, withOutputs } from "./support/model-edit.js";
import { softmaxOutputs } from "./support/stage-tensors.js";
import { spattenHeads } from "./reference/spatten-heads.js";

const model = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
type Outputs = Awaited<ReturnType<typeof runNode>>;

/** A model, its inputs and head stages (`after`: the layer; `keep`: heads kept). */
interface HeadCase {
  model: Uint8Array;
  feeds: Feeds;
  heads: number;
  stages: { after: number; keep: number; amount: string }[];
}
const specOf = (c: HeadCase) =>
  c.stages.map((s) => `after layer ${s.after} keep heads ${s.amount} by spatten`).join("\n");

/** Every layer's P·V output tensor ([B·H, N, d] or [B, H, N, d]: batch-major either way), as the analysis finds it. */
function headOutputs(bytes: Uint8Array): string[] {
  const info = analyzeTransformer(new Graph(decodeModel(bytes).graph!));
  return info.layers.map((l) => l.core!.pv!.output[0]!);
}

/**
 * The dense model with each layer's P·V output multiplied by an input `head_mask.L` (1 keeps a
 * head, 0 removes it from that layer; [B·H,1,1] or [B,H,1,1] as the output's rank asks) and the
 * masked outputs exposed as `head_out.L`.
 */
function maskedReference(bytes: Uint8Array, rank: number): Uint8Array {
  const m = decodeModel(bytes);
  const g = m.graph!;
  const outputs = headOutputs(bytes);
  const nodes = g.node.map((n) =>
    outputs.includes(n.output[0]!) ? shallowCopy(n, { output: [`${n.output[0]}/unmasked`] }) : n,
  );
  const masks = outputs.map((o, l) =>
    makeNode("Mul", [`${o}/unmasked`, `head_mask.${l}`], [o], `reference/head_mask_${l}`),
  );
  const exposed = outputs.map((o, l) => makeNode("Identity", [o], [`head_out.${l}`], `reference/head_out_${l}`));
  const maskDims = rank === 4 ? [undefined, undefined, 1, 1] : [undefined, 1, 1];
  return encodeModel(
    shallowCopy(m, {
      graph: shallowCopy(g, {
        node: [...nodes, ...masks, ...exposed],
        input: [...g.input, ...outputs.map((_, l) => valueInfo(`head_mask.${l}`, DT.FLOAT, maskDims))],
        output: [
          ...g.output,
          ...outputs.map((_, l) => valueInfo(`head_out.${l}`, DT.FLOAT, new Array(rank).fill(undefined))),
        ],
      }),
    }),
  );
}

/** Example b's head h output in layer l (batch-major heads: row b·H + h in either layout). */
function headOf(out: Outputs, heads: number, l: number, b: number, h: number): Float32Array {
  const t = out[`head_out.${l}`]!;
  const rows = t.dims.length === 4 ? t.dims[0]! * t.dims[1]! : t.dims[0]!; // B·H
  const size = t.data.length / rows;
  return (t.data as Float32Array).subarray((b * heads + h) * size, (b * heads + h + 1) * size);
}

/**
 * The reference's kept heads per stage and example, each stage ranking on a run of the masked model
 * in which the earlier stages' heads are already gone, and the final run with every stage applied.
 */
async function referenceCascade(c: HeadCase, rank: number) {
  const reference = maskedReference(c.model, rank);
  const layers = headOutputs(c.model).length;
  const batch = c.feeds[Object.keys(c.feeds)[0]!]!.dims[0]!;
  const kept: number[][][] = []; // [stage][example]
  /** The heads example b runs in layer l under the stages decided so far (undefined: all). */
  const alive = (l: number, b: number) => {
    let s = -1;
    c.stages.forEach((st, i) => {
      if (i < kept.length && st.after < l) s = i;
    });
    return s < 0 ? undefined : kept[s]![b]!;
  };
  const run = () => {
    const feeds: Feeds = { ...c.feeds };
    for (let l = 0; l < layers; l++) {
      const data = new Float32Array(batch * c.heads).map((_, i) => {
        const heads = alive(l, Math.floor(i / c.heads));
        return !heads || heads.includes(i % c.heads) ? 1 : 0;
      });
      feeds[`head_mask.${l}`] = {
        type: "float32",
        dims: rank === 4 ? [batch, c.heads, 1, 1] : [batch * c.heads, 1, 1],
        data,
      };
    }
    return runNode(reference, feeds);
  };
  const runs: Outputs[] = [];
  for (let s = 0; s < c.stages.length; s++) {
    const out = await run();
    runs.push(out);
    kept.push(
      Array.from({ length: batch }, (_, b) => {
        const stages = c.stages.slice(0, s + 1).map((st, i) => ({
          layers: range(i === 0 ? 0 : c.stages[i - 1]!.after + 1, st.after).map((l) =>
            range(0, c.heads - 1).map((h) => {
              const heads = alive(l, b);
              return !heads || heads.includes(h) ? headOf(out, c.heads, l, b, h) : undefined;
            }),
          ),
          keep: st.keep,
        }));
        return spattenHeads(stages, c.heads)[s]!;
      }),
    );
  }
  return { kept, runs, final: await run() };
}

/** Compiled with the spec: exposed heads and logits equal the reference's; Softmax rows are B·K. */
async function expectReference(c: HeadCase, rank: number, logitsName: string) {
  const compiled = compile(c.model, specOf(c), { exposeIndices: true }).model;
  const softmax = softmaxOutputs(compiled);
  const out = await runNode(withOutputs(compiled, softmax), c.feeds);
  const ref = await referenceCascade(c, rank);
  c.stages.forEach((_, s) => {
    const t = out[`prunec.stage${s}.heads`]!;
    expect(rows(t.data as BigInt64Array, t.dims), `stage ${s}`).toEqual(ref.kept[s]);
  });
  const logits = out[logitsName]!.data as Float32Array;
  expect(maxAbsDiff(logits, ref.final[logitsName]!.data as Float32Array)).toBeLessThan(1e-5);
  // Pruning heads changed the logits (the comparison could fail).
  expect(maxAbsDiff(logits, ref.runs[0]![logitsName]!.data as Float32Array)).toBeGreaterThan(1e-3);
  const batch = c.feeds[Object.keys(c.feeds)[0]!]!.dims[0]!;
  const perLayer = range(0, softmax.length - 1).map(
    (l) => c.stages.filter((st) => st.after < l).at(-1)?.keep ?? c.heads,
  );
  // Rows of each Softmax: B·K ([B·H, N, N]) or, for [B, H, N, N], K heads on axis 1.
  expect(softmax.map((s) => (rank === 4 ? out[s]!.dims[1] : out[s]!.dims[0]))).toEqual(
    perLayer.map((k) => (rank === 4 ? k : batch * k)),
  );
  return { compiled, out, ref };
}

describe("spatten heads: SpAtten's cascade head pruning", () => {
  it("digits ViT (torchvision, [B·H, N, N]), two stages (after layer 2 keep 75%, after layer 3 keep 2), batch of 3: kept heads and logits equal the reference's; the carried score matters; CPU and WASM agree", async () => {
    const c: HeadCase = {
      model,
      feeds: digitsFeeds()[1]!,
      heads: 4,
      stages: [
        { after: 2, keep: 3, amount: "75%" },
        { after: 3, keep: 2, amount: "2" },
      ],
    };
    const { compiled, out, ref } = await expectReference(c, 3, "logits");
    // Without stage 0's carried importance (layer 3 alone; pruned heads score 0), stage 1 would keep other heads.
    const alone = ref.kept[0]!.map(
      (heads, b) =>
        spattenHeads(
          [
            {
              layers: [3].map((l) =>
                range(0, 3).map((h) => (heads.includes(h) ? headOf(ref.runs[1]!, 4, l, b, h) : new Float32Array(1))),
              ),
              keep: 2,
            },
          ],
          4,
        )[0]!,
    );
    expect(alone).not.toEqual(ref.kept[1]);
    const wasm = await runWasm(compiled, c.feeds, ["logits", "prunec.stage1.heads"]);
    expect(maxAbsDiff(wasm["logits"]!.data as Float32Array, out["logits"]!.data as Float32Array)).toBeLessThan(1e-5);
    expect(Array.from(wasm["prunec.stage1.heads"]!.data as BigInt64Array)).toEqual(
      Array.from(out["prunec.stage1.heads"]!.data as BigInt64Array),
    );
  });

  it("an HF-style ViT ([B, H, N, N] probabilities, a logit bias shared by the heads), after layer 0 keep 2 of 4, batch of 2: kept heads and logits equal the reference's", async () => {
    const fused = buildFusedVit();
    const twin = unfuseMultiHeadAttention(fused, FUSED_VIT.hidden / FUSED_VIT.heads);
    await expectReference(
      { model: twin, feeds: fusedVitFeeds(2), heads: FUSED_VIT.heads, stages: [{ after: 0, keep: 2, amount: "2" }] },
      4,
      decodeModel(twin).graph!.output[0]!.name,
    );
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
    expect(firstErrorLine(buildFusedVit(), "after layer 0 keep heads 2 by spatten")).toBe(
      "s.prune:1:31: error: spatten heads: layer 0's attention is com.microsoft.MultiHeadAttention, a fused op; prunec gathers heads in MatMul + Softmax attention only",
    );
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
