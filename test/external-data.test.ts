/**
 * Models with external data through the CLI, as a user runs it (`node bin/prunec.js`, spawned in a
 * working directory of its own): compiled into another folder, the weight files follow (hard link,
 * copy, or refusal); eval/bench/report read them beside the model and only there, and a missing,
 * short or escaping weights file is a one-line error with its exit code, before onnxruntime runs.
 */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { spawnSync } from "node:child_process";
import {
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
import { REPO_ROOT } from "./helpers/shared.js";
import { readNpy } from "./helpers/npy.js";
import { runNode, maxAbsDiff, type Feeds } from "./helpers/ort.js";
import { compile } from "../src/compile.js";
import { decodeModel } from "../src/onnx/io.js";
import { parseDataset, batchInput } from "../src/data/prds.js";
import { argmax } from "../src/data/overlay.js";
import { externalize } from "./support/externalize.js";

const BIN = join(REPO_ROOT, "bin", "prunec.js");
const TINY = join(REPO_ROOT, "examples", "tiny-vit");
const DIGITS = join(REPO_ROOT, "examples", "digits");
const SAMPLE = join(DIGITS, "sample.prds");
const SPEC = "after layer 1 keep 50% by cls-attn\n";

/** The CLI run in `cwd` (paths below are relative to it, as a user would type them). */
function prunec(cwd: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: "utf8" });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const inode = (p: string) => statSync(p).ino;
const tempFiles = (d: string) => readdirSync(d).filter((f) => f.endsWith(".tmp"));

