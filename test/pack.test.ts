/**
 * prunec as a user installs it: `npm pack`, then an empty project installs the tarball offline
 * (the registry out of reach, install scripts enabled; dependencies come from the npm cache `npm ci`
 * filled). onnxruntime-node/-web are optional peers, so they are not installed: compile, check,
 * fmt, inspect and the library work without them, and eval/bench/report say how to install them.
 *
 * `npm pack --ignore-scripts`: the tarball takes dist/ as `npm run build` left it (`npm test` builds
 * first); running `prepare` here would rewrite dist/ while other test files spawn the CLI from it.
 */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { VERSION } from "../src/version.js";

interface LockEntry {
  version: string;
  dev?: boolean;
  devOptional?: boolean;
  optional?: boolean;
  hasInstallScript?: boolean;
  [key: string]: unknown;
}
interface PackInfo {
  filename: string;
  size: number;
  unpackedSize: number;
  files: { path: string }[];
}

/** npm with no registry in reach and nothing from the repo's own config or node_modules. */
const env: NodeJS.ProcessEnv = {
  PATH: process.env["PATH"],
  HOME: process.env["HOME"],
  npm_config_cache: execFileSync("npm", ["config", "get", "cache"], { encoding: "utf8" }).trim(),
  npm_config_registry: "http://127.0.0.1:9/",
  npm_config_offline: "true",
  npm_config_ignore_scripts: "false",
  npm_config_audit: "false",
  npm_config_fund: "false",
  npm_config_update_notifier: "false",
};

const RUNTIME_MISSING = (command: string, pkg = "onnxruntime-node") =>
  `prunec: error: prunec ${command} needs ${pkg}, an optional peer dependency: npm install ${pkg}\n`;

