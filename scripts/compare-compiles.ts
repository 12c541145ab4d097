/**
 * Compare two compile logs written by test/support/record-compiles.ts (PRUNEC_RECORD_COMPILES):
 * for every model × spec (+ options) pair compiled in both runs, the compiled bytes' hashes must
 * be equal. Prints the pairs that differ and the pairs seen in one run only; exits 1 on a change.
 *   npx tsx scripts/compare-compiles.ts BEFORE.log AFTER.log
 */
import { readFileSync } from "node:fs";

function read(path: string): Map<string, Set<string>> {
  const pairs = new Map<string, Set<string>>();
  for (const line of readFileSync(path, "utf8").split("\n")) {
    const [model, spec, out] = line.split(" ");
    if (!model || !spec || !out) continue;
    const key = `${model} ${spec}`;
    if (!pairs.has(key)) pairs.set(key, new Set());
    pairs.get(key)!.add(out);
  }
  return pairs;
}

const [beforePath, afterPath] = process.argv.slice(2);
if (!beforePath || !afterPath) {
  console.error("usage: npx tsx scripts/compare-compiles.ts BEFORE.log AFTER.log");
  process.exit(1);
}
const before = read(beforePath);
const after = read(afterPath);
let changed = 0;
let same = 0;
for (const [key, outs] of before) {
  const now = after.get(key);
  if (!now) continue;
  const equal = outs.size === now.size && [...outs].every((o) => now.has(o));
  if (equal) same++;
  else {
    changed++;
    console.log(
      `changed: model ${key.slice(0, 12)} spec ${key.slice(65, 77)}: ${[...outs].map((o) => o.slice(0, 12)).join(",")} -> ${[...now].map((o) => o.slice(0, 12)).join(",")}`,
    );
  }
}
const onlyBefore = [...before.keys()].filter((k) => !after.has(k)).length;
const onlyAfter = [...after.keys()].filter((k) => !before.has(k)).length;
console.log(
  `${same} pairs byte-identical, ${changed} changed; ${onlyBefore} compiled only before, ${onlyAfter} only after`,
);
process.exit(changed ? 1 : 0);
