/** stage-graph.ts on tiny-vit compiled in each form, and on captured copy lines (no browser needed). */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compile } from "../../src/index.js";
import { decodeModel } from "../../src/onnx/io.js";
import { REPO_ROOT } from "../helpers/shared.js";
import { parsePlacement, CPU_EP, WEBGPU_EP } from "./placement.js";
import { stageCopies, stageNodes } from "./stage-graph.js";

const dense = new Uint8Array(readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx")));
const SPEC = "after layer 1 keep 50% by cls-attn\nafter layer 2 keep 50% by cls-attn\n";
const graphOf = (o: Parameters<typeof compile>[2]) => {
  const res = compile(dense, SPEC, o);
  return { graph: decodeModel(res.model).graph!, added: res.report.addedNodes };
};

describe("stageNodes", () => {
  it("default target: the data path is report.addedNodes, the exposure one Identity per stage", () => {
    const { graph, added } = graphOf({ exposeIndices: true });
    const nodes = stageNodes(graph);
    expect(
      nodes
        .filter((n) => n.role === "data")
        .map((n) => n.name)
        .sort(),
    ).toEqual([...added].sort());
    expect(nodes.filter((n) => n.role === "expose").map((n) => `${n.stage} ${n.opType}`)).toEqual([
      "0 Identity",
      "1 Identity",
    ]);
  });

  it("target webgpu: the data path is what compiles without exposeIndices; the rest only feeds prunec.stageN.indices", () => {
    const withIdx = stageNodes(graphOf({ exposeIndices: true, target: "webgpu" }).graph);
    const without = graphOf({ target: "webgpu" });
    const plain = stageNodes(without.graph);
    expect(plain.every((n) => n.role === "data")).toBe(true);
    expect(plain.map((n) => n.name).sort()).toEqual([...without.added].sort());
    expect(
      withIdx
        .filter((n) => n.role === "data")
        .map((n) => n.name)
        .sort(),
    ).toEqual(plain.map((n) => n.name).sort());
    for (const s of [0, 1]) {
      const ops = withIdx
        .filter((n) => n.stage === s && n.role === "expose")
        .map((n) => n.opType)
        .sort();
      expect(ops, `stage ${s}`).toEqual(["Add", "Concat", "Concat", "Expand", "Identity", "Shape", "Slice", "Squeeze"]);
    }
  });
});

describe("stageCopies", () => {
  const { graph } = graphOf({ exposeIndices: true, target: "webgpu" });
  const nodes = stageNodes(graph);
  const expose = nodes.find((n) => n.stage === 0 && n.opType === "Squeeze")!;
  const gather = graph.node.find(
    (n) => n.input.includes(graph.node.find((x) => x.name === expose.name)!.input[0]!) && n.opType === "GatherND",
  )!;
  const positions = graph.node.find((x) => x.name === expose.name)!.input[0]!; // TopK's int64 indices
  const P = (msg: string) =>
    `2026-11-26 10:13:59.123099 [I:onnxruntime:m, transformer_memcpy.cc:393 AddCopyNode] ${msg}`;
  const V = (msg: string) =>
    `2026-11-26 10:13:59.123099 [V:onnxruntime:m, session_state.cc:1385 VerifyEachNodeIsAssignedToAnEp] ${msg}`;
  const placed = (cpu: string[]) => [
    V("Node placements"),
    V(` Node(s) placed on [${CPU_EP}]. Number of nodes: ${cpu.length}`),
    ...cpu.map((name) => V(`  Op (${name})`)),
    V(` Node(s) placed on [${WEBGPU_EP}]. Number of nodes: ${graph.node.length - cpu.length}`),
    ...graph.node.filter((n) => !cpu.includes(n.name)).map((n) => V(`  ${n.opType} (${n.name})`)),
  ];

  it("a copy read only by exposure nodes is an exposure copy; one read by the data path is not", () => {
    const cpuExpose = nodes.filter((n) => n.role === "expose").map((n) => n.name);
    const log = parsePlacement([P(`Add MemcpyToHost before ${positions} for ${WEBGPU_EP}`), ...placed(cpuExpose)], "m");
    expect(stageCopies(graph, nodes, log).map((c) => [c.stage, c.role, c.readers])).toEqual([
      [0, "expose", [expose.name]],
    ]);
    // Had the gather run on the CPU, the same copy would feed the data path.
    const log2 = parsePlacement(
      [P(`Add MemcpyToHost before ${positions} for ${WEBGPU_EP}`), ...placed([...cpuExpose, gather.name])],
      "m",
    );
    expect(stageCopies(graph, nodes, log2).map((c) => [c.stage, c.role])).toEqual([[0, "data"]]);
  });

  it("ignores the model's own copies", () => {
    const log = parsePlacement(
      [P(`Add MemcpyFromHost after ${graph.input[0]!.name} for ${WEBGPU_EP}`), ...placed([])],
      "m",
    );
    expect(stageCopies(graph, nodes, log)).toEqual([]);
  });
});
