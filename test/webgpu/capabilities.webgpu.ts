/**
 * Every capability of prunec, in its WebGPU-targeted form, on onnxruntime-web's WebGPU EP.
 *
 * For each criterion of passes/registry.ts CRITERIA (similarity through `merge`), plus `with mask`,
 * `with recycle` and an adaptive amount (`keep mass`), the trained digits model
 * (examples/digits/model.onnx) is compiled with ONE stage after layer 1 and
 * `{ exposeIndices: true, target: "webgpu" }`, then run
 *   - in Chromium (SwiftShader) with executionProviders ["webgpu"] only, on a batch of 4 (the
 *     adaptive one also on each of those 4 alone: at batch > 1 it pads, at batch 1 it removes);
 *   - on onnxruntime-node (CPU) on the same inputs;
 * and compared: identical exposed indices (and `prunec.stage0.counts`), equal predictions, logits
 * within LOGITS_ATOL. Where prunec's nodes run (WebGPU / CPU / removed by ORT) and the device↔host
 * copies ORT inserts are read from ORT's verbose log (placement.ts) and RECORDED, not asserted
 * (README.md, "Capabilities on WebGPU"); the one structural assertion is that diversity and
 * k-center have no Loop node (the WebGPU EP has no Loop kernel).
 *
 * Inputs: per capability, the first 4 candidates (sample.prds, then test.prds's first 16) that are
 * clear of ties on the CPU run: every float TopK / ArgMax / ArgMin of the stage whose indices are
 * used separates its k-th and (k+1)-th (resp. first and second) value by at least MIN_SCORE_GAP
 * (relative), the adaptive count's cumulative mass is that far from its target, and the top-2
 * logits differ by more than MIN_LOGIT_GAP. Skipped candidates and their margins are in the
 * report. PRUNEC_WEBGPU_CAP_SCREEN=0 turns the screen off (to see what near ties do; not for CI).
 *
 * Writes scratch/webgpu-capabilities.json and prints a table (the one in README.md).
 * Run: npm run test:webgpu (all WebGPU files), or
 *      npx vitest run --config test/webgpu/vitest.config.ts test/webgpu/capabilities.webgpu.ts
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compile } from "../../src/index.js";
import { decodeModel, encodeModel } from "../../src/onnx/io.js";
import { shallowCopy } from "../../src/ir/copy.js";
import { ValueInfoProtoSchema, type GraphProto, type NodeProto } from "../../src/onnx/gen/onnx_pb.js";
import { CRITERIA } from "../../passes/registry.js";
import { maxAbsDiff, runNode } from "../helpers/ort.js";
import { REPO_ROOT } from "../helpers/shared.js";
import type { AdapterInfo, BrowserSession } from "./browser.js";
import { DIGITS_DIR, modelCases, type ModelCase, type Sample } from "./models.js";
import { CPU_EP, WEBGPU_EP, locate, parsePlacement, type MemcpyNote, type NodeWhere } from "./placement.js";
import { stageCopies, stageOf, type Role, type StageCopy, type StageNode } from "./stage-graph.js";
import type { TestServer } from "./server.js";
import {
  argmaxRows,
  feedsOf,
  finishSuite,
  itBrowserReady,
  openSuiteBrowser,
  runInBrowser,
  type BrowserRun,
} from "./harness.js";
import { DECODER_CASES } from "./decoder-cases.js";

const SCRATCH = join(REPO_ROOT, "scratch");
const REPORT_PATH = join(SCRATCH, "webgpu-capabilities.json");

/** The same tolerances as prune.webgpu.ts (see there for the reasoning). */
const LOGITS_ATOL = 1e-3;
const MIN_LOGIT_GAP = 2 * LOGITS_ATOL;
const MIN_SCORE_GAP = 1e-4;
const SCREEN = process.env["PRUNEC_WEBGPU_CAP_SCREEN"] !== "0";
const BATCH = 4;

