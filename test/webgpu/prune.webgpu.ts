/**
 * prunec's promise, checked in a real browser: pruned models run on onnxruntime-web's WebGPU
 * execution provider, and give what onnxruntime-node's CPU provider gives.
 *
 * For each model of models.ts (tiny-vit; digits once examples/digits/model.onnx exists):
 *   - compile the dense model with each spec twice: default target (index lowering) and
 *     `target: "webgpu"` (float-key lowering), both with exposeIndices; plus the spec with the most
 *     stages with `target: "webgpu"` and no exposeIndices;
 *   - run every variant in Chromium with executionProviders: ["webgpu"] only, on a few batches, and
 *     on onnxruntime-node (CPU) in Node; compare predictions (argmax, equal), logits (max abs diff
 *     within LOGITS_ATOL) and the kept indices of every stage (identical; for webgpu-target
 *     variants also identical to the default-target variant's);
 *   - read ORT's verbose log for where each of prunec's nodes was placed (WebGPU or CPU) and which
 *     device↔host copies ORT inserted, and check them against EXPECTED_STAGE_PLACEMENT (default
 *     target) and EXPECTED_WEBGPU_TARGET_PLACEMENT (webgpu target), so any change shows up.
 * Writes scratch/webgpu-report.json and scratch/webgpu-console.log, prints a summary.
 *
 * Run: npm run test:webgpu (needs /usr/bin/chromium; see test/webgpu/README.md).
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compile } from "../../src/index.js";
import { decodeModel } from "../../src/onnx/io.js";
import { TensorProto_DataType as DT, type GraphProto } from "../../src/onnx/gen/onnx_pb.js";
import { maxAbsDiff, runNode } from "../helpers/ort.js";
import { REPO_ROOT } from "../helpers/shared.js";
import { withOutputs } from "../support/model-edit.js";
import { CHROMIUM, CHROMIUM_ARGS, openBrowser, type AdapterInfo, type BrowserSession } from "./browser.js";
import { modelCases, type ModelCase, type Sample } from "./models.js";
import { locate, parsePlacement, WEBGPU_EP, CPU_EP, type MemcpyNote, type NodeWhere } from "./placement.js";
import { stageCopies, stageNodes, type Role, type StageCopy, type StageNode } from "./stage-graph.js";
import { startServer, type TestServer } from "./server.js";
import {
  argmaxRows,
  feedsOf,
  finishSuite,
  pageInfo,
  putInput,
  runInBrowser,
  type BrowserRun,
  type PageApi,
} from "./harness.js";

const SCRATCH = join(REPO_ROOT, "scratch");
const REPORT_PATH = join(SCRATCH, "webgpu-report.json");
const CONSOLE_PATH = join(SCRATCH, "webgpu-console.log");

/**
 * Logits: |WebGPU − CPU| ≤ LOGITS_ATOL. Both compute in float32 but sum in different orders
 * (WebGPU's tiled MatMul and workgroup reductions in Softmax/LayerNorm/ReduceMean vs MLAS on the
 * CPU) and their Exp/Erf are not bit-identical; on these models (O(1) logits, 4 layers) that gives
 * 1e-6..2e-6 (measured; the report has each run's value). 1e-3 leaves ~500x headroom for other
 * GPUs and drivers, yet is below what one wrong token does: keeping 63 instead of 64 patch tokens
 * after layer 1 moves tiny-vit's logits by 7e-3 on CPU (and the kept indices are compared exactly).
 */
const LOGITS_ATOL = 1e-3;
/**
 * Inputs are taken only where both runtimes must agree, judged on the CPU run alone: the top two
 * logits differ by more than MIN_LOGIT_GAP = 2 * LOGITS_ATOL (then logits within LOGITS_ATOL of
 * each other cannot rank differently), and at every stage the last kept and the first dropped
 * token's cls-attn scores differ by at least MIN_SCORE_GAP, relative (~1000 float32 ulps, while
 * the backends' logits, computed through more layers than the scores, differ by ~1e-6). Skipped
 * candidates are listed in the report.
 */
const MIN_SCORE_GAP = 1e-4;
const MIN_LOGIT_GAP = 2 * LOGITS_ATOL;
/**
 * Opt-in timing (PRUNEC_WEBGPU_BENCH=<rounds>): after a model's tests, all its variants are opened
 * at once and run on its first batch in `rounds` interleaved rounds (page.js `bench`). Off by
 * default: on SwiftShader each round costs ~30 s for the digits variants. README's numbers: 10.
 */
const BENCH_ROUNDS = Number(process.env["PRUNEC_WEBGPU_BENCH"] ?? 0);

