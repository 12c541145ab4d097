/**
 * `npm run build`'s second step: the CLI as one ES module, dist/prunec.mjs, which bin/prunec.js
 * loads. Resolving and compiling the ~700 files of prunec and its dependencies (chevrotain alone
 * pulls in 641 lodash-es modules) took most of a small model's compile; one file loads in a
 * fraction of that (issue 19; `npm run bench` measures it). The library (dist/src/index.js) stays
 * unbundled for importers. Optional peers stay external: they are imported only by the commands
 * that need them, and only if installed.
 *
 * Plain JavaScript, not TypeScript: it runs from `prepare` on installs from git, before tsx could.
 */
import { build } from "esbuild";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

await build({
  entryPoints: [join(root, "src", "cli", "main.ts")],
  outfile: join(root, "dist", "prunec.mjs"),
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  external: ["onnxruntime-node", "onnxruntime-web", "sharp", "vega", "vega-lite"],
  // CommonJS dependencies (commander, pngjs, cli-progress) call require() for Node's own modules.
  banner: { js: 'import { createRequire as __prunecRequire } from "node:module"; const require = __prunecRequire(import.meta.url);' },
  // grammar/checks.ts: the grammar is validated by the tests, not at every start of the CLI.
  define: { __PRUNEC_BUNDLED__: "true" },
  legalComments: "linked",
  logLevel: "warning",
});
