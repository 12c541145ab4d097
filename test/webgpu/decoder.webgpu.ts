/**
 * The decoder criteria on onnxruntime-web's WebGPU EP (capabilities.webgpu.ts covers the vision
 * ones on the digits ViT).
 *
 * For each case of decoder-cases.ts DECODER_CASES (every criterion of passes/registry.ts CRITERIA
 * with `requiresSets`: last-token-attn, iga, transprune, text-attn; plus ttv and pagerank used
 * `of image` inside the decoder, and `drop 100% of image`), the project's small test decoder
 * (test/support/decoder.ts, plain MatMul + Softmax attention, prefill) is compiled with one stage
 * and `{ exposeIndices: true, target: "webgpu" }` (asserted: the stage's lowering is `index` and the
 * bytes equal the default target's: a stage restricted to a token set keeps the index lowering),
 * then run
 *   - in Chromium (SwiftShader) with executionProviders ["webgpu"] only, on a batch of 1 and a
 *     left-padded batch of 3;
 *   - on onnxruntime-node (CPU) on the same feeds;
 * and compared: `prunec.stage0.indices` (and `prunec.stage0.counts`) identical on both, and equal
 * to the TypeScript reference's kept sets (test/reference/, fed the dense model's own tensors from
 * onnxruntime-node; pagerank's reference scores each example on a batch-1 run of it alone, so at
 * the padded batch its expected set is its batch-1 set shifted by its left padding: the compiler
 * gives padding query rows, whose keys are all masked, no transitions); logits within LOGITS_ATOL
 * on every row (padding rows included); next-token predictions (argmax of each example's last
 * prompt row) equal.
 *
 * One GroupQueryAttention case: FastV (`last-token-attn`) compiled into the KV-cache variant
 * (com.microsoft RotaryEmbedding + GroupQueryAttention, empty past), prefill on WebGPU: the kept
 * sets of onnxruntime-node and of the float64 reference decoder (test/reference/decoder.ts), logits
 * and every present.N.key/value within LOGITS_ATOL of onnxruntime-node on the prompt tokens' rows
 * and cache slots (left-padding rows differ between the EPs' GroupQueryAttention kernels: see
 * GQA_PADDING_ROWS; recorded), the last prompt token's logits within REFERENCE_ATOL of the float64
 * reference. Where ORT places the RotaryEmbedding / GroupQueryAttention nodes is recorded and
 * asserted (WebGPU). Should the WebGPU EP refuse them, the test fails with ORT's own error (and the
 * report keeps it).
 *
 * KV-cache cases (decoder-cases.ts KV_CASES: `keep kv 50% by knorm`, `keep kv 50% by snapkv(window: 4,
 * kernel: 3)`, `pyramidkv` (per-layer budgets as int64 tables), every cached layer of the
 * GroupQueryAttention decoder, and `h2o(recent: 2)` on the plain-attention decoder with Concat
 * caches, exposeIndices): per prompt
 * (batch 1, two POOL prompts clear of ties) one WebGPU session runs the prefill and KV_STEPS − 1
 * greedy decode steps in the page, feeding its own argmax and its own presents back
 * (decoder-cases.ts KV_PAGE_RUNNER). Asserted: every `prunec.stage0.layerL.kv_indices` equals
 * onnxruntime-node's and the float64 reference's (test/reference/kv-presses.ts evictPrefill on the
 * reference decoder's q/k/v), the greedy tokens equal onnxruntime-node's and the evicting float64
 * reference loop's, the last logits row within LOGITS_ATOL of onnxruntime-node's at every call,
 * every present K' at prefill and K' + s after s decode steps. Placement is recorded (report `kv`).
 *
 * Inputs: prompts of decoder-cases.ts POOL, the first ones clear of ties on the CPU side: the
 * reference's last kept and first dropped image score differ by at least MIN_SCORE_GAP (relative),
 * text-attn's rater threshold is that far from every text token's mean similarity, and each
 * example's top-2 next-token logits differ by more than MIN_LOGIT_GAP. Skipped prompts are in the
 * report.
 *
 * Writes scratch/webgpu-decoder.json and prints a table.
 * Run: npx vitest run --config test/webgpu/vitest.config.ts test/webgpu/decoder.webgpu.ts
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeModel } from "../../src/onnx/io.js";
import { CRITERIA } from "../../passes/registry.js";
import { maxAbsDiff, runNode, withNode, type Feeds, type Outputs } from "../helpers/ort.js";
import { REPO_ROOT } from "../helpers/shared.js";
import {
  DECODER,
  generateGreedy,
  imageMaskFeed,
  prefillFeeds,
  promptBatch,
  type PromptBatch,
} from "../support/decoder.js";
import { compile } from "../../src/index.js";
import { rows } from "../support/model-edit.js";
import type { AdapterInfo, BrowserSession } from "./browser.js";
import { finishSuite, itBrowserReady, openSuiteBrowser } from "./harness.js";
import { CPU_EP, WEBGPU_EP, locate, parsePlacement, type NodeWhere } from "./placement.js";
import type { TestServer } from "./server.js";
import {
  DECODER_CASES,
  KV_BATCH_CASES,
  KV_CASES,
  KV_STEPS,
  generateInBrowser,
  kvReference,
  GQA,
  PLAIN_CACHE,
  GQA_REFERENCE,
  GQA_SPEC,
  PLAIN,
  POOL,
  batchOf,
  compileCase,
  expectedKeep,
  gqaFeeds,
  plainFeeds,
  runDecoderInBrowser,
  selectionMargin,
  type DecoderCase,
  type PageRun,
} from "./decoder-cases.js";

const REPORT_PATH = join(REPO_ROOT, "scratch", "webgpu-decoder.json");

/** The same tolerances as prune.webgpu.ts / capabilities.webgpu.ts (see prune.webgpu.ts for the reasoning). */
const LOGITS_ATOL = 1e-3;
const MIN_LOGIT_GAP = 2 * LOGITS_ATOL;
const MIN_SCORE_GAP = 1e-4;
/** Reference vs onnxruntime-node for the GQA prefill's last logits (float64 reference; as test/fastv-cache.test.ts). */
const REFERENCE_ATOL = 1e-4;
const V = DECODER.vocab;

/**
 * GQA_PADDING_ROWS: at a left-padded batch, onnxruntime-web's WebGPU GroupQueryAttention and
 * onnxruntime-node's CPU one disagree on the rows of the padding tokens (query rows whose every key
 * is masked by the attention_bias), already on the dense gqa decoder, by units (logits up to ~9);
 * from layer 1 on the pad slots of the caches differ with them. The prompt tokens' rows and cache
 * slots agree to ~1e-5 (the pad slots are masked for every real query, at prefill and in decode
 * steps). So logits and presents are asserted on the prompt tokens' rows / slots; the padding
 * rows' difference is recorded (and, for the plain decoder, whose Softmax agrees, asserted too).
 */