interface Capability {
  /** Report key, ORT logId suffix and blob name part. */
  key: string;
  /** What it covers: a criterion of CRITERIA, or a stage form. */
  covers: string;
  spec: string;
  /** Adaptive amount: also exposes prunec.stage0.counts; also run at batch 1. */
  adaptive?: boolean;
  /** Greedy selection: compiles to an ONNX Loop for the default target, unrolled for webgpu. */
  greedy?: boolean;
  /** A head stage: exposes prunec.stage0.heads instead of token indices. */
  heads?: boolean;
}

const keep = (criterion: string) => `after layer 1 keep 25% by ${criterion}\n`;
export const CAPABILITIES: Capability[] = [
  { key: "cls-attn", covers: "cls-attn", spec: keep("cls-attn") },
  { key: "global-attn", covers: "global-attn", spec: keep("global-attn") },
  { key: "cls-attn-ensemble", covers: "cls-attn-ensemble", spec: keep("cls-attn-ensemble(layers: 0..1)") },
  { key: "hiprune", covers: "hiprune", spec: keep("hiprune(object_layer: 0, alpha: 0.5)") },
  { key: "fopru", covers: "fopru", spec: keep("fopru") },
  { key: "spatial-rows", covers: "spatial-rows", spec: keep("spatial-rows") },
  { key: "pagerank", covers: "pagerank", spec: keep("pagerank") },
  // It may drop at most half (the important half stays); at layer 5 the digits model's partition has
  // no near-ties (test/redundancy.test.ts checks the margins).
  { key: "redundancy", covers: "redundancy", spec: "after layer 5 drop 25% by redundancy\n" },
  { key: "flowcut", covers: "flowcut", spec: keep("flowcut") },
  { key: "diversity", covers: "diversity", spec: keep("diversity"), greedy: true },
  { key: "k-center", covers: "k-center", spec: keep("k-center"), greedy: true },
  { key: "ttv", covers: "ttv", spec: keep("ttv") },
  { key: "norm", covers: "norm", spec: keep("norm") },
  { key: "random", covers: "random", spec: keep("random(seed: 0)") },
  { key: "uniform", covers: "uniform", spec: keep("uniform") },
  // SpAtten's running score over layers 0..1 (the cross-stage carry is tested in test/spatten.test.ts).
  { key: "spatten", covers: "spatten", spec: keep("spatten") },
  // HoloV's crops: a count per example (a full crop's surplus is lost), so it pads like keep mass.
  { key: "crops", covers: "crops", spec: keep("crops(count: 16)"), adaptive: true },
  // SpAtten's head pruning: layers 2..5 gather 2 of the 4 heads per example.
  {
    key: "spatten-heads",
    covers: "keep heads (spatten)",
    spec: "after layer 1 keep heads 2 by spatten\n",
    heads: true,
  },
  { key: "merge", covers: "similarity", spec: "after layer 1 merge 25% by similarity\n" },
  { key: "mask", covers: "with mask", spec: "after layer 1 keep 25% by cls-attn with mask\n" },
  { key: "recycle", covers: "with recycle", spec: "after layer 1 keep 25% by cls-attn with recycle\n" },
  {
    key: "keep-mass",
    covers: "keep mass (adaptive)",
    spec: "after layer 1 keep mass 60% by cls-attn\n",
    adaptive: true,
  },
];

/** A stage node that decides which tokens survive, and what to check its input for. */
interface Decisive {
  node: NodeProto;
  kind: "topk" | "arg" | "mass";
  /** TopK: whether k is a constant (else it depends on the batch, checked on the real batches only). */
  staticK: boolean;
  /** Tensors to fetch: the ranked input and, for TopK, its values output (k = its size). */
  tensors: string[];
}

type CapRole = Role | "dead";
interface CapNode extends Omit<StageNode, "role"> {
  role: CapRole;
}

interface Variant {
  cap: Capability;
  model: Uint8Array;
  graph: GraphProto;
  lowering: string[];
  outputs: string[];
  nodes: CapNode[];
  decisive: Decisive[];
  hasLoop: boolean;
}

/** One configuration the variant runs in: a batch of 4, or (adaptive) one sample alone. */
type Batch = Sample[];

interface Skip {
  id: string;
  why: string;
}

