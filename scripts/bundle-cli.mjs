/**
 * `npm run build`'s second step: the CLI as one CommonJS file, dist/prunec.cjs, which bin/prunec.js
 * runs, and V8's code cache for it, dist/prunec.cjs.v8cache.
 *
 * Resolving and compiling the ~700 files of prunec and its dependencies (chevrotain alone pulls in
 * 641 lodash-es modules) took most of a small model's compile; one file loads in a fraction of that
 * (issue 19). CommonJS, not an ES module, because Node 20 can only use a code cache for a script:
 * the cache is made by one compile of the shipped example with PRUNEC_CODE_CACHE=write, so it holds
 * the bytecode of everything a compile runs. If that run fails, the build still succeeds and the
 * CLI compiles the bundle at each start, as before. The library (dist/src/index.js) stays
 * unbundled for importers. Optional peers stay external: they are imported only by the commands
 * that need them, and only if installed (src/cli/peers.ts).
 *
 * Plain JavaScript, not TypeScript: it runs from `prepare` on installs from git, before tsx could.
 */
import { build } from "esbuild";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const outfile = join(root, "dist", "prunec.cjs");

// The ES-module bundle of earlier builds, so that a stale one is neither run nor packed.
for (const old of ["prunec.mjs", "prunec.mjs.LEGAL.txt"]) rmSync(join(root, "dist", old), { force: true });
// A cache is only valid for the bundle it was made from (bin/prunec.js checks); make it afresh.
rmSync(`${outfile}.v8cache`, { force: true });

await build({
  entryPoints: [join(root, "src", "cli", "main.ts")],
  outfile,
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  external: ["onnxruntime-node", "onnxruntime-web", "sharp", "vega", "vega-lite"],
  // runtime.ts finds onnxruntime-web's files from its own URL; in the bundle that is the bundle's.
  define: { "import.meta.url": "__prunecUrl", __PRUNEC_BUNDLED__: "true" },
  banner: { js: 'const __prunecUrl = require("node:url").pathToFileURL(__filename).href;' },
  // grammar/checks.ts: the grammar is validated by the tests, not at every start of the CLI.
  legalComments: "linked",
  logLevel: "warning",
});

const work = mkdtempSync(join(tmpdir(), "prunec-code-cache-"));
try {
  const run = spawnSync(
    process.execPath,
    [
      join(root, "bin", "prunec.js"),
      join(root, "examples", "digits", "model.onnx"),
      join(root, "examples", "digits", "cls-attn-25.prune"),
      "-o",
      join(work, "out.onnx"),
    ],
    { env: { ...process.env, PRUNEC_CODE_CACHE: "write" }, encoding: "utf8" },
  );
  if (run.status !== 0)
    console.warn(
      `bundle-cli: no code cache (the example compile exited ${run.status}): the CLI still works, it only starts slower\n${run.stderr}`,
    );
} finally {
  rmSync(work, { recursive: true, force: true });
}
