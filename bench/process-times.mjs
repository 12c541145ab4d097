// Whole-process wall times and peak memory for scripts/bench-table.ts, measured from this small
// process, which the table spawns once. By then the table's own process has run onnxruntime
// sessions and holds a gigabyte or more, and every fork from it copies that many page tables:
// 10–25 ms more per child, added to every command it timed (a read + write of ViT-Ti measured
// 154 ms from there, 97 ms from a shell), which pulled every ratio towards 1.
//
// argv[2]: JSON { commands: [{ name, argv, env? }], n, out?, maxRss }. Each round runs every
// command once for its time, then once more under `--import maxRss` for its peak resident set
// (bench/max-rss.mjs; timed runs do not carry it). `out`, when given, is removed and the page
// cache flushed before each run, untimed. Prints JSON { name: { ms: [...], kib: [...] } }.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const { commands, n, out, maxRss } = JSON.parse(process.argv[2]);
const dir = mkdtempSync(join(tmpdir(), "prunec-process-times-"));
const rssFile = join(dir, "max-rss");
const results = Object.fromEntries(commands.map((c) => [c.name, { ms: [], kib: [] }]));

function run(c, measureMemory) {
  if (out) {
    rmSync(out, { force: true, recursive: true });
    // The previous run's dirty pages are flushed now, untimed, so no run pays for another's writeback.
    spawnSync("sync");
  }
  const argv = measureMemory ? ["--import", pathToFileURL(maxRss).href, ...c.argv] : c.argv;
  const env = { ...process.env, ...c.env, ...(measureMemory ? { PRUNEC_MAX_RSS_FILE: rssFile } : {}) };
  const t = performance.now();
  const r = spawnSync(process.execPath, argv, { encoding: "utf8", env });
  const ms = performance.now() - t;
  if (r.status !== 0) throw new Error(`${c.name}: exit ${r.status}: ${r.stderr}`);
  if (measureMemory) results[c.name].kib.push(Number(readFileSync(rssFile, "utf8")));
  else results[c.name].ms.push(ms);
}

try {
  for (let i = 0; i < n; i++)
    for (const c of commands) {
      run(c, false);
      run(c, true);
    }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(results));
