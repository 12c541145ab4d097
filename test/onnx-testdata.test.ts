/**
 * The ONNX backend test corpus (Debian's libonnx-testdata: 1072 model files of single operators,
 * small PyTorch conversions and simple graphs, ONNX 1.12) as a robustness test of prunec's model
 * reading: every model decodes and re-encodes byte for byte (src/onnx/io.ts), and `inspect` refuses
 * each with a clean "no transformer layers" PrunecError (kind analysis, exit 5), in the library and,
 * for a sample, through the CLI; compile and check (with a one-stage spec) refuse each as analysis
 * errors too. Runs when the package is installed (`apt-get install
 * libonnx-testdata`; .ci/run installs it) or PRUNEC_ONNX_TESTDATA names the folder; otherwise the
 * suite is skipped with a title that says so.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { decodeModel, encodeModel } from "../src/onnx/io.js";
import { inspectModel } from "../src/inspect.js";
import { compile } from "../src/compile.js";
import { checkSpec } from "../src/check.js";
import { PrunecError } from "../src/errors.js";
import { REPO_ROOT } from "./helpers/shared.js";
import { findOnnx } from "./helpers/files.js";

const ROOT = process.env["PRUNEC_ONNX_TESTDATA"] ?? "/usr/share/libonnx-testdata/data";
const installed = existsSync(ROOT);

const files = installed ? findOnnx(ROOT) : [];
const name = (p: string) => relative(ROOT, p);
/** The corpus's top folders (node, pytorch-converted, pytorch-operator, simple). */
const groups = [...new Set(files.map((f) => name(f).split("/")[0]!))];
const inGroup = (g: string) => files.filter((f) => name(f).split("/")[0] === g);

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

const title = `ONNX backend test corpus (${installed ? `${files.length} models under ${ROOT}` : "needs Debian's libonnx-testdata: not installed"})`;

describe.skipIf(!installed)(title, () => {
  it("has the package's 1072 models", () => {
    // libonnx-testdata 1.12.0-2 ships 1072; a newer one may ship more.
    expect(files.length).toBeGreaterThanOrEqual(1072);
  });

  for (const g of groups) {
    it(`${g}/ (${inGroup(g).length} models): decode → encode is byte-identical`, () => {
      const bad: string[] = [];
      for (const f of inGroup(g)) {
        const bytes = new Uint8Array(readFileSync(f));
        try {
          const again = encodeModel(decodeModel(bytes, name(f)));
          const at = firstDiff(bytes, again);
          if (at !== -1)
            bad.push(`${name(f)}: first differing byte at ${at} (sizes ${bytes.length} → ${again.length})`);
        } catch (e) {
          bad.push(`${name(f)}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
        }
      }
      expect(bad).toEqual([]);
    });

    it(`${g}/ (${inGroup(g).length} models): inspect refuses each with a clean 'no transformer layers' error (exit 5)`, () => {
      const bad: string[] = [];
      for (const f of inGroup(g)) {
        try {
          const r = inspectModel(new Uint8Array(readFileSync(f)), name(f));
          bad.push(`${name(f)}: inspect found ${r.layers.length} layer(s)`);
        } catch (e) {
          if (!(e instanceof PrunecError))
            bad.push(
              `${name(f)}: crash: ${e instanceof Error ? e.stack?.split("\n").slice(0, 4).join(" | ") : String(e)}`,
            );
          else if (e.kind !== "analysis" || e.exitCode !== 5 || !/no transformer layers/.test(e.message))
            bad.push(`${name(f)}: ${e.kind} (exit ${e.exitCode}): ${e.message.slice(0, 200)}`);
        }
      }
      expect(bad).toEqual([]);
    });

    it(`${g}/ (${inGroup(g).length} models): compile and check refuse each with a clean analysis error (exit 5)`, () => {
      const bad: string[] = [];
      const spec = "after layer 0 keep 50% by cls-attn";
      for (const f of inGroup(g)) {
        const bytes = new Uint8Array(readFileSync(f));
        for (const [what, run] of [
          ["compile", () => compile(bytes, spec, { modelName: name(f) })],
          ["check", () => checkSpec(spec, "s.prune", { bytes, name: name(f) })],
        ] as const) {
          try {
            run();
            bad.push(`${name(f)}: ${what} accepted it`);
          } catch (e) {
            if (!(e instanceof PrunecError))
              bad.push(
                `${name(f)}: ${what} crashed: ${e instanceof Error ? e.stack?.split("\n").slice(0, 4).join(" | ") : String(e)}`,
              );
            else if (e.kind !== "analysis")
              bad.push(`${name(f)}: ${what}: ${e.kind} (exit ${e.exitCode}): ${e.message.slice(0, 200)}`);
          }
        }
      }
      expect(bad).toEqual([]);
    });
  }

  const built = existsSync(join(REPO_ROOT, "dist", "src", "cli", "main.js"));
  it.skipIf(!built)(
    `prunec inspect exits 5 on one model of each folder${built ? "" : " (needs npm run build: dist/ missing)"}`,
    () => {
      for (const g of groups) {
        const f = inGroup(g)[0]!;
        const r = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "prunec.js"), "inspect", f], {
          encoding: "utf8",
          timeout: 60_000,
        });
        expect({ model: name(f), status: r.status, signal: r.signal }).toEqual({
          model: name(f),
          status: 5,
          signal: null,
        });
        expect(r.stderr).toMatch(/no transformer layers/);
      }
    },
  );
});