/**
 * DEFAULT TARGET (index lowering). Where prunec's pruning nodes of ONE stage run on
 * onnxruntime-web 1.30's WebGPU EP (op types, sorted), as found by this suite (see README.md).
 * Everything int64 falls back to the CPU: the EP is built with "enable int64: 0" and has no int64
 * kernels for these ops ("webgpu kernel not found in registries"); TopK over the float scores and
 * GatherND (int64 indices input) stay on the GPU.
 */
export const EXPECTED_STAGE_PLACEMENT = {
  webgpu: ["Gather", "GatherND", "ReduceMean", "Reshape", "Slice", "TopK", "Unsqueeze"],
  cpu: ["Add", "Concat", "Concat", "Expand", "Shape", "Slice", "TopK", "Unsqueeze"],
};
/** Device↔host copies ORT inserts at the boundary of one stage's nodes (by kind). */
export const EXPECTED_STAGE_COPIES = { MemcpyToHost: 1, MemcpyFromHost: 1 };

/**
 * `target: "webgpu"` (float-key lowering, passes/select-gather-float.ts), per stage. `data`: the
 * nodes the pruned residual stream depends on (scoring, selection, gather, concat), all on WebGPU.
 * `expose`: the nodes that exist only to produce prunec.stageN.indices (with exposeIndices; none
 * without), found structurally (stage-graph.ts). Copies are ORT's Memcpy nodes touching the
 * stage's nodes, split the same way: none on the data path; the int64 kept positions (TopK's
 * indices output) are read back once for the exposure branch.
 */
export const EXPECTED_WEBGPU_TARGET_PLACEMENT = {
  data: {
    webgpu: [
      "Concat",
      "Equal",
      "Gather",
      "GatherND",
      "Greater",
      "LessOrEqual",
      "ReduceMean",
      "Reshape",
      "Slice",
      "Slice",
      "Slice",
      "Slice",
      "Slice",
      "TopK",
      "TopK",
      "TopK",
      "Unsqueeze",
      "Unsqueeze",
      "Where",
      "Where",
      "Where",
    ],
    cpu: [] as string[],
  },
  expose: {
    webgpu: [] as string[],
    cpu: ["Add", "Concat", "Concat", "Expand", "Shape", "Slice", "Squeeze"],
    // The exposure Identity is removed by ORT's EliminateIdentity (level 1): its input, the
    // kept-positions Concat, has no other consumer here, so that Concat writes the graph output.
    absent: ["Identity"],
  },
  copies: {
    data: { MemcpyToHost: 0, MemcpyFromHost: 0 },
    expose: { MemcpyToHost: 1, MemcpyFromHost: 0 },
  },
};

type Target = "cpu" | "webgpu";

/** A variant as known when tests are collected (before any model is read). */
interface VariantDef {
  key: string;
  spec: string | undefined;
  target: Target;
  exposeIndices: boolean;
  /** The default-target variant of the same spec (webgpu-target variants are compared with it). */
  base: string | undefined;
  title: string;
}

interface Variant extends VariantDef {
  model: Uint8Array;
  graph: GraphProto;
  /** report.stages[i].lowering. */
  lowering: string[];
  /** prunec.stageN.indices outputs. */
  indexOutputs: string[];
  /** Every prunec node with its stage and role (data path or exposure), from the graph's structure. */
  nodes: StageNode[];
  /** report.addedNodes. */
  addedNodes: string[];
  /** webgpu target with exposeIndices: the prunec node names of the same spec compiled without it. */
  withoutExposure?: string[];
  /** Per stage: the tensor its first TopK ranks (the scores of the prunable tokens) and the stage's token counts. */
  scores: { tensor: string; tokensIn: number; tokensOut: number }[];
}

interface Prepared {
  variants: Variant[];
  batches: Sample[][];
  skipped: { id: string; why: string }[];
}

type CpuRun = Record<string, { dims: number[]; data: ArrayLike<number | bigint> }>;

interface StagePlacement {
  stage: number;
  data: { webgpu: string[]; cpu: string[]; absent: string[] };
  expose: { webgpu: string[]; cpu: string[]; absent: string[] };
  copies: { data: StageCopy[]; expose: StageCopy[] };
}

interface VariantReport {
  key: string;
  spec: string | null;
  target: Target;
  exposeIndices: boolean;
  lowering: string[];
  base: string | null;
  batches: string[][];
  createMs?: number;
  /** Per batch; the first includes compiling the shaders. */
  runMs?: number[];
  maxAbsDiffLogits?: number;
  /** webgpu target: max |logits − default-target variant's logits|, both on onnxruntime-node. */
  maxAbsDiffLogitsVsDefaultTarget?: number;
  predictions?: { webgpu: number[]; cpu: number[]; labels?: (number | null)[] };
  predictionsEqual?: boolean;
  indices?: { output: string; equal: boolean; equalDefaultTarget?: boolean; webgpu: number[][]; cpu: number[][] }[];
  placement?: {
    counts: Record<string, number>;
    prunecNodes: (NodeWhere & { stage: number; role: Role })[];
    stages: StagePlacement[];
    memcpy: MemcpyNote[];
    evidence: string[];
  };
  error?: string;
}

