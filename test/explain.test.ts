/**
 * Matchers explain themselves (`prunec inspect --explain`): on real exports, and on exports edited
 * so that one matcher fails (a residual Add removed, a LayerNorm reducing the wrong axis, Softmax
 * nodes that are not attention), the explanation says what was looked for and where matching
 * stopped, naming the nodes; `LayerInfo.residualWhy` carries the reason to the planner. Without
 * `--explain`, inspect's report and text are what they always were.
 */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { shallowCopy } from "../src/ir/copy.js";
import { Graph, makeNode, type NodeProto } from "../src/ir/graph.js";
import { valueInfo } from "../src/ir/value-info.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { matchNormAt, normAt } from "../src/analysis/norms.js";
import { missText } from "../src/analysis/match.js";
import { formatInspect, inspectModel, type InspectReport } from "../src/inspect.js";
import { compile } from "../src/compile.js";
import { PrunecError } from "../src/errors.js";

const EXPORTS = join(REPO_ROOT, "test/fixtures/exports");
const TINY = join(REPO_ROOT, "examples/tiny-vit/model.onnx");
const fixture = (file: string) => new Uint8Array(readFileSync(join(EXPORTS, file)));

/** The model with its node list rewritten by `f` (and `outputs` declared as float graph outputs). */
function edit(bytes: Uint8Array, f: (nodes: NodeProto[]) => NodeProto[], outputs: string[] = []): Uint8Array {
  const model = decodeModel(bytes);
  const g = model.graph!;
  return encodeModel(
    shallowCopy(model, {
      graph: shallowCopy(g, {
        node: f([...g.node]),
        output: [...g.output, ...outputs.map((o) => valueInfo(o, 1, []))],
      }),
    }),
  );
}

/** Replaces the node named `name` by `by(node)`. */
const replace = (name: string, by: (n: NodeProto) => NodeProto) => (nodes: NodeProto[]) =>
  nodes.map((n) => (n.name === name ? by(n) : n));

/** The residual Add `name` deleted: its output now holds only the branch (input 1), so the residual connection is gone. */
const dropResidual = (bytes: Uint8Array, name: string) =>
  edit(
    bytes,
    replace(name, (n) => makeNode("Identity", [n.input[1]!], [n.output[0]!], n.name)),
  );

const explain = (bytes: Uint8Array, name: string) => inspectModel(bytes, name, { explain: true }).explanation!;
const stepLines = (r: ReturnType<typeof explain>, layer: number) =>
  r.layers[layer]!.residual.map((s) => `${s.looked}: ${s.found ?? `not found: ${missText(s.miss!)}`}`);

const L0 = "/encoder/layers/encoder_layer_0";
const L1 = "/encoder/layers/encoder_layer_1";

