/** The core (I/O, IR, analysis, grammar, passes) must run in a browser: no Node-only imports outside the CLI. */
import { expect, it } from "vitest";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith(".ts") ? [p] : [];
  });
}

it("src (but src/cli), grammar and passes import nothing from node: and use no process", () => {
  const core = ["src", "grammar", "passes"]
    .flatMap((d) => sources(join(REPO_ROOT, d)))
    .filter((p) => !p.includes(join("src", "cli")));
  expect(core.length).toBeGreaterThan(20);
  const offenders = core
    .filter((p) => /from\s+["']node:|require\(|\bprocess\./.test(readFileSync(p, "utf8")))
    .map((p) => relative(REPO_ROOT, p));
  expect(offenders).toEqual([]);
});
