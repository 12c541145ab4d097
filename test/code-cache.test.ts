/**
 * bin/prunec.js runs the bundled CLI with V8's code cache (issue 19): the build's cache is used,
 * changes nothing the CLI does, and a cache that is not this bundle's (stale, corrupt, refused
 * by V8) is ignored. Needs `npm run build` (dist/prunec.cjs and its cache).
 */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { spawnSync } from "node:child_process";
import {
  appendFileSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { VERSION } from "../src/version.js";

const BIN = join(REPO_ROOT, "bin", "prunec.js");
const BUNDLE = join(REPO_ROOT, "dist", "prunec.cjs");
const CACHE = `${BUNDLE}.v8cache`;
const MODEL = join(REPO_ROOT, "examples", "digits", "model.onnx");
const SPEC = join(REPO_ROOT, "examples", "digits", "cls-attn-25.prune");

function run(bin: string, args: string[], opts: { cache?: string; cwd?: string; nodeFlags?: string[] } = {}) {
  const r = spawnSync(process.execPath, [...(opts.nodeFlags ?? []), bin, ...args], {
    encoding: "utf8",
    cwd: opts.cwd,
    env: { ...process.env, PRUNEC_CODE_CACHE: opts.cache ?? "report" },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(!existsSync(BUNDLE))("the CLI's code cache", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "prunec-code-cache-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("the build's cache is used, and compile writes the same bytes and the same report with it as without", () => {
    expect(existsSync(CACHE), "npm run build made no code cache (see its warning)").toBe(true);
    // From another working directory: the optional peers must still resolve (the smoke run needs onnxruntime-node).
    const cached = run(BIN, [MODEL, SPEC, "-o", join(dir, "cached.onnx")], { cwd: dir });
    const plain = run(BIN, [MODEL, SPEC, "-o", join(dir, "plain.onnx")], { cwd: dir, cache: "off" });
    expect(cached.code, cached.stderr).toBe(0);
    expect(plain.code, plain.stderr).toBe(0);
    expect(cached.stderr).toBe("prunec: code cache used\n");
    expect(plain.stderr).toBe("");
    expect(cached.stdout).toMatch(/onnxruntime smoke run passed at batch 1 and 2/);
    const norm = (s: string) => s.replace("cached.onnx", "plain.onnx").replace(/\(\d+\.\d\d s\)/, "");
    expect(norm(cached.stdout)).toBe(norm(plain.stdout));
    expect(readFileSync(join(dir, "cached.onnx")).equals(readFileSync(join(dir, "plain.onnx")))).toBe(true);
  });

  describe("a copy of the CLI, to corrupt its cache", () => {
    let bin: string;
    let cache: string;
    beforeAll(() => {
      const root = join(dir, "copy");
      mkdirSync(join(root, "bin"), { recursive: true });
      mkdirSync(join(root, "dist"));
      bin = join(root, "bin", "prunec.js");
      cache = join(root, "dist", "prunec.cjs.v8cache");
      copyFileSync(BIN, bin);
      copyFileSync(BUNDLE, join(root, "dist", "prunec.cjs"));
    });
    const version = (args: { nodeFlags?: string[] } = {}) => {
      const r = run(bin, ["--version"], args);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe(VERSION);
      return r.stderr.trim();
    };

    it("without a cache the bundle is compiled as usual; PRUNEC_CODE_CACHE=write saves one after a run that succeeds", () => {
      rmSync(cache, { force: true });
      expect(version()).toBe("prunec: code cache absent");
      const failed = run(bin, [join(dir, "missing.onnx"), SPEC, "-o", join(dir, "x.onnx")], { cache: "write" });
      expect(failed.code).not.toBe(0);
      expect(existsSync(cache)).toBe(false);
      const ok = run(bin, [MODEL, SPEC, "-o", join(dir, "w.onnx"), "--no-verify"], { cache: "write" });
      expect(ok.code, ok.stderr).toBe(0);
      expect(readFileSync(cache).subarray(0, 20).toString("latin1")).toBe("prunec-v8-cache 2 | ");
      expect(version()).toBe("prunec: code cache used");
    });

    it("a cache it cannot write: the run still succeeds, says so, and leaves no temp file", () => {
      const good = readFileSync(cache);
      rmSync(cache);
      mkdirSync(cache); // renaming the new cache over a directory fails, even for root
      try {
        const r = run(bin, ["--version"], { cache: "write" });
        expect(r.code).toBe(0);
        expect(r.stdout.trim()).toBe(VERSION);
        expect(r.stderr).toMatch(/^prunec: code cache not written: EISDIR[^\n]*\n$/);
        expect(readdirSync(join(dir, "copy", "dist")).filter((f) => f.endsWith(".tmp"))).toEqual([]);
      } finally {
        rmSync(cache, { recursive: true });
        writeFileSync(cache, good);
      }
    });

    it("a Node without zlib.crc32 (before 20.15) neither uses nor writes a cache, and runs", () => {
      const noCrc = join(dir, "no-crc32.cjs");
      writeFileSync(noCrc, 'require("node:zlib").crc32 = undefined;\n');
      expect(version({ nodeFlags: ["--require", noCrc] })).toBe(
        "prunec: code cache not checked (this Node has no zlib.crc32)",
      );
      const r = run(bin, ["--version"], { cache: "write", nodeFlags: ["--require", noCrc] });
      expect(r.code).toBe(0);
      expect(r.stderr).toBe("prunec: code cache not written: this Node has no zlib.crc32 (Node >= 20.15 has)\n");
    });

    it("a cache V8 refuses (other flags), a corrupt one or one made for another bundle is not used", () => {
      const good = readFileSync(cache);
      expect(version({ nodeFlags: ["--no-opt"] })).toBe("prunec: code cache rejected by V8");

      const flipped = Buffer.from(good);
      flipped[flipped.length - 100]! ^= 0xff;
      writeFileSync(cache, flipped);
      expect(version()).toBe("prunec: code cache corrupt (checksum)");

      writeFileSync(cache, good.subarray(good.indexOf(10) + 1)); // the data without its header
      expect(version()).toBe("prunec: code cache corrupt (no header)");

      writeFileSync(cache, good);
      appendFileSync(join(dir, "copy", "dist", "prunec.cjs"), "\n// another build\n");
      expect(version()).toBe("prunec: code cache stale (made for another build of the bundle)");
    });
  });
});
