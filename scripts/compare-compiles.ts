/**
 * Compare two compile logs written by test/support/record-compiles.ts (PRUNEC_RECORD_COMPILES):
 * for every model × spec (+ options) pair compiled in both runs, the compiled bytes' hashes must
 * be equal. A pair whose bytes differ but whose order-free form (test/support/order-free.ts: nodes
 * by their own bytes, initializers and value_info by name) is equal changed only the order of
 * those lists: reported apart, and allowed with `--allow-order`. Prints
 * the pairs that differ and the pairs seen in one run only; exits 1 on a change.
 *   npx tsx scripts/compare-compiles.ts BEFORE.log AFTER.log [--allow-order]
 */
import { readFileSync } from "node:fs";

/** Per pair, the set of "bytes-hash order-free-hash" it compiled to (one per line seen). */
function read(path: string): Map<string, Set<string>> {
  const pairs = new Map<string, Set<string>>();
  for (const line of readFileSync(path, "utf8").split("\n")) {
    const [model, spec, out, free] = line.split(" ");
    if (!model || !spec || !out) continue;
    const key = `${model} ${spec}`;
    if (!pairs.has(key)) pairs.set(key, new Set());
    pairs.get(key)!.add(`${out} ${free ?? ""}`);
  }
  return pairs;
}

const args = process.argv.slice(2);
const allowOrder = args.includes("--allow-order");
const [beforePath, afterPath] = args.filter((a) => !a.startsWith("--"));
if (!beforePath || !afterPath) {
  console.error("usage: npx tsx scripts/compare-compiles.ts BEFORE.log AFTER.log [--allow-order]");
  process.exit(1);
}
const before = read(beforePath);
const after = read(afterPath);
// A compile is deterministic, so several outputs for one pair in one log mean the log was appended
// to across runs (the recorder appends: start from a new file) or a compile is not deterministic.
for (const [path, log] of [
  [beforePath, before],
  [afterPath, after],
] as const) {
  const several = [...log.values()].filter((outs) => outs.size > 1).length;
  if (several)
    console.log(`warning: ${several} pairs have several outputs in ${path} (a log appended to across runs?)`);
}
const equalSets = (a: Set<string>, b: Set<string>) => a.size === b.size && [...a].every((x) => b.has(x));
const part = (s: Set<string>, i: number) => new Set([...s].map((x) => x.split(" ")[i] ?? ""));
let changed = 0;
let orderOnly = 0;
let same = 0;
for (const [key, outs] of before) {
  const now = after.get(key);
  if (!now) continue;
  if (equalSets(part(outs, 0), part(now, 0))) same++;
  else if (!part(outs, 1).has("") && equalSets(part(outs, 1), part(now, 1))) {
    orderOnly++;
    console.log(`order only: model ${key.slice(0, 12)} spec ${key.slice(65, 77)}`);
  } else {
    changed++;
    console.log(
      `changed: model ${key.slice(0, 12)} spec ${key.slice(65, 77)}: ${[...part(outs, 0)].map((o) => o.slice(0, 12)).join(",")} -> ${[...part(now, 0)].map((o) => o.slice(0, 12)).join(",")}`,
    );
  }
}
const onlyBefore = [...before.keys()].filter((k) => !after.has(k)).length;
const onlyAfter = [...after.keys()].filter((k) => !before.has(k)).length;
console.log(
  `${same} pairs byte-identical, ${orderOnly} changed in order only, ${changed} changed; ${onlyBefore} compiled only before, ${onlyAfter} only after`,
);
process.exit(changed || (orderOnly && !allowOrder) ? 1 : 0);