describe("matchers explain where matching stopped", () => {
  it("torchvision Swin: the token structure is refused (grid stream, window partition); the shifted-window Softmax is not attention; layers by anchor order", () => {
    const e = explain(fixture("swin-tiny.onnx"), "swin-tiny.onnx");
    expect(e.tokenStructure).toBe(
      "not provable, so no stage compiles: the residual stream entering layer 0 ('/features/features.0/features.0.2/LayerNormalization_output_0') is [batch, 8, 8, 16]: its tokens lie on 2 axes (a spatial grid, as in Swin); its attention runs inside windows (window partition at node '/features/features.1/features.1.0/attn/Reshape_2'); prunec gathers tokens along one axis of a [batch, tokens, hidden] stream",
    );
    expect(e.layering).toBe(
      "no node name carries a layer index ('layers.N', 'layer.N', 'blocks.N', 'block.N', 'h.N', 'encoder_layer_N', 'resblocks.N'): numbered by attention anchor order (3 anchors)",
    );
    // The shifted-window block adds its mask between two Reshapes ([B·nW, h, N, N] ↔ [B, nW, h, N, N]): the walk up from its Softmax stops there.
    expect(e.notAttention).toEqual([
      {
        softmax: "/features/features.1/features.1.1/attn/Softmax",
        why: "no Q·Kᵀ (a MatMul of two activations) above it: '/features/features.1/features.1.1/attn/Reshape_26' (Reshape) is neither a MatMul of two activations (Q·Kᵀ) nor an op seen between Q·Kᵀ and Softmax (Add, Div, Mul, Cast, Where, Sub, Identity)",
        node: "/features/features.1/features.1.1/attn/Reshape_26",
      },
    ]);
    expect(e.cls).toBe(
      "no: walking up from '/features/features.0/features.0.2/LayerNormalization_output_0' to a Concat on the token axis, the walk stopped at '/features/features.0/features.0.2/LayerNormalization' (LayerNormalization): it follows only Add, Dropout, Identity, Cast and Transpose",
    );
    expect(e.layers.map((l) => l.block?.layout)).toEqual(["pre-norm", "pre-norm", "pre-norm"]);
  });

  it("a pre-norm ViT (vit-opset17) whose layer 1 attention residual Add is deleted: no Add reads x_in, and no post-norm block either", () => {
    const bytes = dropResidual(fixture("vit-opset17.onnx"), `${L1}/Add`);
    const e = explain(bytes, "no-attn-add.onnx");
    expect(e.layers[0]!.residualWhy).toBeNull();
    expect(stepLines(e, 1)).toEqual([
      `pre-norm (a per-token norm shared by the query and key paths): '${L1}/ln_1/LayerNormalization' (LayerNormalization) (fused)`,
      `x_in (the stream the pre-norm reads): '${L0}/Add_1_output_0'`,
      `attention residual Add (x_in + attention): not found: no Add (or Skip norm) sums x_in with the attention output (computed from '${L1}/self_attention/MatMul_2' (MatMul)); x_in's readers: '${L1}/ln_1/LayerNormalization' (LayerNormalization), '${L1}/Add' (Identity) at tensor '${L0}/Add_1_output_0'`,
      `post-norm: attention residual Add (x_in + attention, x_in read by the attention itself): not found: no Add within 64 nodes below '${L1}/self_attention/MatMul_2' (MatMul) sums the attention output with a tensor the attention's input is computed from at node '${L1}/self_attention/MatMul_2'`,
    ]);
    const why =
      `no Add (or Skip norm) sums x_in with the attention output (computed from '${L1}/self_attention/MatMul_2' (MatMul)); x_in's readers: '${L1}/ln_1/LayerNormalization' (LayerNormalization), '${L1}/Add' (Identity) at tensor '${L0}/Add_1_output_0'; ` +
      `as a post-norm block: no Add within 64 nodes below '${L1}/self_attention/MatMul_2' (MatMul) sums the attention output with a tensor the attention's input is computed from at node '${L1}/self_attention/MatMul_2'`;
    expect(e.layers[1]!.residualWhy).toBe(why);
    expect(e.layers[1]!.block).toBeNull();
    // The reason reaches the planner on LayerInfo; the analysis is otherwise what it was.
    const info = analyzeTransformer(new Graph(decodeModel(bytes).graph!));
    expect(info.layers[1]!.residualWhy).toBe(why);
    expect(info.layers[1]!.residual).toBeUndefined();
    expect(info.layers[0]!.residualWhy).toBeUndefined();
    let refusal = "";
    try {
      compile(bytes, "after layer 1 keep 50% by random", { modelName: "no-attn-add.onnx" });
    } catch (err) {
      if (!(err instanceof PrunecError)) throw err;
      refusal = err.message;
    }
    expect(refusal).toContain(
      "the residual stream leaving layer 1 could not be found (looked for pre-norm → attention → Add → norm → MLP → Add)",
    );
  });

  it("a ViT whose layer 0 MLP residual Add is deleted: x_mid's only reader is the MLP's norm (pre-norm), and the post-norm reading finds no Add after the MLP", () => {
    const e = explain(dropResidual(fixture("vit-opset17.onnx"), `${L0}/Add_1`), "no-mlp-add.onnx");
    expect(stepLines(e, 0)).toEqual([
      `pre-norm (a per-token norm shared by the query and key paths): '${L0}/ln_1/LayerNormalization' (LayerNormalization) (fused)`,
      `x_in (the stream the pre-norm reads): '/encoder/Add_output_0'`,
      `attention residual Add (x_in + attention): '${L0}/Add' (Add) writes '${L0}/Add_output_0'`,
      `MLP residual Add (x_mid + MLP): not found: no Add (or Skip norm) sums x_mid with the MLP output (computed from '${L0}/Add' (Add)); x_mid's readers: '${L0}/ln_2/LayerNormalization' (LayerNormalization) at tensor '${L0}/Add_output_0'`,
      `post-norm: attention residual Add (x_in + attention, x_in read by the attention itself): '${L0}/Add' (Add) (x_in '/encoder/Add_output_0')`,
      `post-norm: norm after the attention Add (its only reader): '${L0}/ln_2/LayerNormalization' (LayerNormalization) writes x_mid '${L0}/ln_2/LayerNormalization_output_0'`,
      `post-norm: MLP residual Add (x_mid + MLP): not found: no Add (or Skip norm) sums x_mid with the MLP output (computed from '${L0}/ln_2/LayerNormalization' (LayerNormalization)); x_mid's readers: '${L0}/mlp/mlp.0/MatMul' (MatMul) at tensor '${L0}/ln_2/LayerNormalization_output_0'`,
    ]);
    // Layer 1 still closes: its x_in is what the Identity writes.
    expect(e.layers[1]!.block).toEqual({
      layout: "pre-norm",
      input: `${L0}/Add_1_output_0`,
      output: `${L1}/Add_1_output_0`,
    });
    expect(e.tokenAxis).toBe(
      "token axis 1, batch axis 0: the stream entering layer 1 is [batch, 17, 32]; batch-first [batch, tokens, hidden] (the first input's batch dimension 'batch' is not at the stream's axis 1)",
    );
  });

  it("a decomposed LayerNorm (opset 13) whose variance reduces axis 1: the norm matcher names the ReduceMean, and the pre-norm found is the previous layer's", () => {
    const bytes = edit(
      fixture("vit-opset13.onnx"),
      replace(`${L1}/ln_1/ReduceMean_1`, (n) =>
        makeNode("ReduceMean", [...n.input], [...n.output], n.name, { axes: [1], keepdims: 1 }),
      ),
    );
    const g = new Graph(decodeModel(bytes).graph!);
    const div = g.order.find((n) => n.name === `${L1}/ln_1/Div`)!;
    expect(normAt(g, div)).toBeUndefined();
    const m = matchNormAt(g, div);
    expect("ok" in m ? "matched" : missText(m)).toBe(
      `'${L1}/ln_1/ReduceMean_1' (ReduceMean) under Sqrt(· + ε) is not a mean over the last axis alone: it reduces axes [1], not [-1] (a norm over each token's features) at node '${L1}/ln_1/ReduceMean_1'`,
    );
    // A node that is no norm at all: the reason names it.
    const matmul = g.order.find((n) => n.name === `${L1}/self_attention/MatMul_2`)!;
    const mm = matchNormAt(g, matmul);
    expect("ok" in mm ? "matched" : missText(mm)).toBe(
      `'${L1}/self_attention/MatMul_2' (MatMul) is not a normalizing division (Div, or Mul by a Reciprocal or Div(1, ·)) at node '${L1}/self_attention/MatMul_2'`,
    );

    const e = explain(bytes, "bad-norm.onnx");
    const steps = stepLines(e, 1);
    expect(steps.slice(0, 2)).toEqual([
      `pre-norm (a per-token norm shared by the query and key paths): '${L0}/ln_2/Add_1' (Add) (layernorm-decomposed)`,
      `nearer per-token norm (the norm-like node passed on the way up that came closest): not found: '${L1}/ln_1/ReduceMean_1' (ReduceMean) under Sqrt(· + ε) is not a mean over the last axis alone: it reduces axes [1], not [-1] (a norm over each token's features) at node '${L1}/ln_1/ReduceMean_1'`,
    ]);
    expect(steps.at(-1)).toBe(
      `post-norm: norm after the attention Add (its only reader): not found: the sum is not read by one per-token norm alone; its readers: '${L1}/ln_2/ReduceMean' (ReduceMean), '${L1}/ln_2/Sub' (Sub), '${L1}/Add_1' (Add) at tensor '${L1}/Add_output_0'`,
    );
    expect(e.layers[1]!.residualWhy).not.toBeNull();
  });

  it("Softmax nodes that are not attention: a classifier head's (no Q·Kᵀ above: a Gemm) and a gate in layer 0 (no P·V below: nothing reads it)", () => {
    const scores = `${L0}/self_attention/Softmax`;
    const bytes = edit(
      new Uint8Array(readFileSync(TINY)),
      (nodes) => {
        const softmax = nodes.find((n) => n.name === scores)!;
        return [
          ...nodes,
          makeNode("Softmax", [softmax.input[0]!], ["gate_probs"], `${L0}/gate/Softmax`, { axis: -1 }),
          makeNode("Softmax", ["logits"], ["probs"], "/head/Softmax", { axis: -1 }),
        ];
      },
      ["gate_probs", "probs"],
    );
    const e = explain(bytes, "softmaxes.onnx");
    expect(e.notAttention).toEqual([
      {
        softmax: "/head/Softmax",
        why: "no Q·Kᵀ (a MatMul of two activations) above it: '/heads/head/Gemm' (Gemm) is neither a MatMul of two activations (Q·Kᵀ) nor an op seen between Q·Kᵀ and Softmax (Add, Div, Mul, Cast, Where, Sub, Identity)",
        node: "/heads/head/Gemm",
      },
    ]);
    expect(e.layers[0]!.notAttention).toEqual([
      {
        softmax: `${L0}/gate/Softmax`,
        why: "no P·V (a MatMul of the probabilities by an activation) below it: nothing reads the probabilities (a graph output)",
        tensor: "gate_probs",
      },
    ]);
    expect(e.layers[0]!.attention.found).toBe(
      `'${scores}' (Softmax) between Q·Kᵀ '${L0}/self_attention/MatMul_1' (MatMul) and P·V '${L0}/self_attention/MatMul_2' (MatMul)`,
    );
    expect(e.layers.slice(1).every((l) => l.notAttention.length === 0)).toBe(true);
  });

  it("a model with no attention left (a Relu between each Softmax and P·V): --explain adds why each Softmax is not attention to the refusal", () => {
    const bytes = edit(new Uint8Array(readFileSync(TINY)), (nodes) =>
      nodes.flatMap((n) =>
        n.opType === "Softmax"
          ? [
              shallowCopy(n, { output: [`${n.output[0]}/pre_relu`] }),
              makeNode("Relu", [`${n.output[0]}/pre_relu`], [n.output[0]!], n.name.replace(/Softmax$/, "Relu")),
            ]
          : [n],
      ),
    );
    const refusal = (explain: boolean) => {
      try {
        inspectModel(bytes, "relu.onnx", { explain });
      } catch (err) {
        if (err instanceof PrunecError && err.kind === "analysis") return err.message;
        throw err;
      }
      return "no error";
    };
    const plain = refusal(false);
    expect(plain).toBe(
      "relu.onnx: no transformer layers found (looked for Softmax between a Q·Kᵀ MatMul and a P·V MatMul, and for com.microsoft MultiHeadAttention/Attention/GroupQueryAttention nodes; found none)",
    );
    const lines = refusal(true).split("\n");
    expect(lines[0]).toBe(plain);
    expect(lines.slice(1)).toEqual(
      [0, 1, 2, 3].map(
        (l) =>
          `  Softmax '/encoder/layers/encoder_layer_${l}/self_attention/Softmax' is not attention: no P·V (a MatMul of the probabilities by an activation) below it: '/encoder/layers/encoder_layer_${l}/self_attention/Relu' (Relu) is neither the P·V MatMul nor an op seen between Softmax and P·V (Cast, Dropout, Identity) at node '/encoder/layers/encoder_layer_${l}/self_attention/Relu'`,
      ),
    );
  });

  it("model-level facts come with their reasons (post-norm and sequence-first exports)", () => {
    const post = explain(fixture("postnorm-opset17.onnx"), "postnorm-opset17.onnx");
    expect(post.cls).toBe(
      "yes: '/front/Concat_2' (Concat) on the token axis prepends 1 learned token: '/front/Expand_output_0' (1)",
    );
    expect(post.layers.map((l) => l.block?.layout)).toEqual(["post-norm", "post-norm"]);
    expect(post.layers[0]!.residual[0]).toEqual({
      looked: "pre-norm (a per-token norm shared by the query and key paths)",
      miss: { why: "no per-token norm above the query", tensor: "/encoder/layers.0/self_attn/Div_2_output_0" },
    });
    const seq = explain(fixture("seqfirst-opset17.onnx"), "seqfirst-opset17.onnx");
    expect(seq.tokenAxis).toBe(
      "token axis 0, batch axis 1: the stream entering layer 0 is [37, batch, 32]; sequence-first [tokens, batch, hidden]: the first input's batch dimension 'batch' is the stream's axis 1",
    );
    expect(seq.tokenStructure).toBe(
      "proven: the residual stream entering layer 0 ('/Transpose_output_0') is [37, batch, 32], with its tokens on one axis; no attention's known key count differs from 37 tokens, and no layer's known width from 32",
    );
    expect(seq.layering).toBe("numbered by the module paths in node names (e.g. '/encoder/layers.0'): 2 layers");
  });

  it("without explain, the report has no explanation and its text is unchanged; with it, the text only appends the explanation", () => {
    const bytes = fixture("vit-opset17.onnx");
    const plain = inspectModel(bytes, "vit.onnx");
    expect("explanation" in plain).toBe(false);
    const explained = inspectModel(bytes, "vit.onnx", { explain: true });
    const { explanation, ...rest } = explained;
    expect(rest as InspectReport).toEqual(plain);
    expect(explanation).toBeDefined();
    const text = formatInspect(explained);
    expect(
      text.startsWith(`${formatInspect(plain)}\n\nexplanation (what prunec looked for, and where matching stopped):\n`),
    ).toBe(true);
  });
});

