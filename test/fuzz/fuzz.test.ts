/**
 * Property fuzzing with a fixed seed and bounded counts (issue 13): a few hundred mutated models,
 * specs and .prds sets through the library in-process (child processes, each case under a time
 * guard), and a few through the real CLI. No input may crash prunec (anything thrown that is not a
 * PrunecError; exit 70, 134 or a signal from the CLI) or hang it. The long campaign with the same
 * generators: `npx tsx scripts/fuzz-campaign.ts` (see its header).
 */
import { existsSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ATTACKS, caseIds, buildCase, type CaseResult, type Family } from "./cases.js";
import { runPool } from "./pool.js";
import { cliCaseIds, runCliCases, DIST_MAIN, type CliResult } from "./cli.js";
import { crashClass, groupBy, table } from "./report.js";

const SEED = 13;
const COUNTS: Record<Family, number> = { model: 150, spec: 280, prds: 120 };
/** A case still running after this is a hang (normal cases take milliseconds, the largest model ~0.3 s). */
const GUARD_MS = 8_000;
const CLI_COUNTS: Record<Family, number> = { model: 8, spec: 4, prds: 4 };
const CLI_TIMEOUT_MS = 60_000;
const WORKERS = 2;

function repro(r: CaseResult | CliResult): string {
  const description = r.description || buildCase(r).description;
  const what =
    "command" in r
      ? `CLI ${r.command} → ${r.signal ? `signal ${r.signal}` : `exit ${r.exit}`}\n    ${r.stderr.split("\n").join("\n    ")}`
      : `${r.detail}${r.stack ? `\n    ${r.stack.split("\n").join("\n    ")}` : ""}`;
  return `${r.outcome}: ${r.attack} #${r.index} (seed ${r.seed}): ${description.slice(0, 400)}\n  ${what}\n  reproduce: npx tsx scripts/fuzz-campaign.ts --seed ${r.seed} --repro ${r.attack}#${r.index}${"command" in r ? " --cli" : ""}`;
}

/** One entry per crash/hang class: how many cases, and the first one's reproduction. */
function classes(bad: readonly (CaseResult | CliResult)[]): string[] {
  const key = (r: CaseResult | CliResult) =>
    "command" in r
      ? `${r.outcome} CLI ${r.command}: ${r.signal ?? r.exit}`
      : `${r.outcome}: ${r.outcome === "hang" ? r.attack : crashClass(r.detail, r.stack)}`;
  return [...groupBy(bad, key)].map(
    ([k, list]) => `[${list.length}×] ${k}
${repro(list[0]!)}`,
  );
}

describe(`fuzz: the library in-process (seed ${SEED}, ${COUNTS.model + COUNTS.spec + COUNTS.prds} cases, ${GUARD_MS / 1000} s guard per case)`, () => {
  for (const family of ["model", "spec", "prds"] as const) {
    it(`${family} mutants (${COUNTS[family]} cases over ${ATTACKS[family].length} attacks): no crash, no hang`, async () => {
      const results = await runPool(caseIds(SEED, { [family]: COUNTS[family] }), {
        workers: WORKERS,
        timeoutMs: GUARD_MS,
      });
      console.log(`${family} mutants, seed ${SEED}:\n${table(results, ATTACKS[family])}`);
      const bad = results.filter((r) => r.outcome === "crash" || r.outcome === "hang");
      expect(classes(bad), `${bad.length} of ${results.length} cases crashed or hung`).toEqual([]);
      // The attacks do reach past the decoder: some mutants compile (or parse) and some are refused.
      expect(results.some((r) => r.outcome === "ok")).toBe(true);
      expect(results.some((r) => r.outcome === "clean")).toBe(true);
    }, 240_000);
  }
});

const built = existsSync(DIST_MAIN);
const cliTitle = `fuzz: the CLI (node bin/prunec.js; seed ${SEED}, ${CLI_COUNTS.model + CLI_COUNTS.spec + CLI_COUNTS.prds} cases)${built ? "" : " (needs npm run build: dist/ missing)"}`;

describe.skipIf(!built)(cliTitle, () => {
  it("exits 0-8 on every mutant: never 70, 134 or a signal, never past the timeout", async () => {
    const ids = cliCaseIds(SEED, CLI_COUNTS);
    const results = await runCliCases(ids, { timeoutMs: CLI_TIMEOUT_MS, concurrency: WORKERS });
    console.log(
      `CLI cases, seed ${SEED}:\n${table(results.map((r) => ({ attack: `${r.attack} (${r.command})`, outcome: r.outcome })))}`,
    );
    const bad = results.filter((r) => r.outcome === "crash" || r.outcome === "hang");
    expect(classes(bad), `${bad.length} of ${results.length} CLI cases crashed or hung`).toEqual([]);
  }, 300_000);
});
