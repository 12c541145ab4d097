#!/usr/bin/env node
// The CLI is one bundled CommonJS file, dist/prunec.cjs, built by `npm run build` (which `npm ci`
// and `npm install` run through `prepare`; scripts/bundle-cli.mjs). It loads far faster than the
// ~700 files it is made of. It runs here as a vm.Script so that V8's code cache applies: the
// build runs one compile of the shipped example and saves the bytecode of everything that compile
// ran (dist/prunec.cjs.v8cache), and later starts skip compiling it again (issue 19).
//
// The cache is only used when it is this bundle's: its header holds the SHA-256 of the bundle's
// text and of the cached data. V8 itself refuses data from another V8 version or other flags, and
// the bundle is then compiled as usual. PRUNEC_CODE_CACHE: `off` ignores the cache, `report`
// prints whether it was used, `write` saves a fresh one after a run that succeeds (what the build
// does; run it after changing Node versions, or `npm run build`).
import { createHash } from "node:crypto";
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import vm from "node:vm";

const bundle = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "prunec.cjs");
const cacheFile = `${bundle}.v8cache`;
const MAGIC = "prunec-v8-cache 1";
const mode = process.env.PRUNEC_CODE_CACHE ?? "";

const source = readFileSync(bundle, "utf8");
const sha256 = (data) => createHash("sha256").update(data).digest("hex");
const sourceHash = sha256(source);

/** The cached data if the file is this bundle's and intact, else why not. */
function readCache() {
  let file;
  try {
    file = readFileSync(cacheFile);
  } catch {
    return "absent";
  }
  const end = file.indexOf(10);
  const [magic, forSource, dataHash] = (end < 0 ? "" : file.subarray(0, end).toString("latin1")).split(" | ");
  if (magic !== MAGIC) return "corrupt (no header)";
  if (forSource !== sourceHash) return "stale (made for another build of the bundle)";
  const data = file.subarray(end + 1);
  return sha256(data) === dataHash ? data : "corrupt (checksum)";
}

const cache = mode === "off" ? "off" : readCache();
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
  filename: bundle,
  cachedData: typeof cache === "string" ? undefined : cache,
});
if (mode === "report")
  process.stderr.write(
    `prunec: code cache ${typeof cache === "string" ? cache : script.cachedDataRejected ? "rejected by V8" : "used"}\n`,
  );

const cli = { exports: {} };
script.runInThisContext()(cli.exports, createRequire(bundle), cli, bundle, dirname(bundle));
cli.exports.setPeerImport((specifier) => import(specifier));
const code = await cli.exports.main(process.argv.slice(2));
process.exitCode = code;

if (mode === "write" && code === 0) {
  const data = script.createCachedData();
  const temp = `${cacheFile}.${process.pid}.tmp`;
  try {
    writeFileSync(temp, Buffer.concat([Buffer.from(`${MAGIC} | ${sourceHash} | ${sha256(data)}\n`, "latin1"), data]));
    renameSync(temp, cacheFile);
  } catch (e) {
    // The compile itself succeeded: a package folder we cannot write to only means no new cache.
    rmSync(temp, { force: true });
    process.stderr.write(`prunec: code cache not written: ${e instanceof Error ? e.message : String(e)}\n`);
  }
}