describe("npm pack, installed offline into an empty project without the optional runtimes", () => {
  let work: string;
  let project: string;
  let info: PackInfo;
  const prunec = (...args: string[]) => {
    const r = spawnSync(join(project, "node_modules", ".bin", "prunec"), args, { cwd: project, env, encoding: "utf8" });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), "prunec-pack-"));
    const packed = execFileSync("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", work], {
      cwd: REPO_ROOT,
      env,
      encoding: "utf8",
    });
    info = (JSON.parse(packed.slice(packed.indexOf("["))) as PackInfo[])[0]!;
    project = join(work, "consumer");
    mkdirSync(project);
    renameSync(join(work, info.filename), join(project, info.filename));
    // A lockfile pins prunec's dependencies to the repo's (whose tarballs `npm ci` cached, found by
    // integrity); without it npm would need registry metadata to resolve the ranges.
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as Record<string, unknown>;
    const lock = JSON.parse(readFileSync(join(REPO_ROOT, "package-lock.json"), "utf8")) as {
      packages: Record<string, LockEntry>;
    };
    const spec = `file:${info.filename}`;
    const tarball = readFileSync(join(project, info.filename));
    const packages: Record<string, unknown> = {
      "": { name: "consumer", version: "1.0.0", dependencies: { prunec: spec } },
      "node_modules/prunec": {
        version: pkg["version"],
        resolved: spec,
        integrity: `sha512-${createHash("sha512").update(tarball).digest("base64")}`,
        ...Object.fromEntries(
          ["license", "dependencies", "peerDependencies", "peerDependenciesMeta", "bin", "engines"].map((k) => [
            k,
            pkg[k],
          ]),
        ),
      },
    };
    for (const [path, entry] of Object.entries(lock.packages)) {
      if (!path || entry.dev || entry.devOptional || entry.optional) continue;
      const name = path.slice(path.lastIndexOf("node_modules/") + "node_modules/".length);
      packages[path] = {
        ...entry,
        resolved: `https://registry.npmjs.org/${name}/-/${name.split("/").pop()}-${entry.version}.tgz`,
      };
    }
    writeFileSync(
      join(project, "package.json"),
      JSON.stringify(
        { name: "consumer", version: "1.0.0", private: true, type: "module", dependencies: { prunec: spec } },
        null,
        2,
      ),
    );
    writeFileSync(
      join(project, "package-lock.json"),
      JSON.stringify({ name: "consumer", version: "1.0.0", lockfileVersion: 3, requires: true, packages }, null, 2),
    );
    const ci = spawnSync("npm", ["ci"], { cwd: project, env, encoding: "utf8" });
    if (ci.status !== 0)
      throw new Error(`npm ci of the packed tarball failed (exit ${ci.status}):\n${ci.stdout}\n${ci.stderr}`);
    writeFileSync(join(project, "s.prune"), "after layer 1 keep 50% by cls-attn\n");
  }, 120_000);
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it("the tarball has the CLI, library, LICENSE, docs and the examples the README names, and no sources or tests", () => {
    const files = info.files.map((f) => f.path);
    for (const f of [
      "LICENSE",
      "README.md",
      "bin/prunec.js",
      "bin/package.json",
      "dist/prunec.cjs",
      "dist/prunec.cjs.v8cache",
      "dist/src/cli/main.js",
      "dist/src/index.js",
      "dist/src/index.d.ts",
      "docs/language.md",
      "examples/digits/model.onnx",
      "examples/digits/sample.prds",
      "examples/digits/best.prune",
      "examples/tiny-vit/model.onnx",
    ]) {
      expect(files).toContain(f);
    }
    expect(
      files.filter(
        (f) => f.startsWith("test/") || f.startsWith("src/") || f.endsWith(".npy") || f === "examples/digits/test.prds",
      ),
    ).toEqual([]);
    expect(info.size).toBeLessThan(4_000_000);
    expect(readFileSync(join(REPO_ROOT, "LICENSE"), "utf8")).toMatch(
      /^MIT License\n\nCopyright \(c\) \d{4} the prunec authors\n/,
    );
  });

  it("installs without onnxruntime and without install scripts", () => {
    const installed = readdirSync(join(project, "node_modules"));
    expect(installed).toContain("prunec");
    expect(installed.filter((n) => n.startsWith("onnxruntime"))).toEqual([]);
    const tree = JSON.parse(readFileSync(join(project, "node_modules", ".package-lock.json"), "utf8")) as {
      packages: Record<string, LockEntry>;
    };
    expect(
      Object.entries(tree.packages)
        .filter(([, e]) => e.hasInstallScript)
        .map(([p]) => p),
    ).toEqual([]);
  });

  it("--help, compile, check, fmt and inspect work", () => {
    const help = prunec("--help");
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/compile \[options\] <model> \[spec\]/);
    expect(prunec("--version").stdout.trim()).toBe(VERSION);
    const model = "node_modules/prunec/examples/tiny-vit/model.onnx";
    const compiled = prunec(model, "s.prune", "-o", "out.onnx");
    expect(compiled.stderr).toBe("");
    expect(compiled.code).toBe(0);
    expect(existsSync(join(project, "out.onnx"))).toBe(true);
    const check = prunec("check", "s.prune", model);
    expect(check.code, check.stderr).toBe(0);
    expect(prunec("fmt", "node_modules/prunec/examples/digits/best.prune").code).toBe(0);
    expect(prunec("inspect", "node_modules/prunec/examples/digits/model.onnx").code).toBe(0);
  });

  it("the installed CLI starts with the code cache the build packed (same Node)", () => {
    const r = spawnSync(join(project, "node_modules", ".bin", "prunec"), ["--version"], {
      cwd: project,
      env: { ...env, PRUNEC_CODE_CACHE: "report" },
      encoding: "utf8",
    });
    expect(r.status).toBe(0);
    expect(r.stderr).toBe("prunec: code cache used\n");
  });

  it("the library compiles without onnxruntime", () => {
    const script = `import { compile } from "prunec"; import { readFileSync } from "node:fs";
      const r = compile(readFileSync("node_modules/prunec/examples/tiny-vit/model.onnx"), "after layer 1 keep 50% by cls-attn");
      console.log(r.report.stages[0].tokensOut);`;
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
      cwd: project,
      env,
      encoding: "utf8",
    });
    expect(r.stderr).toBe("");
    expect(r.stdout.trim()).toBe("33");
  });

  it("eval, bench and report say which optional runtime to install (exit 7), and write nothing", () => {
    const digits = "node_modules/prunec/examples/digits";
    const data = `${digits}/sample.prds`;
    expect(prunec("eval", `${digits}/model.onnx`, "--data", data)).toEqual({
      code: 7,
      stdout: "",
      stderr: RUNTIME_MISSING("eval"),
    });
    expect(prunec("eval", `${digits}/model.onnx`, "--data", data, "--ep", "wasm")).toEqual({
      code: 7,
      stdout: "",
      stderr: RUNTIME_MISSING("eval", "onnxruntime-web"),
    });
    expect(prunec("bench", `${digits}/model.onnx`, `${digits}/best.prune`, "--runs", "1")).toEqual({
      code: 7,
      stdout: "",
      stderr: RUNTIME_MISSING("bench"),
    });
    expect(prunec("report", `${digits}/model.onnx`, `${digits}/best.prune`, "-o", "report", "--data", data)).toEqual({
      code: 7,
      stdout: "",
      stderr: RUNTIME_MISSING("report"),
    });
    expect(existsSync(join(project, "report"))).toBe(false);
  });
});
