/**
 * The playground end to end (issue 18), in Debian's Chromium: the page built by scripts/playground.ts
 * and served on 127.0.0.1. Type a spec with a typo, see the diagnostic with its did-you-mean, fix
 * it, compile and run in the page, see the overlays, download the model: the downloaded bytes equal
 * prunec's compile in Node, and the kept patches drawn are those the Node-compiled model exposes
 * in onnxruntime-node.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Server } from "node:http";
import { buildPlayground, servePlayground } from "../../scripts/playground.js";
import { compile } from "../../src/compile.js";
import { batchInput, parseDataset } from "../../src/data/prds.js";
import { keptPatches } from "../../src/data/overlay.js";
import { runNode } from "../helpers/ort.js";
import { REPO_ROOT } from "../helpers/shared.js";
import { openBrowser, type BrowserSession } from "./browser.js";

const MODEL = readFileSync(join(REPO_ROOT, "examples", "digits", "model.onnx"));
const SAMPLE = parseDataset(readFileSync(join(REPO_ROOT, "examples", "digits", "sample.prds")), "sample.prds");
const SPEC = "after layer 1 keep 25% by cls-attn\n";

let dir: string;
let server: Server;
let session: BrowserSession;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "prunec-playground-"));
  await buildPlayground(join(dir, "site"));
  const served = await servePlayground(join(dir, "site"));
  server = served.server;
  session = await openBrowser(served.url, "prunecPlayground");
});

afterAll(async () => {
  await session?.close();
  await new Promise<void>((ok) => (server ? server.close(() => ok()) : ok()));
  rmSync(dir, { recursive: true, force: true });
});

describe("the playground in Chromium", () => {
  it("a typo gets the CLI's diagnostic and did-you-mean; fixed, it compiles, runs, draws the kept patches and downloads the Node compile's bytes", async () => {
    const { page } = session;
    await page.waitForSelector("body[data-ready=true]");
    expect(await page.textContent("#model-summary")).toMatch(/^digits\.onnx: 6 layers, 65 tokens/);

    await page.fill("#spec", "after layer 1 keep 25% by cls-atn\n");
    await page.waitForFunction(() => document.getElementById("diagnostics")!.textContent!.includes("cls-atn"));
    const diagnostic = (await page.textContent("#diagnostics"))!;
    expect(diagnostic).toContain("spec.prune:1:27: error: unknown criterion 'cls-atn'");
    expect(diagnostic).toContain("did you mean 'cls-attn'?");
    expect(await page.isDisabled("#compile")).toBe(true);

    await page.fill("#spec", SPEC);
    await page.waitForFunction(() => document.getElementById("diagnostics")!.textContent!.startsWith("ok:"));
    expect(await page.textContent("#diagnostics")).toBe("ok: after layer 1 keep 25% by cls-attn (65 → 17 tokens)");

    await page.click("#compile");
    await page.waitForFunction(() => document.getElementById("compile-status")!.textContent === "done", null, {
      timeout: 240_000,
    });
    const table = (await page.textContent("#comparison"))!;
    expect(table).toMatch(/accuracy on the 8 samples/);
    expect(table).toMatch(/latency, batch 1 \(median of 20, (webgpu|wasm)\)/);

    // The overlays: one canvas per sample, its kept patches those of the Node-compiled model.
    const drawn = await page.$$eval("#overlays canvas", (cs) =>
      cs.map((c) => (c as HTMLCanvasElement).dataset["kept"]!),
    );
    expect(drawn).toHaveLength(SAMPLE.header.n);
    const exposed = compile(MODEL, SPEC, { exposeIndices: true }).model;
    const x = batchInput(SAMPLE, 0, SAMPLE.header.n);
    const out = await runNode(exposed, { pixel_values: { type: "float32", dims: x.dims, data: x.data } }, [
      "prunec.stage0.indices",
    ]);
    const t = out["prunec.stage0.indices"]!;
    for (let b = 0; b < SAMPLE.header.n; b++) {
      const kept = keptPatches([{ data: t.data as BigInt64Array, dims: t.dims }], 65, 1, b);
      expect([b, drawn[b]]).toEqual([b, kept.join(",")]);
    }

    // The download is the shippable model: the Node compile's bytes exactly.
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
    expect(download.suggestedFilename()).toBe("digits.pruned.onnx");
    const path = await download.path();
    const node = compile(MODEL, SPEC, { modelName: "digits.onnx", specName: "spec.prune" }).model;
    expect(Buffer.compare(readFileSync(path), Buffer.from(node))).toBe(0);
    expect(session.pageErrors).toEqual([]);
    expect(session.blocked).toEqual([]);
  });
});
