/**
 * Fuzz cases through the real CLI (`node bin/prunec.js`, built dist/): the mutated input is written
 * to files and a command runs on it in a child process with a timeout. The exit code must be one of
 * prunec's (0 ok, 1-8 clean errors); 70 (internal error), 134 (abort), any other code or a signal
 * is a crash, the timeout a hang.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "../helpers/shared.js";
import {
  ATTACKS,
  buildCase,
  familyOf,
  optionFlags,
  type CaseId,
  type CaseInput,
  type Family,
  type Outcome,
} from "./cases.js";

export const BIN = join(REPO_ROOT, "bin", "prunec.js");
export const DIST_MAIN = join(REPO_ROOT, "dist", "src", "cli", "main.js");
const DIGITS = join(REPO_ROOT, "examples", "digits", "model.onnx");

/** The commands a case of each family runs through (one per case, by case index). */
const COMMANDS = {
  model: ["compile", "inspect", "check-model", "compile-no-verify"],
  spec: ["check", "fmt", "compile-no-verify", "check-model"],
  prds: ["eval", "report"],
} as const;
export type CliCommand = (typeof COMMANDS)[keyof typeof COMMANDS][number];

export interface CliResult extends CaseId {
  command: CliCommand;
  argv: string[];
  outcome: Outcome;
  /** Exit code, or null when a signal ended it. */
  exit: number | null;
  signal: string | null;
  description: string;
  /** The last lines of stderr. */
  stderr: string;
  ms: number;
}

export function cliCommandFor(id: CaseId): CliCommand {
  const list = COMMANDS[familyOf(id.attack)];
  return list[id.index % list.length]!;
}

/** Write a case's input files into `dir`: model.onnx, spec.prune, data.prds (whichever it has). */
export function writeCaseFiles(input: CaseInput, dir: string): { model?: string; spec?: string; prds?: string } {
  mkdirSync(dir, { recursive: true });
  const files: { model?: string; spec?: string; prds?: string } = {};
  if (input.model) writeFileSync((files.model = join(dir, "model.onnx")), input.model.bytes);
  if (input.spec !== undefined) writeFileSync((files.spec = join(dir, "spec.prune")), input.spec);
  if (input.prds) writeFileSync((files.prds = join(dir, "data.prds")), input.prds);
  return files;
}

/** The prunec arguments of `command` on the case's files in `dir`. */
export function cliArgv(
  command: CliCommand,
  files: { model?: string; spec?: string; prds?: string },
  dir: string,
  flags: readonly string[] = [],
): string[] {
  const out = join(dir, "out.onnx");
  switch (command) {
    case "compile":
      return [files.model!, files.spec!, "-o", out, ...flags];
    case "compile-no-verify":
      return [files.model!, files.spec!, "-o", out, "--no-verify", ...flags];
    case "inspect":
      return ["inspect", files.model!, "--json"];
    case "check":
      return ["check", files.spec!];
    case "check-model":
      return ["check", files.spec!, files.model!];
    case "fmt":
      return ["fmt", files.spec!];
    case "eval":
      return ["eval", DIGITS, "--data", files.prds!, "--batch", "4"];
    case "report": {
      const spec = join(dir, "report.prune");
      writeFileSync(spec, "after layer 1 keep 25% by cls-attn\n");
      return ["report", DIGITS, spec, "-o", join(dir, "report"), "--data", files.prds!, "--examples", "2"];
    }
  }
}

function run(
  argv: string[],
  timeoutMs: number,
): Promise<{ exit: number | null; signal: string | null; stderr: string; timedOut: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...argv], {
      cwd: REPO_ROOT,
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, NO_COLOR: "1" },
    });
    let stderr = "";
    let timedOut = false;
    child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-6000)));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("close", (exit, signal) => {
      clearTimeout(timer);
      resolve({ exit, signal, stderr, timedOut });
    });
  });
}

export function classifyExit(exit: number | null, signal: string | null, timedOut: boolean): Outcome {
  if (timedOut) return "hang";
  if (signal !== null || exit === null) return "crash";
  if (exit === 0) return "ok";
  return exit >= 1 && exit <= 8 ? "clean" : "crash";
}

/** Run one case through the CLI (files in a fresh temp folder, removed afterwards unless kept). */
export async function runCliCase(id: CaseId, o: { timeoutMs: number; keepDir?: string }): Promise<CliResult> {
  const input = buildCase(id);
  const command = cliCommandFor(id);
  const dir = o.keepDir ?? mkdtempSync(join(tmpdir(), "prunec-fuzz-cli-"));
  try {
    const files = writeCaseFiles(input, dir);
    const argv = cliArgv(command, files, dir, optionFlags(input.options));
    const t = performance.now();
    const r = await run(argv, o.timeoutMs);
    const stderr = r.stderr.trim().split("\n").slice(-8).join("\n");
    return {
      ...id,
      command,
      argv,
      outcome: classifyExit(r.exit, r.signal, r.timedOut),
      exit: r.exit,
      signal: r.signal,
      description: input.description,
      stderr,
      ms: performance.now() - t,
    };
  } finally {
    if (!o.keepDir && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  }
}

/** Run CLI cases `concurrency` at a time; results in the order of `ids`. */
export async function runCliCases(
  ids: readonly CaseId[],
  o: { timeoutMs: number; concurrency: number; onResult?: (r: CliResult) => void },
): Promise<CliResult[]> {
  const results: CliResult[] = new Array(ids.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.max(1, o.concurrency) }, async () => {
      for (let i = next++; i < ids.length; i = next++) {
        results[i] = await runCliCase(ids[i]!, o);
        o.onResult?.(results[i]!);
      }
    }),
  );
  return results;
}

/**
 * Case ids for CLI runs: `counts` cases per family, striding over the attacks (so a few cases
 * still reach many attacks) at indices from `first` (other mutants than the in-process runs' first
 * ones); the command cycles with the index.
 */
export function cliCaseIds(seed: number, counts: Partial<Record<Family, number>>, first = 1000): CaseId[] {
  const ids: CaseId[] = [];
  for (const [family, total] of Object.entries(counts) as [Family, number][]) {
    const attacks = ATTACKS[family];
    for (let i = 0; i < total; i++) ids.push({ seed, attack: attacks[(i * 11) % attacks.length]!, index: first + i });
  }
  return ids;
}
