/**
 * Verification of compiled models (issue 12 item 2): the library's structural and shape checks on
 * hand-made broken graphs and on corrupted stages (through the internal __testMutate hook), the
 * CLI's onnxruntime smoke run, and `check` refusing what compile refuses with the same message.
 */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { create } from "@bufbuild/protobuf";
import { spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AttributeProtoSchema,
  AttributeProto_AttributeType as AT,
  GraphProtoSchema,
  type GraphProto,
  type NodeProto,
} from "../src/onnx/gen/onnx_pb.js";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { makeNode } from "../src/ir/graph.js";
import { shallowCopy } from "../src/ir/copy.js";
import { valueInfo } from "../src/ir/value-info.js";
import { floatTensor, int64Tensor } from "../src/onnx/tensor.js";
import { compile, type CompileReport } from "../src/compile.js";
import { checkSpec } from "../src/check.js";
import { formatDiagnostics } from "../grammar/diagnostics.js";
import { EXIT_CODES, errorText } from "../src/errors.js";
import { structureIssues } from "../src/verify/structure.js";
import { VERIFY_FAILED } from "../src/verify/verify.js";
import { smokeRun } from "../src/cli/smoke.js";
import { runtimeError } from "../src/cli/runtime.js";
import { buildFusedVit } from "./support/fused-vit.js";
import { externalize } from "./support/externalize.js";
import { unloadable } from "./support/model-edit.js";
import { thrown } from "./support/cases.js";
import { REPO_ROOT } from "./helpers/shared.js";

const TINY_PATH = join(REPO_ROOT, "examples", "tiny-vit", "model.onnx");
const TINY = readFileSync(TINY_PATH);
const FIXTURES = join(REPO_ROOT, "test", "fixtures", "exports");
const SPEC = "after layer 1 keep 50% by cls-attn";
const STAGE0 = "stage 0 (after layer 1 by cls-attn)";
const STREAM = "/encoder/layers/encoder_layer_1/Add_1_output_0";

/** A graph from nodes, with graph input `x` and the given outputs. */
function graph(
  node: NodeProto[],
  outputs: string[],
  extra: Pick<Partial<GraphProto>, "initializer" | "input"> = {},
): GraphProto {
  return create(GraphProtoSchema, {
    node,
    input: extra.input ?? [valueInfo("x", 1, [2])],
    output: outputs.map((o) => valueInfo(o, 1, [2])),
    initializer: extra.initializer ?? [],
  });
}

const messages = (g: GraphProto) => structureIssues(g).map((i) => `${i.kind}: ${i.message}`);

