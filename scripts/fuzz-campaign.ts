/**
 * The fuzz campaign (issue 13): the generators of test/fuzz at CI scale. By default 10,000 model
 * mutants, 20,000 spec mutants and 3,000 .prds mutants through the library in-process (child
 * processes, one per core, each case under a time guard), then a few hundred through the real CLI
 * (`node bin/prunec.js`, needs `npm run build`). Prints
 *
 *   | attack | cases | clean error | ok | crash | hang |
 *
 * and exits 1 when any case crashed (anything thrown that is not a PrunecError; exit 70, 134 or a
 * signal from the CLI) or hung. Each crash/hang class is printed with its reproduction (seed,
 * attack, case index, the mutation), and up to 3 failing inputs per class are written under --out.
 *
 *   npx tsx scripts/fuzz-campaign.ts [--seed 1] [--models 10000] [--specs 20000] [--prds 3000]
 *       [--cli 240] [--workers N] [--guard 5000] [--out scratch/fuzz-findings]
 *   npx tsx scripts/fuzz-campaign.ts --seed S --repro ATTACK#INDEX [--cli] [--guard 5000] [--out DIR]
 *
 * --repro runs one case in this process (a watchdog prints the stack of a hang) or, with --cli,
 * through the CLI, prints its outcome, and writes its input files to --out.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import {
  ATTACKS,
  buildCase,
  caseIds,
  familyOf,
  optionFlags,
  runInput,
  type CaseId,
  type CaseResult,
  type Family,
} from "../test/fuzz/cases.js";
import { runPool } from "../test/fuzz/pool.js";
import {
  cliCaseIds,
  runCliCase,
  runCliCases,
  writeCaseFiles,
  cliCommandFor,
  type CliResult,
} from "../test/fuzz/cli.js";
import { crashClass, groupBy, table } from "../test/fuzz/report.js";
import { REPO_ROOT } from "../test/helpers/shared.js";

const args = process.argv.slice(2);
const flag = (name: string): boolean => args.includes(`--${name}`);
const opt = (name: string, fallback: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : fallback;
};
const num = (name: string, fallback: number): number => {
  const v = Number(opt(name, String(fallback)));
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} must be a non-negative number`);
  return v;
};

const seed = num("seed", 1);
const guardMs = num("guard", 5000);
const out = resolve(opt("out", join(REPO_ROOT, "scratch", "fuzz-findings")));
const SELF = fileURLToPath(import.meta.url);

/** `attack#index` → a case id. */
function parseId(text: string): CaseId {
  const m = /^(.+)#(\d+)$/.exec(text);
  if (!m || !Object.values(ATTACKS).some((list) => list.includes(m[1]!)))
    throw new Error(`--repro takes ATTACK#INDEX with ATTACK one of:\n  ${Object.values(ATTACKS).flat().join("\n  ")}`);
  return { seed, attack: m[1]!, index: Number(m[2]) };
}

const idText = (id: CaseId): string => `${id.attack}#${id.index}`;
const reproCommand = (id: CaseId, cli = false): string =>
  `npx tsx scripts/fuzz-campaign.ts --seed ${id.seed} --repro ${idText(id)}${cli ? " --cli" : ""}`;

/** Write a case's inputs and a README saying how to reproduce it. */
function saveCase(id: CaseId, dir: string, note: string, cli?: CliResult): string {
  const input = buildCase(id);
  rmSync(dir, { recursive: true, force: true });
  const files = writeCaseFiles(input, dir);
  const lines = [
    `seed ${id.seed}, ${idText(id)}`,
    `mutation: ${input.description}`,
    "",
    note,
    "",
    `reproduce in-process: ${reproCommand(id)}`,
  ];
  if (cli)
    lines.push(
      `reproduce through the CLI: ${reproCommand(id, true)}`,
      `CLI command: node bin/prunec.js ${cli.argv.map((a) => a.replace(/^.*\/prunec-fuzz-cli-[^/]+\//, "")).join(" ")}`,
    );
  else if (files.model && files.spec)
    lines.push(
      `CLI: node bin/prunec.js ${dir}/model.onnx ${dir}/spec.prune -o /tmp/out.onnx ${optionFlags(input.options).join(" ")}`.trimEnd(),
    );
  else if (files.spec) lines.push(`CLI: node bin/prunec.js check ${dir}/spec.prune`);
  else if (files.prds) lines.push(`CLI: node bin/prunec.js eval examples/digits/model.onnx --data ${dir}/data.prds`);
  writeFileSync(join(dir, "README.txt"), `${lines.join("\n")}\n`);
  return dir;
}