interface CapReport {
  key: string;
  covers: string;
  spec: string;
  lowering: string[];
  loopNodes: number;
  batches: string[][];
  skipped: Skip[];
  /** Per chosen sample: its smallest selection margin on the CPU run (relative) and where. */
  margins: Record<string, { margin: number; at: string }>;
  createMs?: number;
  runMs?: number[];
  maxAbsDiffLogits?: number;
  predictions?: { webgpu: number[]; cpu: number[]; labels: (number | null)[] };
  outputsEqual?: Record<string, boolean>;
  placement?: {
    counts: Record<string, number>;
    data: Split;
    expose: Split;
    /** Nodes no output depends on (ORT drops them: "removed"). */
    dead: Split;
    /** Op types (sorted) of the data-path nodes on the CPU, with ORT's reason. */
    dataOnCpu: { op: string; name: string; reason: string }[];
    copies: { data: Copies; expose: Copies; all: number };
    prunecNodes: (NodeWhere & { role: CapRole })[];
    stageCopies: StageCopy[];
    memcpy: MemcpyNote[];
  };
  error?: string;
}

interface Split {
  webgpu: number;
  cpu: number;
  absent: number;
}

interface Copies {
  MemcpyToHost: number;
  MemcpyFromHost: number;
}

const digitsCase = modelCases().find((m) => m.name === "digits");
const HAVE_DIGITS = digitsCase !== undefined;

const t0 = Date.now();
const report = {
  generatedAt: new Date().toISOString(),
  wallSeconds: 0,
  model: join(DIGITS_DIR, "model.onnx"),
  compile: { exposeIndices: true, target: "webgpu" },
  browser: { userAgent: "", adapter: null as AdapterInfo | null, onnxruntimeWeb: "", executionProviders: ["webgpu"] },
  tolerance: { logitsAbs: LOGITS_ATOL, minScoreGap: MIN_SCORE_GAP, minLogitGap: MIN_LOGIT_GAP, screen: SCREEN },
  capabilities: [] as CapReport[],
  blockedRequests: [] as string[],
  pageErrors: [] as string[],
};

it("the capability list covers every vision criterion prunec compiles (passes/registry.ts CRITERIA), decoder-cases.ts every decoder one", () => {
  const covered = new Set(CAPABILITIES.map((c) => c.covers));
  // Decoder criteria (those needing token sets such as `image`, and last-token-attn, FastV /
  // LazyLLM) run on the test decoder in decoder.webgpu.ts (decoder-cases.ts DECODER_CASES).
  const onDecoder = new Set(DECODER_CASES.map((c) => c.covers));
  const decoderOnly = (c: (typeof CRITERIA)[number]) => !!c.requiresSets?.length || c.name === "last-token-attn";
  // evs and vla-pruner run across calls (a state pair fed back by the host), which this one-call
  // harness does not feed; test/webgpu/evs.webgpu.ts and vla-pruner.webgpu.ts run them call by call
  // against onnxruntime-node.
  const acrossCalls = new Set(["evs", "vla-pruner"]);
  expect(
    CRITERIA.filter((c) => !acrossCalls.has(c.name) && !(decoderOnly(c) ? onDecoder : covered).has(c.name)).map(
      (c) => c.name,
    ),
  ).toEqual([]);
  for (const c of CAPABILITIES) {
    // every criterion appears in the spec it claims to cover
    if (CRITERIA.some((m) => m.name === c.covers)) expect(c.spec).toContain(c.covers);
  }
});

