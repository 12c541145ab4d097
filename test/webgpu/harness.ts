/**
 * What the browser suites (prune, capabilities, decoder .webgpu.ts) share: the page's API
 * (page.js), batching samples into feeds, running a model on batches in the page, argmax of
 * logits, and the suite's teardown (write the report, close the browser and the server).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { Feeds } from "../helpers/ort.js";
import { afterAll, beforeAll, expect, it } from "vitest";
import { openBrowser, type AdapterInfo, type BrowserSession } from "./browser.js";
import type { ModelCase, Sample } from "./models.js";
import { startServer, type TestServer } from "./server.js";

/** What page.js's `run` returns: per batch the fetched outputs and the run time, plus ORT's log. */
export interface BrowserRun {
  runs: { outputs: Record<string, { type: string; dims: number[]; data: number[] }>; runMs: number }[];
  createMs: number;
  log: string[];
}

/** page.js's API on `window`. */
export interface PageApi {
  prunecWebgpu: {
    adapter(): Promise<AdapterInfo | null>;
    ortVersion: string;
    run(job: unknown): Promise<BrowserRun>;
    bench(job: unknown): Promise<number[][]>;
  };
}

/** The page's WebGPU adapter (null: none) and onnxruntime-web's version. */
export async function pageInfo(browser: BrowserSession): Promise<{ adapter: AdapterInfo | null; ortVersion: string }> {
  const adapter = (await browser.page.evaluate(() =>
    (window as unknown as PageApi).prunecWebgpu.adapter(),
  )) as AdapterInfo | null;
  const ortVersion = await browser.page.evaluate(() => (window as unknown as PageApi).prunecWebgpu.ortVersion);
  return { adapter, ortVersion };
}

/** The samples as one batch of the model's input. */
export function feedsOf(mc: ModelCase, batch: Sample[]): Feeds {
  const per = mc.image[0] * mc.image[1] * mc.image[2];
  const data = new Float32Array(batch.length * per);
  batch.forEach((s, i) => data.set(s.data, i * per));
  return { [mc.input]: { type: "float32", dims: [batch.length, ...mc.image], data } };
}

/** Puts the batch's input on the server as `name`; the page's feed for it (type, dims, url). */
export function putInput(
  server: TestServer,
  mc: ModelCase,
  batch: Sample[],
  name: string,
): Record<string, { type: string; dims: number[]; url: string }> {
  const f = feedsOf(mc, batch)[mc.input]!;
  const url = server.put(name, new Uint8Array(f.data.buffer, f.data.byteOffset, f.data.byteLength));
  return { [mc.input]: { type: f.type, dims: [...f.dims], url } };
}

/** Runs `model` in the page on each batch (ORT log id `id`), fetching `outputs`. */
export async function runInBrowser(
  server: TestServer,
  browser: BrowserSession,
  mc: ModelCase,
  id: string,
  model: Uint8Array,
  batches: Sample[][],
  outputs: string[],
): Promise<BrowserRun> {
  const modelUrl = server.put(`${id}.onnx`, model);
  const jobBatches = batches.map((batch, b) => putInput(server, mc, batch, `${id}.in${b}.bin`));
  const job = { id, model: modelUrl, batches: jobBatches, outputs, graphOptimizationLevel: "all" };
  return browser.page.evaluate((j) => (window as unknown as PageApi).prunecWebgpu.run(j), job);
}

/** The index of the largest logit of each row of `classes`. */
export function argmaxRows(data: ArrayLike<number>, classes: number): number[] {
  const out: number[] = [];
  for (let r = 0; r * classes < data.length; r++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if (data[r * classes + c]! > data[r * classes + best]!) best = c;
    out.push(best);
  }
  return out;
}

/** The fields every suite report stamps at the end. */
interface SuiteReport {
  wallSeconds: number;
  blockedRequests: string[];
  pageErrors: string[];
}

/**
 * A suite's afterAll: stamps `report` (wall time since `t0`, the page's blocked requests and
 * errors), writes it to `path` as JSON, runs `also` (more files), prints `summary()`; then closes
 * the browser and the server, whatever failed before.
 */
export async function finishSuite(o: {
  report: SuiteReport;
  path: string;
  t0: number;
  browser: BrowserSession | undefined;
  server: TestServer | undefined;
  summary: () => string;
  also?: () => void;
}): Promise<void> {
  try {
    o.report.wallSeconds = (Date.now() - o.t0) / 1000;
    o.report.blockedRequests = o.browser?.blocked ?? [];
    o.report.pageErrors = o.browser?.pageErrors ?? [];
    mkdirSync(dirname(o.path), { recursive: true });
    writeFileSync(o.path, `${JSON.stringify(o.report, null, 2)}\n`);
    o.also?.();
    console.log(o.summary());
  } finally {
    try {
      await o.browser?.close();
    } finally {
      await o.server?.close();
    }
  }
}

/** What a suite's report says of the browser. */
export interface BrowserFacts {
  userAgent: string;
  adapter: AdapterInfo | null;
  onnxruntimeWeb: string;
}

/** Start the page server and Chromium; record the user agent, adapter and onnxruntime-web version in `facts`. */
export async function openSuiteBrowser(facts: BrowserFacts): Promise<{ server: TestServer; browser: BrowserSession }> {
  const server = await startServer();
  const browser = await openBrowser(server.url);
  facts.userAgent = browser.userAgent;
  const info = await pageInfo(browser);
  facts.adapter = info.adapter;
  facts.onnxruntimeWeb = info.ortVersion;
  return { server, browser };
}

/** The first check of a suite: a WebGPU adapter, onnxruntime-web 1.30, no request beyond the local server. */
export function itBrowserReady(facts: BrowserFacts, browser: () => BrowserSession | undefined): void {
  it("Chromium exposes a WebGPU adapter, onnxruntime-web is 1.30, nothing but the local server is reached", () => {
    expect(facts.adapter).not.toBeNull();
    expect(facts.onnxruntimeWeb).toMatch(/^1\.30\./);
    expect(browser()!.blocked).toEqual([]);
  });
}

/**
 * A browser suite's wiring, for a `describe` block: opens the page server and Chromium before it
 * (recording the browser in `report.browser`), checks the browser is ready, and at the end writes
 * `report` to `path` and prints `summary()` (finishSuite). Returns the open server and browser.
 */
export function browserSuite(
  report: SuiteReport & { browser: BrowserFacts },
  path: string,
  summary: () => string,
): { server: () => TestServer; browser: () => BrowserSession } {
  const t0 = Date.now();
  let server: TestServer | undefined;
  let browser: BrowserSession | undefined;
  beforeAll(async () => {
    ({ server, browser } = await openSuiteBrowser(report.browser));
  }, 300_000);
  afterAll(async () => {
    await finishSuite({ report, path, t0, browser, server, summary });
  }, 60_000);
  itBrowserReady(report.browser, () => browser);
  return { server: () => server!, browser: () => browser! };
}