// ---------- --repro: one case ----------

async function repro(id: CaseId): Promise<number> {
  const input = buildCase(id);
  console.log(`seed ${id.seed}, ${idText(id)}: ${input.description}`);
  const dir = join(out, `repro-${id.attack.replace(/:/g, "-")}-${id.index}`);
  if (flag("cli")) {
    const r = await runCliCase(id, { timeoutMs: Math.max(guardMs, 60_000), keepDir: dir });
    console.log(
      `CLI ${r.command}: prunec ${r.argv.join(" ")}\n→ ${r.outcome}: ${r.signal ? `signal ${r.signal}` : `exit ${r.exit}`} in ${(r.ms / 1000).toFixed(2)} s\n${r.stderr}`,
    );
    console.log(`input files: ${dir}`);
    return r.outcome === "crash" || r.outcome === "hang" ? 1 : 0;
  }
  saveCase(id, dir, "written by --repro");
  console.log(`input files: ${dir}`);
  // The watchdog prints the stack and kills this process if the case runs past the guard.
  const watchdog = new Worker(new URL("../test/fuzz/watchdog.mjs", import.meta.url), {
    workerData: { ms: guardMs, root: `${REPO_ROOT}/` },
  });
  await new Promise((r) => watchdog.once("message", r));
  const t = performance.now();
  const r = runInput(input);
  await watchdog.terminate();
  console.log(
    `→ ${r.outcome} in ${((performance.now() - t) / 1000).toFixed(2)} s: ${r.detail}${r.stack ? `\n  ${r.stack.split("\n").join("\n  ")}` : ""}`,
  );
  return r.outcome === "crash" || r.outcome === "hang" ? 1 : 0;
}

/** Where a hang spins: the watchdog stack of the case run again by --repro in a child process. */
function hangStack(id: CaseId): string {
  const r = spawnSync(
    process.execPath,
    [
      "--import",
      "tsx",
      SELF,
      "--seed",
      String(id.seed),
      "--guard",
      String(guardMs),
      "--out",
      join(out, "hang-stacks"),
      "--repro",
      idText(id),
    ],
    { cwd: REPO_ROOT, encoding: "utf8", timeout: guardMs + 60_000 },
  );
  const text = `${r.stderr}`;
  const at = text.indexOf("WATCHDOG:");
  if (at >= 0) return text.slice(at).trim();
  const last = `${r.stdout}`.trim().split("\n").pop() ?? "";
  return `(not reproduced as a hang when run alone: ${last.slice(0, 300)})`;
}

/**
 * A hang's class from its watchdog stack: the function that recurses (appears 5 times or more),
 * else the innermost two frames inside prunec.
 */