describe.skipIf(!HAVE_DIGITS)(
  `capabilities on WebGPU, target webgpu (digits, batch ${BATCH})${HAVE_DIGITS ? "" : " (needs examples/digits/model.onnx: missing)"}`,
  () => {
    const mc = digitsCase as ModelCase;
    let server: TestServer | undefined;
    let browser: BrowserSession | undefined;
    const variants = new Map<string, Variant>();
    const chosen = new Map<string, Batch[]>();
    const reports = new Map<string, CapReport>();

    beforeAll(async () => {
      const dense = new Uint8Array(readFileSync(mc.modelPath));
      const pool = mc.candidates();
      for (const cap of CAPABILITIES) {
        const v = prepare(dense, cap);
        variants.set(cap.key, v);
        const { batches, skipped, margins } = await choose(mc, v, pool);
        chosen.set(cap.key, batches);
        const r: CapReport = {
          key: cap.key,
          covers: cap.covers,
          spec: cap.spec.trim(),
          lowering: v.lowering,
          loopNodes: v.graph.node.filter((n) => n.opType === "Loop").length,
          batches: batches.map((b) => b.map((s) => s.id)),
          skipped,
          margins,
        };
        reports.set(cap.key, r);
        report.capabilities.push(r);
      }
      ({ server, browser } = await openSuiteBrowser(report.browser));
    }, 300_000);

    afterAll(async () => {
      await finishSuite({ report, path: REPORT_PATH, t0, browser, server, summary });
    }, 60_000);

    itBrowserReady(report.browser, () => browser);

    it("diversity and k-center compile to an unrolled selection for target webgpu: no Loop node (the default target has one)", () => {
      const dense = new Uint8Array(readFileSync(mc.modelPath));
      for (const cap of CAPABILITIES.filter((c) => c.greedy)) {
        const v = variants.get(cap.key)!;
        expect(v.hasLoop, `${cap.key}, target webgpu`).toBe(false);
        const cpu = decodeModel(compile(dense, cap.spec, { exposeIndices: true }).model).graph!;
        expect(
          cpu.node.some((n) => n.opType === "Loop"),
          `${cap.key}, default target`,
        ).toBe(true);
      }
    });

    for (const cap of CAPABILITIES) {
      const extra = cap.adaptive ? " and counts" : "";
      const alone = cap.adaptive ? ` (batch ${BATCH}, and each sample alone)` : "";
      it(`${cap.key} ('${cap.spec.trim()}'): WebGPU gives onnxruntime-node's kept indices${extra}, predictions, logits within ${LOGITS_ATOL}${alone}; placement recorded`, async () => {
        const v = variants.get(cap.key)!;
        const r = reports.get(cap.key)!;
        const batches = chosen.get(cap.key)!;
        try {
          expect(v.lowering).toHaveLength(cap.heads ? 0 : 1);
          if (cap.greedy) expect(v.hasLoop).toBe(false);
          const web = await runBrowser(v, batches);
          r.createMs = Math.round(web.createMs);
          r.runMs = web.runs.map((x) => Math.round(x.runMs));
          // Placement first (recorded even when the comparison below fails).
          r.placement = placementOf(v, web.log);
          const cpu = [];
          for (const b of batches) cpu.push(await runNode(v.model, feedsOf(mc, b), v.outputs));
          const webLogits = web.runs.flatMap((x) => x.outputs[mc.output]!.data);
          const cpuLogits = cpu.flatMap((x) => Array.from(x[mc.output]!.data as Float32Array));
          const classes = cpu[0]![mc.output]!.dims[1]!;
          r.maxAbsDiffLogits = maxAbsDiff(webLogits, cpuLogits);
          const webPred = argmaxRows(webLogits, classes);
          const cpuPred = argmaxRows(cpuLogits, classes);
          r.predictions = { webgpu: webPred, cpu: cpuPred, labels: batches.flat().map((s) => s.label ?? null) };
          r.outputsEqual = {};
          const idx = v.outputs.filter((o) => o !== mc.output);
          for (const o of idx) {
            const w = web.runs.map((x) => ({ dims: x.outputs[o]!.dims, data: x.outputs[o]!.data }));
            const c = cpu.map((x) => ({ dims: x[o]!.dims, data: Array.from(x[o]!.data as BigInt64Array, Number) }));
            r.outputsEqual[o] = JSON.stringify(w) === JSON.stringify(c);
          }
          expect(idx).toEqual(
            cap.heads
              ? ["prunec.stage0.heads"]
              : cap.adaptive
                ? ["prunec.stage0.indices", "prunec.stage0.counts"]
                : ["prunec.stage0.indices"],
          );
          for (const o of idx) {
            for (let b = 0; b < batches.length; b++) {
              expect(
                { dims: web.runs[b]!.outputs[o]!.dims, data: web.runs[b]!.outputs[o]!.data },
                `${o}, batch ${batches[b]!.map((s) => s.id).join(",")}`,
              ).toEqual({
                dims: cpu[b]![o]!.dims,
                data: Array.from(cpu[b]![o]!.data as BigInt64Array, Number),
              });
            }
          }
          expect(webPred).toEqual(cpuPred);
          expect(r.maxAbsDiffLogits).toBeLessThanOrEqual(LOGITS_ATOL);
          expect(r.placement.counts[WEBGPU_EP] ?? 0).toBeGreaterThan(0);
          expect(
            Object.keys(r.placement.counts).every((ep) => ep === WEBGPU_EP || ep === CPU_EP),
            JSON.stringify(r.placement.counts),
          ).toBe(true);
        } catch (err) {
          r.error = String(err).split("\n")[0];
          throw err;
        }
      }, 300_000);
    }

    async function runBrowser(v: Variant, batches: Batch[]): Promise<BrowserRun> {
      return runInBrowser(server!, browser!, mc, logId(v.cap), v.model, batches, v.outputs);
    }
  },
);