describe("structural verification of hand-made graphs", () => {
  it("a well-formed graph (an initializer also listed as an input, an omitted optional input) has no issue", () => {
    const g = graph(
      [makeNode("Add", ["x", "w"], ["y"], "add"), makeNode("Clip", ["y", "", "w"], ["z"], "clip")],
      ["z"],
      {
        initializer: [floatTensor("w", [1, 1])],
        input: [valueInfo("x", 1, [2]), valueInfo("w", 1, [2])],
      },
    );
    expect(messages(g)).toEqual([]);
  });

  it("a node reading a tensor nothing produces", () => {
    expect(messages(graph([makeNode("Relu", ["nope"], ["y"], "relu")], ["y"]))).toEqual([
      "missing-input: node 'relu' (Relu) reads 'nope', which no node, initializer or graph input produces",
    ]);
  });

  it("nodes out of topological order", () => {
    const g = graph([makeNode("Relu", ["a"], ["y"], "second"), makeNode("Neg", ["x"], ["a"], "first")], ["y"]);
    expect(messages(g)).toEqual([
      "out-of-order: node 'second' (Relu) reads 'a' before node 'first' (Neg) produces it: the nodes are not in topological order",
    ]);
  });

  it("two producers of one tensor, a tensor shadowing an input, duplicate node names, an unproduced output", () => {
    const g = graph(
      [makeNode("Relu", ["x"], ["y"], "n"), makeNode("Neg", ["x"], ["y"], "n"), makeNode("Abs", ["y"], ["x"], "abs")],
      ["y", "ghost"],
    );
    expect(messages(g)).toEqual([
      "duplicate-node-name: two nodes are named 'n'",
      "duplicate-output: node 'n' (Neg) writes 'y', which node 'n' (Relu) already produces",
      "duplicate-output: node 'abs' (Abs) writes 'x', which a graph input already produces",
      "unproduced-output: graph output 'ghost' is not produced by any node, initializer or graph input",
    ]);
  });

  it("subgraphs read outer-scope values produced before their node, not missing or later ones", () => {
    const branch = (reads: string, name: string) =>
      create(GraphProtoSchema, {
        name,
        node: [makeNode("Identity", [reads], [`${name}_out`], `${name}_id`)],
        output: [valueInfo(`${name}_out`, 1, [2])],
      });
    const ifNode = (name: string, then: GraphProto, otherwise: GraphProto) =>
      shallowCopy(makeNode("If", ["c"], [`${name}_y`], name), {
        attribute: [
          create(AttributeProtoSchema, { name: "then_branch", type: AT.GRAPH, g: then }),
          create(AttributeProtoSchema, { name: "else_branch", type: AT.GRAPH, g: otherwise }),
        ],
      });
    const ok = graph(
      [
        makeNode("Relu", ["x"], ["a"], "a"),
        makeNode("Constant", [], ["c"], "c"),
        ifNode("if", branch("a", "t"), branch("x", "e")),
      ],
      ["if_y"],
    );
    expect(messages(ok)).toEqual([]);
    const bad = graph(
      [
        makeNode("Constant", [], ["c"], "c"),
        ifNode("if", branch("later", "t"), branch("nope", "e")),
        makeNode("Relu", ["x"], ["later"], "late"),
      ],
      ["if_y"],
    );
    expect(messages(bad)).toEqual([
      "out-of-order: node 't_id' (Identity) reads 'later' before node 'late' (Relu) produces it in subgraph if/then_branch: the nodes are not in topological order",
      "missing-input: node 'e_id' (Identity) reads 'nope', which no node, initializer or graph input produces in subgraph if/else_branch",
    ]);
  });
});

/** Replace the stage's gather node (and only it). */
function onGather(f: (n: NodeProto) => NodeProto | NodeProto[]) {
  return (g: GraphProto): GraphProto =>
    shallowCopy(g, {
      node: g.node.flatMap((n) => (n.opType === "GatherND" && n.name.startsWith("prunec/stage0/") ? f(n) : [n])),
    });
}

function setInt(n: NodeProto, name: string, value: number): NodeProto {
  return shallowCopy(n, {
    attribute: n.attribute.map((a) => (a.name === name ? shallowCopy(a, { i: BigInt(value) }) : a)),
  });
}

