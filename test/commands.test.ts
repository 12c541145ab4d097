/** eval / bench / report on the shipped digits model and its tiny sample set (no timing asserted). */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PNG } from "pngjs";
import { XMLValidator } from "fast-xml-parser";
import { REPO_ROOT } from "./helpers/shared.js";
import { parseDataset } from "../src/data/prds.js";
import type { PrunecError } from "../src/errors.js";
import { compile } from "../src/compile.js";

const DIGITS = join(REPO_ROOT, "examples", "digits");
const MODEL = join(DIGITS, "model.onnx");
const SAMPLE = join(DIGITS, "sample.prds");
const SPEC = "after layer 2 keep 25% by cls-attn\n";
const run = (...args: string[]) =>
  spawnSync(process.execPath, [join(REPO_ROOT, "bin", "prunec.js"), ...args], { encoding: "utf8" });

describe("the .prds data set format", () => {
  const header = (obj: object) => {
    const json = new TextEncoder().encode(JSON.stringify(obj));
    const out = new Uint8Array(12 + json.length);
    out.set(new TextEncoder().encode("PRUNEDS1"));
    new DataView(out.buffer).setUint32(8, json.length, true);
    out.set(json, 12);
    return out;
  };
  const withBody = (h: Uint8Array, body: number) => {
    const out = new Uint8Array(h.length + body);
    out.set(h);
    return out;
  };
  const fail = (bytes: Uint8Array) => {
    try {
      parseDataset(bytes, "x.prds");
    } catch (e) {
      return (e as PrunecError).message;
    }
    return "no error";
  };

  it("reads labels and pixels of a well-formed set", () => {
    const h = header({ n: 2, channels: 1, height: 2, width: 3, classes: 10 });
    const bytes = withBody(h, 2 + 12);
    bytes[h.length] = 7;
    bytes[h.length + 2 + 5] = 255;
    const d = parseDataset(bytes, "x.prds");
    expect([...d.labels]).toEqual([7, 0]);
    expect(d.pixels.length).toBe(12);
    expect(d.pixels[5]).toBe(255);
  });

  it("rejects other files with the reason", () => {
    expect(fail(new TextEncoder().encode("hello world, not a set"))).toBe(
      "x.prds: not a prunec dataset (expected the magic 'PRUNEDS1')",
    );
    const h = header({ n: 2, channels: 1, height: 2, width: 3, classes: 10 });
    expect(fail(withBody(h, 5))).toBe(
      `x.prds: not a prunec dataset (expected ${h.length + 14} bytes for 2 examples, found ${h.length + 5})`,
    );
    expect(fail(withBody(header({ n: 2, channels: 0, height: 2, width: 3, classes: 10 }), 2))).toBe(
      "x.prds: not a prunec dataset (header field 'channels' must be a positive integer)",
    );
  });
});