describe("external data through the CLI", () => {
  let root: string;
  let tiny: Uint8Array;
  let feeds: Feeds;
  let digitsWeights: Uint8Array;
  /** root/model: the tiny ViT and the digits model with their weights in weights.bin / digits.bin. */
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), "prunec-external-"));
    for (const d of ["model", "cwd", "out"]) mkdirSync(join(root, d));
    tiny = readFileSync(join(TINY, "model.onnx"));
    const t = externalize(tiny);
    writeFileSync(join(root, "model", "vit.onnx"), t.model);
    writeFileSync(join(root, "model", "weights.bin"), t.weights);
    const d = externalize(readFileSync(join(DIGITS, "model.onnx")), "digits.bin");
    writeFileSync(join(root, "model", "digits.onnx"), d.model);
    writeFileSync(join(root, "model", "digits.bin"), d.weights);
    digitsWeights = d.weights;
    writeFileSync(join(root, "s.prune"), SPEC);
    const x = readNpy(join(TINY, "ref_in.npy"));
    feeds = { pixel_values: { type: "float32", dims: x.shape, data: x.data } };
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  /** A fresh output folder under root. */
  let outs = 0;
  const outDir = () => {
    const d = join(root, `out${outs++}`);
    mkdirSync(d);
    return d;
  };

  it("compile -o into another folder hard-links the weights beside the output; it runs from a third directory like the embedded model", async () => {
    const r = prunec(
      join(root, "cwd"),
      "../model/vit.onnx",
      "../s.prune",
      "-o",
      "../out/vit.pruned.onnx",
      "--expose-indices",
    );
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const out = join(root, "out");
    expect(r.stdout).toContain(`  external data ${join(out, "weights.bin")}: hard-linked`);
    expect(inode(join(out, "weights.bin"))).toBe(inode(join(root, "model", "weights.bin")));
    expect(tempFiles(out)).toEqual([]);
    // The location is unchanged (relative, now resolving beside the output).
    const locations = decodeModel(readFileSync(join(out, "vit.pruned.onnx"))).graph!.initializer.flatMap((t) =>
      t.externalData.filter((e) => e.key === "location").map((e) => e.value),
    );
    expect(new Set(locations)).toEqual(new Set(["weights.bin"]));
    const names = ["logits", "prunec.stage0.indices"];
    const fromFile = await runNode(join(out, "vit.pruned.onnx"), feeds, names);
    const embedded = await runNode(compile(tiny, SPEC, { exposeIndices: true }).model, feeds, names);
    expect(maxAbsDiff(fromFile.logits!.data as Float32Array, embedded.logits!.data as Float32Array)).toBe(0);
    expect(Array.from(fromFile["prunec.stage0.indices"]!.data as BigInt64Array)).toEqual(
      Array.from(embedded["prunec.stage0.indices"]!.data as BigInt64Array),
    );
    // The dense external-data model reads the same weights as the embedded one.
    const dense = await runNode(join(root, "model", "vit.onnx"), feeds, ["logits"]);
    expect(
      maxAbsDiff(
        dense.logits!.data as Float32Array,
        (await runNode(tiny, feeds, ["logits"])).logits!.data as Float32Array,
      ),
    ).toBe(0);
  });

  it("--external-data copy copies; refuse needs the same file already there (same inode or same bytes)", () => {
    const out = outDir();
    const r = prunec(
      join(root, "cwd"),
      "../model/vit.onnx",
      "../s.prune",
      "-o",
      join(out, "a.onnx"),
      "--external-data",
      "copy",
      "--json",
    );
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).externalData).toEqual([{ file: join(out, "weights.bin"), action: "copied" }]);
    expect(inode(join(out, "weights.bin"))).not.toBe(inode(join(root, "model", "weights.bin")));
    expect(readFileSync(join(out, "weights.bin"))).toEqual(readFileSync(join(root, "model", "weights.bin")));
    // Identical bytes already there: fine in every mode.
    const again = prunec(
      join(root, "cwd"),
      "../model/vit.onnx",
      "../s.prune",
      "-o",
      join(out, "b.onnx"),
      "--external-data",
      "refuse",
    );
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain(`  external data ${join(out, "weights.bin")}: already there`);
    // Nothing there: refuse writes nothing.
    const empty = outDir();
    const refused = prunec(
      join(root, "cwd"),
      "../model/vit.onnx",
      "../s.prune",
      "-o",
      join(empty, "c.onnx"),
      "--external-data",
      "refuse",
    );
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe(
      `prunec: error: ${join(empty, "weights.bin")}: no such file; ${join(empty, "c.onnx")} would read initializer 'conv_proj.weight' from it (--external-data refuse). ` +
        `Link or copy ../model/weights.bin there, or use --external-data link|copy\n`,
    );
    expect(readdirSync(empty)).toEqual([]);
    const move = prunec(root, "model/vit.onnx", "s.prune", "-o", join(empty, "d.onnx"), "--external-data", "move");
    expect(move.stderr).toBe("prunec: error: --external-data must be link, copy or refuse, got 'move'\n");
    expect(move.code).toBe(1); // a bad option value is a usage error
    const target = prunec(root, "model/vit.onnx", "s.prune", "-o", join(empty, "d.onnx"), "--target", "cuda");
    expect(target.stderr).toBe("prunec: error: --target must be cpu or webgpu, got 'cuda'\n");
    expect(target.code).toBe(1);
  });

  it("a different file of that name beside the output is never overwritten: exit 2, nothing written", () => {
    const out = outDir();
    writeFileSync(join(out, "weights.bin"), "someone else's weights");
    const r = prunec(root, "model/vit.onnx", "s.prune", "-o", join(out, "p.onnx"));
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `prunec: error: ${join(out, "weights.bin")}: exists and differs from model/weights.bin, the external data ${join(out, "p.onnx")} would read ` +
        `(initializer 'conv_proj.weight'); remove or rename it, or choose an -o in another folder\n`,
    );
    expect(readdirSync(out)).toEqual(["weights.bin"]);
    expect(readFileSync(join(out, "weights.bin"), "utf8")).toBe("someone else's weights");
  });

  it("a failure after the weights were placed removes them again (nothing half-written)", () => {
    const out = outDir();
    mkdirSync(join(out, "p.onnx")); // the final rename of the model fails: a folder has its name
    const r = prunec(root, "model/vit.onnx", "s.prune", "-o", join(out, "p.onnx"));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`^prunec: error: ${join(out, "p.onnx")}: cannot write \\(`));
    expect(readdirSync(out)).toEqual(["p.onnx"]);
  });

  it("compiling into another folder needs the weights; beside the input it does not", () => {
    const src = join(root, "noweights");
    mkdirSync(src);
    writeFileSync(join(src, "vit.onnx"), readFileSync(join(root, "model", "vit.onnx")));
    const out = outDir();
    const r = prunec(root, "noweights/vit.onnx", "s.prune", "-o", join(out, "p.onnx"));
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `prunec: error: noweights/weights.bin: no such file (external data of initializer 'conv_proj.weight' in noweights/vit.onnx); it is needed beside ${join(out, "p.onnx")}, which is in another folder\n`,
    );
    expect(readdirSync(out)).toEqual([]);
    expect(prunec(root, "noweights/vit.onnx", "s.prune").code).toBe(0);
  });

  it("eval, bench and report from another working directory read the weights beside the model, not a same-named decoy in the cwd", async () => {
    const cwd = join(root, "decoy");
    mkdirSync(cwd);
    writeFileSync(join(cwd, "digits.bin"), new Uint8Array(digitsWeights.length)); // zeros: every prediction would change
    const data = parseDataset(readFileSync(SAMPLE));
    const metrics = JSON.parse(readFileSync(join(DIGITS, "metrics.json"), "utf8")) as { sample_correct: number };
    for (const ep of ["cpu", "wasm"]) {
      const r = prunec(cwd, "eval", "../model/digits.onnx", "--data", SAMPLE, "--json", "--ep", ep);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ n: data.header.n, correct: metrics.sample_correct, ep });
    }
    const b = prunec(cwd, "bench", "../model/digits.onnx", "../s.prune", "--runs", "5", "--json");
    expect(b.code, b.stderr).toBe(0);
    expect(JSON.parse(b.stdout).rows).toHaveLength(2);
    const rep = prunec(
      cwd,
      "report",
      "../model/digits.onnx",
      "../s.prune",
      "-o",
      "report",
      "--data",
      SAMPLE,
      "--examples",
      "8",
    );
    expect(rep.code, rep.stderr).toBe(0);
    const json = (
      JSON.parse(readFileSync(join(cwd, "report", "report.json"), "utf8")) as {
        schedules: { examples: { dense: number }[] }[];
      }
    ).schedules[0]!;
    // The report's dense predictions are the embedded model's.
    const logits = (
      await runNode(
        readFileSync(join(DIGITS, "model.onnx")),
        { pixel_values: { type: "float32", ...batchInput(data, 0, 8) } },
        ["logits"],
      )
    ).logits!;
    const classes = logits.dims.at(-1)!;
    const expected = json.examples.map((_, i) =>
      argmax((logits.data as Float32Array).subarray(i * classes, (i + 1) * classes)),
    );
    expect(json.examples.map((e) => e.dense)).toEqual(expected);
  });

  it("missing or short weights: exit 2 naming the file and the initializer, before onnxruntime runs; report writes nothing", () => {
    const dir = join(root, "broken");
    mkdirSync(dir);
    writeFileSync(join(dir, "digits.onnx"), readFileSync(join(root, "model", "digits.onnx")));
    const cwd = join(root, "cwd");
    writeFileSync(join(cwd, "digits.bin"), digitsWeights); // the right bytes, in the wrong folder
    const missing = `prunec: error: ../broken/digits.bin: no such file (external data of initializer 'conv_proj.weight' in ../broken/digits.onnx; locations resolve against the model's folder)\n`;
    expect(prunec(cwd, "eval", "../broken/digits.onnx", "--data", SAMPLE)).toEqual({
      code: 2,
      stdout: "",
      stderr: missing,
    });
    expect(prunec(cwd, "bench", "../broken/digits.onnx", "../s.prune", "--runs", "1")).toEqual({
      code: 2,
      stdout: "",
      stderr: missing,
    });
    expect(
      prunec(cwd, "report", "../broken/digits.onnx", "../s.prune", "-o", "../broken/report", "--data", SAMPLE),
    ).toEqual({ code: 2, stdout: "", stderr: missing });
    expect(existsSync(join(dir, "report"))).toBe(false);

    writeFileSync(join(dir, "digits.bin"), digitsWeights.subarray(0, digitsWeights.length - 1));
    const model = decodeModel(readFileSync(join(dir, "digits.onnx")));
    const last = model.graph!.initializer.filter((t) => t.externalData.length).at(-1)!;
    const entry = (k: string) => last.externalData.find((e) => e.key === k)!.value;
    const end = Number(entry("offset")) + Number(entry("length"));
    expect(end).toBe(digitsWeights.length);
    const short = prunec(cwd, "eval", "../broken/digits.onnx", "--data", SAMPLE, "--ep", "wasm");
    expect(short).toEqual({
      code: 2,
      stdout: "",
      stderr: `prunec: error: ../broken/digits.bin: ${end - 1} bytes, too short for initializer '${last.name}' of ../broken/digits.onnx (needs offset ${entry("offset")} + length ${entry("length")} = ${end} bytes)\n`,
    });
  });

  it("eval, bench and report refuse absolute and '..' locations (exit 3), as compile does", () => {
    const dir = join(root, "escaping");
    mkdirSync(dir);
    for (const location of ["../weights.bin", join(root, "model", "digits.bin")]) {
      writeFileSync(join(dir, "m.onnx"), externalize(readFileSync(join(DIGITS, "model.onnx")), location).model);
      const message = `prunec: error: m.onnx: initializer 'conv_proj.weight' has external data location '${location}' outside the model's folder (absolute paths and '..' are not allowed)\n`;
      for (const args of [
        ["eval", "m.onnx", "--data", SAMPLE],
        ["bench", "m.onnx", "../s.prune", "--runs", "1"],
        ["report", "m.onnx", "../s.prune", "-o", "r", "--data", SAMPLE],
      ]) {
        expect(prunec(dir, ...args)).toEqual({ code: 3, stdout: "", stderr: message });
      }
      expect(existsSync(join(dir, "r"))).toBe(false);
    }
  });
});