const INDEX_OUTPUTS = ["prunec.stage0.indices", "prunec.stage0.counts"];

interface Skip {
  id: string;
  why: string;
}

interface BatchReport {
  prompts: string[];
  /** Per example: smallest selection margin (relative) on the CPU side, and its top-2 next-token logit gap. */
  margins: number[];
  logitGaps: number[];
  reference: number[][];
  cpu: number[][];
  webgpu?: number[][];
  counts?: { cpu: number[]; webgpu: number[] };
  predictions?: { cpu: number[]; webgpu: number[] };
  /** Over the rows (slots) of real prompt tokens. */
  maxAbsDiffLogits?: number;
  maxAbsDiffPresent?: number;
  /** Over the rows (slots) of left-padding tokens (fully masked attention rows). */
  maxAbsDiffLogitsPadding?: number;
  maxAbsDiffPresentPadding?: number;
  runMs?: number;
}

interface CaseReport {
  key: string;
  covers: string;
  spec: string;
  model: "plain" | "gqa";
  lowering: { cpu: string[]; webgpu: string[] };
  webgpuTargetBytesEqualDefault: boolean;
  skipped: Skip[];
  batches: BatchReport[];
  createMs?: number;
  placement?: {
    counts: Record<string, number>;
    prunec: { webgpu: number; cpu: number; absent: number };
    prunecOnCpu: string;
    /** Model nodes (not prunec's) on the CPU EP, as "Op×n". */
    modelOnCpu: string;
    /** com.microsoft nodes (gqa model): where each runs. */
    contrib: NodeWhere[];
    noWebgpuKernel: string[];
  };
  /** ORT's error (session creation or run), verbatim. */
  ortError?: { phase: string; batch?: number; message: string };
  /** ORT log lines at warning/error severity for this session. */
  ortWarnings?: string[];
  error?: string;
}

/** A KV-cache case (`keep kv … by PRESS` on the gqa decoder): prefill eviction, then greedy decode steps on WebGPU. */
interface KvCaseReport {
  key: string;
  spec: string;
  skipped: Skip[];
  prompts: {
    id: string;
    length: number;
    /** K' per layer (every layer is evicted). */
    kept: number;
    /** Smallest reference selection margin (relative) over layers and KV heads; smallest top-2 logit gap over the calls (CPU). */
    margin: number;
    logitGap: number;
    indicesEqual?: { webgpuCpu: boolean; cpuReference: boolean };
    tokens: { reference: number[]; cpu: number[]; webgpu?: number[] };
    /** Max |Δ| of the last logits row, WebGPU vs onnxruntime-node, over the prefill and every decode step. */
    maxAbsDiffLogits?: number;
    /** present.L.key's length at each call, layer 0 (WebGPU). */
    cacheLengths?: number[];
    createMs?: number;
    runMs?: number[];
  }[];
  placement?: CaseReport["placement"];
  ortError?: { phase: string; step?: number; message: string };
  ortWarnings?: string[];
  error?: string;
}

/** A left-padded batch of 3 through a KV stage form: WebGPU against onnxruntime-node. */
interface KvBatchReport {
  key: string;
  spec: string;
  kvState: boolean;
  lengths?: number[];
  keptEqual?: boolean;
  /** Decode-time stages: the kept slots of every call equal. */
  everyCallEqual?: boolean;
  tokens?: { cpu: number[][]; webgpu: number[][] };
  maxAbsDiffLogits?: number;
  ortError?: { phase: string; step?: number; message: string };
  error?: string;
}

interface Prepared {
  c: { key: string; covers: string; spec: string };
  attention: "plain" | "gqa";
  model: Uint8Array;
  graph: ReturnType<typeof decodeModel>["graph"];
  outputs: string[];
  batches: PromptBatch[];
  ids: string[][];
  cpu: Outputs[];
  reference: number[][][];
  /** gqa: the float64 reference's last-prompt-token logits per example of each batch. */
  referenceLast?: Float64Array[][];
}

const t0 = Date.now();
const report = {
  generatedAt: new Date().toISOString(),
  wallSeconds: 0,
  compile: { exposeIndices: true, target: "webgpu" },
  browser: { userAgent: "", adapter: null as AdapterInfo | null, onnxruntimeWeb: "", executionProviders: ["webgpu"] },
  tolerance: {
    logitsAbs: LOGITS_ATOL,
    minScoreGap: MIN_SCORE_GAP,
    minLogitGap: MIN_LOGIT_GAP,
    referenceAbs: REFERENCE_ATOL,
  },
  cases: [] as CaseReport[],
  kv: [] as KvCaseReport[],
  kvBatches: [] as KvBatchReport[],
  blockedRequests: [] as string[],
  pageErrors: [] as string[],
};

it("the decoder cases cover every criterion that needs token sets (passes/registry.ts CRITERIA), plus ttv, pagerank and drop 100% of image", () => {
  const covered = new Set(DECODER_CASES.map((c) => c.covers));
  // vla-pruner runs across calls (its history is a state pair): test/webgpu/vla-pruner.webgpu.ts.
  const needSets = CRITERIA.filter((c) => c.requiresSets?.length && c.name !== "vla-pruner").map((c) => c.name);
  expect(needSets.length).toBeGreaterThan(0);
  expect(needSets.filter((n) => !covered.has(n))).toEqual([]);
  for (const n of ["ttv", "pagerank", "drop 100% of image", "last-token-attn"]) expect(covered.has(n), n).toBe(true);
  for (const c of DECODER_CASES) {
    if (CRITERIA.some((m) => m.name === c.covers)) expect(c.spec).toContain(`of image by ${c.covers}`);
  }
});

/** Row of example b's last prompt token in [B, K, V] logits: where the prompt's last position sits in its kept indices. */
function lastRow(indices: number[][], b: number, seq: number): number {
  const r = indices[b]!.indexOf(seq - 1);
  if (r < 0) throw new Error(`example ${b}: the last prompt position ${seq - 1} was not kept`);
  return r;
}

function argmax(a: ArrayLike<number>, start: number, n: number): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (a[start + i]! > a[start + best]!) best = i;
  return best;
}

function topGap(a: ArrayLike<number>, start: number, n: number): number {
  const s = Array.from({ length: n }, (_, i) => a[start + i]!).sort((x, y) => y - x);
  return s[0]! - s[1]!;
}

