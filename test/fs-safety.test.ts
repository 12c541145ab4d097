/**
 * File-system safety of the CLI (issue 13), as a user runs it (`node bin/prunec.js`, built by
 * `npm run build`) in temp folders: inputs linked to the output are never written over; inputs
 * that are not regular files (FIFOs, devices, folders) are refused at once, never read forever;
 * outputs that are not regular files are never replaced; every write failure is exit 2 naming the
 * path and the reason, with nothing left behind; concurrent writers leave one whole model; SIGTERM
 * or SIGINT during a write leaves no temp file (PRUNEC_TEST_WRITE_DELAY_MS, a test hook in
 * src/cli/atomic.ts, holds the write open between the temp files and the rename).
 */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { spawn, spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { externalize } from "./support/externalize.js";

const BIN = join(REPO_ROOT, "bin", "prunec.js");
const EXAMPLE = join(REPO_ROOT, "examples", "tiny-vit", "model.onnx");
const SPEC = "after layer 1 keep 50% by cls-attn\n";
/** A refusal must come at once: a hang (a FIFO read, /dev/zero) is killed here and fails the test. */
const PROMPT_MS = 5000;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function prunec(cwd: string, args: string[], timeout = 30_000): Run {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: "utf8", timeout });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** The CLI started in the background (concurrent writers, interrupted writes). */
function start(cwd: string, args: string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  child.stdout.resume();
  const done = new Promise<{ code: number | null; stderr: string }>((res) =>
    child.on("close", (code) => res({ code, stderr })),
  );
  return { child, done };
}

const temps = (d: string) => readdirSync(d).filter((f) => f.endsWith(".tmp"));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean, ms = 15_000): Promise<void> {
  for (const t0 = Date.now(); !ok(); await sleep(20))
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
}