function logId(cap: Capability): string {
  return `digits-cap.${cap.key}`;
}

/** Compile, classify prunec's nodes, find the nodes whose ties would change the kept tokens. */
function prepare(dense: Uint8Array, cap: Capability): Variant {
  const res = compile(dense, cap.spec, {
    exposeIndices: true,
    target: "webgpu",
    modelName: "digits",
    specName: `${cap.key}.prune`,
  });
  const graph = decodeModel(res.model).graph!;
  const outputs = graph.output.map((o) => o.name);
  const nodes = roles(graph);
  const producer = new Map<string, NodeProto>();
  const consumed = new Set<string>();
  const inits = new Set(graph.initializer.map((t) => t.name));
  for (const n of graph.node) {
    for (const o of n.output) if (o) producer.set(o, n);
    for (const i of n.input) if (i) consumed.add(i);
  }
  const mine = graph.node.filter((n) => stageOf(n.name) !== undefined);
  const decisive: Decisive[] = [];
  for (const n of mine) {
    if (n.opType === "TopK" && n.output[1] && (consumed.has(n.output[1]) || outputs.includes(n.output[1]))) {
      const k = n.input[1]!;
      decisive.push({
        node: n,
        kind: "topk",
        staticK: inits.has(k) || producer.get(k)?.opType === "Constant",
        tensors: [n.input[0]!, n.output[0]!],
      });
    } else if (n.opType === "ArgMax" || n.opType === "ArgMin") {
      decisive.push({ node: n, kind: "arg", staticK: true, tensors: [n.input[0]!] });
    } else if (n.opType === "CumSum") {
      // keep mass: a token is needed while the mass before it is below the target (Less(before, target)).
      const less = graph.node.find((m) => m.opType === "Less" && m.input[0] === n.output[0]);
      if (less) decisive.push({ node: n, kind: "mass", staticK: true, tensors: [n.output[0]!, less.input[1]!] });
    }
  }
  return {
    cap,
    model: res.model,
    graph,
    lowering: res.report.stages.map((s) => s.lowering),
    outputs,
    nodes,
    decisive,
    hasLoop: graph.node.some((n) => n.opType === "Loop"),
  };
}

/**
 * prunec's nodes with their role: `data` when the model's own outputs depend on it, `expose` when
 * only prunec.* outputs do (stage-graph.ts's split, extended to prunec.stageN.counts), `dead` when
 * nothing does (a merge stage's token sizes, written for a later merge stage that is not there).
 */
function roles(graph: GraphProto): CapNode[] {
  const producer = new Map<string, NodeProto>();
  for (const n of graph.node) for (const o of n.output) if (o) producer.set(o, n);
  const ancestors = (tensors: string[]) => {
    const seen = new Set<NodeProto>();
    const stack = [...tensors];
    while (stack.length) {
      const p = producer.get(stack.pop()!);
      if (!p || seen.has(p)) continue;
      seen.add(p);
      for (const i of p.input) if (i) stack.push(i);
    }
    return seen;
  };
  const names = graph.output.map((o) => o.name);
  const model = ancestors(names.filter((o) => !o.startsWith("prunec.")));
  const exposed = ancestors(names.filter((o) => o.startsWith("prunec.")));
  const out: CapNode[] = [];
  for (const n of graph.node) {
    const stage = stageOf(n.name);
    if (stage === undefined) continue;
    out.push({
      name: n.name,
      opType: n.opType,
      stage,
      role: model.has(n) ? "data" : exposed.has(n) ? "expose" : "dead",
    });
  }
  return out;
}