interface ModelReport {
  name: string;
  modelPath: string;
  samples: string[];
  skipped: { id: string; why: string }[];
  variants: VariantReport[];
  /** PRUNEC_WEBGPU_BENCH: per variant, warm session.run wall times on the first batch (interleaved rounds). */
  bench?: { rounds: number; batch: string[]; ms: Record<string, { min: number; median: number; all: number[] }> };
}

const t0 = Date.now();
const report = {
  generatedAt: new Date().toISOString(),
  wallSeconds: 0,
  browser: { executable: CHROMIUM, args: [...CHROMIUM_ARGS], userAgent: "", adapter: null as AdapterInfo | null },
  runtimes: {
    onnxruntimeWeb: "",
    onnxruntimeNode: (
      JSON.parse(readFileSync(join(REPO_ROOT, "node_modules", "onnxruntime-node", "package.json"), "utf8")) as {
        version: string;
      }
    ).version,
    webExecutionProviders: ["webgpu"],
    graphOptimizationLevel: "all",
  },
  tolerance: { logitsAbs: LOGITS_ATOL, minScoreGap: MIN_SCORE_GAP, minLogitGap: MIN_LOGIT_GAP },
  benchRounds: BENCH_ROUNDS,
  expectedStagePlacement: EXPECTED_STAGE_PLACEMENT,
  expectedWebgpuTargetPlacement: EXPECTED_WEBGPU_TARGET_PLACEMENT,
  /** lowering → role → op type → where (all stages, all variants). */
  prunecOpPlacement: {} as Record<
    string,
    Record<string, Record<string, { webgpu: number; cpu: number; absent: number }>>
  >,
  models: [] as ModelReport[],
  blockedRequests: [] as string[],
  pageErrors: [] as string[],
};

let server: TestServer | undefined;
let browser: BrowserSession | undefined;

beforeAll(async () => {
  server = await startServer();
  browser = await openBrowser(server.url);
  report.browser.userAgent = browser.userAgent;
  const info = await pageInfo(browser);
  report.browser.adapter = info.adapter;
  report.runtimes.onnxruntimeWeb = info.ortVersion;
}, 120_000);

afterAll(async () => {
  await finishSuite({
    report,
    path: REPORT_PATH,
    t0,
    browser,
    server,
    summary,
    also: () => {
      if (browser) writeFileSync(CONSOLE_PATH, `${browser.console.join("\n")}\n`);
    },
  });
}, 60_000);

it("Chromium exposes a WebGPU adapter, and the page reaches nothing but the local server", () => {
  expect(report.browser.adapter, "navigator.gpu.requestAdapter() returned null").not.toBeNull();
  expect(report.runtimes.onnxruntimeWeb).toMatch(/^1\.30\./);
  expect(browser!.blocked).toEqual([]);
});

/**
 * dense; each spec with the default target (`pruned<i>`, the original variants); each spec with
 * target webgpu (`webgpu<i>`); the spec with the most stages with target webgpu and no
 * exposeIndices (`webgpu<i>-noexpose`).
 */
function variantDefs(mc: ModelCase): VariantDef[] {
  const defs: VariantDef[] = [
    { key: "dense", spec: undefined, target: "cpu", exposeIndices: false, base: undefined, title: "dense" },
  ];
  mc.specs.forEach((spec, i) =>
    defs.push({
      key: `pruned${i}`,
      spec,
      target: "cpu",
      exposeIndices: true,
      base: undefined,
      title: `pruned '${oneLine(spec)}'`,
    }),
  );
  mc.specs.forEach((spec, i) =>
    defs.push({
      key: `webgpu${i}`,
      spec,
      target: "webgpu",
      exposeIndices: true,
      base: `pruned${i}`,
      title: `pruned '${oneLine(spec)}' [target webgpu]`,
    }),
  );
  const stagesOf = (spec: string) => spec.trim().split("\n").length;
  const most = mc.specs.reduce((best, spec, i) => (stagesOf(spec) > stagesOf(mc.specs[best]!) ? i : best), 0);
  const spec = mc.specs[most]!;
  defs.push({
    key: `webgpu${most}-noexpose`,
    spec,
    target: "webgpu",
    exposeIndices: false,
    base: `pruned${most}`,
    title: `pruned '${oneLine(spec)}' [target webgpu, no exposeIndices]`,
  });
  return defs;
}