describe("compile refuses a corrupted stage (the internal __testMutate hook), naming the stage", () => {
  const refused = (mutate: (g: GraphProto) => GraphProto, model = TINY, spec = SPEC) => {
    const e = thrown(() => compile(model, spec, { modelName: "tiny.onnx", __testMutate: mutate }));
    expect(e.kind).toBe("verify");
    expect(e.exitCode).toBe(8);
    return e.message;
  };

  it("a gather whose indices input names a tensor nothing produces", () => {
    const msg = refused(onGather((n) => shallowCopy(n, { input: [n.input[0]!, "no/such/indices"] })));
    expect(msg).toMatch(
      new RegExp(
        `^tiny\\.onnx: ${esc(VERIFY_FAILED)}: ${esc(STAGE0)}: node 'prunec/stage0/cls-attn/gather_tokens_\\d+' \\(GatherND\\) reads 'no/such/indices', which no node, initializer or graph input produces$`,
      ),
    );
  });

  it("a gather whose batch_dims changed: the stream's inferred shape disagrees with the declared token count", () => {
    const msg = refused(onGather((n) => setInt(n, "batch_dims", 0)));
    expect(msg).toBe(
      `tiny.onnx: ${VERIFY_FAILED}: ${STAGE0}: tensor '${STREAM}' (the stream the stage writes) has inferred shape [batch_size, 33, 65, 48] (rank 4, expected rank 3); prunec declares [batch_size, 33, 48] (33 tokens on axis 1)`,
    );
  });

  it("a gather moved before the nodes computing its indices", () => {
    const msg = refused((g) => {
      const gather = g.node.find((n) => n.opType === "GatherND" && n.name.startsWith("prunec/stage0/"))!;
      const at = g.node.findIndex((n) => n.name.startsWith("prunec/stage0/"));
      const rest = g.node.filter((n) => n !== gather);
      return shallowCopy(g, { node: [...rest.slice(0, at), gather, ...rest.slice(at)] });
    });
    expect(msg).toContain(`${STAGE0}: node 'prunec/stage0/cls-attn/gather_tokens_`);
    expect(msg).toContain("the nodes are not in topological order");
  });

  it("a second producer of the stage's stream", () => {
    const msg = refused(
      onGather((n) => [n, makeNode("Identity", [n.input[0]!], [STREAM], "prunec/stage0/cls-attn/extra")]),
    );
    expect(msg).toMatch(
      new RegExp(
        `${esc(STAGE0)}: node 'prunec/stage0/cls-attn/extra' \\(Identity\\) writes '${esc(STREAM)}', which node 'prunec/stage0/cls-attn/gather_tokens_\\d+' \\(GatherND\\) already produces$`,
      ),
    );
  });

  it("a Reshape below the stage left with the dense token count baked in (a static-batch export)", () => {
    const model = readFileSync(join(FIXTURES, "static-batch.onnx"));
    const dense = new Map(decodeModel(model).graph!.node.map((n) => [n.name, n.input[1]]));
    const undo = (g: GraphProto) =>
      shallowCopy(g, {
        node: g.node.map((n) =>
          n.opType === "Reshape" && n.input[1]?.startsWith("prunec/stage0/") && n.name.endsWith("/Reshape_3")
            ? shallowCopy(n, { input: [n.input[0]!, dense.get(n.name)!] })
            : n,
        ),
      });
    expect(refused(undo, model, "after layer 0 keep 50% by cls-attn")).toBe(
      `tiny.onnx: ${VERIFY_FAILED}: stage 0 (after layer 0 by cls-attn): node '/encoder/layers/encoder_layer_1/self_attention/Reshape_3' (Reshape) reshapes [9, 4, 16] (576 elements) to [34, 32] (1088 elements): its target shape does not follow the stage's token count`,
    );
  });

  it("a flaw the input model already has is not blamed on prunec (duplicate node names)", () => {
    const m = decodeModel(TINY);
    const g = m.graph!;
    const renamed = g.node.map((n, i) => (i < 2 ? shallowCopy(n, { name: "same" }) : n));
    expect(structureIssues(shallowCopy(g, { node: renamed })).map((i) => i.kind)).toEqual(["duplicate-node-name"]);
    const r = compile(encodeModel(shallowCopy(m, { graph: shallowCopy(g, { node: renamed }) })), SPEC);
    expect(r.report.stages).toHaveLength(1);
  });

  it("an unmodified compile reports what it verified", () => {
    const result = compile(TINY, SPEC);
    const v = result.report.verification;
    expect(v.stages).toEqual([
      {
        stage: 0,
        tensor: STREAM,
        tokenAxis: 1,
        agreement: "shape",
        expected: ["batch_size", 33, 48],
        inferred: ["batch_size", 33, 48],
      },
    ]);
    expect(v.batch).toBe("batch_size");
    // Every node of the written graph (the exporter's shape arithmetic below the stage folded away).
    expect(v.nodes).toBe(decodeModel(result.model).graph!.node.length);
    expect(v.nodes).toBe(431);
  });
});

