/** The CLI as a user runs it (`node bin/prunec.js`, built by `npm run build`): exit codes, messages, files. */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync, readdirSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { VERSION } from "../src/version.js";
import { decodeModel } from "../src/onnx/io.js";

const BIN = join(REPO_ROOT, "bin", "prunec.js");
const EXAMPLE = join(REPO_ROOT, "examples", "tiny-vit", "model.onnx");

function prunec(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8" });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("prunec CLI", () => {
  let dir: string;
  let model: string;
  let spec: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "prunec-cli-"));
    model = join(dir, "vit.onnx");
    copyFileSync(EXAMPLE, model);
    spec = join(dir, "s.prune");
    writeFileSync(spec, "after layer 1 keep 50% by cls-attn\n");
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("--help lists the commands, --version prints the version", () => {
    const help = prunec("--help");
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/compile \[options\] <model> <spec>/);
    expect(help.stdout).toMatch(/inspect \[options\] <model>/);
    expect(prunec("--version").stdout.trim()).toBe(VERSION);
    expect(VERSION).toBe(JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")).version);
  });

  it("compiles beside the input by default and records the spec and version in metadata", () => {
    const r = prunec(model, spec);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const out = join(dir, "vit.pruned.onnx");
    expect(r.stdout).toContain(`wrote ${out}`);
    const meta = Object.fromEntries(decodeModel(readFileSync(out)).metadataProps.map((p) => [p.key, p.value]));
    expect(meta["prunec.version"]).toBe(VERSION);
    expect(meta["prunec.spec"]).toBe("after layer 1 keep 50% by cls-attn\n");
  });

  it("-o writes there; leaves no temp files", () => {
    const out = join(dir, "o.onnx");
    expect(prunec(model, spec, "-o", out).code).toBe(0);
    expect(existsSync(out)).toBe(true);
    expect(readdirSync(dir).filter((f) => f.includes(".tmp"))).toEqual([]);
  });

  it("missing model: exit 2, one line, nothing written", () => {
    const r = prunec(join(dir, "nope.onnx"), spec, "-o", join(dir, "x.onnx"));
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`prunec: error: ${join(dir, "nope.onnx")}: no such file (expected an ONNX model)\n`);
    expect(existsSync(join(dir, "x.onnx"))).toBe(false);
  });

  it("not an ONNX file and a truncated file: exit 3, nothing written", () => {
    const text = join(dir, "text.onnx");
    writeFileSync(text, "hello, I am not a model\n");
    const r1 = prunec(text, spec, "-o", join(dir, "y.onnx"));
    expect(r1.code).toBe(3);
    expect(r1.stderr).toBe(
      `prunec: error: ${text}: not an ONNX model (protobuf decoding failed: cant skip wire type 4)\n`,
    );
    expect(r1.stderr.trim().split("\n")).toHaveLength(1);
    const trunc = join(dir, "trunc.onnx");
    const bytes = readFileSync(model);
    writeFileSync(trunc, bytes.subarray(0, bytes.length >> 1));
    const r2 = prunec(trunc, spec, "-o", join(dir, "y.onnx"));
    expect(r2.code).toBe(3);
    expect(r2.stderr).toBe(
      `prunec: error: ${trunc}: truncated ONNX model (the protobuf data ends early: premature EOF)\n`,
    );
    expect(existsSync(join(dir, "y.onnx"))).toBe(false);
  });

  it("a spec that cannot apply: exit 6, the spec position and the model fact, nothing written", () => {
    const bad = join(dir, "bad.prune");
    writeFileSync(bad, "after layer 9 keep 50% by cls-attn\n");
    const r = prunec(model, bad, "-o", join(dir, "z.onnx"));
    expect(r.code).toBe(6);
    expect(r.stderr).toBe(
      `${bad}:1:13: error: layer 9 is out of range: the model has 4 layers (0..3, or -1..-4 from the end)\n 1 | after layer 9 keep 50% by cls-attn\n   |             ^\n`,
    );
    expect(existsSync(join(dir, "z.onnx"))).toBe(false);
  });

  it("--kv-state: the recall decoder compiled with a KV stage gets one validity pair per evicted layer, and the smoke run passes", () => {
    const kvSpec = join(dir, "kv.prune");
    writeFileSync(kvSpec, "keep kv 25% by h2o(recent: 8)\n");
    const out = join(dir, "recall.onnx");
    const r = prunec(join(REPO_ROOT, "examples", "recall", "model.onnx"), kvSpec, "-o", out, "--kv-state");
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(r.stdout).toContain("onnxruntime smoke run passed");
    const g = decodeModel(readFileSync(out)).graph!;
    const valid = (prefix: string) =>
      g.input
        .concat(g.output)
        .filter((v) => v.name.startsWith(prefix) && v.name.endsWith(".prunec_valid"))
        .map((v) => v.name);
    expect(valid("past_key_values.")).toEqual([0, 1, 2, 3].map((l) => `past_key_values.${l}.prunec_valid`));
    expect(valid("present.")).toEqual([0, 1, 2, 3].map((l) => `present.${l}.prunec_valid`));
  });

  it("during decode: the recall decoder gets one score pair per layer, the report says it evicts at every call, and the smoke run passes", () => {
    const kvSpec = join(dir, "decode.prune");
    writeFileSync(kvSpec, "during decode keep kv 64 tokens by a2sf(forget: 0.9, recent: 8)\n");
    const out = join(dir, "recall-decode.onnx");
    const r = prunec(join(REPO_ROOT, "examples", "recall", "model.onnx"), kvSpec, "-o", out);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(r.stdout).toContain(
      "stage 0: during decode keep kv 64 tokens by a2sf in layers 0, 1, 2, 3 (each KV head, at every call)",
    );
    expect(r.stdout).toContain("onnxruntime smoke run passed");
    const g = decodeModel(readFileSync(out)).graph!;
    const scores = (prefix: string) =>
      g.input
        .concat(g.output)
        .filter((v) => v.name.startsWith(prefix) && v.name.endsWith(".prunec_score"))
        .map((v) => v.name);
    expect(scores("past_key_values.")).toEqual([0, 1, 2, 3].map((l) => `past_key_values.${l}.prunec_score`));
    expect(scores("present.")).toEqual([0, 1, 2, 3].map((l) => `present.${l}.prunec_score`));
  });

  it("refuses to write over its input", () => {
    const before = readFileSync(model);
    const r = prunec(model, spec, "-o", model);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`prunec: error: ${model}: refusing to overwrite an input file; choose another -o\n`);
    expect(Buffer.compare(readFileSync(model), before)).toBe(0);
  });

  it("inspect prints a table, and --json a layers array", () => {
    const table = prunec("inspect", model);
    expect(table.code).toBe(0);
    expect(table.stdout).toContain("4 transformer layers");
    const json = JSON.parse(prunec("inspect", model, "--json").stdout);
    expect(json.layers).toHaveLength(4);
    expect(json.cls).toEqual({ present: true, index: 0, prefixTokens: 1 });
  });
});