const idxRows = (o: { data: unknown; dims: number[] }) => rows(o.data as BigInt64Array, o.dims);
const keptOf = (o: { data: unknown; dims: number[] }) => idxRows(o).map((r) => r.filter((j) => j >= 0));

/** Per example of `p`: predictions and top-2 gaps at the last prompt row of a [B, K, V] logits output. */
function lastLogits(
  logits: { data: ArrayLike<number>; dims: number[] },
  indices: number[][],
  p: PromptBatch,
): { pred: number[]; gap: number[] } {
  const k = logits.dims[1]!;
  const pred: number[] = [];
  const gap: number[] = [];
  for (let b = 0; b < p.batch; b++) {
    const start = (b * k + lastRow(indices, b, p.seq)) * V;
    pred.push(argmax(logits.data, start, V));
    gap.push(topGap(logits.data, start, V));
  }
  return { pred, gap };
}

/** A case's CPU side for prompt ids: compiled model's outputs, reference kept sets, per-example margins. */
interface CpuSide {
  ids: string[];
  p: PromptBatch;
  out: Outputs;
  reference: number[][];
  margins: { margin: number; at: string }[];
  gaps: number[];
  referenceLast?: Float64Array[];
}

async function plainCpuSide(c: DecoderCase, model: Uint8Array, ids: string[], outputs: string[]): Promise<CpuSide> {
  const p = batchOf(ids);
  const scores = c.scores ? await c.scores(p) : undefined;
  const out = await runNode(model, plainFeeds(p), outputs);
  const reference = p.imageMask.map((image, b) => expectedKeep(image, scores?.[b]?.scores, c.dropPercent));
  const margins = p.imageMask.map((_, b) => {
    const sel = {
      margin: selectionMargin(scores?.[b]?.scores, c.dropPercent),
      at: "last kept vs first dropped image score",
    };
    const extra = scores?.[b]?.extra;
    return extra && extra.margin < sel.margin ? extra : sel;
  });
  const gaps = lastLogits(
    { data: out["logits"]!.data as Float32Array, dims: out["logits"]!.dims },
    idxRows(out["prunec.stage0.indices"]!),
    p,
  ).gap;
  return { ids, p, out, reference, margins, gaps };
}

async function gqaCpuSide(model: Uint8Array, ids: string[], outputs: string[]): Promise<CpuSide> {
  const p = batchOf(ids);
  const out = await runNode(model, gqaFeeds(p), outputs);
  const refs = ids.map((id) => {
    const x = POOL.find((q) => q.id === id)!;
    return GQA_REFERENCE.generatePruned(x.tokens, x.image, { afterLayer: 1, dropPercent: 50 }, 1);
  });
  // Left padding: pads are not image tokens (kept); example b's positions shift by its offset.
  const reference = refs.map((r, b) => [...Array(p.offsets[b]!).keys(), ...r.kept.map((j) => j + p.offsets[b]!)]);
  const margins = refs.map((r) => ({
    margin: selectionMargin(r.imageScores, 50),
    at: "last kept vs first dropped image score (float64 reference)",
  }));
  const gaps = lastLogits(
    { data: out["logits"]!.data as Float32Array, dims: out["logits"]!.dims },
    idxRows(out["prunec.stage0.indices"]!),
    p,
  ).gap;
  return { ids, p, out, reference, margins, gaps, referenceLast: refs.map((r) => r.prefillLast) };
}

/**
 * The batches a case runs on, [a] and [a, b, c] (left-padded): the first prompts of POOL clear of
 * ties (checked alone, then in the batch of 3).
 */
async function choose(side: (ids: string[]) => Promise<CpuSide>): Promise<{ sides: CpuSide[]; skipped: Skip[] }> {
  const bad = new Map<string, string>();
  const screen = (s: CpuSide, ids: string[]) =>
    ids.forEach((id, b) => {
      if (bad.has(id)) return;
      const m = s.margins[b]!;
      const where = ids.length > 1 ? ` (in batch ${ids.join(",")})` : "";
      if (!(m.margin >= MIN_SCORE_GAP))
        bad.set(id, `selection margin ${m.margin.toExponential(2)} < ${MIN_SCORE_GAP} at ${m.at}${where}`);
      else if (!(s.gaps[b]! > MIN_LOGIT_GAP))
        bad.set(id, `top-2 next-token logit gap ${s.gaps[b]!.toExponential(2)} <= ${MIN_LOGIT_GAP}${where}`);
    });
  const need = 3;
  const alone = new Map<string, CpuSide>();
  const clear = () => POOL.filter((q) => alone.has(q.id) && !bad.has(q.id)).map((q) => q.id);
  let next = 0;
  for (;;) {
    // Screen prompts alone, in POOL order, until enough are clear (or POOL is exhausted).
    while (clear().length < need && next < POOL.length) {
      const id = POOL[next++]!.id;
      const s = await side([id]);
      alone.set(id, s);
      screen(s, [id]);
    }
    const pick = clear().slice(0, need);
    if (pick.length < need)
      throw new Error(
        `only ${pick.length} prompts clear of ties: ${[...bad].map(([id, why]) => `${id}: ${why}`).join("; ")}`,
      );
    const groups = [[pick[0]!], pick];
    const sides: CpuSide[] = [];
    const before = bad.size;
    for (const g of groups) {
      const s = g.length === 1 ? alone.get(g[0]!)! : await side(g);
      screen(s, g);
      sides.push(s);
    }
    if (bad.size === before) {
      const last = POOL.findIndex((q) => q.id === pick.at(-1));
      return {
        sides,
        skipped: POOL.slice(0, last)
          .filter((q) => bad.has(q.id))
          .map((q) => ({ id: q.id, why: bad.get(q.id)! })),
      };
    }
  }
}

function tally(ops: string[]): string {
  const c = new Map<string, number>();
  for (const o of [...ops].sort()) c.set(o, (c.get(o) ?? 0) + 1);
  return [...c].map(([o, n]) => (n > 1 ? `${o}×${n}` : o)).join(", ") || "none";
}