/** The model with extra graph outputs, untyped (onnxruntime infers their types). */
function withUntypedOutputs(model: Uint8Array, names: string[]): Uint8Array {
  const m = decodeModel(model);
  const g = m.graph!;
  const have = new Set(g.output.map((o) => o.name));
  const extra = [...new Set(names)].filter((n) => !have.has(n)).map((name) => create(ValueInfoProtoSchema, { name }));
  return encodeModel(shallowCopy(m, { graph: shallowCopy(g, { output: [...g.output, ...extra] }) }));
}

type Outs = Awaited<ReturnType<typeof runNode>>;

/** Relative gap of two values; 0 for equal ones, ∞ when one is infinite (a masked entry). */
function gap(a: number, b: number): number {
  if (a === b) return 0;
  if (!Number.isFinite(a) || !Number.isFinite(b)) return Infinity;
  return Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b));
}

/**
 * Per example of a CPU run, the smallest selection margin over the decisive nodes (relative) and
 * where it is. `all`: include the TopKs whose k depends on the batch (true only for real batches).
 */
function selectionMargins(v: Variant, out: Outs, batch: number, all: boolean): { margin: number; at: string }[] {
  const res = Array.from({ length: batch }, () => ({ margin: Infinity, at: "" }));
  const note = (b: number, m: number, at: string) => {
    if (m < res[b]!.margin) res[b] = { margin: m, at };
  };
  for (const d of v.decisive) {
    const name = d.node.name.split("/").slice(2).join("/");
    if (d.kind === "mass") {
      const before = out[d.tensors[0]!]!;
      const target = out[d.tensors[1]!]!;
      const n = before.dims[1]!;
      for (let b = 0; b < batch; b++) {
        const t = Number(target.data[b]);
        for (let j = 0; j < n; j++)
          note(b, Math.abs(Number(before.data[b * n + j]) - t) / Math.abs(t), `${name} (cumulative mass vs target)`);
      }
      continue;
    }
    if (d.kind === "topk" && !d.staticK && !all) continue;
    const x = out[d.tensors[0]!]!;
    if (x.type !== "float32") continue;
    // A 0/1 indicator of a set decided before (crops' kept tokens): its ties past the count are the
    // padding rows, which are masked whichever are taken; the decisions themselves came earlier.
    if (d.kind === "topk" && Array.from(x.data as ArrayLike<number>).every((v) => v === 0 || v === 1)) continue;
    const attr = (a: string, dflt: number) => {
      const at = d.node.attribute.find((t) => t.name === a);
      return at ? Number(at.i) : dflt;
    };
    const rank = x.dims.length;
    let axis = attr("axis", d.kind === "topk" ? -1 : 0);
    if (axis < 0) axis += rank;
    const largest = d.node.opType === "ArgMin" ? 0 : attr("largest", 1);
    const n = x.dims[axis]!;
    const k = d.kind === "topk" ? out[d.tensors[1]!]!.dims[axis]! : 1;
    if (k >= n) continue; // a full sort: only the order matters, and the values are what is used
    const outer = x.dims.slice(0, axis).reduce((p, q) => p * q, 1);
    const inner = x.dims.slice(axis + 1).reduce((p, q) => p * q, 1);
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < inner; i++) {
        const row: number[] = [];
        for (let j = 0; j < n; j++) row.push(Number(x.data[(o * n + j) * inner + i]));
        row.sort((p, q) => (largest ? q - p : p - q));
        if (d.kind === "arg" && !Number.isFinite(row[0]!)) continue; // a fully masked row (merge's CLS): never used
        note(Math.floor((o * batch) / outer), gap(row[k - 1]!, row[k]!), `${name} (${d.node.opType} k=${k})`);
      }
    }
  }
  return res;
}

