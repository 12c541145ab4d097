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

/** The environment of a piped run: no COLUMNS (so no width limit) unless a test sets one. */
const { COLUMNS: _columns, ...ENV } = process.env;

function prunec(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env: ENV });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** prunec with stdin, a working directory, extra environment; stdout as bytes. */
function prunecWith(
  opts: { input?: Uint8Array | string; cwd?: string; env?: Record<string, string> },
  ...args: string[]
) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    input: opts.input ?? "",
    cwd: opts.cwd,
    env: { ...ENV, ...opts.env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.toString("utf8") };
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

  it("the smoke run leaves no onnxruntime telemetry in the user's home, unless the user set ORT_DISABLE_TELEMETRY", () => {
    // onnxruntime also records nothing on a CI machine (CI, GITHUB_ACTIONS, TF_BUILD… set: the
    // names its library holds), so those go too, or the control below could not see it record.
    const drop = new Set([
      "ORT_DISABLE_TELEMETRY",
      "XDG_CACHE_HOME",
      "CI",
      "TF_BUILD",
      "GITHUB_ACTIONS",
      "GITLAB_CI",
      "CIRCLECI",
      "TRAVIS",
      "JENKINS_URL",
      "CODEBUILD_BUILD_ID",
      "BUILDKITE",
      "TEAMCITY_VERSION",
      "APPVEYOR",
      "BITBUCKET_BUILD_NUMBER",
    ]);
    const base = Object.fromEntries(Object.entries(ENV).filter(([k]) => !drop.has(k)));
    const filesUnder = (d: string): string[] =>
      readdirSync(d, { recursive: true, withFileTypes: true })
        .filter((e) => e.isFile())
        .map((e) => join(e.parentPath, e.name).slice(d.length + 1));
    const run = (extra: Record<string, string>) => {
      const home = mkdtempSync(join(tmpdir(), "prunec-home-"));
      try {
        const r = spawnSync(process.execPath, [BIN, model, spec, "-o", join(dir, "telemetry.onnx")], {
          encoding: "utf8",
          env: { ...base, HOME: home, ...extra },
        });
        expect(r.status, r.stderr).toBe(0);
        expect(r.stdout).toMatch(/onnxruntime smoke run passed/);
        return filesUnder(home);
      } finally {
        rmSync(home, { recursive: true, force: true });
      }
    };
    expect(run({})).toEqual([]);
    // The user's own setting wins ("0" does not turn it off): onnxruntime then writes its database.
    expect(run({ ORT_DISABLE_TELEMETRY: "0" })).toContain(
      join(".cache", "Microsoft", "DeveloperTools", ".onnxruntime", "onnxruntime.db"),
    );
  });

  it("--timings prints each step's wall time to stderr, in order, and leaves stdout and the model as without it", () => {
    const plain = prunec(model, spec, "-o", join(dir, "t0.onnx"));
    const timed = prunec(model, spec, "-o", join(dir, "t1.onnx"), "--timings");
    expect(timed.code).toBe(0);
    const norm = (s: string) => s.replaceAll("t1.onnx", "t0.onnx").replace(/\(\d+\.\d\d s\)/, "");
    expect(norm(timed.stdout)).toBe(norm(plain.stdout));
    expect(readFileSync(join(dir, "t1.onnx")).equals(readFileSync(join(dir, "t0.onnx")))).toBe(true);
    const rows = timed.stderr.trim().split("\n");
    expect(rows[0]).toMatch(/^step +ms$/);
    const steps = rows.slice(1).map((r) => /^(.+?) +(\d+\.\d)$/.exec(r)?.[1]);
    for (const s of [
      "read",
      "decode",
      "parse",
      "analyse",
      "apply stages",
      "fold shape arithmetic below stages",
      "verify",
      "encode",
      "onnxruntime smoke run",
      "write",
    ])
      expect(steps).toContain(s);
    expect(steps.indexOf("decode")).toBeLessThan(steps.indexOf("apply stages"));
    expect(steps.indexOf("encode")).toBeLessThan(steps.indexOf("write"));
    expect(steps.at(-1)).toBe("total");
    expect(steps).not.toContain("test mutation");
  });

  it("--help lists the commands, --version prints the version", () => {
    const help = prunec("--help");
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/compile \[options\] <model> \[spec\]/);
    expect(help.stdout).toMatch(/inspect \[options\] <model>/);
    expect(prunec("--version").stdout.trim()).toBe(VERSION);
    expect([prunec("-v").stdout, prunec("-V").stdout]).toEqual([`${VERSION}\n`, `${VERSION}\n`]);
    for (const cmd of ["compile", "check", "fmt", "eval", "bench", "report", "inspect"]) {
      for (const flag of ["-h", "--help"]) {
        const r = prunec(cmd, flag);
        expect([r.code, r.stderr], `${cmd} ${flag}`).toEqual([0, ""]);
        expect(r.stdout).toMatch(new RegExp(`^Usage: prunec ${cmd} `));
      }
    }
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

  describe("habits: help, typos, -e, '-', --json errors, -v, widths", () => {
    const good = "after layer 1 keep 50% by cls-attn\n";
    const out = (name: string) => join(dir, name);

    it("bare prunec prints the help on stdout and exits 1 (as git and npm do)", () => {
      const r = prunec();
      expect([r.code, r.stderr]).toEqual([1, ""]);
      expect(r.stdout).toMatch(
        /^Usage: prunec MODEL SPEC \[options\] {6}\(compile, the default command\)\n {7}prunec <command> \[options\]\n/,
      );
      expect(r.stdout).toContain("inspect [options] <model>");
    });

    it("a typo'd command gets 'did you mean' (exit 1); a file of that name is still a model; a far word is a missing model", () => {
      const r = prunec("inpsect", model);
      expect([r.code, r.stdout, r.stderr]).toEqual([
        1,
        "",
        "prunec: error: unknown command 'inpsect' (did you mean 'inspect'?)\n",
      ]);
      const j = prunec("chekc", spec, "--json");
      expect([j.code, JSON.parse(j.stdout), j.stderr]).toEqual([
        1,
        { error: { code: 1, kind: "usage", message: "unknown command 'chekc' (did you mean 'check'?)" } },
        "",
      ]);
      // A real file named like a command's typo stays the model.
      const cwd = mkdtempSync(join(tmpdir(), "prunec-typo-"));
      try {
        copyFileSync(model, join(cwd, "inpsect"));
        const f = prunecWith({ cwd }, "inpsect", spec, "-o", "out.onnx", "--no-verify");
        expect([f.code, f.stderr]).toEqual([0, ""]);
        expect(f.stdout.toString()).toContain(`wrote ${join(cwd, "out.onnx")}`);
      } finally {
        rmSync(cwd, { recursive: true, force: true });
      }
      const far = prunec("zzzzzz", spec);
      expect([far.code, far.stderr]).toEqual([2, "prunec: error: zzzzzz: no such file (expected an ONNX model)\n"]);
    });

    it("usage errors carry the one prefix", () => {
      const r = prunec("inspect");
      expect([r.code, r.stdout, r.stderr]).toEqual([1, "", "prunec: error: missing required argument 'model'\n"]);
      const u = prunec(model, spec, "--frobnicate");
      expect([u.code, u.stderr]).toEqual([1, "prunec: error: unknown option '--frobnicate'\n"]);
      const none = prunec(model);
      expect([none.code, none.stderr]).toEqual([
        1,
        "prunec: error: missing the spec: give a .prune file, '-' (stdin) or -e TEXT\n",
      ]);
      const both = prunec(model, spec, "-e", good);
      expect([both.code, both.stderr]).toEqual([
        1,
        `prunec: error: the spec is given twice: a file ('${spec}') and -e; give one\n`,
      ]);
    });

    it("-e compiles an inline spec like the same text in a file; its errors are located in <inline>", () => {
      const fromFile = prunec(model, spec, "-o", out("file.onnx"), "--no-verify");
      const inline = prunec(model, "-e", good, "-o", out("inline.onnx"), "--no-verify");
      expect([fromFile.code, inline.code, inline.stderr]).toEqual([0, 0, ""]);
      expect(Buffer.compare(readFileSync(out("file.onnx")), readFileSync(out("inline.onnx")))).toBe(0);
      const bad = prunec(model, "-e", "after layer 1 keep 50% by cls-atn", "-o", out("never.onnx"));
      expect([bad.code, bad.stdout, bad.stderr]).toEqual([
        4,
        "",
        "<inline>:1:27: error: unknown criterion 'cls-atn'\n 1 | after layer 1 keep 50% by cls-atn\n   |                           ^~~~~~~\n   = help: did you mean 'cls-attn'?\n",
      ]);
      const two = prunec(
        model,
        "-e",
        "after layer 1 keep 50% by cls-attn\nafter layer 9 keep 5 by norm",
        "-o",
        out("n.onnx"),
      );
      expect(two.code).toBe(6);
      expect(two.stderr).toMatch(/^<inline>:2:13: error: layer 9 is out of range/);
      expect(existsSync(out("never.onnx")) || existsSync(out("n.onnx"))).toBe(false);
      const check = prunec("check", "-e", good, model);
      expect([check.code, check.stdout]).toEqual([
        0,
        `<inline>: ok on ${model}, 1 stage: after layer 1 keep 50% by cls-attn (65 → 33 tokens)\n`,
      ]);
      const fmt = prunec("fmt", "-e", "after layer 1 keep 50 % by cls-attn ; after layer 2 keep by norm");
      expect([fmt.code, fmt.stdout]).toEqual([0, "after layer 1 keep 50% by cls-attn\nafter layer 2 keep by norm\n"]);
    });

    it("'-' reads the spec or the model from stdin; -o - writes the model to stdout (the summary to stderr)", () => {
      prunec(model, spec, "-o", out("ref.onnx"), "--no-verify");
      const ref = readFileSync(out("ref.onnx"));
      const specIn = prunecWith({ input: good }, model, "-", "-o", out("s.onnx"), "--no-verify");
      expect([specIn.code, specIn.stderr]).toEqual([0, ""]);
      expect(Buffer.compare(readFileSync(out("s.onnx")), ref)).toBe(0);
      const modelIn = prunecWith({ input: readFileSync(model) }, "-", spec, "-o", out("m.onnx"), "--no-verify");
      expect([modelIn.code, modelIn.stderr]).toEqual([0, ""]);
      expect(Buffer.compare(readFileSync(out("m.onnx")), ref)).toBe(0);
      const toStdout = prunecWith({}, model, spec, "-o", "-", "--no-verify");
      expect(toStdout.code).toBe(0);
      expect(Buffer.compare(toStdout.stdout, ref)).toBe(0);
      expect(toStdout.stderr).toMatch(
        new RegExp(`^wrote ${ref.length} bytes to stdout\n  stage 0: after layer 1 by cls-attn`),
      );
      expect(existsSync(join(REPO_ROOT, "-"))).toBe(false);
      // Both through the pipe: stdin in, stdout out; --json's report goes to stderr.
      const pipe = prunecWith({ input: readFileSync(model) }, "-", spec, "-o", "-", "--json");
      expect(pipe.code).toBe(0);
      expect(Buffer.compare(pipe.stdout, ref)).toBe(0);
      expect(JSON.parse(pipe.stderr)).toMatchObject({ output: "-", smoke: { status: "passed" } });
      // One stdin; a model from stdin has no folder to write beside.
      const twice = prunecWith({ input: good }, "-", "-", "-o", out("t.onnx"));
      expect([twice.code, twice.stdout.length, twice.stderr]).toEqual([
        1,
        0,
        "prunec: error: standard input can be read only once: '-' is given for the model and the spec\n",
      ]);
      const noOut = prunecWith({ input: readFileSync(model) }, "-", spec);
      expect([noOut.code, noOut.stderr]).toEqual([
        1,
        "prunec: error: the model is read from stdin: give -o FILE, or -o - for stdout\n",
      ]);
      const notModel = prunecWith({ input: "hello" }, "-", spec, "-o", out("h.onnx"));
      expect(notModel.code).toBe(3);
      expect(notModel.stderr).toMatch(/^prunec: error: <stdin>: not an ONNX model/);
      const inspect = prunecWith({ input: readFileSync(model) }, "inspect", "-", "--json");
      expect(JSON.parse(inspect.stdout.toString()).layers).toHaveLength(4);
      const check = prunecWith({ input: good }, "check", "-", model);
      expect(check.stdout.toString()).toMatch(/^<stdin>: ok on /);
    });

    it("-o - with an error: nothing on stdout, the error on stderr (also under --json)", () => {
      const r = prunecWith({}, model, "-e", "after layer 9 keep 5 by norm", "-o", "-", "--json");
      expect([r.code, r.stdout.length]).toEqual([6, 0]);
      expect(JSON.parse(r.stderr).error).toMatchObject({
        code: 6,
        kind: "apply",
        file: "<inline>",
        line: 1,
        column: 13,
      });
    });

    it("--json: every command's error is one object on stdout with the exit code", () => {
      const missing = join(dir, "missing.onnx");
      const noFile = { code: 2, kind: "io", message: `${missing}: no such file (expected an ONNX model)` };
      const badText = "after layer 1 keep 50% by cls-atn";
      const located = (code: number) => ({
        error: {
          code,
          kind: "spec",
          message: "unknown criterion 'cls-atn'",
          file: "<inline>",
          line: 1,
          column: 27,
          diagnostics: [
            {
              file: "<inline>",
              line: 1,
              column: 27,
              end: { line: 1, column: 34 },
              message: "unknown criterion 'cls-atn'",
              suggestion: "cls-attn",
            },
          ],
        },
      });
      const cases: [string[], number, object][] = [
        [[missing, spec, "--json"], 2, { error: noFile }],
        [[model, "-e", badText, "-o", out("j.onnx"), "--json"], 4, located(4)],
        [["inspect", missing, "--json"], 2, { error: noFile }],
        [["eval", missing, "--data", missing, "--json"], 2, { error: noFile }],
        [["bench", missing, spec, "--json"], 2, { error: noFile }],
        [["bench", model, "-e", badText, "--json"], 4, located(4)],
        [["report", model, "-e", badText, "-o", out("rep"), "--json"], 4, located(4)],
        [["fmt", "-e", badText, "--json"], 4, located(4)],
        [
          ["report", model, spec, "--json"],
          1,
          { error: { code: 1, kind: "usage", message: "required option '-o, --output <dir>' not specified" } },
        ],
      ];
      for (const [args, code, json] of cases) {
        const r = prunec(...args);
        expect([r.code, r.stderr], args.join(" ")).toEqual([code, ""]);
        expect(JSON.parse(r.stdout), args.join(" ")).toEqual(json);
      }
      expect(existsSync(out("j.onnx")) || existsSync(out("rep"))).toBe(false);
      // check keeps its own result fields and adds the same error object.
      const check = prunec("check", "-e", badText, "--json");
      expect(check.code).toBe(1);
      const j = JSON.parse(check.stdout);
      expect(j).toMatchObject({ ok: false, summary: "<inline>: 1 error", error: { ...located(1).error } });
    });

    it("fmt and report --json print one object", () => {
      const fmt = prunec("fmt", spec, "--json");
      expect([fmt.code, JSON.parse(fmt.stdout)]).toEqual([0, { file: spec, formatted: good }]);
      const rep = prunec("report", model, spec, "-o", out("report"), "--json");
      expect([rep.code, rep.stderr]).toEqual([0, ""]);
      const j = JSON.parse(rep.stdout);
      expect(j.output).toBe(out("report"));
      expect(j.files).toContain(join(out("report"), "report.md"));
    });

    it("inspect fits COLUMNS: the table's columns cut in the middle, criteria wrapped under each row; piped output keeps whole lines", () => {
      const recall = join(REPO_ROOT, "examples", "recall", "model.onnx");
      const wide = prunec("inspect", recall).stdout.split("\n");
      expect(Math.max(...wide.map((l) => l.length))).toBeGreaterThan(600);
      for (const columns of [60, 80, 120]) {
        const r = prunecWith({ env: { COLUMNS: String(columns) } }, "inspect", recall);
        expect(r.code).toBe(0);
        const lines = r.stdout.toString().split("\n");
        expect(Math.max(...lines.map((l) => l.length)), `COLUMNS=${columns}`).toBeLessThanOrEqual(columns);
      }
      const narrow = prunecWith({ env: { COLUMNS: "80" } }, "inspect", recall)
        .stdout.toString()
        .split("\n");
      expect(narrow).toContain("  layer  attention      heads  head size  probs          quant  rotary  residual");
      expect(narrow).toContain("  0      matmul…oftmax  4      16         batch,…ds,q,k  -      -       found");
      expect(narrow).toContain("      criteria: no cls-attn, no global-attn, no cls-attn-ensemble, no hiprune,");
      expect(narrow).toContain("           past_key_values.0.value [batch_size, 2, past_sequence_length, 16],");
      expect(narrow).toContain("           [batch_size, 2, past_sequence_length+sequence_length, 16],");
    });
  });
});