function esc(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

describe("the onnxruntime smoke run (src/cli/smoke.ts)", () => {
  const ctx = (report: CompileReport, modelPath = TINY_PATH) => ({
    modelPath,
    stages: report.stages,
    verification: report.verification,
  });

  it("runs the compiled model at batch 1 and 2 and checks its outputs", async () => {
    const r = compile(TINY, SPEC, { exposeIndices: true });
    const s = await smokeRun(r.model, ctx(r.report));
    expect(s).toMatchObject({ status: "passed", batches: [1, 2], outputs: ["logits", "prunec.stage0.indices"] });
  });

  it("a static-batch export runs at its batch only", async () => {
    const path = join(FIXTURES, "static-batch.onnx");
    const r = compile(readFileSync(path), "after layer 0 keep 50% by cls-attn");
    expect(await smokeRun(r.model, ctx(r.report, path))).toMatchObject({ status: "passed", batches: [2] });
  });

  it("a model onnxruntime refuses to load (float gather indices: shapes agree, types do not) is a verify error naming the stage and onnxruntime's message", async () => {
    const castIndices = onGather((n) => [
      makeNode("Cast", [n.input[1]!], ["test/float_indices"], "prunec/stage0/test/cast", { to: 1 }),
      shallowCopy(n, { input: [n.input[0]!, "test/float_indices"] }),
    ]);
    const r = compile(TINY, SPEC, { __testMutate: castIndices });
    const e = await smokeRun(r.model, ctx(r.report)).then(
      () => undefined,
      (x: unknown) => x as Error & { kind?: string },
    );
    expect(e?.kind).toBe("verify");
    expect(e?.message).toMatch(
      new RegExp(
        `^${esc(TINY_PATH)}: ${esc(VERIFY_FAILED)}: ${esc(STAGE0)}: onnxruntime cannot load it: .*GatherND`,
        "s",
      ),
    );
  });

  it("an output that is not finite is a verify error naming the output and the stage above it", async () => {
    const divide = (g: GraphProto) =>
      shallowCopy(g, {
        node: [
          ...g.node.map((n) =>
            n.output.includes("logits")
              ? shallowCopy(n, { output: n.output.map((o) => (o === "logits" ? "test/logits" : o)) })
              : n,
          ),
          makeNode("Div", ["test/logits", "test/zero"], ["logits"], "test/div"),
        ],
        initializer: [...g.initializer, floatTensor("test/zero", [0], [])],
      });
    const r = compile(TINY, SPEC, { __testMutate: divide });
    await expect(smokeRun(r.model, ctx(r.report))).rejects.toThrow(
      new RegExp(
        `${esc(VERIFY_FAILED)}: below ${esc(STAGE0)}: output 'logits' at batch 1 is not finite \\(-?(Infinity|NaN) at element \\d+ of 10\\)$`,
      ),
    );
  });

  it("is skipped, with the reason, when onnxruntime-node is not installed or the weights are not beside the model", async () => {
    const r = compile(TINY, SPEC);
    const missing = () =>
      Promise.reject(
        runtimeError(
          "onnxruntime-node",
          "compile",
          Object.assign(new Error("Cannot find package 'onnxruntime-node'"), { code: "ERR_MODULE_NOT_FOUND" }),
        ),
      );
    expect(await smokeRun(r.model, ctx(r.report), missing)).toMatchObject({
      status: "skipped",
      reason: "onnxruntime-node is not installed (an optional peer dependency: npm install onnxruntime-node)",
    });
    const dir = mkdtempSync(join(tmpdir(), "prunec-smoke-"));
    try {
      const ext = externalize(TINY);
      writeFileSync(join(dir, "model.onnx"), ext.model);
      const c = compile(ext.model, SPEC);
      const s = await smokeRun(c.model, ctx(c.report, join(dir, "model.onnx")));
      expect(s.status).toBe("skipped");
      expect(s.reason).toMatch(/^the weights are not beside the model \(.*weights\.bin: no such file/);
      writeFileSync(join(dir, "weights.bin"), ext.weights);
      expect(await smokeRun(c.model, ctx(c.report, join(dir, "model.onnx")))).toMatchObject({
        status: "passed",
        batches: [1, 2],
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

const BIN = join(REPO_ROOT, "bin", "prunec.js");
function prunec(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8" });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("the CLI reports what it verified", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "prunec-verify-"));
    copyFileSync(TINY_PATH, join(dir, "vit.onnx"));
    writeFileSync(join(dir, "s.prune"), `${SPEC}\n`);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("compile runs the smoke run by default; --no-verify skips it; --json reports both", () => {
    const model = join(dir, "vit.onnx");
    const spec = join(dir, "s.prune");
    const r = prunec(model, spec, "-o", join(dir, "a.onnx"));
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines.at(-2)).toBe("  verified: graph structure (431 nodes), 1 stage shape confirmed");
    expect(lines.at(-1)).toMatch(
      /^ {2}onnxruntime smoke run passed at batch 1 and 2: 1 output finite with the declared shapes \(\d+\.\d\d s\)$/,
    );

    const skip = prunec(model, spec, "-o", join(dir, "b.onnx"), "--no-verify");
    expect(skip.code).toBe(0);
    expect(skip.stdout.trim().split("\n").at(-1)).toBe("  onnxruntime smoke run skipped (--no-verify)");
    expect(existsSync(join(dir, "b.onnx"))).toBe(true);

    const json = JSON.parse(prunec(model, spec, "-o", join(dir, "c.onnx"), "--json").stdout) as {
      smoke: { status: string; batches: number[] };
      verification: { stages: { agreement: string }[] };
    };
    expect(json.smoke).toMatchObject({ status: "passed", batches: [1, 2] });
    expect(json.verification.stages.map((s) => s.agreement)).toEqual(["shape"]);
  });
});

describe("the CLI's smoke run loads the output staged under its temp name, and only a model that passes takes its name", () => {
  it("exit 8 naming onnxruntime's refusal; no output, no temp file, no weight file placed (external data, -o in another folder)", () => {
    const dir = mkdtempSync(join(tmpdir(), "prunec-staged-"));
    try {
      mkdirSync(join(dir, "in"));
      mkdirSync(join(dir, "out"));
      const ext = externalize(unloadable(TINY));
      writeFileSync(join(dir, "in", "model.onnx"), ext.model);
      writeFileSync(join(dir, "in", "weights.bin"), ext.weights);
      const r = prunec(join(dir, "in", "model.onnx"), "-e", SPEC, "-o", join(dir, "out", "pruned.onnx"));
      expect(r.code).toBe(EXIT_CODES.verify);
      expect(r.stderr).toContain(
        `${VERIFY_FAILED}: the compiled model: onnxruntime cannot load it: Load model from the compiled model failed:`,
      );
      expect(r.stderr).toContain("test.nokernel:Nope");
      expect(r.stderr).not.toContain(".tmp");
      expect(readdirSync(join(dir, "out"))).toEqual([]);
      expect(readdirSync(join(dir, "in")).sort()).toEqual(["model.onnx", "weights.bin"]);
      // The same model without the op that has no kernel: the weights are placed and the model runs from its folder.
      const good = externalize(TINY);
      writeFileSync(join(dir, "in", "model.onnx"), good.model);
      writeFileSync(join(dir, "in", "weights.bin"), good.weights);
      const ok = prunec(join(dir, "in", "model.onnx"), "-e", SPEC, "-o", join(dir, "out", "pruned.onnx"));
      expect(ok.stderr).toBe("");
      expect(ok.stdout).toContain("onnxruntime smoke run passed at batch 1 and 2");
      expect(readdirSync(join(dir, "out")).sort()).toEqual(["pruned.onnx", "weights.bin"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the input model's bytes are garbage before the smoke run loads the output (the peak is the larger phase, not their sum)", () => {
  // PRUNEC_TEST_INPUT_FREED=1 (src/cli/main.ts) reports whether the input's buffer survived the GC
  // before the smoke run. It did once: the last write's request held views of it until the event
  // loop turned, and ViT-B/16's compile peaked at 0.83 GB instead of 0.49 GB.
  const probe = (...args: string[]) => {
    const r = spawnSync(process.execPath, [BIN, ...args], {
      encoding: "utf8",
      env: { ...process.env, PRUNEC_TEST_INPUT_FREED: "1" },
    });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  it("a single file, and one with external data compiled into another folder", () => {
    const dir = mkdtempSync(join(tmpdir(), "prunec-freed-"));
    try {
      const r = probe(TINY_PATH, "-e", SPEC, "-o", join(dir, "a.onnx"));
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toBe("prunec test: input freed before the smoke run\n");
      mkdirSync(join(dir, "in"));
      mkdirSync(join(dir, "out"));
      const ext = externalize(TINY);
      writeFileSync(join(dir, "in", "model.onnx"), ext.model);
      writeFileSync(join(dir, "in", "weights.bin"), ext.weights);
      const e = probe(join(dir, "in", "model.onnx"), "-e", SPEC, "-o", join(dir, "out", "b.onnx"));
      expect(e.code, e.stderr).toBe(0);
      expect(e.stderr).toBe("prunec test: input freed before the smoke run\n");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("check refuses whatever compile refuses, with the same message", () => {
  /** Route layer 2's output residual through a Reshape whose constant shape bakes in the token count. */
  function bakedReshape(): Uint8Array {
    const m = decodeModel(TINY);
    const g = m.graph!;
    const residual = "/encoder/layers/encoder_layer_2/Add_1_output_0";
    const nodes = g.node.map((n) =>
      n.input.includes(residual)
        ? shallowCopy(n, { input: n.input.map((i) => (i === residual ? "test/reshaped" : i)) })
        : n,
    );
    nodes.splice(
      nodes.findIndex((n) => n.output.includes(residual)) + 1,
      0,
      makeNode("Reshape", [residual, "test/shape"], ["test/reshaped"], "test/static_reshape"),
    );
    return encodeModel(
      shallowCopy(m, {
        graph: shallowCopy(g, {
          node: nodes,
          initializer: [...g.initializer, int64Tensor("test/shape", [65, -1, 48])],
        }),
      }),
    );
  }
  const fused = buildFusedVit();
  const cases: [string, Uint8Array, string][] = [
    ["a layer out of range (a planning diagnostic)", TINY, "after layer 9 keep 50% by cls-attn"],
    [
      "a constant shape that bakes in the token count (the passes refuse it)",
      bakedReshape(),
      "after layer 1 keep 50% by cls-attn",
    ],
    [
      "'with recycle' above per-token side tensors (the passes refuse it)",
      fused,
      "after layer 0 keep 25% by cls-attn with recycle",
    ],
    [
      "'with renumber' with no positions below (the passes refuse it)",
      fused,
      "after layer 1 keep 50% by cls-attn with renumber",
    ],
    [
      "a windowed Swin stream (the analysis refuses it)",
      readFileSync(join(FIXTURES, "swin-tiny.onnx")),
      "after layer 0 keep 50% by norm",
    ],
  ];
  it.each(cases)("%s", (_what, model, spec) => {
    const e = thrown(() => compile(model, spec, { modelName: "m.onnx", specName: "s.prune" }));
    expect(e.exitCode).toBe(EXIT_CODES.apply);
    const r = checkSpec(spec, "s.prune", { bytes: model, name: "m.onnx" });
    expect(r.ok).toBe(false);
    expect(r.refusal).toEqual({ kind: e.kind, exitCode: e.exitCode, message: e.message });
    // What the CLI prints first: compile's own text, diagnostics rendered the same way.
    expect(r.diagnostics.length ? formatDiagnostics(r.diagnostics, spec) : errorText(r.refusal!)).toBe(errorText(e));
  });

  it("the CLI: check's error text starts with compile's, and check exits 1", () => {
    const dir = mkdtempSync(join(tmpdir(), "prunec-agree-"));
    try {
      const model = join(dir, "fused.onnx");
      const spec = join(dir, "r.prune");
      writeFileSync(model, fused);
      writeFileSync(spec, "after layer 0 keep 25% by cls-attn with recycle\n");
      const c = prunec(model, spec, "-o", join(dir, "out.onnx"));
      expect(c.code).toBe(6);
      expect(existsSync(join(dir, "out.onnx"))).toBe(false);
      const k = prunec("check", spec, model);
      expect(k.code).toBe(1);
      expect(k.stderr).toBe(`${c.stderr}\n${spec}: refused on ${model}\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