function logitGaps(out: Outs, output: string, batch: number): number[] {
  const l = out[output]!;
  const classes = l.dims[1]!;
  return Array.from({ length: batch }, (_, b) => {
    const row = Array.from((l.data as Float32Array).subarray(b * classes, (b + 1) * classes)).sort((p, q) => q - p);
    return row[0]! - row[1]!;
  });
}

/** The batches the variant runs on: the first BATCH candidates clear of ties (and, adaptive, each alone). */
async function choose(
  mc: ModelCase,
  v: Variant,
  pool: Sample[],
): Promise<{ batches: Batch[]; skipped: Skip[]; margins: Record<string, { margin: number; at: string }> }> {
  const tensors = v.decisive.flatMap((d) => d.tensors);
  const probe = withUntypedOutputs(v.model, tensors);
  const fetch = [mc.output, ...new Set(tensors)];
  const margins: Record<string, { margin: number; at: string }> = {};
  const bad = new Map<string, string>();
  const check = async (samples: Sample[], all: boolean) => {
    const out = await runNode(probe, feedsOf(mc, samples), fetch);
    const sel = selectionMargins(v, out, samples.length, all);
    const lg = logitGaps(out, mc.output, samples.length);
    samples.forEach((s, b) => {
      const m = sel[b]!;
      if (!margins[s.id] || m.margin < margins[s.id]!.margin) margins[s.id] = m;
      if (!SCREEN || bad.has(s.id)) return;
      if (!(m.margin >= MIN_SCORE_GAP))
        bad.set(
          s.id,
          `selection margin ${m.margin.toExponential(2)} < ${MIN_SCORE_GAP} at ${m.at}${samples.length > 1 && all ? ` (in batch ${samples.map((x) => x.id).join(",")})` : ""}`,
        );
      else if (!(lg[b]! > MIN_LOGIT_GAP))
        bad.set(s.id, `top-2 logit gap ${lg[b]!.toExponential(2)} <= ${MIN_LOGIT_GAP}`);
    });
  };
  await check(pool, false);
  for (;;) {
    const pick = pool.filter((s) => !bad.has(s.id)).slice(0, BATCH);
    if (pick.length < BATCH)
      throw new Error(
        `${v.cap.key}: only ${pick.length} candidates clear of ties: ${[...bad].map(([id, why]) => `${id}: ${why}`).join("; ")}`,
      );
    const batches: Batch[] = [pick, ...(v.cap.adaptive ? pick.map((s) => [s]) : [])];
    const before = bad.size;
    for (const b of batches) await check(b, true); // the batch-dependent TopKs (adaptive: k = the batch's largest count)
    if (bad.size === before) {
      const last = pool.indexOf(pick[pick.length - 1]!);
      const skipped = pool
        .slice(0, last)
        .filter((s) => bad.has(s.id))
        .map((s) => ({ id: s.id, why: bad.get(s.id)! }));
      const chosenMargins = Object.fromEntries(pick.map((s) => [s.id, margins[s.id]!]));
      return { batches, skipped, margins: chosenMargins };
    }
  }
}

function placementOf(v: Variant, lines: string[]): NonNullable<CapReport["placement"]> {
  const log = parsePlacement(lines, logId(v.cap));
  if (!log.found) throw new Error(`${v.cap.key}: no 'Node placements' block in ORT's verbose log`);
  const where = locate(log, v.nodes);
  const prunecNodes = where.map((w, j) => ({ ...w, role: v.nodes[j]!.role }));
  const split = (role: CapRole): Split => {
    const mine = prunecNodes.filter((p) => p.role === role);
    return {
      webgpu: mine.filter((p) => p.where === "webgpu").length,
      cpu: mine.filter((p) => p.where === "cpu").length,
      absent: mine.filter((p) => p.where === "absent").length,
    };
  };
  // stageCopies reads roles only to tell exposure readers apart; a dead node reads nothing.
  const copies = stageCopies(v.graph, v.nodes as StageNode[], log);
  const kinds = (role: Role): Copies => {
    const c = { MemcpyToHost: 0, MemcpyFromHost: 0 };
    for (const x of copies.filter((y) => y.role === role)) c[x.kind]++;
    return c;
  };
  return {
    counts: log.counts,
    data: split("data"),
    expose: split("expose"),
    dead: split("dead"),
    dataOnCpu: prunecNodes
      .filter((p) => p.role === "data" && p.where === "cpu")
      .map((p) => ({ op: p.opType, name: p.name, reason: p.reason ?? "" }))
      .sort((a, b) => a.op.localeCompare(b.op)),
    copies: { data: kinds("data"), expose: kinds("expose"), all: log.memcpy.length },
    prunecNodes,
    stageCopies: copies,
    memcpy: log.memcpy,
  };
}