function hangClass(stack: string): string {
  if (stack.startsWith("(not reproduced"))
    return "hung in the campaign but not when run alone (load, or the sources changed during the run)";
  const frames = stack
    .split("\n")
    .filter((l) => /\b(src|grammar|passes)\//.test(l))
    .map((l) => l.trim().replace(/^at /, ""));
  if (!frames.length) return stack.split("\n")[0]!.slice(0, 160);
  const seen = new Map<string, number>();
  for (const f of frames) seen.set(f, (seen.get(f) ?? 0) + 1);
  const recursive = frames.find((f) => f.startsWith("<anonymous>") === false && (seen.get(f) ?? 0) >= 5);
  if (recursive) return `recursion in ${recursive}, entered from ${frames[frames.lastIndexOf(recursive) + 1] ?? "?"}`;
  // Builders every pass calls say little: name the first caller outside them too.
  const helper = (f: string) => /\((src\/onnx\/tensor|passes\/builder|src\/ir\/graph)\.ts\)/.test(f);
  const caller = frames.find((f) => !helper(f));
  return caller && caller !== frames[0] ? `${frames[0]} ← … ← ${caller}` : frames[0]!;
}

// ---------- the campaign ----------

/** HEAD and a digest of uncommitted changes to the product sources: did they change during the run? */
function sourceState(): string {
  const git = (...a: string[]) => spawnSync("git", a, { cwd: REPO_ROOT, encoding: "utf8" });
  const head = git("rev-parse", "--short", "HEAD");
  if (head.status !== 0) return "(not a git checkout)";
  const diff = git("diff", "HEAD", "--", "src", "grammar", "passes").stdout ?? "";
  const untracked = git("ls-files", "--others", "--exclude-standard", "--", "src", "grammar", "passes").stdout ?? "";
  let h = 0;
  for (const ch of diff + untracked) h = (Math.imul(h, 31) + ch.charCodeAt(0)) | 0;
  return diff || untracked
    ? `${head.stdout.trim()} + uncommitted changes to src/grammar/passes (digest ${(h >>> 0).toString(16)})`
    : head.stdout.trim();
}

async function campaign(): Promise<number> {
  const counts: Record<Family, number> = {
    model: num("models", 10_000),
    spec: num("specs", 20_000),
    prds: num("prds", 3_000),
  };
  const cliTotal = num("cli", 240);
  const cliCounts: Record<Family, number> = {
    model: Math.round(cliTotal * 0.5),
    spec: Math.round(cliTotal * 0.3),
    prds: cliTotal - Math.round(cliTotal * 0.5) - Math.round(cliTotal * 0.3),
  };
  const workers = num("workers", availableParallelism());
  const sourcesAtStart = sourceState();
  console.log(`sources: ${sourcesAtStart}`);
  console.log(
    `fuzz campaign: seed ${seed}; ${counts.model} model, ${counts.spec} spec, ${counts.prds} .prds mutants in-process (${workers} processes, ${guardMs} ms guard per case); ${cliTotal} through the CLI`,
  );

  const t0 = performance.now();
  const ids = caseIds(seed, counts);
  // Spread the families over the run (the progress line then means something).
  ids.sort((a, b) => a.index - b.index || a.attack.localeCompare(b.attack));
  let done = 0;
  const step = Math.max(500, Math.round(ids.length / 20));
  const famTime: Record<Family, number> = { model: 0, spec: 0, prds: 0 };
  const results = await runPool(ids, {
    workers,
    timeoutMs: guardMs,
    onResult: (r) => {
      famTime[familyOf(r.attack)] += r.ms;
      if (++done % step === 0)
        process.stderr.write(`  ${done}/${ids.length} cases, ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
    },
  });
  const inProcessS = (performance.now() - t0) / 1000;

  const t1 = performance.now();
  const cliResults =
    cliTotal > 0
      ? await runCliCases(cliCaseIds(seed, cliCounts, 100_000), { timeoutMs: 60_000, concurrency: workers })
      : [];
  const cliS = (performance.now() - t1) / 1000;

  console.log(`\n## In-process (library), seed ${seed}: ${results.length} cases in ${inProcessS.toFixed(0)} s\n`);
  console.log(table(results, Object.values(ATTACKS).flat()));
  console.log(
    `\ncase time (sum over processes): ${(Object.entries(famTime) as [Family, number][]).map(([f, ms]) => `${f} ${(ms / 1000).toFixed(0)} s`).join(", ")}`,
  );
  if (cliResults.length) {
    console.log(`\n## CLI (node bin/prunec.js), seed ${seed}: ${cliResults.length} cases in ${cliS.toFixed(0)} s\n`);
    console.log(table(cliResults.map((r) => ({ attack: `${familyOf(r.attack)}:${r.command}`, outcome: r.outcome }))));
  }

  const sourcesAtEnd = sourceState();
  if (sourcesAtEnd !== sourcesAtStart)
    console.log(
      `\nnote: the product sources changed during the run (now ${sourcesAtEnd}): the cases ran on a mix of versions`,
    );
  const bad = results.filter((r) => r.outcome === "crash" || r.outcome === "hang");
  const badCli = cliResults.filter((r) => r.outcome === "crash" || r.outcome === "hang");
  if (!bad.length && !badCli.length) {
    console.log(`\nno crash, no hang (${((performance.now() - t0) / 1000).toFixed(0)} s in all)`);
    return 0;
  }

  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  let n = 0;
  const report = (title: string, list: readonly CaseResult[], extra?: string) => {
    n++;
    const attacks = [...groupBy(list, (r) => r.attack)].map(([a, l]) => `${a} ×${l.length}`).join(", ");
    console.log(`\n### ${n}. ${title}\n${list.length} case(s): ${attacks}`);
    if (extra) console.log(extra);
    for (const r of list.slice(0, 3)) {
      const dir = saveCase(
        r,
        join(out, `${String(n).padStart(2, "0")}-${r.attack.replace(/:/g, "-")}-${r.index}`),
        `${r.outcome}: ${r.detail}${r.stack ? `\n${r.stack}` : ""}${extra ? `\n${extra}` : ""}`,
      );
      console.log(
        `- ${idText(r)}: ${buildCase(r).description.slice(0, 300)}\n  ${r.detail.slice(0, 300)}\n  input: ${dir}\n  reproduce: ${reproCommand(r)}`,
      );
    }
    const first = list[0]!;
    if (first.stack) console.log(`stack top:\n  ${first.stack.split("\n").join("\n  ")}`);
  };

  console.log(`\n## Crash and hang classes (inputs under ${out})`);
  for (const [k, list] of groupBy(
    bad.filter((r) => r.outcome === "crash"),
    (r) => crashClass(r.detail, r.stack),
  ))
    report(`crash: ${k}`, list);
  // Hangs have no message: run one case of each attack again alone with the watchdog for its stack.
  const hangs = bad.filter((r) => r.outcome === "hang");
  if (hangs.length) {
    const stacks = new Map<string, string>();
    const limit = num("hang-stacks", 12);
    for (const [, list] of [...groupBy(hangs, (r) => r.attack)].slice(0, limit))
      stacks.set(idText(list[0]!), hangStack(list[0]!));
    // Cases not run alone are put with the class of the first case of their attack.
    const classOf = (r: CaseResult): string => {
      const own = stacks.get(idText(r));
      const rep = own ?? stacks.get(idText(hangs.find((h) => h.attack === r.attack)!));
      return rep ? hangClass(rep) : "(no stack taken)";
    };
    for (const [k, list] of groupBy(hangs, classOf)) {
      const stackOf = list.map((r) => stacks.get(idText(r))).find((s) => s !== undefined);
      report(`hang (> ${guardMs} ms): ${k}`, list, stackOf);
    }
  }
  for (const [k, list] of groupBy(
    badCli,
    (r) =>
      `${r.command}: ${r.signal ? `signal ${r.signal}` : `exit ${r.exit}`}${r.outcome === "hang" ? " (timeout)" : ""}`,
  )) {
    n++;
    console.log(`\n### ${n}. CLI ${list[0]!.outcome}: ${k}\n${list.length} case(s)`);
    for (const r of list.slice(0, 3)) {
      const dir = saveCase(
        r,
        join(out, `${String(n).padStart(2, "0")}-cli-${r.attack.replace(/:/g, "-")}-${r.index}`),
        `${r.outcome}: prunec ${r.command} → ${r.signal ?? r.exit}\n${r.stderr}`,
        r,
      );
      console.log(
        `- ${idText(r)} (${cliCommandFor(r)}): ${r.description.slice(0, 300)}\n  stderr: ${r.stderr.split("\n").slice(-4).join("\n          ")}\n  input: ${dir}\n  reproduce: ${reproCommand(r, true)}`,
      );
    }
  }
  console.log(`\n${bad.length + badCli.length} case(s) crashed or hung in ${n} class(es): FAIL`);
  return 1;
}

process.exitCode = args.includes("--repro") ? await repro(parseId(opt("repro", ""))) : await campaign();