function placementOf(graph: Prepared["graph"], id: string, log: string[]): NonNullable<CaseReport["placement"]> {
  const parsed = parsePlacement(log, id);
  const nodes = graph!.node.map((n) => ({ name: n.name, opType: n.opType, domain: n.domain }));
  const where = locate(parsed, nodes);
  const prunec = where.filter((w) => w.name.startsWith("prunec/"));
  const model = where.filter((w) => !w.name.startsWith("prunec/"));
  return {
    counts: parsed.counts,
    prunec: {
      webgpu: prunec.filter((w) => w.where === "webgpu").length,
      cpu: prunec.filter((w) => w.where === "cpu").length,
      absent: prunec.filter((w) => w.where === "absent").length,
    },
    prunecOnCpu: tally(prunec.filter((w) => w.where === "cpu").map((w) => w.opType)),
    modelOnCpu: tally(model.filter((w) => w.where === "cpu").map((w) => w.opType)),
    contrib: where.filter((_, i) => nodes[i]!.domain === "com.microsoft"),
    noWebgpuKernel: parsed.noWebgpuKernel.map((n) => `${n.opType} (${n.name})`),
  };
}

/** ORT log lines of session `id` at warning or error severity (ANSI colours stripped). */
function ortWarnings(log: string[], id: string): string[] {
  const tag = new RegExp(`\\[[WEF]:onnxruntime:(${id.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}|Default),`);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: strips ANSI colour codes (ESC [ … m) from onnxruntime logs
  return log.map((l) => l.replace(/\u001b\[[0-9;]*m/g, "")).filter((l) => tag.test(l));
}

describe("decoder criteria on WebGPU (the test decoder, target webgpu, exposeIndices)", () => {
  let server: TestServer | undefined;
  let browser: BrowserSession | undefined;
  const prepared = new Map<string, Prepared>();
  const reports = new Map<string, CaseReport>();

  async function prepare(
    key: string,
    covers: string,
    spec: string,
    attention: "plain" | "gqa",
    side: (model: Uint8Array, outputs: string[]) => (ids: string[]) => Promise<CpuSide>,
  ) {
    const dense = attention === "plain" ? PLAIN : GQA;
    const cpuTarget = compileCase(dense, spec, "cpu", key);
    const web = compileCase(dense, spec, "webgpu", key);
    const graph = decodeModel(web.model).graph!;
    const outputs = graph.output.map((o) => o.name);
    const { sides, skipped } = await choose(side(web.model, outputs));
    const r: CaseReport = {
      key,
      covers,
      spec: spec.trim(),
      model: attention,
      lowering: {
        cpu: cpuTarget.report.stages.map((s) => s.lowering),
        webgpu: web.report.stages.map((s) => s.lowering),
      },
      webgpuTargetBytesEqualDefault: Buffer.from(cpuTarget.model).equals(Buffer.from(web.model)),
      skipped,
      batches: sides.map((s) => ({
        prompts: s.ids,
        margins: s.margins.map((m) => m.margin),
        logitGaps: s.gaps,
        reference: s.reference,
        cpu: keptOf(s.out["prunec.stage0.indices"]!),
      })),
    };
    reports.set(key, r);
    report.cases.push(r);
    prepared.set(key, {
      c: { key, covers, spec },
      attention,
      model: web.model,
      graph,
      outputs,
      batches: sides.map((s) => s.p),
      ids: r.batches.map((b) => b.prompts),
      cpu: sides.map((s) => s.out),
      reference: sides.map((s) => s.reference),
      ...(attention === "gqa" ? { referenceLast: sides.map((s) => s.referenceLast!) } : {}),
    });
  }

  beforeAll(async () => {
    for (const c of DECODER_CASES) {
      const side = (model: Uint8Array, outputs: string[]) => (ids: string[]) => plainCpuSide(c, model, ids, outputs);
      await prepare(c.key, c.covers, c.spec, "plain", side);
    }
    const gqaSide = (model: Uint8Array, outputs: string[]) => (ids: string[]) => gqaCpuSide(model, ids, outputs);
    await prepare("gqa-last-token-attn", "last-token-attn (GroupQueryAttention, prefill)", GQA_SPEC, "gqa", gqaSide);
    ({ server, browser } = await openSuiteBrowser(report.browser));
  }, 300_000);

  afterAll(async () => {
    await finishSuite({ report, path: REPORT_PATH, t0, browser, server, summary });
  }, 60_000);

  itBrowserReady(report.browser, () => browser);

  it("on onnxruntime-node the kept sets equal the TypeScript references (the inputs the browser runs)", () => {
    for (const [key, v] of prepared) {
      v.cpu.forEach((out, i) =>
        expect(keptOf(out["prunec.stage0.indices"]!), `${key}, batch ${v.ids[i]!.join(",")}`).toEqual(v.reference[i]),
      );
    }
  });

  it("target webgpu: stages restricted to a token set keep the index lowering (same bytes as the default target)", () => {
    for (const r of report.cases) {
      expect(r.lowering, r.key).toEqual({ cpu: ["index"], webgpu: ["index"] });
      expect(r.webgpuTargetBytesEqualDefault, r.key).toBe(true);
    }
  });

  for (const c of [
    ...DECODER_CASES.map((x) => ({ key: x.key, spec: x.spec })),
    { key: "gqa-last-token-attn", spec: GQA_SPEC },
  ]) {
    const gqa = c.key.startsWith("gqa-");
    const runs = "batch 1 and left-padded batch 3";
    const what = gqa ? "GroupQueryAttention decoder, FastV prefill" : "plain decoder";
    it(`${c.key} (${what}: '${c.spec.trim().split("\n").at(-1)}'), ${runs}: WebGPU gives onnxruntime-node's and the reference's kept indices, logits within ${LOGITS_ATOL}${gqa ? " on the prompt rows, presents too; RotaryEmbedding and GroupQueryAttention placed on WebGPU" : ""}`, async () => {
      const v = prepared.get(c.key)!;
      const r = reports.get(c.key)!;
      try {
        const id = `decoder.${c.key}`;
        const feeds: Feeds[] = v.batches.map((p) => (gqa ? gqaFeeds(p) : plainFeeds(p)));
        const web = await runDecoderInBrowser(server!, browser!, id, v.model, feeds, v.outputs);
        r.createMs = Math.round(web.createMs);
        r.ortWarnings = ortWarnings(web.log, id);
        if (web.error) r.ortError = web.error;
        r.placement = placementOf(v.graph, id, web.log);
        // ORT's error, verbatim, is the failure message.
        expect(web.error, `onnxruntime-web (webgpu) ${web.error?.phase} failed: ${web.error?.message}`).toBeUndefined();
        compareRuns(v, r, web);
        if (gqa) {
          for (const n of r.placement.contrib)
            expect(n.where, `${n.opType} ${n.name}: ${n.reason ?? ""}`).toBe("webgpu");
          expect(r.placement.contrib.map((n) => n.opType).sort()).toEqual([
            ...Array(DECODER.layers).fill("GroupQueryAttention"),
            ...Array(2 * DECODER.layers).fill("RotaryEmbedding"),
          ]);
        }
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

  // KV-cache stages: every cached layer of the gqa decoder evicts at prefill; greedy decode steps
  // then run over the shorter caches, in one WebGPU session fed its own presents.
  for (const kc of KV_CASES) {
    it(`${kc.key} (${kc.layout === "plain-cache" ? "plain-attention decoder, Concat caches" : "GroupQueryAttention decoder"}, '${kc.spec}' in every layer), batch 1, two prompts: WebGPU's kept positions per layer and KV head, cache lengths and ${KV_STEPS} greedy tokens equal onnxruntime-node's and the float64 reference's; logits within ${LOGITS_ATOL} at every call`, async () => {
      const r: KvCaseReport = { key: kc.key, spec: kc.spec, skipped: [], prompts: [] };
      report.kv.push(r);
      try {
        const model = compile(kc.layout === "plain-cache" ? PLAIN_CACHE : GQA, kc.spec, {
          exposeIndices: true,
          modelName: "decoder",
          specName: `${kc.key}.prune`,
        }).model;
        const graph = decodeModel(model).graph!;
        const indexOutputs = graph.output.map((o) => o.name).filter((n) => n.endsWith(".kv_indices"));
        expect(indexOutputs).toEqual(
          Array.from({ length: DECODER.layers }, (_, l) => `prunec.stage0.layer${l}.kv_indices`),
        );
        const perLayer = (get: (name: string) => { dims: number[]; data: ArrayLike<number | bigint> }) =>
          indexOutputs.map((name) => {
            const t = get(name);
            return rows(BigInt64Array.from(Array.from(t.data, (x) => BigInt(x))), [t.dims[1]!, t.dims[2]!]);
          });
        // The first two prompts of POOL clear of ties on the CPU side.
        const chosen: {
          id: string;
          tokens: number[];
          cpuIndices: number[][][];
          cpu: Awaited<ReturnType<typeof generateGreedy>>;
          ref: ReturnType<typeof kvReference>;
          row: KvCaseReport["prompts"][number];
        }[] = [];
        for (const x of POOL) {
          if (chosen.length === 2) break;
          const p = promptBatch([x.tokens], "left");
          const ref = kvReference(kc, x.tokens, KV_STEPS);
          const out = await runNode(model, prefillFeeds(p, "gqa"));
          const cpu = await withNode(model, (run) => generateGreedy(run, p, KV_STEPS));
          const rowsOf = [cpu.prefill.subarray(cpu.prefill.length - V), ...cpu.steps];
          const gap = Math.min(...rowsOf.map((l) => topGap(l, 0, V)));
          if (!(ref.margin >= MIN_SCORE_GAP)) {
            r.skipped.push({ id: x.id, why: `selection margin ${ref.margin.toExponential(2)} < ${MIN_SCORE_GAP}` });
            continue;
          }
          if (!(gap > MIN_LOGIT_GAP)) {
            r.skipped.push({ id: x.id, why: `top-2 logit gap ${gap.toExponential(2)} <= ${MIN_LOGIT_GAP}` });
            continue;
          }
          const cpuIndices = perLayer((n) => out[n]! as { dims: number[]; data: BigInt64Array });
          chosen.push({
            id: x.id,
            tokens: x.tokens,
            cpuIndices,
            cpu,
            ref,
            row: {
              id: x.id,
              length: x.tokens.length,
              kept: kc.kept(x.tokens.length, 0),
              margin: ref.margin,
              logitGap: gap,
              tokens: { reference: ref.tokens, cpu: cpu.tokens[0]! },
            },
          });
        }
        expect(chosen, `prompts clear of ties: ${JSON.stringify(r.skipped)}`).toHaveLength(2);
        for (const [i, c] of chosen.entries()) {
          r.prompts.push(c.row);
          // onnxruntime-node against the reference first (what test/kv-cache.test.ts proves).
          expect(c.cpuIndices, `${c.id}: CPU kept positions vs reference`).toEqual(c.ref.kept);
          expect(c.cpu.tokens[0], `${c.id}: CPU tokens vs reference`).toEqual(c.ref.tokens);
          const id = `decoder.${kc.key}.${c.id}`;
          const p = promptBatch([c.tokens], "left");
          const web = await generateInBrowser(
            server!,
            browser!,
            id,
            model,
            prefillFeeds(p, "gqa"),
            [c.tokens.length],
            KV_STEPS,
          );
          c.row.createMs = Math.round(web.createMs);
          c.row.runMs = web.calls.map((x) => Math.round(x.runMs));
          if (i === 0) {
            r.placement = placementOf(graph, id, web.log);
            r.ortWarnings = ortWarnings(web.log, id);
          }
          if (web.error) r.ortError = web.error;
          expect(
            web.error,
            `onnxruntime-web (webgpu) ${web.error?.phase} failed: ${web.error?.message}`,
          ).toBeUndefined();
          const webIndices = perLayer((n) => web.indices[n]!);
          c.row.indicesEqual = {
            webgpuCpu: JSON.stringify(webIndices) === JSON.stringify(c.cpuIndices),
            cpuReference: JSON.stringify(c.cpuIndices) === JSON.stringify(c.ref.kept),
          };
          c.row.tokens.webgpu = web.tokens[0]!;
          c.row.cacheLengths = web.calls.map((x) => x.presentDims["present.0.key"]![2]!);
          const cpuRows = [c.cpu.prefill.subarray(c.cpu.prefill.length - V), ...c.cpu.steps];
          c.row.maxAbsDiffLogits = Math.max(...web.calls.map((x, s) => maxAbsDiff(x.logits, cpuRows[s]!)));
          expect(webIndices, `${c.id}: WebGPU kept positions vs CPU`).toEqual(c.cpuIndices);
          expect(web.tokens[0], `${c.id}: WebGPU greedy tokens vs CPU`).toEqual(c.cpu.tokens[0]);
          expect(c.row.maxAbsDiffLogits, `${c.id}: max |Δlogits| WebGPU vs CPU`).toBeLessThanOrEqual(LOGITS_ATOL);
          // Every layer keeps K' entries per KV head at prefill and grows by one per decode step.
          web.calls.forEach((x, s) => {
            for (let l = 0; l < DECODER.layers; l++)
              for (const kv of ["key", "value"])
                expect(x.presentDims[`present.${l}.${kv}`], `${c.id}: present.${l}.${kv} at call ${s}`).toEqual([
                  1,
                  DECODER.kvHeads,
                  kc.kept(c.tokens.length, l) + s,
                  DECODER.headSize,
                ]);
          });
        }
        expect(r.placement!.counts[WEBGPU_EP] ?? 0).toBeGreaterThan(0);
        expect(
          Object.keys(r.placement!.counts).every((ep) => ep === WEBGPU_EP || ep === CPU_EP),
          JSON.stringify(r.placement!.counts),
        ).toBe(true);
      } catch (err) {
        r.error = String(err).split("\n")[0];
        throw err;
      }
    }, 300_000);
  }
  // Left-padded batches of 3 (POOL p0..p2): the batch's count, --kv-state's per-example counts
  // (validity fed empty at the prefill, then carried), `of image` (the mask fed at the prefill,
  // all-false at decode steps) and expected attention. WebGPU against onnxruntime-node.
  for (const bc of KV_BATCH_CASES) {
    it(`${bc.key} ('${bc.spec.split("\n").at(-1)}'${bc.kvState ? ", --kv-state" : ""}), a left-padded batch of 3: WebGPU's kept positions${bc.kvState ? ", slot validity" : ""} and ${KV_STEPS} greedy tokens per example equal onnxruntime-node's; each example's logits within ${LOGITS_ATOL} at every call`, async () => {
      const r: KvBatchReport = { key: bc.key, spec: bc.spec, kvState: !!bc.kvState };
      report.kvBatches.push(r);
      try {
        const prompts = POOL.slice(0, 3);
        const p = promptBatch(
          prompts.map((x) => x.tokens),
          "left",
          prompts.map((x) => x.image),
        );
        r.lengths = p.lengths;
        const model = compile(GQA, bc.spec, {
          exposeIndices: true,
          kvState: !!bc.kvState,
          modelName: "decoder",
          specName: `${bc.key}.prune`,
        }).model;
        const image = bc.spec.includes("of image");
        const first: Feeds = image ? imageMaskFeed(p) : {};
        if (bc.kvState)
          for (let l = 0; l < DECODER.layers; l++)
            first[`past_key_values.${l}.prunec_valid`] = {
              type: "float32",
              dims: [p.batch, 0],
              data: new Float32Array(0),
            };
        if (bc.decode?.scores === "cascade")
          first["past_key_values.stage0.prunec_score"] = {
            type: "float32",
            dims: [p.batch, 0],
            data: new Float32Array(0),
          };
        else if (bc.decode?.scores)
          for (let l = 0; l < DECODER.layers; l++)
            first[`past_key_values.${l}.prunec_score`] = {
              type: "float32",
              dims: [p.batch, DECODER.kvHeads, 0],
              data: new Float32Array(0),
            };
        // Decode steps: the image mask is all false for the new token; the validity comes back as a present.
        const later: Feeds = image
          ? { image_mask: { type: "bool", dims: [p.batch, 1], data: new Uint8Array(p.batch) } }
          : {};
        const cpuCalls: Outputs[] = [];
        const { cpuOut, cpu } = await withNode(model, async (run) => {
          const cpuRun = async (f: Feeds) => {
            const out = await run({ ...(f["input_ids"]!.dims[1] === 1 ? later : first), ...f });
            cpuCalls.push(out);
            return out;
          };
          return { cpuOut: await cpuRun(prefillFeeds(p, "gqa")), cpu: await generateGreedy(cpuRun, p, KV_STEPS) };
        });
        const web = await generateInBrowser(
          server!,
          browser!,
          `decoder.${bc.key}`,
          model,
          { ...first, ...prefillFeeds(p, "gqa") },
          p.lengths,
          KV_STEPS,
        );
        if (web.error) r.ortError = web.error;
        expect(web.error, `onnxruntime-web (webgpu) ${web.error?.phase} failed: ${web.error?.message}`).toBeUndefined();
        const numbers = (t: { data: ArrayLike<number | bigint> }) => Array.from(t.data, Number);
        const names = Object.keys(cpuOut).filter((n) => n.endsWith(".kv_indices") || n.endsWith(".prunec_valid"));
        expect(names.length).toBe(DECODER.layers * (bc.kvState ? 2 : 1));
        const webOf = (n: string) => web.indices[n] ?? web.validity[n];
        r.keptEqual = names.every((n) => JSON.stringify(numbers(webOf(n)!)) === JSON.stringify(numbers(cpuOut[n]!)));
        r.tokens = { cpu: cpu.tokens, webgpu: web.tokens };
        // Each example's last logits row: the prefill's last position (left padding), then each step's.
        const cpuRows = [
          Float32Array.from({ length: p.batch * V }, (_, i) => {
            const b = Math.floor(i / V);
            return cpu.prefill[(b * p.seq + p.seq - 1) * V + (i % V)]!;
          }),
          ...cpu.steps,
        ];
        r.maxAbsDiffLogits = Math.max(...web.calls.map((x, s) => maxAbsDiff(x.logits, cpuRows[s]!)));
        for (const n of names) expect(numbers(webOf(n)!), `${n}: WebGPU vs CPU`).toEqual(numbers(cpuOut[n]!));
        // A decode-time stage evicts at every call: the kept slots of each call (cpuCalls[0] is the prefill above).
        if (bc.decode) {
          const same = (s: number, n: string) =>
            JSON.stringify(numbers(web.calls[s]!.indices[n]!)) === JSON.stringify(numbers(cpuCalls[s + 1]![n]!));
          r.everyCallEqual = web.calls.every((_, s) => names.every((n) => same(s, n)));
          web.calls.forEach((x, s) => {
            for (const n of names)
              expect(numbers(x.indices[n]!), `call ${s}, ${n}: WebGPU vs CPU`).toEqual(numbers(cpuCalls[s + 1]![n]!));
          });
        }
        expect(web.tokens, "greedy tokens per example: WebGPU vs CPU").toEqual(cpu.tokens);
        expect(r.maxAbsDiffLogits, "max |Δlogits| WebGPU vs CPU").toBeLessThanOrEqual(LOGITS_ATOL);
      } catch (err) {
        r.error = String(err).split("\n")[0];
        throw err;
      }
    }, 300_000);
  }
});

/**
 * Max |a − b| over the rows of a [B, R, …] tensor, split into rows of real prompt tokens and rows
 * of left-padding tokens (or empty slots): `real(b, r)` says which.
 */
function rowDiffs(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  dims: number[],
  real: (ex: number, row: number) => boolean,
): { real: number; padding: number | undefined } {
  const [batch, n] = [dims[0]!, dims[1]!];
  const width = dims.slice(2).reduce((x, y) => x * y, 1);
  const out: { real: number; padding: number | undefined } = { real: 0, padding: undefined };
  for (let ex = 0; ex < batch; ex++) {
    for (let r = 0; r < n; r++) {
      const start = (ex * n + r) * width;
      const d = maxAbsDiff(
        Array.prototype.slice.call(a, start, start + width) as number[],
        Array.prototype.slice.call(b, start, start + width) as number[],
      );
      if (real(ex, r)) out.real = Math.max(out.real, d);
      else out.padding = Math.max(out.padding ?? 0, d);
    }
  }
  return out;
}

/** [batch, kv_heads, slots, head_size] present → [batch, slots, kv_heads·head_size] order, so rows are slots. */
function slotsFirst(data: ArrayLike<number>, dims: number[]): number[] {
  const [b, h, s, d] = dims as [number, number, number, number];
  const out = new Array<number>(b * h * s * d);
  for (let i = 0; i < b; i++)
    for (let j = 0; j < h; j++)
      for (let k = 0; k < s; k++)
        for (let l = 0; l < d; l++) out[((i * s + k) * h + j) * d + l] = data[((i * h + j) * s + k) * d + l]!;
  return out;
}

function compareRuns(v: Prepared, r: CaseReport, web: PageRun): void {
  expect(web.runs).toHaveLength(v.batches.length);
  v.batches.forEach((p, i) => {
    const br = r.batches[i]!;
    const w = web.runs[i]!.outputs;
    const cpu = v.cpu[i]!;
    const label = `${v.c.key}, batch ${v.ids[i]!.join(",")}`;
    br.runMs = Math.round(web.runs[i]!.runMs);
    br.webgpu = w["prunec.stage0.indices"]
      ? idxRows({
          data: BigInt64Array.from(w["prunec.stage0.indices"].data, (x) => BigInt(x)),
          dims: w["prunec.stage0.indices"].dims,
        }).map((row) => row.filter((j) => j >= 0))
      : undefined;
    br.counts = {
      cpu: Array.from(cpu["prunec.stage0.counts"]!.data as BigInt64Array, Number),
      webgpu: w["prunec.stage0.counts"]?.data ?? [],
    };
    const cpuIdx = idxRows(cpu["prunec.stage0.indices"]!);
    // A row is real when it holds a prompt token: its kept position (dense position, for outputs
    // with one row per prompt position) is at or after the example's left padding.
    const realRow = (rowsOf: number) => (ex: number, row: number) =>
      (rowsOf === p.seq ? row : cpuIdx[ex]![row]!) >= p.offsets[ex]!;
    const cpuLogits = Array.from(cpu["logits"]!.data as Float32Array);
    expect(w["logits"]!.dims, label).toEqual(cpu["logits"]!.dims);
    const logits = rowDiffs(w["logits"]!.data, cpuLogits, cpu["logits"]!.dims, realRow(cpu["logits"]!.dims[1]!));
    br.maxAbsDiffLogits = logits.real;
    if (logits.padding !== undefined) br.maxAbsDiffLogitsPadding = logits.padding;
    const cpuLast = lastLogits({ data: cpu["logits"]!.data as Float32Array, dims: cpu["logits"]!.dims }, cpuIdx, p);
    const webLast = lastLogits({ data: w["logits"]!.data, dims: w["logits"]!.dims }, cpuIdx, p);
    br.predictions = { cpu: cpuLast.pred, webgpu: webLast.pred };
    const presents = v.outputs.filter((o) => o.startsWith("present."));
    const present = presents.map((o) => {
      expect(w[o]!.dims, `${o}, ${label}`).toEqual(cpu[o]!.dims);
      const dims = cpu[o]!.dims;
      const flat = [dims[0]!, dims[2]!, dims[1]! * dims[3]!];
      return {
        o,
        ...rowDiffs(
          slotsFirst(w[o]!.data, dims),
          slotsFirst(Array.from(cpu[o]!.data as Float32Array), dims),
          flat,
          realRow(dims[2]!),
        ),
      };
    });
    if (present.length) {
      br.maxAbsDiffPresent = Math.max(...present.map((x) => x.real));
      const pads = present.flatMap((x) => (x.padding === undefined ? [] : [x.padding]));
      if (pads.length) br.maxAbsDiffPresentPadding = Math.max(...pads);
    }

    for (const o of INDEX_OUTPUTS) {
      expect({ dims: w[o]!.dims, data: w[o]!.data }, `${o}, ${label}`).toEqual({
        dims: cpu[o]!.dims,
        data: Array.from(cpu[o]!.data as BigInt64Array, Number),
      });
    }
    expect(br.webgpu, `kept sets vs reference, ${label}`).toEqual(v.reference[i]);
    expect(logits.real, `max |Δlogits| over the prompt tokens' rows, ${label}`).toBeLessThanOrEqual(LOGITS_ATOL);
    // Left-padding rows: the plain decoder's Softmax over a fully masked row agrees on both EPs;
    // GroupQueryAttention's does not (see GQA_PADDING_ROWS): recorded only.
    if (v.attention === "plain")
      expect(logits.padding ?? 0, `max |Δlogits| over left-padding rows, ${label}`).toBeLessThanOrEqual(LOGITS_ATOL);
    expect(webLast.pred, `next-token predictions, ${label}`).toEqual(cpuLast.pred);
    for (const x of present)
      expect(x.real, `${x.o} over the prompt tokens' slots, ${label}`).toBeLessThanOrEqual(LOGITS_ATOL);
    if (v.referenceLast) {
      // The float64 reference decoder's last-prompt-token logits (as test/fastv-cache.test.ts on CPU), here on WebGPU.
      const k = w["logits"]!.dims[1]!;
      v.referenceLast[i]!.forEach((ref, b) => {
        const row = lastRow(cpuIdx, b, p.seq);
        expect(
          maxAbsDiff(w["logits"]!.data.slice((b * k + row) * V, (b * k + row + 1) * V), Array.from(ref)),
          `reference last logits, ${label}, example ${b}`,
        ).toBeLessThanOrEqual(REFERENCE_ATOL);
      });
    }
  });
}

function summary(): string {
  const lines: string[] = [];
  const a = report.browser.adapter;
  lines.push("");
  lines.push(
    `WebGPU decoder criteria (target webgpu, exposeIndices): ${report.browser.userAgent.match(/Chrome\/\S+/)?.[0] ?? "?"}, adapter ${a ? `${a.vendor}/${a.architecture}` : "none"}, onnxruntime-web ${report.browser.onnxruntimeWeb}`,
  );
  lines.push(
    "| case | model | lowering | batches | min margin | indices (WebGPU = CPU = reference) | max \\|Δlogits\\| prompt rows (padding rows) | max \\|Δpresent\\| prompt slots (padding slots) | prunec nodes WebGPU / CPU / removed | prunec ops on CPU | session create / first run |",
  );
  lines.push("|---|---|---|---|---|---|---|---|---|---|---|");
  for (const r of report.cases) {
    const eq = r.batches.every((b) => b.webgpu !== undefined)
      ? r.batches.every(
          (b) =>
            JSON.stringify(b.webgpu) === JSON.stringify(b.cpu) && JSON.stringify(b.cpu) === JSON.stringify(b.reference),
        )
        ? "equal"
        : "DIFFER"
      : "-";
    const worst = (f: (b: BatchReport) => number | undefined) => {
      const xs = r.batches.map(f).filter((x): x is number => x !== undefined);
      return xs.length ? Math.max(...xs).toExponential(1) : "-";
    };
    const pad = (x: string) => (x === "-" ? "" : ` (${x})`);
    const dl = `${worst((b) => b.maxAbsDiffLogits)}${pad(worst((b) => b.maxAbsDiffLogitsPadding))}`;
    const dp =
      r.model === "gqa" ? `${worst((b) => b.maxAbsDiffPresent)}${pad(worst((b) => b.maxAbsDiffPresentPadding))}` : "-";
    const margin = Math.min(...r.batches.flatMap((b) => b.margins));
    const p = r.placement;
    lines.push(
      `| ${r.key} | ${r.model} | ${r.lowering.webgpu.join(",")} | ${r.batches.map((b) => `[${b.prompts.join(",")}]`).join(" ")} | ${Number.isFinite(margin) ? margin.toExponential(1) : "none ranked"} | ${eq} | ${dl} | ${dp} | ${p ? `${p.prunec.webgpu} / ${p.prunec.cpu} / ${p.prunec.absent}` : "-"} | ${p?.prunecOnCpu ?? "-"} | ${r.createMs === undefined ? "-" : `${(r.createMs / 1000).toFixed(1)} / ${((r.batches[0]?.runMs ?? 0) / 1000).toFixed(1)} s`} |${r.ortError ? ` ORT ${r.ortError.phase} error: ${r.ortError.message}` : ""}${r.error ? ` FAILED: ${r.error}` : ""}`,
    );
  }
  for (const r of report.cases) {
    if (r.skipped.length) lines.push(`  ${r.key}: skipped ${r.skipped.map((x) => `${x.id} (${x.why})`).join("; ")}`);
    if (r.placement?.contrib.length)
      lines.push(
        `  ${r.key}: ${r.placement.contrib.map((n) => `${n.opType} ${n.where}`).join(", ")}; model nodes on CPU: ${r.placement.modelOnCpu}`,
      );
  }
  if (report.kv.length) {
    lines.push("");
    lines.push(
      "| KV case | prompts (N → K') | min margin | kept positions (WebGPU = CPU = reference) | tokens (WebGPU = CPU = reference) | max \\|Δlogits\\| (all calls) | cache lengths (layer 0) | prunec nodes WebGPU / CPU / removed | prunec ops on CPU | GroupQueryAttention / RotaryEmbedding on | session create / prefill run |",
    );
    lines.push("|---|---|---|---|---|---|---|---|---|---|---|");
    for (const r of report.kv) {
      const ok = (f: (x: KvCaseReport["prompts"][number]) => boolean | undefined) =>
        r.prompts.length
          ? r.prompts.every((x) => f(x) === undefined)
            ? "-"
            : r.prompts.every(f)
              ? "equal"
              : "DIFFER"
          : "-";
      const same = (a?: number[], b?: number[]) => (a && b ? JSON.stringify(a) === JSON.stringify(b) : undefined);
      const diffs = r.prompts.flatMap((x) => (x.maxAbsDiffLogits === undefined ? [] : [x.maxAbsDiffLogits]));
      const p = r.placement;
      const contrib = p ? [...new Set(p.contrib.map((n) => `${n.opType} ${n.where}`))].join(", ") : "-";
      lines.push(
        `| ${r.key} | ${r.prompts.map((x) => `${x.id} (${x.length} → ${x.kept})`).join(", ")} | ${r.prompts.length ? Math.min(...r.prompts.map((x) => x.margin)).toExponential(1) : "-"} | ${ok((x) => x.indicesEqual?.webgpuCpu && x.indicesEqual.cpuReference)} | ${ok((x) => (x.tokens.webgpu ? same(x.tokens.webgpu, x.tokens.cpu) && same(x.tokens.cpu, x.tokens.reference) : undefined))} | ${diffs.length ? Math.max(...diffs).toExponential(1) : "-"} | ${r.prompts.map((x) => (x.cacheLengths ?? []).join("→")).join("; ")} | ${p ? `${p.prunec.webgpu} / ${p.prunec.cpu} / ${p.prunec.absent}` : "-"} | ${p?.prunecOnCpu ?? "-"} | ${contrib} | ${r.prompts.map((x) => (x.createMs === undefined ? "-" : `${(x.createMs / 1000).toFixed(1)} / ${((x.runMs?.[0] ?? 0) / 1000).toFixed(1)} s`)).join("; ")} |${r.ortError ? ` ORT ${r.ortError.phase} error: ${r.ortError.message}` : ""}${r.error ? ` FAILED: ${r.error}` : ""}`,
      );
      if (r.skipped.length) lines.push(`  ${r.key}: skipped ${r.skipped.map((x) => `${x.id} (${x.why})`).join("; ")}`);
    }
  }
  if (report.kvBatches.length) {
    lines.push("");
    lines.push(
      "| KV batch case (left-padded, 3 examples) | lengths | kept positions / validity (WebGPU = CPU) | tokens (WebGPU = CPU) | max \\|Δlogits\\| |",
    );
    lines.push("|---|---|---|---|---|");
    for (const r of report.kvBatches)
      lines.push(
        `| ${r.key}${r.kvState ? " (--kv-state)" : ""} | ${r.lengths?.join(", ") ?? "-"} | ${r.keptEqual === undefined ? "-" : r.keptEqual ? "equal" : "DIFFER"}${r.everyCallEqual === undefined ? "" : r.everyCallEqual ? " (every call: equal)" : " (every call: DIFFER)"} | ${r.tokens ? (JSON.stringify(r.tokens.cpu) === JSON.stringify(r.tokens.webgpu) ? "equal" : "DIFFER") : "-"} | ${r.maxAbsDiffLogits?.toExponential(1) ?? "-"} |${r.ortError ? ` ORT ${r.ortError.phase} error: ${r.ortError.message}` : ""}${r.error ? ` FAILED: ${r.error}` : ""}`,
      );
  }
  lines.push(`report: ${REPORT_PATH}   wall: ${report.wallSeconds.toFixed(0)}s`);
  return lines.join("\n");
}