for (const mc of modelCases()) {
  describe(mc.name, () => {
    const defs = variantDefs(mc);
    const mr: ModelReport = { name: mc.name, modelPath: mc.modelPath, samples: [], skipped: [], variants: [] };
    report.models.push(mr);
    let prepared: Prepared;
    const runs = new Map<string, Promise<{ web: BrowserRun; cpu: CpuRun[] }>>();

    beforeAll(async () => {
      prepared = await prepare(mc, defs);
      mr.samples = prepared.batches.flat().map((s) => s.id);
      mr.skipped = prepared.skipped;
      for (const v of prepared.variants) {
        mr.variants.push({
          key: v.key,
          spec: v.spec ? oneLine(v.spec) : null,
          target: v.target,
          exposeIndices: v.exposeIndices,
          lowering: v.lowering,
          base: v.base ?? null,
          batches: prepared.batches.map((b) => b.map((s) => s.id)),
        });
      }
    }, 300_000);

    /** Run a variant in the browser and on onnxruntime-node, once (shared by the tests below). */
    const both = (key: string) => {
      let p = runs.get(key);
      if (!p) {
        const v = prepared.variants.find((x) => x.key === key)!;
        p = runBoth(mc, v, prepared.batches);
        runs.set(key, p);
      }
      return p;
    };
    const variant = (key: string) => prepared.variants.find((x) => x.key === key)!;
    const variantReport = (key: string) => mr.variants.find((x) => x.key === key)!;

    for (const def of defs) {
      const { key, spec, title } = def;
      const what = !spec ? "" : def.exposeIndices ? " and kept indices" : "";
      const vsDefault = def.base
        ? def.exposeIndices
          ? ", kept indices identical to the default target's"
          : ", logits those of the default target"
        : "";
      it(`${title}: WebGPU gives onnxruntime-node's predictions${what}, logits within ${LOGITS_ATOL}${vsDefault}`, async () => {
        const vr = variantReport(key);
        const v = variant(key);
        try {
          const { web, cpu } = await both(key);
          vr.createMs = round(web.createMs);
          vr.runMs = web.runs.map((r) => round(r.runMs));
          const webLogits = web.runs.flatMap((r) => r.outputs[mc.output]!.data);
          const cpuLogits = cpu.flatMap((r) => Array.from(r[mc.output]!.data, Number));
          const classes = web.runs[0]!.outputs[mc.output]!.dims[1]!;
          vr.maxAbsDiffLogits = maxAbsDiff(webLogits, cpuLogits);
          const webPred = argmaxRows(webLogits, classes);
          const cpuPred = argmaxRows(cpuLogits, classes);
          const samples = prepared.batches.flat();
          vr.predictions = { webgpu: webPred, cpu: cpuPred, labels: samples.map((s) => s.label ?? null) };
          vr.predictionsEqual = webPred.every((p, j) => p === cpuPred[j]);
          const base = def.base ? await both(def.base) : undefined;
          // The default-target variant's kept indices on the same inputs, on onnxruntime-node and on WebGPU.
          const baseRows = (name: string) =>
            base!.cpu.flatMap((r) => rows(Array.from(r[name]!.data, Number), r[name]!.dims));
          const baseWebRows = (name: string) =>
            base!.web.runs.flatMap((r) => rows(r.outputs[name]!.data, r.outputs[name]!.dims));
          vr.indices = v.indexOutputs.map((name) => {
            const w = web.runs.flatMap((r) => rows(r.outputs[name]!.data, r.outputs[name]!.dims));
            const c = cpu.flatMap((r) => rows(Array.from(r[name]!.data, Number), r[name]!.dims));
            const entry: NonNullable<VariantReport["indices"]>[number] = {
              output: name,
              equal: JSON.stringify(w) === JSON.stringify(c),
              webgpu: w,
              cpu: c,
            };
            if (base)
              entry.equalDefaultTarget =
                JSON.stringify(w) === JSON.stringify(baseRows(name)) &&
                JSON.stringify(w) === JSON.stringify(baseWebRows(name));
            return entry;
          });
          if (base)
            vr.maxAbsDiffLogitsVsDefaultTarget = maxAbsDiff(
              cpuLogits,
              base.cpu.flatMap((r) => Array.from(r[mc.output]!.data, Number)),
            );
          for (const r of web.runs) expect(r.outputs[mc.output]!.dims).toEqual([prepared.batches[0]!.length, classes]);
          expect(webPred).toEqual(cpuPred);
          expect(vr.maxAbsDiffLogits).toBeLessThanOrEqual(LOGITS_ATOL);
          expect(vr.indices.map((ix) => ix.output)).toEqual(
            def.exposeIndices ? v.lowering.map((_, s) => `prunec.stage${s}.indices`) : [],
          );
          for (const ix of vr.indices) expect(ix.webgpu, `${ix.output}`).toEqual(ix.cpu);
          if (spec && !base)
            expect(
              v.lowering.every((l) => l === "index"),
              `lowering ${v.lowering.join(",")}`,
            ).toBe(true);
          if (base) {
            expect(
              v.lowering.every((l) => l === "float-keys"),
              `lowering ${v.lowering.join(",")}`,
            ).toBe(true);
            for (const ix of vr.indices) {
              expect(ix.webgpu, `${ix.output} vs the default target on onnxruntime-node`).toEqual(baseRows(ix.output));
              expect(ix.webgpu, `${ix.output} vs the default target on WebGPU`).toEqual(baseWebRows(ix.output));
            }
            // The same tokens in the same order: the two models compute the same thing (measured: 0).
            expect(vr.maxAbsDiffLogitsVsDefaultTarget).toBeLessThanOrEqual(LOGITS_ATOL);
          }
        } catch (err) {
          vr.error = String(err);
          throw err;
        }
      }, 300_000);

      const placementTitle = !spec
        ? ""
        : def.target === "cpu"
          ? "; prunec's nodes where expected"
          : def.exposeIndices
            ? "; the stage's data path all on WebGPU with no copies, only exposure nodes on the CPU"
            : "; every prunec node on WebGPU, no copies of prunec tensors";
      it(`${title}: node placement read from ORT's verbose log${placementTitle}`, async () => {
        const vr = variantReport(key);
        const v = variant(key);
        const { web } = await both(key);
        const log = parsePlacement(web.log, logId(mc, key));
        expect(log.found, "no 'Node placements' block in ORT's verbose log").toBe(true);
        const where = locate(log, v.nodes);
        const prunecNodes = where.map((w, j) => ({ ...w, stage: v.nodes[j]!.stage, role: v.nodes[j]!.role }));
        const copies = stageCopies(v.graph, v.nodes, log);
        const stages: StagePlacement[] = v.scores.map((_, s) => {
          const ops = (role: Role, w: string) =>
            prunecNodes
              .filter((p) => p.stage === s && p.role === role && p.where === w)
              .map((p) => p.opType)
              .sort();
          const split = (role: Role) => ({
            webgpu: ops(role, "webgpu"),
            cpu: ops(role, "cpu"),
            absent: ops(role, "absent"),
          });
          const mine = copies.filter((c) => c.stage === s);
          return {
            stage: s,
            data: split("data"),
            expose: split("expose"),
            copies: { data: mine.filter((c) => c.role === "data"), expose: mine.filter((c) => c.role === "expose") },
          };
        });
        vr.placement = {
          counts: log.counts,
          prunecNodes,
          stages,
          memcpy: log.memcpy,
          evidence: log.evidence.filter((e) => e.includes("prunec/") || /placed on|Node placements/.test(e)),
        };
        const lowering = v.lowering[0] ?? "none";
        for (const p of prunecNodes) {
          const byRole = ((report.prunecOpPlacement[lowering] ??= {})[p.role] ??= {});
          const c = (byRole[p.opType] ??= { webgpu: 0, cpu: 0, absent: 0 });
          c[p.where === "webgpu" ? "webgpu" : p.where === "cpu" ? "cpu" : "absent"]++;
        }
        // Every node the session runs is on WebGPU or the CPU, and the model really uses WebGPU.
        expect(
          Object.keys(log.counts).every((ep) => ep === WEBGPU_EP || ep === CPU_EP),
          JSON.stringify(log.counts),
        ).toBe(true);
        expect(log.counts[WEBGPU_EP] ?? 0).toBeGreaterThan(0);
        if (!spec) {
          expect(v.nodes).toEqual([]);
          return;
        }
        // Every CPU node of prunec's is there for a reason the log states.
        for (const p of prunecNodes.filter((x) => x.where === "cpu")) expect(p.reason, p.name).not.toBe("unexplained");
        const kinds = (cs: StageCopy[]) => {
          const byKind = { MemcpyToHost: 0, MemcpyFromHost: 0 };
          for (const c of cs) byKind[c.kind]++;
          return byKind;
        };

        if (def.target === "cpu") {
          // The structural split agrees with the compile report: the data path is report.addedNodes,
          // the exposure is one Identity per stage.
          expect(
            v.nodes
              .filter((n) => n.role === "data")
              .map((n) => n.name)
              .sort(),
          ).toEqual([...v.addedNodes].sort());
          for (const st of stages) {
            expect([...st.expose.webgpu, ...st.expose.cpu, ...st.expose.absent], `stage ${st.stage} exposure`).toEqual([
              "Identity",
            ]);
            expect(st.data, `stage ${st.stage}`).toEqual({ ...EXPECTED_STAGE_PLACEMENT, absent: [] });
            for (const p of prunecNodes.filter((x) => x.stage === st.stage && x.role === "data" && x.where === "cpu"))
              expect(p.reason, p.name).toMatch(/^no WebGPU kernel/);
            const byPrefix = { MemcpyToHost: 0, MemcpyFromHost: 0 };
            for (const m of log.memcpy.filter((x) => x.tensor.startsWith(`prunec/stage${st.stage}/`)))
              byPrefix[m.kind]++;
            expect(byPrefix, `stage ${st.stage} device<->host copies`).toEqual(EXPECTED_STAGE_COPIES);
            expect(kinds(st.copies.data), `stage ${st.stage} data-path copies`).toEqual(EXPECTED_STAGE_COPIES);
          }
          return;
        }

        if (def.exposeIndices) {
          // The structural split agrees with an independent one: the data path is exactly what the
          // same spec compiles to without exposeIndices; the rest is exposure.
          expect(
            v.nodes
              .filter((n) => n.role === "data")
              .map((n) => n.name)
              .sort(),
          ).toEqual([...v.withoutExposure!].sort());
        } else {
          expect(v.nodes.filter((n) => n.role === "expose")).toEqual([]);
          expect(v.nodes.map((n) => n.name).sort()).toEqual([...v.addedNodes].sort());
        }
        for (const st of stages) {
          const expectedExpose = def.exposeIndices
            ? EXPECTED_WEBGPU_TARGET_PLACEMENT.expose
            : { webgpu: [], cpu: [], absent: [] };
          expect({ data: st.data, expose: st.expose }, `stage ${st.stage}`).toEqual({
            data: { ...EXPECTED_WEBGPU_TARGET_PLACEMENT.data, absent: [] },
            expose: expectedExpose,
          });
          expect(st.data.cpu, `stage ${st.stage}: data-path nodes on the CPU`).toEqual([]);
          expect(st.copies.data, `stage ${st.stage}: device<->host copies on the data path`).toEqual([]);
          expect(kinds(st.copies.expose), `stage ${st.stage}: exposure copies`).toEqual(
            def.exposeIndices ? EXPECTED_WEBGPU_TARGET_PLACEMENT.copies.expose : { MemcpyToHost: 0, MemcpyFromHost: 0 },
          );
        }
        if (!def.exposeIndices) {
          // Every prunec node on WebGPU; no copy involves a prunec tensor (produced or read by a
          // prunec node, or named prunec/…); and the model has no more copies than the dense one.
          expect(
            prunecNodes.filter((p) => p.where !== "webgpu").map((p) => `${p.opType} ${p.name} @ ${p.where}`),
          ).toEqual([]);
          expect(copies).toEqual([]);
          expect(log.memcpy.filter((m) => m.tensor.startsWith("prunec"))).toEqual([]);
          const dense = parsePlacement((await both("dense")).web.log, logId(mc, "dense"));
          expect(log.memcpy.length).toBe(dense.memcpy.length);
        }
      }, 300_000);
    }

    it.runIf(BENCH_ROUNDS > 0)(
      `timing: warm session.run of every variant, ${BENCH_ROUNDS} interleaved rounds (PRUNEC_WEBGPU_BENCH)`,
      async () => {
        const batch = prepared.batches[0]!;
        const feeds = putInput(server!, mc, batch, `${mc.name}.bench.in.bin`);
        const models = prepared.variants.map((v) => ({
          id: logId(mc, v.key),
          model: server!.put(`${logId(mc, v.key)}.onnx`, v.model),
          outputs: [mc.output, ...v.indexOutputs],
        }));
        const job = { models, feeds, rounds: BENCH_ROUNDS };
        const ms = await browser!.page.evaluate((j) => (window as unknown as PageApi).prunecWebgpu.bench(j), job);
        mr.bench = {
          rounds: BENCH_ROUNDS,
          batch: batch.map((s) => s.id),
          ms: Object.fromEntries(
            prepared.variants.map((v, i) => [
              v.key,
              { min: round(Math.min(...ms[i]!)), median: round(median(ms[i]!)), all: ms[i]!.map(round) },
            ]),
          ),
        };
        for (const t of ms) expect(t).toHaveLength(BENCH_ROUNDS);
      },
      1_800_000,
    );
  });
}

