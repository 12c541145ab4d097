#!/usr/bin/env node
// The CLI is one bundled CommonJS file, dist/prunec.cjs, built by `npm run build` (which `npm ci`
// and `npm install` run through `prepare`; scripts/bundle-cli.mjs). It loads far faster than the
// ~700 files it is made of. It runs here as a vm.Script so that V8's code cache applies: the
// build runs one compile of the shipped example and saves the bytecode of everything that compile
// ran (dist/prunec.cjs.v8cache), and later starts skip compiling it again (issue 19).
//
// The cache is only used when it is this bundle's: its header holds the CRC-32 of the bundle's
// text and of the cached data. V8 itself refuses data from another V8 version or other flags, and
// the bundle is then compiled as usual. PRUNEC_CODE_CACHE: `off` ignores the cache, `report`
// prints whether it was used, `write` saves a fresh one after a run that succeeds (what the build
// does; run it after changing Node versions, or `npm run build`).
//
// This file is CommonJS (bin/package.json says so): Node starts a CommonJS entry faster than an
// ES module one (no module loader to set up; 9 ms of ViT-Ti's 280 ms compile, side by side).
const { readFileSync, renameSync, rmSync, writeFileSync } = require("node:fs");
const { createRequire } = require("node:module");
const { dirname, join } = require("node:path");
const vm = require("node:vm");
const zlib = require("node:zlib");

const bundle = join(__dirname, "..", "dist", "prunec.cjs");
const cacheFile = `${bundle}.v8cache`;
const MAGIC = "prunec-v8-cache 2";
const mode = process.env.PRUNEC_CODE_CACHE ?? "";

const checksum = zlib.crc32 ? (data) => zlib.crc32(data).toString(16).padStart(8, "0") : undefined;

// The bundle's and the cache's bytes are read into buffers that live as long as the process.
// Freeing a block of 1-2 MB raises glibc's malloc mmap threshold to its size, after which the
// smoke run's onnxruntime allocations stay on the heap: a ViT-B/16 compile peaked 30 MB higher
// (any temporary native copy does it: hashing the text as a string, which copies it to UTF-8,
// did). A CRC-32 of the bytes is enough: anyone who can write the cache can write the bundle.
// zlib.crc32 is Node >= 20.15; without it the cache is not used.
const held = [];
const readHeld = (path) => {
  const bytes = readFileSync(path);
  held.push(bytes);
  return bytes;
};

/** The cached data if the file is this bundle's (`sourceHash`) and intact, else why not. */
function readCache(sourceHash) {
  let file;
  try {
    file = readHeld(cacheFile);
  } catch {
    return "absent";
  }
  const end = file.indexOf(10);
  const [magic, forSource, dataHash] = (end < 0 ? "" : file.subarray(0, end).toString("latin1")).split(" | ");
  if (magic !== MAGIC) return "corrupt (no header)";
  if (!checksum) return "not checked (this Node has no zlib.crc32)";
  if (forSource !== sourceHash) return "stale (made for another build of the bundle)";
  const data = file.subarray(end + 1);
  return checksum(data) === dataHash ? data : "corrupt (checksum)";
}

/** The bundle's exports, and in write mode what a new cache is made from. */
function load() {
  const bytes = readHeld(bundle);
  const sourceHash = checksum?.(bytes);
  const source = bytes.toString("utf8");
  const cache = mode === "off" ? "off" : readCache(sourceHash);
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
  return { cli: cli.exports, writer: mode === "write" ? { script, sourceHash } : undefined };
}

const { cli, writer } = load();
// Optional peers are ES modules: a dynamic import works from CommonJS too, resolving from here.
cli.setPeerImport((specifier) => import(specifier));
cli.main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
  if (writer && code === 0) writeCache(writer);
});

/** Save the bytecode of everything this run compiled, as the cache for later starts (write mode). */
function writeCache({ script, sourceHash }) {
  const temp = `${cacheFile}.${process.pid}.tmp`;
  try {
    if (!checksum) throw new Error("this Node has no zlib.crc32 (Node >= 20.15 has)");
    const data = script.createCachedData();
    writeFileSync(temp, Buffer.concat([Buffer.from(`${MAGIC} | ${sourceHash} | ${checksum(data)}\n`, "latin1"), data]));
    renameSync(temp, cacheFile);
  } catch (e) {
    // The compile itself succeeded: a package folder we cannot write to only means no new cache.
    rmSync(temp, { force: true });
    process.stderr.write(`prunec: code cache not written: ${e instanceof Error ? e.message : String(e)}\n`);
  }
}