/** "Op×n" for a list of op types. */
function tally(ops: string[]): string {
  const c = new Map<string, number>();
  for (const o of ops) c.set(o, (c.get(o) ?? 0) + 1);
  return [...c].map(([o, n]) => (n > 1 ? `${o}×${n}` : o)).join(", ") || "none";
}

function summary(): string {
  const lines: string[] = [];
  const a = report.browser.adapter;
  lines.push("");
  lines.push(
    `WebGPU capabilities (target webgpu, exposeIndices): ${report.browser.userAgent.match(/Chrome\/\S+/)?.[0] ?? "?"}, adapter ${a ? `${a.vendor}/${a.architecture}` : "none"}, onnxruntime-web ${report.browser.onnxruntimeWeb}`,
  );
  lines.push(
    "| capability | lowering | data path WebGPU / CPU / removed | data-path ops on the CPU | exposure WebGPU / CPU / removed | copies data path (to host / from host) | copies exposure (to host / from host) | max \\|Δlogits\\| | indices | session create / first run |",
  );
  lines.push("|---|---|---|---|---|---|---|---|---|---|");
  for (const r of report.capabilities) {
    const p = r.placement;
    const s = (x: Split | undefined) => (x ? `${x.webgpu} / ${x.cpu} / ${x.absent}` : "-");
    const c = (x: Copies | undefined) => (x ? `${x.MemcpyToHost} / ${x.MemcpyFromHost}` : "-");
    const eq = r.outputsEqual ? (Object.values(r.outputsEqual).every(Boolean) ? "equal" : "DIFFER") : "-";
    lines.push(
      `| \`${r.spec.replace(/^after layer 1 /, "")}\` | ${r.lowering.join(",")}${r.loopNodes ? ` (${r.loopNodes} Loop)` : ""} | ${s(p?.data)} | ${p ? tally(p.dataOnCpu.map((x) => x.op)) : "-"} | ${s(p?.expose)} | ${c(p?.copies.data)} | ${c(p?.copies.expose)} | ${r.maxAbsDiffLogits === undefined ? "-" : r.maxAbsDiffLogits.toExponential(1)} | ${eq} | ${r.createMs === undefined ? "-" : `${(r.createMs / 1000).toFixed(1)} / ${((r.runMs?.[0] ?? 0) / 1000).toFixed(1)} s`} |${r.error ? ` FAILED: ${r.error}` : ""}`,
    );
  }
  for (const r of report.capabilities) {
    if (r.skipped.length) lines.push(`  ${r.key}: skipped ${r.skipped.map((x) => `${x.id} (${x.why})`).join("; ")}`);
  }
  for (const r of report.capabilities) {
    const d = r.placement?.dead;
    if (d && d.webgpu + d.cpu + d.absent > 0)
      lines.push(
        `  ${r.key}: ${d.webgpu + d.cpu + d.absent} prunec node(s) no output depends on: ${d.webgpu} / ${d.cpu} / ${d.absent} (WebGPU / CPU / removed)`,
      );
  }
  for (const r of report.capabilities) {
    const reasons = new Set((r.placement?.dataOnCpu ?? []).map((x) => x.reason.replace(/ \(.*$/, "")));
    if (reasons.size && [...reasons].some((x) => !x.startsWith("no WebGPU kernel")))
      lines.push(`  ${r.key}: data path on CPU for: ${[...reasons].join(", ")}`);
  }
  lines.push(`report: ${REPORT_PATH}   wall: ${report.wallSeconds.toFixed(0)}s`);
  return lines.join("\n");
}