/** Start a write held open by the test hook, wait until `ready`, send `signal`; the run's result. */
async function interrupt(cwd: string, args: string[], signal: NodeJS.Signals, ready: () => boolean) {
  const { child, done } = start(cwd, args, { PRUNEC_TEST_WRITE_DELAY_MS: "20000" });
  try {
    await until("the temp files", ready);
    child.kill(signal);
    return await done;
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
}

describe("file-system safety of the CLI", () => {
  let root: string;
  let model: Uint8Array;
  let n = 0;
  /** A fresh folder holding vit.onnx and s.prune. */
  const work = () => {
    const d = join(root, `w${n++}`);
    mkdirSync(d);
    copyFileSync(EXAMPLE, join(d, "vit.onnx"));
    writeFileSync(join(d, "s.prune"), SPEC);
    return d;
  };
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), "prunec-fs-"));
    model = readFileSync(EXAMPLE);
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  describe("an input linked to the output is never written over", () => {
    it("the model, by symbolic link and by hard link: exit 2, both files intact", () => {
      const d = work();
      copyFileSync(EXAMPLE, join(d, "out.onnx"));
      symlinkSync("out.onnx", join(d, "in.onnx"));
      const sym = prunec(d, ["in.onnx", "s.prune", "-o", "out.onnx", "--no-verify"], PROMPT_MS);
      expect(sym.code).toBe(2);
      expect(sym.stderr).toBe(
        `prunec: error: ${join(d, "out.onnx")}: refusing to overwrite an input file (the same file as in.onnx); choose another -o\n`,
      );
      expect(readlinkSync(join(d, "in.onnx"))).toBe("out.onnx");
      expect(readFileSync(join(d, "out.onnx")).equals(model)).toBe(true);

      linkSync(join(d, "vit.onnx"), join(d, "hard.onnx"));
      const hard = prunec(d, ["vit.onnx", "s.prune", "-o", "hard.onnx", "--no-verify"], PROMPT_MS);
      expect(hard.code).toBe(2);
      expect(hard.stderr).toBe(
        `prunec: error: ${join(d, "hard.onnx")}: refusing to overwrite an input file (the same file as vit.onnx); choose another -o\n`,
      );
      expect(readFileSync(join(d, "vit.onnx")).equals(model)).toBe(true);
      expect(statSync(join(d, "hard.onnx")).ino).toBe(statSync(join(d, "vit.onnx")).ino);
      expect(temps(d)).toEqual([]);
    });

    it("the spec, by symbolic link and by hard link; -o spelled another way: exit 2, both files intact", () => {
      const d = work();
      writeFileSync(join(d, "o.onnx"), SPEC);
      symlinkSync("o.onnx", join(d, "sym.prune"));
      linkSync(join(d, "o.onnx"), join(d, "hard.prune"));
      for (const spec of ["sym.prune", "hard.prune"]) {
        const r = prunec(d, ["vit.onnx", spec, "-o", "o.onnx", "--no-verify"], PROMPT_MS);
        expect(r.code).toBe(2);
        expect(r.stderr).toBe(
          `prunec: error: ${join(d, "o.onnx")}: refusing to overwrite an input file (the same file as ${spec}); choose another -o\n`,
        );
        expect(readFileSync(join(d, "o.onnx"), "utf8")).toBe(SPEC);
      }
      mkdirSync(join(d, "sub"));
      const spelled = prunec(d, ["vit.onnx", "s.prune", "-o", "./sub/../vit.onnx", "--no-verify"], PROMPT_MS);
      expect(spelled.code).toBe(2);
      expect(spelled.stderr).toBe(
        `prunec: error: ${join(d, "vit.onnx")}: refusing to overwrite an input file; choose another -o\n`,
      );
      expect(readFileSync(join(d, "vit.onnx")).equals(model)).toBe(true);
    });

    it("an external weight file: -o naming it, or a hard link of it in another folder: exit 2, weights intact", () => {
      const d = join(root, `ext${n++}`);
      mkdirSync(join(d, "out"), { recursive: true });
      const t = externalize(model);
      writeFileSync(join(d, "vit.onnx"), t.model);
      writeFileSync(join(d, "weights.bin"), t.weights);
      writeFileSync(join(d, "s.prune"), SPEC);
      const same = prunec(d, ["vit.onnx", "s.prune", "-o", "weights.bin", "--no-verify"], PROMPT_MS);
      expect(same.code).toBe(2);
      expect(same.stderr).toBe(
        `prunec: error: ${join(d, "weights.bin")}: refusing to overwrite an input file; choose another -o\n`,
      );
      linkSync(join(d, "weights.bin"), join(d, "out", "w.onnx"));
      const linked = prunec(d, ["vit.onnx", "s.prune", "-o", "out/w.onnx", "--no-verify"], PROMPT_MS);
      expect(linked.code).toBe(2);
      expect(linked.stderr).toBe(
        `prunec: error: ${join(d, "out", "w.onnx")}: refusing to overwrite an input file (the same file as weights.bin); choose another -o\n`,
      );
      expect(readFileSync(join(d, "weights.bin")).equals(Buffer.from(t.weights))).toBe(true);
      expect(readdirSync(join(d, "out"))).toEqual(["w.onnx"]);
    });

    it("report: a report file linked to the spec: exit 2, the spec intact, nothing written", () => {
      const d = work();
      mkdirSync(join(d, "rep"));
      linkSync(join(d, "s.prune"), join(d, "rep", "report.md"));
      const r = prunec(d, ["report", "vit.onnx", "s.prune", "-o", "rep"], PROMPT_MS);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(
        `prunec: error: ${join("rep", "report.md")}: refusing to overwrite an input file (the same file as s.prune); choose another -o\n`,
      );
      expect(readFileSync(join(d, "s.prune"), "utf8")).toBe(SPEC);
      expect(readdirSync(join(d, "rep"))).toEqual(["report.md"]);
    });
  });

  describe("inputs that are not regular files are refused at once (exit 2, naming what they are)", () => {
    it("a FIFO as the model, the spec, the data set and an external weight file", () => {
      const d = work();
      spawnSync("mkfifo", [join(d, "pipe")]);
      expect(lstatSync(join(d, "pipe")).isFIFO()).toBe(true);
      const fifo = (what: string) =>
        `prunec: error: pipe: is a FIFO (named pipe), not a regular file (expected ${what})\n`;
      expect(prunec(d, ["pipe", "s.prune", "-o", "o.onnx"], PROMPT_MS)).toMatchObject({
        code: 2,
        stderr: fifo("an ONNX model"),
      });
      expect(prunec(d, ["vit.onnx", "pipe", "-o", "o.onnx"], PROMPT_MS)).toMatchObject({
        code: 2,
        stderr: fifo("a .prune spec"),
      });
      expect(prunec(d, ["check", "pipe"], PROMPT_MS)).toMatchObject({ code: 2, stderr: fifo("a .prune spec") });
      expect(prunec(d, ["eval", "vit.onnx", "--data", "pipe"], PROMPT_MS)).toMatchObject({
        code: 2,
        stderr: fifo("a .prds data set or an image folder"),
      });
      expect(prunec(d, ["report", "vit.onnx", "s.prune", "-o", "rep", "--data", "pipe"], PROMPT_MS)).toMatchObject({
        code: 2,
        stderr: fifo("a .prds data set or an image folder"),
      });
      expect(existsSync(join(d, "o.onnx")) || existsSync(join(d, "rep"))).toBe(false);

      // Weights: bench (like eval and report) checks them beside the model; compile into another folder would place them.
      const t = externalize(model);
      writeFileSync(join(d, "ext.onnx"), t.model);
      spawnSync("mkfifo", [join(d, "weights.bin")]);
      const ev = prunec(d, ["bench", "ext.onnx", "s.prune", "--runs", "1"], PROMPT_MS);
      expect(ev.code).toBe(2);
      expect(ev.stderr).toMatch(
        /^prunec: error: weights\.bin: is a FIFO \(named pipe\), not a regular file \(external data of initializer '[^']+' in ext\.onnx\)\n$/,
      );
      mkdirSync(join(d, "out"));
      const placed = prunec(d, ["ext.onnx", "s.prune", "-o", "out/p.onnx", "--no-verify"], PROMPT_MS);
      expect(placed.code).toBe(2);
      expect(placed.stderr).toMatch(
        /^prunec: error: weights\.bin: is a FIFO \(named pipe\), not a regular file \(external data of initializer '[^']+' in ext\.onnx\)\n$/,
      );
      expect(readdirSync(join(d, "out"))).toEqual([]);
    });

    it("/dev/zero, /dev/null and a directory", () => {
      const d = work();
      for (const [path, kind] of [
        ["/dev/zero", "a character device"],
        ["/dev/null", "a character device"],
      ] as const) {
        const r = prunec(d, [path, "s.prune", "-o", "o.onnx"], PROMPT_MS);
        expect(r).toMatchObject({
          code: 2,
          stderr: `prunec: error: ${path}: is ${kind}, not a regular file (expected an ONNX model)\n`,
        });
      }
      // A directory is a transformers.js model folder to compile (src/cli/folder.ts): this one has none.
      expect(prunec(d, [".", "s.prune", "-o", "o.onnx"], PROMPT_MS)).toMatchObject({
        code: 2,
        stderr:
          "prunec: error: .: a model folder with neither onnx/model.onnx nor onnx/vision_encoder.onnx; name the file to compile with --onnx (its .onnx files: vit.onnx)\n",
      });
      expect(prunec(d, ["fmt", "/dev/zero"], PROMPT_MS)).toMatchObject({
        code: 2,
        stderr: "prunec: error: /dev/zero: is a character device, not a regular file (expected a .prune spec)\n",
      });
      expect(existsSync(join(d, "o.onnx"))).toBe(false);
    });
  });

  describe("outputs that are not regular files are never replaced", () => {
    it("-o /dev/null, a FIFO, a socket and a directory: exit 2, the node unchanged", async () => {
      const d = work();
      const devnull = prunec(d, ["vit.onnx", "s.prune", "-o", "/dev/null", "--no-verify"], PROMPT_MS);
      expect(devnull).toMatchObject({
        code: 2,
        stderr:
          "prunec: error: /dev/null: cannot write (it is a character device; prunec replaces only regular files)\n",
      });
      expect(statSync("/dev/null").isCharacterDevice()).toBe(true);

      spawnSync("mkfifo", [join(d, "pipe.onnx")]);
      const fifo = prunec(d, ["vit.onnx", "s.prune", "-o", "pipe.onnx", "--no-verify"], PROMPT_MS);
      expect(fifo).toMatchObject({
        code: 2,
        stderr: `prunec: error: ${join(d, "pipe.onnx")}: cannot write (it is a FIFO (named pipe); prunec replaces only regular files)\n`,
      });
      expect(lstatSync(join(d, "pipe.onnx")).isFIFO()).toBe(true);

      const server: Server = createServer();
      await new Promise<void>((res) => server.listen(join(d, "sock.onnx"), res));
      try {
        const sock = prunec(d, ["vit.onnx", "s.prune", "-o", "sock.onnx", "--no-verify"], PROMPT_MS);
        expect(sock).toMatchObject({
          code: 2,
          stderr: `prunec: error: ${join(d, "sock.onnx")}: cannot write (it is a socket; prunec replaces only regular files)\n`,
        });
        expect(lstatSync(join(d, "sock.onnx")).isSocket()).toBe(true);
      } finally {
        await new Promise((res) => server.close(res));
      }

      mkdirSync(join(d, "dir.onnx"));
      const dir = prunec(d, ["vit.onnx", "s.prune", "-o", "dir.onnx", "--no-verify"], PROMPT_MS);
      expect(dir).toMatchObject({
        code: 2,
        stderr: `prunec: error: ${join(d, "dir.onnx")}: cannot write (it is a directory)\n`,
      });
      expect(readdirSync(join(d, "dir.onnx"))).toEqual([]);
      // report -o names a folder: a regular file there is refused the same way.
      expect(prunec(d, ["report", "vit.onnx", "s.prune", "-o", "s.prune"], PROMPT_MS)).toMatchObject({
        code: 2,
        stderr: "prunec: error: s.prune: cannot write (it is a regular file, not a directory)\n",
      });
      expect(temps(d)).toEqual([]);
    });

    it("a character device made with mknod (root only)", (ctx) => {
      const d = work();
      const made = spawnSync("mknod", [join(d, "null.onnx"), "c", "1", "3"], { encoding: "utf8" });
      if (made.status !== 0)
        ctx.skip(`mknod is not permitted here (${(made.stderr || made.error?.message || "").trim()})`);
      const r = prunec(d, ["vit.onnx", "s.prune", "-o", "null.onnx", "--no-verify"], PROMPT_MS);
      expect(r).toMatchObject({
        code: 2,
        stderr: `prunec: error: ${join(d, "null.onnx")}: cannot write (it is a character device; prunec replaces only regular files)\n`,
      });
      expect(lstatSync(join(d, "null.onnx")).isCharacterDevice()).toBe(true);
      expect(temps(d)).toEqual([]);
    });
  });

  describe("every write failure is exit 2 naming the path and the reason, nothing left behind", () => {
    it("a missing output folder, and a regular file used as a folder", () => {
      const d = work();
      const missing = prunec(d, ["vit.onnx", "s.prune", "-o", "nodir/x.onnx", "--no-verify"], PROMPT_MS);
      expect(missing).toMatchObject({
        code: 2,
        stderr: `prunec: error: ${join(d, "nodir", "x.onnx")}: cannot write (ENOENT: no such directory ${join(d, "nodir")})\n`,
      });
      const notdir = prunec(d, ["vit.onnx", "s.prune", "-o", "s.prune/x.onnx", "--no-verify"], PROMPT_MS);
      expect(notdir).toMatchObject({
        code: 2,
        stderr: `prunec: error: ${join(d, "s.prune", "x.onnx")}: cannot write (ENOTDIR: not a directory)\n`,
      });
      const report = prunec(d, ["report", "vit.onnx", "s.prune", "-o", "s.prune/rep"], PROMPT_MS);
      expect(report).toMatchObject({
        code: 2,
        stderr: "prunec: error: s.prune/rep: cannot write (ENOTDIR: not a directory)\n",
      });
      expect(readdirSync(d).sort()).toEqual(["s.prune", "vit.onnx"]);
    });

    it("a 255-byte output name is written (the temp name is short); 256 bytes is ENAMETOOLONG", () => {
      const d = work();
      const ok = prunec(d, ["vit.onnx", "s.prune", "-o", `${"a".repeat(251)}.onx`, "--no-verify"]);
      expect(ok.stderr).toBe("");
      expect(ok.code).toBe(0);
      expect(existsSync(join(d, `${"a".repeat(251)}.onx`))).toBe(true);
      const long = `${"b".repeat(252)}.onx`;
      const r = prunec(d, ["vit.onnx", "s.prune", "-o", long, "--no-verify"], PROMPT_MS);
      expect(r).toMatchObject({
        code: 2,
        stderr: `prunec: error: ${join(d, long)}: cannot write (ENAMETOOLONG: name too long)\n`,
      });
      expect(readdirSync(d).sort()).toEqual([`${"a".repeat(251)}.onx`, "s.prune", "vit.onnx"]);
    });

    it("a read-only output folder", (ctx) => {
      const d = work();
      const ro = join(d, "ro");
      mkdirSync(ro);
      // Root ignores permission bits: make the folder immutable, or a read-only bind mount, instead.
      let undo = () => {};
      if (process.getuid?.() !== 0) {
        spawnSync("chmod", ["555", ro]);
        undo = () => spawnSync("chmod", ["755", ro]);
      } else if (spawnSync("chattr", ["+i", ro]).status === 0) {
        undo = () => spawnSync("chattr", ["-i", ro]);
      } else if (spawnSync("mount", ["--bind", ro, ro]).status === 0) {
        undo = () => spawnSync("umount", [ro]);
        if (spawnSync("mount", ["-o", "remount,bind,ro", ro]).status !== 0) {
          undo();
          ctx.skip("running as root, and neither chattr +i nor a read-only bind mount works here");
        }
      } else {
        ctx.skip("running as root, and neither chattr +i nor a read-only bind mount works here");
      }
      try {
        const r = prunec(d, ["vit.onnx", "s.prune", "-o", "ro/x.onnx", "--no-verify"], PROMPT_MS);
        expect(r.code).toBe(2);
        expect(r.stderr).toMatch(
          new RegExp(`^prunec: error: ${join(ro, "x.onnx")}: cannot write \\((EACCES|EPERM|EROFS): [^)]+\\)\\n$`),
        );
      } finally {
        undo();
      }
      expect(readdirSync(ro)).toEqual([]);
    });
    it("a full file system (a 200 KiB tmpfs; root only)", (ctx) => {
      const d = work();
      const small = join(d, "small");
      mkdirSync(small);
      const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=200k", "tmpfs", small], { encoding: "utf8" });
      if (mounted.status !== 0)
        ctx.skip(`cannot mount a small tmpfs here (${(mounted.stderr || mounted.error?.message || "").trim()})`);
      try {
        const r = prunec(d, ["vit.onnx", "s.prune", "-o", "small/x.onnx", "--no-verify"]);
        expect(r).toMatchObject({
          code: 2,
          stderr: `prunec: error: ${join(small, "x.onnx")}: cannot write (ENOSPC: no space left on device)\n`,
        });
        expect(readdirSync(small)).toEqual([]);
      } finally {
        spawnSync("umount", [small]);
      }
    });
  });

  it("four concurrent writers to one -o: all exit 0, the result is one whole model, byte-identical to a single run's", async () => {
    const d = work();
    const single = prunec(d, ["vit.onnx", "s.prune", "-o", "single.onnx", "--no-verify"]);
    expect(single.code, single.stderr).toBe(0);
    const runs = await Promise.all(
      [0, 1, 2, 3].map(() => start(d, ["vit.onnx", "s.prune", "-o", "same.onnx", "--no-verify"]).done),
    );
    expect(runs.map((r) => r.code)).toEqual([0, 0, 0, 0]);
    expect(readFileSync(join(d, "same.onnx")).equals(readFileSync(join(d, "single.onnx")))).toBe(true);
    expect(temps(d)).toEqual([]);
  });

  describe("SIGTERM or SIGINT during the write: exit 143 / 130, no temp file, the previous output untouched", () => {
    for (const [signal, code] of [
      ["SIGTERM", 143],
      ["SIGINT", 130],
    ] as const) {
      it(`compile, ${signal}`, async () => {
        const d = work();
        writeFileSync(join(d, "out.onnx"), "the previous output");
        const r = await interrupt(
          d,
          ["vit.onnx", "s.prune", "-o", "out.onnx", "--no-verify"],
          signal,
          () => temps(d).length > 0,
        );
        expect(r.code, r.stderr).toBe(code);
        expect(temps(d)).toEqual([]);
        expect(readFileSync(join(d, "out.onnx"), "utf8")).toBe("the previous output");
      });
    }

    it("compile with --external-data copy into another folder, SIGTERM: no weight file, no temp file", async () => {
      const d = join(root, `ext${n++}`);
      mkdirSync(join(d, "out"), { recursive: true });
      const t = externalize(model, "sub/weights.bin");
      mkdirSync(join(d, "sub"));
      writeFileSync(join(d, "vit.onnx"), t.model);
      writeFileSync(join(d, "sub", "weights.bin"), t.weights);
      writeFileSync(join(d, "s.prune"), SPEC);
      const out = join(d, "out");
      // The model's temp file, then the weights' in the subfolder the location names.
      const staged = () => temps(out).length > 0 && existsSync(join(out, "sub")) && temps(join(out, "sub")).length > 0;
      const r = await interrupt(
        d,
        ["vit.onnx", "s.prune", "-o", "out/p.onnx", "--no-verify", "--external-data", "copy"],
        "SIGTERM",
        staged,
      );
      expect(r.code, r.stderr).toBe(143);
      expect(readdirSync(out)).toEqual([]);
    });

    it("report, SIGTERM: the report folder it created is removed", async () => {
      const d = work();
      const r = await interrupt(
        d,
        ["report", "vit.onnx", "s.prune", "-o", "rep"],
        "SIGTERM",
        () => existsSync(join(d, "rep")) && temps(join(d, "rep")).length >= 3,
      );
      expect(r.code, r.stderr).toBe(143);
      expect(existsSync(join(d, "rep"))).toBe(false);
    });
  });
});