function logId(mc: ModelCase, key: string): string {
  return `${mc.name}.${key}`;
}

/** A spec on one line: its stages joined with "; ". */
function oneLine(spec: string): string {
  return spec.trim().split("\n").join("; ");
}

function round(ms: number): number {
  return Math.round(ms);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function rows(data: ArrayLike<number>, dims: number[]): number[][] {
  const [b, k] = dims as [number, number];
  return Array.from({ length: b }, (_, i) => Array.from({ length: k }, (_, j) => Number(data[i * k + j])));
}

function prunecNames(graph: GraphProto): string[] {
  return graph.node.filter((n) => n.name.startsWith("prunec/")).map((n) => n.name);
}

/** Compile the variants, find their scores tensors, and pick inputs both runtimes must agree on. */
async function prepare(mc: ModelCase, defs: VariantDef[]): Promise<Prepared> {
  const dense = new Uint8Array(readFileSync(mc.modelPath));
  const variants: Variant[] = defs.map((def, i) => {
    if (!def.spec) {
      return {
        ...def,
        model: dense,
        graph: decodeModel(dense).graph!,
        lowering: [],
        indexOutputs: [],
        nodes: [],
        addedNodes: [],
        scores: [],
      };
    }
    const opts = {
      exposeIndices: def.exposeIndices,
      target: def.target,
      modelName: mc.modelPath,
      specName: `${mc.name}-${def.key}.prune`,
    };
    const res = compile(dense, def.spec, opts);
    const graph = decodeModel(res.model).graph!;
    const nodes = stageNodes(graph);
    const scores = res.report.stages.map((st, s) => {
      // The first TopK of the stage ranks the scores ([B,N] or [B,N,1]); k = its kept count minus the always-kept prefix.
      const topk = graph.node.find((n) => n.opType === "TopK" && n.name.startsWith(`prunec/stage${s}/`));
      if (!topk) throw new Error(`${mc.name} ${def.key}: no TopK among stage ${s}'s nodes`);
      if (typeof st.tokensIn !== "number" || typeof st.tokensOut !== "number")
        throw new Error(`${mc.name}: stage ${s} has symbolic token counts`);
      return { tensor: topk.input[0]!, tokensIn: st.tokensIn, tokensOut: st.tokensOut };
    });
    const v: Variant = {
      ...def,
      model: res.model,
      graph,
      lowering: res.report.stages.map((st) => st.lowering),
      indexOutputs: def.exposeIndices ? res.report.stages.map((_, s) => `prunec.stage${s}.indices`) : [],
      nodes,
      addedNodes: res.report.addedNodes,
      scores,
    };
    if (def.target === "webgpu" && def.exposeIndices) {
      v.withoutExposure = prunecNames(
        decodeModel(
          compile(dense, def.spec, { ...opts, exposeIndices: false, specName: `${mc.name}-${def.key}-twin-${i}.prune` })
            .model,
        ).graph!,
      );
    }
    return v;
  });

  // Selection, from CPU runs only: every stage's score gap and the logit gap must be clear.
  const pool = mc.candidates();
  const feeds = feedsOf(mc, pool);
  const gaps = new Map<string, string>();
  for (const v of variants) {
    const scoreNames = v.scores.map((s) => s.tensor);
    const probe = scoreNames.length ? withOutputs(v.model, scoreNames, DT.FLOAT) : v.model;
    const out = await runNode(probe, feeds, [mc.output, ...scoreNames]);
    const logits = out[mc.output]!;
    const classes = logits.dims[1]!;
    pool.forEach((s, i) => {
      const row = Array.from((logits.data as Float32Array).subarray(i * classes, (i + 1) * classes)).sort(
        (a, b) => b - a,
      );
      if (!(row[0]! - row[1]! > MIN_LOGIT_GAP) && !gaps.has(s.id))
        gaps.set(s.id, `${v.key}: top-2 logit gap ${(row[0]! - row[1]!).toExponential(2)} <= ${MIN_LOGIT_GAP}`);
    });
    v.scores.forEach((sc, st) => {
      const t = out[sc.tensor]!;
      const n = t.data.length / pool.length; // scored tokens; the other tokensIn - n (CLS) are always kept
      const keep = sc.tokensOut - (sc.tokensIn - n);
      pool.forEach((s, i) => {
        const row = Array.from((t.data as Float32Array).subarray(i * n, (i + 1) * n)).sort((a, b) => b - a);
        const gap = (row[keep - 1]! - row[keep]!) / Math.abs(row[keep - 1]!);
        if (!(gap >= MIN_SCORE_GAP) && !gaps.has(s.id))
          gaps.set(s.id, `${v.key} stage ${st}: kept/dropped score gap ${gap.toExponential(2)} < ${MIN_SCORE_GAP}`);
      });
    });
  }
  const want = mc.batchSize * mc.batchCount;
  const chosen = pool.filter((s) => !gaps.has(s.id)).slice(0, want);
  if (chosen.length < want)
    throw new Error(
      `${mc.name}: only ${chosen.length} of ${pool.length} candidate inputs are clear of ties (need ${want}): ${[...gaps.values()].join("; ")}`,
    );
  const lastChosen = pool.indexOf(chosen[chosen.length - 1]!);
  const skipped = pool
    .slice(0, lastChosen)
    .filter((s) => gaps.has(s.id))
    .map((s) => ({ id: s.id, why: gaps.get(s.id)! }));
  const batches = Array.from({ length: mc.batchCount }, (_, b) =>
    chosen.slice(b * mc.batchSize, (b + 1) * mc.batchSize),
  );
  return { variants, batches, skipped };
}

async function runBoth(mc: ModelCase, v: Variant, batches: Sample[][]): Promise<{ web: BrowserRun; cpu: CpuRun[] }> {
  const outputs = [mc.output, ...v.indexOutputs];
  const web = await runInBrowser(server!, browser!, mc, logId(mc, v.key), v.model, batches, outputs);
  const cpu: CpuRun[] = [];
  for (const batch of batches) cpu.push(await runNode(v.model, feedsOf(mc, batch), outputs));
  return { web, cpu };
}

function fmt(x: number | undefined): string {
  return x === undefined ? "-" : x.toExponential(1);
}

function secs(ms: number | undefined): string {
  return ms === undefined ? "-" : `${(ms / 1000).toFixed(2)}s`;
}

function summary(): string {
  const lines: string[] = [];
  const a = report.browser.adapter;
  lines.push("");
  lines.push(
    `WebGPU suite: ${report.browser.userAgent.match(/Chrome\/\S+/)?.[0] ?? "?"}, adapter ${a ? `${a.vendor}/${a.architecture}${a.isFallbackAdapter ? " (fallback)" : ""}` : "none"}, onnxruntime-web ${report.runtimes.onnxruntimeWeb} [webgpu] vs onnxruntime-node ${report.runtimes.onnxruntimeNode} [cpu]`,
  );
  const label = (v: VariantReport) =>
    (v.spec ?? "dense") + (v.target === "webgpu" ? ` [webgpu${v.exposeIndices ? "" : ", no expose"}]` : "");
  const w = Math.max(7, ...report.models.flatMap((m) => m.variants.map((v) => label(v).length)));
  lines.push(
    `${"model".padEnd(9)} ${"variant".padEnd(w)} ${"batches".padEnd(7)} ${"max|dlogit|".padEnd(11)} ${"argmax".padEnd(7)} ${"indices".padEnd(8)} ${"copies".padEnd(9)} ${"session".padEnd(8)} run (per batch)`,
  );
  for (const m of report.models) {
    for (const v of m.variants) {
      const n = v.batches.flat().length;
      const argmax = v.predictions
        ? `${v.predictions.webgpu.filter((p, i) => p === v.predictions!.cpu[i]).length}/${n}`
        : "-";
      let idx =
        v.indices === undefined
          ? "-"
          : v.indices.length === 0
            ? "n/a"
            : v.indices.every((x) => x.equal)
              ? "equal"
              : "DIFFER";
      if (v.indices?.some((x) => x.equalDefaultTarget === false)) idx = "DIFFER*";
      const shape = `${v.batches.length}x${v.batches[0]?.length ?? 0}`;
      // prunec copies, data path + exposure, all stages
      const st = v.placement?.stages ?? [];
      const copies = v.placement
        ? `${st.reduce((s, x) => s + x.copies.data.length, 0)}+${st.reduce((s, x) => s + x.copies.expose.length, 0)}`
        : "-";
      lines.push(
        `${m.name.padEnd(9)} ${label(v).padEnd(w)} ${shape.padEnd(7)} ${fmt(v.maxAbsDiffLogits).padEnd(11)} ${argmax.padEnd(7)} ${idx.padEnd(8)} ${copies.padEnd(9)} ${secs(v.createMs).padEnd(8)} ${v.runMs ? v.runMs.map((r) => secs(r)).join("+") : "-"}${v.error ? "  FAILED" : ""}`,
      );
    }
    if (m.skipped.length)
      lines.push(`  ${m.name}: skipped inputs (near ties): ${m.skipped.map((s) => s.id).join(", ")}`);
  }
  lines.push("  copies: prunec's device<->host copies on the data path + for the exposure outputs (all stages)");
  for (const m of report.models) {
    if (!m.bench) continue;
    lines.push(
      `timing ${m.name} (batch of ${m.bench.batch.length}, ${m.bench.rounds} interleaved rounds): min / median session.run`,
    );
    for (const v of m.variants) {
      const t = m.bench.ms[v.key];
      if (t) lines.push(`  ${label(v).padEnd(w)} ${secs(t.min)} / ${secs(t.median)}`);
    }
  }
  for (const [lowering, roles] of Object.entries(report.prunecOpPlacement)) {
    for (const [role, ops] of Object.entries(roles)) {
      lines.push(
        `prunec's ${role === "data" ? "data-path" : "exposure"} nodes, ${lowering} lowering (all stages, all variants): WebGPU / CPU / optimised away`,
      );
      for (const [op, c] of Object.entries(ops).sort(([x], [y]) => x.localeCompare(y))) {
        lines.push(
          `  ${op.padEnd(14)} ${String(c.webgpu).padStart(3)} / ${String(c.cpu).padStart(3)} / ${String(c.absent).padStart(3)}`,
        );
      }
    }
  }
  lines.push(`report: ${REPORT_PATH}   console: ${CONSOLE_PATH}   wall: ${report.wallSeconds.toFixed(0)}s`);
  return lines.join("\n");
}