describe.skipIf(!existsSync(MODEL))("eval, bench and report on examples/digits", () => {
  let dir: string;
  let metrics: { sample_correct: number; sample_n?: number };
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "prunec-commands-"));
    metrics = JSON.parse(readFileSync(join(DIGITS, "metrics.json"), "utf8"));
    writeFileSync(join(dir, "s.prune"), SPEC);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("eval --json: the dense accuracy on the sample set is what training measured, on CPU and WASM", () => {
    const n = parseDataset(readFileSync(SAMPLE)).header.n;
    for (const ep of ["cpu", "wasm"]) {
      const r = run("eval", MODEL, "--data", SAMPLE, "--json", "--ep", ep);
      expect(r.status, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j).toMatchObject({
        n,
        correct: metrics.sample_correct,
        accuracy: metrics.sample_correct / n,
        ep,
        tokensPerLayer: null,
      });
    }
  });

  it("eval of a pruned model reports its tokens per layer; piped output has no progress bar", () => {
    const pruned = join(dir, "pruned.onnx");
    writeFileSync(pruned, compile(readFileSync(MODEL), SPEC).model);
    const r = run("eval", pruned, "--data", SAMPLE);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(
      /^.*pruned\.onnx: top-1 accuracy \d+\.\d\d% \(\d+\/\d+\) on .*sample\.prds, cpu\n {2}tokens per layer: 65 65 65 17 17 17\n$/,
    );
  });

  it("bench --json: one row for dense and one per spec, with speedups and ideal speedups", () => {
    const r = run("bench", MODEL, join(dir, "s.prune"), "--batch", "4", "--runs", "5", "--json");
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.rows.map((x: { spec: string | null }) => x.spec)).toEqual([null, join(dir, "s.prune")]);
    expect(j.rows[0]).toMatchObject({ speedup: 1, idealSpeedup: 1, ratio: 1 });
    expect(j.rows[1].tokensPerLayer).toEqual([65, 65, 65, 17, 17, 17]);
    expect(j.rows[1].idealSpeedup).toBeGreaterThan(1.5);
  });

  it("bench sets each static schedule against its oracle (a static slice of as many tokens) and takes --threads", () => {
    const r = run(
      "bench",
      MODEL,
      "-e",
      SPEC,
      "-e",
      "after layer 2 keep mass 60% by cls-attn",
      "--runs",
      "5",
      "--threads",
      "1",
      "--json",
    );
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as {
      threads: number;
      rows: {
        spec: string | null;
        medianMs: number;
        oracle?: { medianMs: number; ofOracle: number; oracleVsIdeal: number };
      }[];
    };
    expect(j.threads).toBe(1);
    const [dense, fixed, mass] = j.rows;
    expect(dense!.oracle).toBeUndefined();
    expect(fixed!.oracle!.ofOracle).toBeCloseTo(fixed!.oracle!.medianMs / fixed!.medianMs, 10);
    expect(fixed!.oracle!.oracleVsIdeal).toBeGreaterThan(0);
    expect(mass!.oracle).toBeUndefined(); // a count per example is no static slice
  });

  it("bench takes inline specs (-e, named <inline 1>, <inline 2>); its table fits COLUMNS, the long name cut in the middle", () => {
    const { COLUMNS: _c, ...env } = process.env;
    const args = ["bench", MODEL, "-e", SPEC, "-e", "after layer 1 keep 25% by cls-attn", "--runs", "5"];
    const j = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "prunec.js"), ...args, "--json"], {
      encoding: "utf8",
      env,
    });
    expect(j.status, j.stderr).toBe(0);
    expect(JSON.parse(j.stdout).rows.map((x: { spec: string | null }) => x.spec)).toEqual([
      null,
      "<inline 1>",
      "<inline 2>",
    ]);
    const long = join(dir, `${"a-very-long-schedule-name-".repeat(3)}end.prune`);
    writeFileSync(long, SPEC);
    const t = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "prunec.js"), "bench", MODEL, long, "--runs", "5"], {
      encoding: "utf8",
      env: { ...env, COLUMNS: "72" },
    });
    expect(t.status, t.stderr).toBe(0);
    const lines = t.stdout.trimEnd().split("\n");
    for (const l of lines) expect(l.length, l).toBeLessThanOrEqual(72);
    const head = lines.findIndex((l) => l.startsWith("model "));
    expect(lines[head]).toMatch(/^model +\| latency ms +\| speedup \| FLOPs-ideal \| ratio$/);
    expect(lines[head + 2]).toMatch(/^\/.+….*end\.prune \| \d/); // start and end of the path kept
  });

  it("report --json prints the folder and its files; -o - is refused", () => {
    const out = join(dir, "report-json");
    const r = run("report", MODEL, "-e", SPEC, "-o", out, "--json");
    expect([r.status, r.stderr]).toEqual([0, ""]);
    expect(JSON.parse(r.stdout)).toEqual({
      output: out,
      files: ["chart.svg", "report.json", "report.md"].map((f) => join(out, f)),
    });
    const dash = run("report", MODEL, "-e", SPEC, "-o", "-");
    expect([dash.status, dash.stdout, dash.stderr]).toEqual([
      1,
      "",
      "prunec: error: report writes a folder of files, so -o - (stdout) cannot hold it; give a folder\n",
    ]);
  });

  it("report writes valid Markdown, JSON, SVG (Vega-Lite) and PNG overlays; its accuracies are eval's", () => {
    const out = join(dir, "report");
    const r = run("report", MODEL, join(dir, "s.prune"), "-o", out, "--data", SAMPLE, "--examples", "3");
    expect(r.status, r.stderr).toBe(0);
    const json = JSON.parse(readFileSync(join(out, "report.json"), "utf8"));
    const [s] = json.schedules;
    expect(s.examples).toHaveLength(3);
    for (const e of s.examples) expect(e.keptPatches).toHaveLength(16);
    expect(s.layers.map((l: { prunedTokens: number }) => l.prunedTokens)).toEqual([65, 65, 65, 17, 17, 17]);
    const denseEval = JSON.parse(run("eval", MODEL, "--data", SAMPLE, "--json").stdout) as { accuracy: number };
    expect(json.dense.accuracy).toBe(denseEval.accuracy);
    const svg = readFileSync(join(out, "chart.svg"), "utf8");
    expect(XMLValidator.validate(svg)).toBe(true);
    expect(svg).toContain("tokens per layer");
    // SI-prefixed FLOPs ticks (a 68 MFLOP model's layers are millions, not a flat line at 0 G).
    expect(svg).toMatch(/>\d(\.\d)?M</);
    const budget = readFileSync(join(out, "budget.svg"), "utf8");
    expect(XMLValidator.validate(budget)).toBe(true);
    expect(budget).toContain("s.prune");
    for (let i = 0; i < 3; i++) {
      const png = PNG.sync.read(readFileSync(join(out, `example-${i}.png`)));
      expect([png.width, png.height]).toEqual([256, 256]);
    }
    const md = readFileSync(join(out, "report.md"), "utf8");
    expect(md).toContain("![tokens and FLOPs per layer](chart.svg)");
    expect(md).toContain("![example 2](example-2.png)");
  });

  it("report with several specs compares them: one chart, accuracy against FLOPs, overlays per schedule", () => {
    const out = join(dir, "report-two");
    writeFileSync(join(dir, "half.prune"), "after layer 3 keep 50% by cls-attn\n");
    const r = run(
      "report",
      MODEL,
      join(dir, "s.prune"),
      join(dir, "half.prune"),
      "-o",
      out,
      "--data",
      SAMPLE,
      "--examples",
      "2",
    );
    expect(r.status, r.stderr).toBe(0);
    const json = JSON.parse(readFileSync(join(out, "report.json"), "utf8"));
    expect(json.schedules.map((s: { name: string }) => s.name)).toEqual(["s.prune", "half.prune"]);
    expect(json.schedules[1].layers.map((l: { prunedTokens: number }) => l.prunedTokens)).toEqual([
      65, 65, 65, 65, 33, 33,
    ]);
    for (const s of json.schedules) expect(s.accuracy).toBeGreaterThan(0);
    for (const f of ["s0-example-1.png", "s1-example-1.png"]) expect(existsSync(join(out, f))).toBe(true);
    const chart = readFileSync(join(out, "chart.svg"), "utf8");
    for (const name of ["dense", "s.prune", "half.prune"]) expect(chart).toContain(name);
    expect(readFileSync(join(out, "report.md"), "utf8")).toContain("| half.prune |");
  });
});
