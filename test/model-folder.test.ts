/**
 * compile's folder mode (src/cli/folder.ts): `prunec DIR SPEC -o OUTDIR [--onnx FILE]` on a
 * transformers.js model folder. Which file is compiled, what OUTDIR holds (byte copies, dtype
 * variants left out, external data placed), and the refusals and interrupts that leave nothing.
 * CLI tests: they spawn bin/prunec.js, which runs dist/ (`npm run build` first).
 */
import { spawn, spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "./helpers/shared.js";
import { externalize } from "./support/externalize.js";
import { unloadable } from "./support/model-edit.js";
import { EXIT_CODES } from "../src/errors.js";
import { VERIFY_FAILED } from "../src/verify/verify.js";

const BIN = join(REPO_ROOT, "bin", "prunec.js");
const TINY = join(REPO_ROOT, "examples", "tiny-vit", "model.onnx");
const SPEC = "after layer 1 keep 50% by cls-attn\n";

function prunec(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Every file under `d`, relative, sorted. */
function files(d: string, rel = ""): string[] {
  return readdirSync(join(d, rel), { withFileTypes: true })
    .flatMap((e) =>
      e.isDirectory() ? files(d, rel ? `${rel}/${e.name}` : e.name) : [rel ? `${rel}/${e.name}` : e.name],
    )
    .sort();
}

describe("compile: transformers.js model folders", () => {
  let root: string;
  let n = 0;
  let spec: string;
  /** A fresh model folder: config, preprocessor, tokenizer, onnx/<name> = the tiny ViT, and `extra` files. */
  const folder = (name = "model.onnx", extra: Record<string, string> = {}) => {
    const d = join(root, `m${n++}`);
    mkdirSync(join(d, "onnx"), { recursive: true });
    copyFileSync(TINY, join(d, "onnx", name));
    writeFileSync(join(d, "config.json"), '{"model_type":"vit"}\n');
    writeFileSync(join(d, "preprocessor_config.json"), '{"do_normalize":false}\n');
    for (const [f, text] of Object.entries(extra)) {
      mkdirSync(join(d, f, ".."), { recursive: true });
      writeFileSync(join(d, f), text);
    }
    return d;
  };
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), "prunec-folder-"));
    spec = join(root, "s.prune");
    writeFileSync(spec, SPEC);
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it("copies every other file byte for byte, compiles onnx/model.onnx as the single-file compile does, leaves dtype variants out", () => {
    const d = folder("model.onnx", {
      "tokenizer.json": "{}",
      "onnx/model_quantized.onnx": "not pruned",
      "onnx/model_fp16.onnx": "not pruned",
      "onnx/model_fp16.onnx_data": "its weights",
      "onnx/embed_tokens.onnx": "another model",
      "nested/deeper/notes.txt": "kept",
    });
    const out = join(root, "out-a");
    const r = prunec(d, spec, "-o", out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`wrote ${out} (onnx/model.onnx compiled; 5 other files of ${d} copied)`);
    expect(r.stdout).toContain("stage 0: after layer 1 by cls-attn");
    for (const v of ["onnx/model_fp16.onnx", "onnx/model_fp16.onnx_data", "onnx/model_quantized.onnx"])
      expect(r.stdout).toContain(`left out ${v}: a dtype variant of onnx/model.onnx that was not pruned`);
    expect(files(out)).toEqual([
      "config.json",
      "nested/deeper/notes.txt",
      "onnx/embed_tokens.onnx",
      "onnx/model.onnx",
      "preprocessor_config.json",
      "tokenizer.json",
    ]);
    for (const f of files(out).filter((f) => f !== "onnx/model.onnx"))
      expect(readFileSync(join(out, f)).equals(readFileSync(join(d, f))), f).toBe(true);
    const single = join(root, "single-a.onnx");
    expect(prunec(join(d, "onnx", "model.onnx"), spec, "-o", single).code).toBe(0);
    expect(readFileSync(join(out, "onnx", "model.onnx")).equals(readFileSync(single))).toBe(true);
    expect(readdirSync(root).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });

  it("--json names the compiled file, the copies and the files left out", () => {
    const d = folder("model.onnx", { "onnx/model_q4.onnx": "x" });
    const r = prunec(d, spec, "-o", join(root, "out-json"), "--json");
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as { output: string; folder: Record<string, unknown>; stages: unknown[] };
    expect(j.folder).toEqual({
      input: d,
      compiled: "onnx/model.onnx",
      copied: ["config.json", "preprocessor_config.json"],
      leftOut: ["onnx/model_q4.onnx"],
    });
    expect(j.stages).toHaveLength(1);
  });

  it("without onnx/model.onnx compiles onnx/vision_encoder.onnx; --onnx picks another; neither: refused listing the .onnx files", () => {
    const enc = folder("vision_encoder.onnx", { "onnx/vision_encoder_quantized.onnx": "q8", "onnx/decoder.onnx": "d" });
    const r = prunec(enc, spec, "-o", join(root, "out-enc"));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("(onnx/vision_encoder.onnx compiled; 3 other files");
    expect(r.stdout).toContain("left out onnx/vision_encoder_quantized.onnx");

    const other = folder("encoder.onnx");
    const refused = prunec(other, spec, "-o", join(root, "out-none"));
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(
      "a model folder with neither onnx/model.onnx nor onnx/vision_encoder.onnx; name the file to compile with --onnx (its .onnx files: onnx/encoder.onnx)",
    );
    expect(existsSync(join(root, "out-none"))).toBe(false);
    const picked = prunec(other, spec, "-o", join(root, "out-picked"), "--onnx", "onnx/encoder.onnx");
    expect(picked.code, picked.stderr).toBe(0);
    expect(files(join(root, "out-picked"))).toEqual(["config.json", "onnx/encoder.onnx", "preprocessor_config.json"]);

    // A quantized variant compiled by name: the fp32 file is then the variant left out.
    const q = folder("model.onnx");
    copyFileSync(TINY, join(q, "onnx", "model_quantized.onnx"));
    const rq = prunec(q, spec, "-o", join(root, "out-q"), "--onnx", "onnx/model_quantized.onnx");
    expect(rq.code, rq.stderr).toBe(0);
    expect(rq.stdout).toContain("left out onnx/model.onnx: a dtype variant of onnx/model_quantized.onnx");

    expect(prunec(other, spec, "-o", join(root, "x"), "--onnx", "../escape.onnx").stderr).toContain(
      "not a file inside",
    );
    expect(prunec(TINY, spec, "-o", join(root, "y.onnx"), "--onnx", "onnx/model.onnx").stderr).toContain(
      "--onnx names the file to compile in a model folder",
    );
    expect(prunec(other, spec).stderr).toContain("is a model folder: name the output folder with -o OUTDIR");
  });

  it("OUTDIR is never DIR, inside it, or a folder with files; an empty folder is filled", () => {
    const d = folder();
    for (const [out, msg] of [
      [d, "is the input folder"],
      [join(d, "pruned"), "is inside the input folder"],
      [join(d, "onnx"), "is inside the input folder"],
    ] as const) {
      const r = prunec(d, spec, "-o", out);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(msg);
    }
    expect(files(d)).toEqual(["config.json", "onnx/model.onnx", "preprocessor_config.json"]);
    const full = join(root, "full");
    mkdirSync(full);
    writeFileSync(join(full, "keep.txt"), "mine");
    const r = prunec(d, spec, "-o", full);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("a folder that is not empty");
    expect(files(full)).toEqual(["keep.txt"]);
    const empty = join(root, "empty");
    mkdirSync(empty);
    expect(prunec(d, spec, "-o", empty).code).toBe(0);
    expect(files(empty)).toEqual(["config.json", "onnx/model.onnx", "preprocessor_config.json"]);
    // A refused spec writes nothing.
    const bad = join(root, "bad.prune");
    writeFileSync(bad, "after layer 99 keep 50% by cls-attn\n");
    expect(prunec(d, bad, "-o", join(root, "out-bad")).code).not.toBe(0);
    expect(existsSync(join(root, "out-bad"))).toBe(false);
  });

  it("the compiled file's external data is placed as the single-file compile places it (hard link by default, --external-data copy)", () => {
    const d = folder();
    const { model, weights } = externalize(readFileSync(TINY), "model.onnx_data");
    writeFileSync(join(d, "onnx", "model.onnx"), model);
    writeFileSync(join(d, "onnx", "model.onnx_data"), weights);
    const out = join(root, "out-ext");
    const r = prunec(d, spec, "-o", out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`external data ${join(out, "onnx", "model.onnx_data")}: hard-linked`);
    expect(r.stdout).toContain("onnxruntime smoke run passed");
    expect(statSync(join(out, "onnx", "model.onnx_data")).ino).toBe(statSync(join(d, "onnx", "model.onnx_data")).ino);
    const copied = join(root, "out-ext-copy");
    const c = prunec(d, spec, "-o", copied, "--external-data", "copy");
    expect(c.code, c.stderr).toBe(0);
    expect(c.stdout).toContain(": copied");
    expect(statSync(join(copied, "onnx", "model.onnx_data")).ino).not.toBe(
      statSync(join(d, "onnx", "model.onnx_data")).ino,
    );
    expect(readFileSync(join(copied, "onnx", "model.onnx_data")).equals(Buffer.from(weights))).toBe(true);
  });

  it("a compiled model onnxruntime cannot load: exit 8 naming its refusal, no OUTDIR and no staged folder left (the smoke run loads the staged file)", () => {
    const d = folder();
    writeFileSync(join(d, "onnx", "model.onnx"), unloadable(readFileSync(TINY)));
    const parent = join(root, "unloadable");
    mkdirSync(parent);
    const r = prunec(d, spec, "-o", join(parent, "out"));
    expect(r.code).toBe(EXIT_CODES.verify);
    expect(r.stderr).toContain(
      `${VERIFY_FAILED}: the compiled model: onnxruntime cannot load it: Load model from the compiled model failed:`,
    );
    expect(r.stderr).toContain("test.nokernel:Nope");
    expect(r.stderr).not.toContain(".tmp");
    expect(readdirSync(parent)).toEqual([]);
  });

  it("the input model's bytes are garbage before the smoke run (PRUNEC_TEST_INPUT_FREED, as for a file: test/verify.test.ts)", () => {
    const d = folder();
    const r = spawnSync(process.execPath, [BIN, d, spec, "-o", join(root, "out-freed")], {
      encoding: "utf8",
      timeout: 60_000,
      env: { ...process.env, PRUNEC_TEST_INPUT_FREED: "1" },
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toBe("prunec test: input freed before the smoke run\n");
  });

  it("SIGTERM while the folder is staged: no OUTDIR, no staged folder", async () => {
    const d = folder("model.onnx", { "tokenizer.json": "{}" });
    const parent = join(root, "sig");
    mkdirSync(parent);
    const child = spawn(process.execPath, [BIN, d, spec, "-o", join(parent, "out"), "--no-verify"], {
      env: { ...process.env, PRUNEC_TEST_WRITE_DELAY_MS: "20000" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.resume();
    child.stderr.resume();
    const done = new Promise<number | null>((res) => child.on("close", (code) => res(code)));
    try {
      // Staged: the temp folder beside OUTDIR holds the copies and the compiled model's temp file.
      const staged = () =>
        readdirSync(parent).some(
          (f) =>
            f.endsWith(".tmp") &&
            existsSync(join(parent, f, "tokenizer.json")) &&
            existsSync(join(parent, f, "onnx")) &&
            readdirSync(join(parent, f, "onnx")).some((g) => g.endsWith(".tmp")),
        );
      for (const t0 = Date.now(); !staged(); await new Promise((r) => setTimeout(r, 20)))
        if (Date.now() - t0 > 15_000) throw new Error("timed out waiting for the staged folder");
      child.kill("SIGTERM");
      expect(await done).toBe(143);
      expect(readdirSync(parent)).toEqual([]);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
  });
});