describe("prunec inspect --explain (CLI)", () => {
  const BIN = join(REPO_ROOT, "bin", "prunec.js");
  const prunec = (...args: string[]) => {
    const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8" });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  let dir: string;
  let model: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "prunec-explain-"));
    model = join(dir, "no-attn-add.onnx");
    writeFileSync(model, dropResidual(fixture("vit-opset17.onnx"), `${L1}/Add`));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("prints per layer what was looked for and where matching stopped, after the usual table", () => {
    const plain = prunec("inspect", model);
    const r = prunec("inspect", model, "--explain");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(plain.stdout).not.toContain("explanation");
    expect(r.stdout.startsWith(plain.stdout.trimEnd())).toBe(true);
    const lines = r.stdout.split("\n");
    const at = (prefix: string) => lines.indexOf(prefix);
    expect(at("explanation (what prunec looked for, and where matching stopped):")).toBeGreaterThan(0);
    expect(lines).toContain(
      "  layers:          numbered by the module paths in node names (e.g. '/encoder/layers/encoder_layer_0'): 2 layers",
    );
    expect(lines).toContain(
      "  CLS:             yes: '/Concat_2' (Concat) on the token axis prepends 1 learned token: '/Expand_output_0' (1)",
    );
    const layer1 = at(`  layer 1 ('${L1}'):`);
    expect(layer1).toBeGreaterThan(at(`  layer 0 ('${L0}'):`));
    expect(lines.slice(layer1 + 1, layer1 + 7)).toEqual([
      `    attention anchor: '${L1}/self_attention/Softmax' (Softmax) between Q·Kᵀ '${L1}/self_attention/MatMul_1' (MatMul) and P·V '${L1}/self_attention/MatMul_2' (MatMul)`,
      `    pre-norm (a per-token norm shared by the query and key paths): '${L1}/ln_1/LayerNormalization' (LayerNormalization) (fused)`,
      `    x_in (the stream the pre-norm reads): '${L0}/Add_1_output_0'`,
      `    attention residual Add (x_in + attention): not found: no Add (or Skip norm) sums x_in with the attention output (computed from '${L1}/self_attention/MatMul_2' (MatMul)); x_in's readers: '${L1}/ln_1/LayerNormalization' (LayerNormalization), '${L1}/Add' (Identity) at tensor '${L0}/Add_1_output_0'`,
      `    post-norm: attention residual Add (x_in + attention, x_in read by the attention itself): not found: no Add within 64 nodes below '${L1}/self_attention/MatMul_2' (MatMul) sums the attention output with a tensor the attention's input is computed from at node '${L1}/self_attention/MatMul_2'`,
      "    residual block: not found, so no stage can act after this layer",
    ]);
    expect(lines).toContain(`    residual block: found (pre-norm): '/encoder/Add_output_0' → '${L0}/Add_1_output_0'`);
  });

  it("--json --explain adds the 'explanation' field; --json alone does not", () => {
    const json = JSON.parse(prunec("inspect", model, "--json", "--explain").stdout) as InspectReport;
    expect(json.explanation!.layers).toHaveLength(2);
    expect(json.explanation!.layers[1]!.residualWhy).toContain(
      `no Add (or Skip norm) sums x_in with the attention output`,
    );
    expect(json.explanation!.layers[1]!.residual[2]!.miss).toEqual({
      why: `no Add (or Skip norm) sums x_in with the attention output (computed from '${L1}/self_attention/MatMul_2' (MatMul)); x_in's readers: '${L1}/ln_1/LayerNormalization' (LayerNormalization), '${L1}/Add' (Identity)`,
      tensor: `${L0}/Add_1_output_0`,
    });
    const plain = JSON.parse(prunec("inspect", model, "--json").stdout) as InspectReport;
    expect(plain.explanation).toBeUndefined();
  });
});
