/**
 * The command line: a thin shell over the library. Owns files, exit codes and messages; the core
 * never touches the file system. Inputs are regular files read up to their size (src/cli/files.ts);
 * output is written atomically (temp file + rename, src/cli/atomic.ts), never over an input or a
 * file that is not a regular file; on failure or interrupt nothing is written.
 */
import { Command, CommanderError } from "commander";
import { existsSync } from "node:fs";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { basename, dirname, join, resolve } from "node:path";
import { compile, parseOrThrow, type CompileReport } from "../compile.js";
import { checkSpec, diagnosticsJson } from "../check.js";
import { formatDiagnostics, printSpec } from "../../grammar/index.js";
import { closest } from "../../grammar/suggest.js";
import { checkDatasetFitsModel, encodeDataset, parseDataset, type Dataset } from "../data/prds.js";
import type { PreprocessFlags } from "./preprocess.js";
import { folderDataset, isFolder, progress } from "./data-input.js";
import { evaluate, type EvalResult } from "./evaluate.js";
import { benchmark, formatBench } from "./benchmark.js";
import { renderReport, saveReport, type ReportSpec } from "./report.js";
import { loadOrtNode } from "./runtime.js";
import {
  checkWeightFiles,
  externalRefs,
  rememberExternalRefs,
  planPlacements,
  type Placement,
  stageModelWithWeights,
  type StagedModel,
  weightInputs,
  EXTERNAL_DATA_MODES,
  type ExternalDataMode,
} from "./weights.js";
import { checkOutput, inputRef, readInput, type InputFile } from "./files.js";
import {
  checkOutDir,
  chooseOnnx,
  isModelFolder,
  listFolder,
  planFolder,
  stageFolder,
  type FolderPlan,
  type StagedFolder,
} from "./folder.js";
import { writeAtomic } from "./atomic.js";
import { inspectModel, formatInspect } from "../inspect.js";
import { specFileText } from "./spec-file.js";
import { ERROR_PREFIX, PrunecError, errorJson, errorText } from "../errors.js";
import { DASH, INLINE_NAME, STDIN_NAME, oneStdin, readAllStdin, stdinId, terminalWidth } from "./stdio.js";
import { renderTable, wrapText } from "../table.js";
import {
  stagedForSmoke,
  smokeRun,
  formatSmoke,
  type SmokeModel,
  type SmokeReport,
  type StagedForSmoke,
} from "./smoke.js";
import { VERSION } from "../version.js";

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Bytes to stdout (`-o -`); resolves once written. */
  outBytes?: (bytes: Uint8Array) => Promise<void>;
  /** All of stdin (`-` as an input). */
  stdin?: () => Promise<Uint8Array>;
  /** The width human output fits (src/cli/table.ts); undefined: no limit. */
  width?: number;
}

const defaultIo: Io = {
  out: (t) => process.stdout.write(t.endsWith("\n") ? t : `${t}\n`),
  err: (t) => process.stderr.write(t.endsWith("\n") ? t : `${t}\n`),
  outBytes: (bytes) => new Promise((done, fail) => process.stdout.write(bytes, (e) => (e ? fail(e) : done()))),
  stdin: readAllStdin,
  width: terminalWidth(),
};

/** Per run: `--json` was given; the model bytes take stdout (`-o -`), so everything else goes to stderr. */
interface Session {
  json: boolean;
  stdoutIsData: boolean;
}

/** Human output, wrapped to the terminal's width (tables are fitted by their formatter). */
const human = (io: Io, text: string) => io.out(wrapText(text, io.width));

/**
 * An input given on the command line: a file, or `-` for standard input (named `<stdin>` in
 * messages). A model from stdin cannot have external data (its weight files are found beside the
 * model file).
 */
async function readArg(path: string, what: string, io: Io): Promise<InputFile> {
  if (path !== DASH) return readInput(path, what);
  if (!io.stdin) throw new PrunecError("usage", `'-' (standard input) is not available here (expected ${what})`);
  const bytes = await io.stdin();
  if (what === MODEL && externalRefs(bytes, STDIN_NAME).length)
    throw new PrunecError(
      "usage",
      `${STDIN_NAME}: the model keeps weights in external data files, which are found beside the model file; give the model's path instead of '-'`,
    );
  return { path: STDIN_NAME, id: stdinId(), bytes };
}

const MODEL = "an ONNX model";
const SPEC = "a .prune spec";

/** A spec: a file, `-` (stdin), or `-e TEXT` (named `<inline>`); exactly one of them. */
interface SpecInput {
  name: string;
  text: string;
  file?: InputFile;
}

async function readSpecArg(path: string | undefined, expr: string | undefined, io: Io): Promise<SpecInput> {
  if (path !== undefined && expr !== undefined)
    throw new PrunecError("usage", `the spec is given twice: a file ('${path}') and -e; give one`);
  if (expr !== undefined) return { name: INLINE_NAME, text: expr };
  if (path === undefined)
    throw new PrunecError("usage", "missing the spec: give a .prune file, '-' (stdin) or -e TEXT");
  const file = await readArg(path, SPEC, io);
  return { name: file.path, text: specFileText(file.bytes, file.path), file };
}

/**
 * `--data`: an image folder read for the model (its preprocessing), or a .prds set (a file or `-`)
 * checked against the model's input (exit 2 naming both shapes, not onnxruntime's error).
 */
async function dataArg(
  path: string,
  model: Uint8Array,
  modelPath: string,
  flags: PreprocessFlags,
  quiet: boolean,
  io: Io,
): Promise<{ data: Dataset; dataName: string; file?: InputFile }> {
  if (path !== DASH && isFolder(path))
    return { data: await folderDataset(path, model, modelPath, flags, quiet), dataName: path };
  const file = await readArg(path, "a .prds data set or an image folder", io);
  const data = parseDataset(file.bytes, file.path);
  checkDatasetFitsModel(data, model, file.path, modelPath);
  return { data, dataName: file.path, file };
}

/**
 * report's schedules: spec files (or `-`) and an inline `-e`; charts name each by its file name
 * (the path when two share one), compile's messages by its path.
 */
async function reportSpecs(
  paths: readonly string[],
  expr: string | undefined,
  io: Io,
): Promise<(ReportSpec & { input?: InputFile })[]> {
  if (!paths.length && expr === undefined)
    throw new PrunecError("usage", "missing the specs: give .prune files, '-' (stdin) or -e TEXT");
  const read: SpecInput[] = [];
  for (const p of paths) read.push(await readSpecArg(p, undefined, io));
  if (expr !== undefined) read.push({ name: INLINE_NAME, text: expr });
  const short = read.map((s) => (s.file ? basename(s.name) : s.name));
  return read.map((s, i) => ({
    name: short.indexOf(short[i]!) === short.lastIndexOf(short[i]!) ? short[i]! : s.name,
    text: s.text,
    file: s.name,
    ...(s.file ? { input: s.file } : {}),
  }));
}

export function defaultOutput(modelPath: string): string {
  const name = basename(modelPath).replace(/\.onnx$/i, "");
  return join(dirname(modelPath), `${name}.pruned.onnx`);
}

export { writeAtomic } from "./atomic.js";
/** bin/prunec.js sets how the bundled CLI imports optional peers (see peers.ts). */
export { setPeerImport } from "./peers.js";

interface CompileOptions {
  output?: string;
  expr?: string;
  exposeIndices?: boolean;
  kvState?: boolean;
  json?: boolean;
  target?: string;
  externalData?: string;
  verify?: boolean;
  onnx?: string;
  timings?: boolean;
}

/** `--timings`: each step's wall time, in order, printed to stderr when the command ends. */
type Timings = { step: string; ms: number }[];

async function timedStep<T>(timings: Timings | undefined, step: string, f: () => T | Promise<T>): Promise<T> {
  const t0 = performance.now();
  const result = await f();
  timings?.push({ step, ms: performance.now() - t0 });
  return result;
}

function timingLines(timings: Timings, width: number | undefined): string {
  const total = timings.reduce((a, t) => a + t.ms, 0);
  const rows = [...timings, { step: "total", ms: total }].map((t) => [t.step, t.ms.toFixed(1)]);
  return renderTable(["step", "ms"], rows, { right: [1], ...(width !== undefined ? { width } : {}) }).join("\n");
}

function compileModes(opts: CompileOptions): { target: "cpu" | "webgpu"; mode: ExternalDataMode } {
  if (opts.target !== undefined && opts.target !== "cpu" && opts.target !== "webgpu")
    throw new PrunecError("usage", `--target must be cpu or webgpu, got '${opts.target}'`);
  const mode = (opts.externalData ?? "link") as ExternalDataMode;
  if (!EXTERNAL_DATA_MODES.includes(mode))
    throw new PrunecError("usage", `--external-data must be link, copy or refuse, got '${opts.externalData}'`);
  return { target: opts.target ?? "cpu", mode };
}

/** Compile MODEL with SPEC (every stage required). */
function compileSpec(
  modelBytes: Uint8Array,
  modelName: string,
  spec: SpecInput,
  opts: CompileOptions,
  target: "cpu" | "webgpu",
  timings?: Timings,
): ReturnType<typeof compile> {
  const result = compile(modelBytes, spec.text, {
    modelName,
    specName: spec.name,
    exposeIndices: opts.exposeIndices ?? false,
    kvState: opts.kvState ?? false,
    target,
    requireStages: true,
    ...(timings ? { profile: (step: string, ms: number) => timings.push({ step, ms }) } : {}),
  });
  // Compile checked the input's external data already: the weight placement reads that, not a second decode.
  rememberExternalRefs(modelBytes, modelName, result.inputExternalData);
  return result;
}

/**
 * The smoke run of `compiled` (its bytes, or the file staged under its temp name) unless
 * --no-verify: a model onnxruntime cannot load or run is refused (exit 8) and never takes its name.
 */
async function smokeChecked(
  compiled: SmokeModel,
  report: CompileReport,
  modelName: string,
  opts: CompileOptions,
  timings?: Timings,
): Promise<SmokeReport | undefined> {
  if (opts.verify === false) return undefined;
  return timedStep(timings, "onnxruntime smoke run", () =>
    smokeRun(compiled, { modelPath: modelName, stages: report.stages, verification: report.verification }),
  );
}

/**
 * A write, timed without the steps it ran itself (the smoke run on the staged file): those have
 * their own rows, listed before it.
 */
async function timedWrite<T>(timings: Timings | undefined, f: () => Promise<T>): Promise<T> {
  const before = timings?.length ?? 0;
  const t0 = performance.now();
  const result = await f();
  const inner = (timings ?? []).slice(before).reduce((a, t) => a + t.ms, 0);
  timings?.push({ step: "write", ms: performance.now() - t0 - inner });
  return result;
}

async function runCompile(
  modelPath: string,
  specPath: string | undefined,
  opts: CompileOptions,
  io: Io,
  session: Session,
): Promise<void> {
  if (modelPath !== DASH && isModelFolder(modelPath)) return runCompileFolder(modelPath, specPath, opts, io);
  if (opts.onnx !== undefined)
    throw new PrunecError("io", `--onnx names the file to compile in a model folder, but ${modelPath} is not a folder`);
  const { target, mode } = compileModes(opts);
  oneStdin([
    { arg: modelPath, what: "the model" },
    { arg: specPath, what: "the spec" },
  ]);
  if (modelPath === DASH && opts.output === undefined)
    throw new PrunecError("usage", "the model is read from stdin: give -o FILE, or -o - for stdout");
  // `-o -`: the model's bytes are stdout; the summary (or --json report) goes to stderr.
  const toStdout = opts.output === DASH;
  if (toStdout) {
    if (!io.outBytes) throw new PrunecError("usage", "-o -: standard output is not available here");
    session.stdoutIsData = true;
  }
  const out = toStdout ? DASH : resolve(opts.output ?? defaultOutput(modelPath));
  const timings: Timings | undefined = opts.timings ? [] : undefined;
  const args: CompileArgs = { modelPath, specPath, opts, io, target, timings };
  const { report, smoke, placed, wrote } = toStdout
    ? await compileToStdout(args)
    : await compileToFile(args, out, mode);
  if (timings) io.err(timingLines(timings, terminalWidth(process.stderr)));
  const say = toStdout ? io.err : io.out;
  const externalData = placementLines(placed);
  if (opts.json) {
    say(JSON.stringify({ output: toStdout ? "-" : out, ...compileJson(report, smoke, externalData) }, null, 2));
    return;
  }
  say(
    wrapText(
      [wrote, ...summaryLines(report, smoke, externalData)].join("\n"),
      toStdout ? terminalWidth(process.stderr) : io.width,
    ),
  );
}

/** What runCompile's two ways of writing (a file, stdout) read. */
interface CompileArgs {
  modelPath: string;
  specPath: string | undefined;
  opts: CompileOptions;
  io: Io;
  target: "cpu" | "webgpu";
  timings: Timings | undefined;
}

/** What a compile wrote, for the summary. */
interface CompileDone {
  report: CompileReport;
  smoke: SmokeReport | undefined;
  placed: Placement[];
  /** The summary's first line. */
  wrote: string;
}

async function readCompileInputs(a: CompileArgs): Promise<{ modelFile: InputFile; spec: SpecInput }> {
  const modelFile = await timedStep(a.timings, "read", () => readArg(a.modelPath, MODEL, a.io));
  const spec = await readSpecArg(a.specPath, a.opts.expr, a.io);
  return { modelFile, spec };
}

async function compileToStdout(a: CompileArgs): Promise<CompileDone> {
  const { modelFile, spec } = await readCompileInputs(a);
  if (externalRefs(modelFile.bytes, modelFile.path).length)
    throw new PrunecError(
      "usage",
      `-o -: ${modelFile.path} keeps weights in external data files, which must be placed beside the output file; give -o FILE`,
    );
  const result = compileSpec(modelFile.bytes, modelFile.path, spec, a.opts, a.target, a.timings);
  const smoke = await smokeChecked(result.model, result.report, modelFile.path, a.opts, a.timings);
  await timedStep(a.timings, "write", () => a.io.outBytes!(result.model));
  return { report: result.report, smoke, placed: [], wrote: `wrote ${result.model.length} bytes to stdout` };
}

/**
 * Compile to a file in two phases, so that the input's bytes are garbage before onnxruntime loads
 * the output: stageCompiled reads, compiles and stages the output under a temp name, and returns
 * nothing that holds the input; then the smoke run loads the staged file, and only a model that
 * passed takes its name. Peak memory is the larger phase's, not their sum (docs/results.md).
 */
async function compileToFile(a: CompileArgs, out: string, mode: ExternalDataMode): Promise<CompileDone> {
  const s = await stageCompiled(a, out, mode);
  const { smoke, placed } = await smokeThenCommit(s, a.opts, a.timings);
  return { report: s.report, smoke, placed, wrote: `wrote ${out}` };
}

/**
 * The second phase of a compile to a file or folder: the staged output is smoke-run (after a full
 * GC, so the input's buffer is gone before onnxruntime loads the output), then takes its name; a
 * failed run removes everything staged.
 */
async function smokeThenCommit(
  s: {
    staged: { commit(): Placement[]; rollback(): void };
    smoke: StagedForSmoke;
    report: CompileReport;
    modelName: string;
  },
  opts: CompileOptions,
  timings: Timings | undefined,
): Promise<{ smoke: SmokeReport | undefined; placed: Placement[] }> {
  let smoke: SmokeReport | undefined;
  try {
    if (opts.verify !== false) await collectGarbage();
    reportInputProbe();
    smoke = await smokeChecked(s.smoke, s.report, s.modelName, opts, timings);
  } catch (e) {
    s.staged.rollback();
    throw e;
  }
  const placed = await timedStep(timings, "rename into place", () => s.staged.commit());
  return { smoke, placed };
}

async function stageCompiled(
  a: CompileArgs,
  out: string,
  mode: ExternalDataMode,
): Promise<{ staged: StagedModel; smoke: StagedForSmoke; report: CompileReport; modelName: string }> {
  const { modelFile, spec } = await readCompileInputs(a);
  const modelBytes = modelFile.bytes;
  probeInput(modelBytes);
  const modelName = modelFile.path;
  const specInputs = spec.file ? [spec.file] : [];
  checkOutput(out, [modelFile, ...specInputs]); // fail fast; the weight files are known after compile
  const result = compileSpec(modelBytes, modelName, spec, a.opts, a.target, a.timings);
  // Never over the model, the spec or a weight file, by identity (links and spellings included).
  const inputs = [modelFile, ...specInputs, ...weightInputs(modelBytes, modelName)];
  checkOutput(out, inputs);
  // External locations are relative to the model: an output in another folder gets the weight files beside it.
  const staged = await timedStep(a.timings, "write", () =>
    stageModelWithWeights(out, result.parts, planPlacements(modelBytes, modelName, out, mode), inputs),
  );
  return { staged, smoke: stagedForSmoke(staged.file, result.graph, modelName), report: result.report, modelName };
}

/**
 * Test hook, not for users: with PRUNEC_TEST_INPUT_FREED=1 a compile to a file or folder says on
 * stderr whether the input model's bytes were still reachable when the smoke run began (the two
 * phases exist so that they are not: a regression doubles a large model's peak memory, and only a
 * benchmark would notice).
 */
let inputProbe: WeakRef<ArrayBufferLike> | undefined;
function probeInput(bytes: Uint8Array): void {
  // The buffer, not the view: the compiled model's tensors are other views of it.
  if (process.env["PRUNEC_TEST_INPUT_FREED"] === "1") inputProbe = new WeakRef(bytes.buffer);
}
function reportInputProbe(): void {
  if (!inputProbe) return;
  process.stderr.write(`prunec test: input ${inputProbe.deref() ? "still held" : "freed"} before the smoke run\n`);
  inputProbe = undefined;
}

/**
 * A full garbage collection now. Before the smoke run loads a large output, the input's buffer
 * (unreachable by then) would otherwise stay until V8 happens to collect: onnxruntime's memory is
 * native, so V8 sees no pressure. `gc` is exposed on demand: the CLI owns its process.
 */
async function collectGarbage(): Promise<void> {
  // A finished write's request holds its buffers (views of the input) until the event loop turns:
  // collected before that, ViT-B/16's 346 MB input stayed alive through the smoke run (0.83 GB peak).
  await new Promise((r) => setImmediate(r));
  setFlagsFromString("--expose-gc");
  (runInNewContext("gc") as () => void)();
  // V8 tags a code cache with its flags: left on, the flag would make the cache bin/prunec.js
  // writes after a run unusable at the next start.
  setFlagsFromString("--no-expose-gc");
}

/** Folder mode's first phase: read, compile and stage the output folder; returns nothing that holds the input's bytes. */
async function stageFolderCompiled(
  dir: string,
  outDir: string,
  specPath: string | undefined,
  opts: CompileOptions,
  io: Io,
  how: { target: "cpu" | "webgpu"; mode: ExternalDataMode; timings: Timings | undefined },
): Promise<{
  staged: StagedFolder;
  smoke: StagedForSmoke;
  report: CompileReport;
  modelName: string;
  plan: FolderPlan;
  onnx: string;
}> {
  const files = listFolder(dir);
  const onnx = chooseOnnx(dir, files, opts.onnx);
  checkOutDir(dir, outDir); // fail fast
  const modelPath = join(dir, onnx);
  const modelFile = readInput(modelPath, MODEL);
  probeInput(modelFile.bytes);
  const spec = await readSpecArg(specPath, opts.expr, io);
  const result = compileSpec(modelFile.bytes, modelPath, spec, opts, how.target, how.timings);
  const plan = planFolder(
    dir,
    outDir,
    files,
    onnx,
    externalRefs(modelFile.bytes, modelPath).map((r) => r.location),
  );
  const inputs = [modelFile, ...(spec.file ? [spec.file] : []), ...weightInputs(modelFile.bytes, modelPath)];
  const staged = await timedWrite(how.timings, () =>
    stageFolder(plan, result.parts, modelFile.bytes, how.mode, inputs),
  );
  return {
    staged,
    smoke: stagedForSmoke(staged.model, result.graph, modelPath),
    report: result.report,
    modelName: modelPath,
    plan,
    onnx,
  };
}

/**
 * Folder mode (src/cli/folder.ts): DIR is a transformers.js model folder; OUTDIR gets its files
 * with one ONNX file compiled and that file's dtype variants left out.
 */
async function runCompileFolder(
  dir: string,
  specPath: string | undefined,
  opts: CompileOptions,
  io: Io,
): Promise<void> {
  const { target, mode } = compileModes(opts);
  if (opts.output === undefined)
    throw new PrunecError("io", `${dir} is a model folder: name the output folder with -o OUTDIR`);
  if (opts.output === DASH)
    throw new PrunecError("usage", `${dir} is a model folder, compiled to a folder: -o - (stdout) cannot hold it`);
  const outDir = resolve(opts.output);
  const timings: Timings | undefined = opts.timings ? [] : undefined;
  // Two phases, as for a file (compileToFile): staged with nothing of the input kept, then smoke-run.
  const s = await stageFolderCompiled(dir, outDir, specPath, opts, io, { target, mode, timings });
  const { smoke, placed } = await smokeThenCommit(s, opts, timings);
  const { plan, onnx, report } = s;
  if (timings) io.err(timingLines(timings, terminalWidth(process.stderr)));
  const externalData = placementLines(placed);
  const leftOut = plan.leftOut.map(
    (f) =>
      `left out ${f}: a dtype variant of ${onnx} that was not pruned (transformers.js asked for its dtype fails to find it; compile it with --onnx ${f} into another folder)`,
  );
  if (opts.json) {
    io.out(
      JSON.stringify(
        {
          output: outDir,
          folder: { input: dir, compiled: onnx, copied: plan.copy, leftOut: plan.leftOut },
          ...compileJson(report, smoke, externalData),
        },
        null,
        2,
      ),
    );
    return;
  }
  io.out(
    wrapText(
      [
        `wrote ${outDir} (${onnx} compiled; ${plan.copy.length} other file${plan.copy.length === 1 ? "" : "s"} of ${dir} copied)`,
        ...summaryLines(report, smoke, externalData),
        ...leftOut.map((l) => `  ${l}`),
      ].join("\n"),
      io.width,
    ),
  );
}

function placementLines(placed: readonly Placement[]): { file: string; action: string }[] {
  return placed.map((p) => ({
    file: p.target,
    action: p.action === "present" ? "already there" : p.action === "link" ? "hard-linked" : "copied",
  }));
}

function compileJson(
  report: CompileReport,
  smoke: SmokeReport | undefined,
  externalData: readonly { file: string; action: string }[],
): object {
  return {
    ...report,
    smoke: smoke ?? { status: "skipped", reason: "--no-verify" },
    ...(externalData.length ? { externalData } : {}),
  };
}

/** The compile summary after the `wrote …` line, indented. */
function summaryLines(
  report: CompileReport,
  smoke: SmokeReport | undefined,
  externalData: readonly { file: string; action: string }[],
): string[] {
  // Stream, KV-cache and head stages, in the spec's order.
  const stages = [
    ...report.stages.map((s) => ({
      stage: s.stage,
      text: `after layer ${s.layer} by ${s.criterion}, ${s.tokensIn} → ${s.tokensOut} tokens, ${s.lowering} lowering${s.loweringNote ? ` (not GPU-resident for --target webgpu: ${s.loweringNote})` : ""}`,
    })),
    ...report.kvStages.map((k) => ({
      stage: k.stage,
      text: `${k.when === "prefill" ? "" : "during decode "}${k.amount} by ${k.criterion} in layers ${k.layers.join(", ")} (each KV head, ${k.when === "prefill" ? "at prefill" : "at every call"})`,
    })),
    ...report.headStages.map((h) => ({
      stage: h.stage,
      text: `after layer ${h.layer} ${h.amount} by ${h.criterion}, ${h.headsIn} → ${h.headsOut} heads per example in layers ${h.layer + 1}..${h.until}`,
    })),
  ]
    .sort((a, b) => a.stage - b.stage)
    .map((s) => `stage ${s.stage}: ${s.text}`);
  const weights = externalData.map((w) => `external data ${w.file}: ${w.action}`);
  const verified = [verifiedLine(report), smoke ? formatSmoke(smoke) : "onnxruntime smoke run skipped (--no-verify)"];
  return [
    ...stages.map((s) => `  ${s}`),
    `  ${report.addedNodes.length} nodes added${report.foldedNodes ? `; ${report.foldedNodes} nodes of shape arithmetic below the stages folded into constants` : ""}`,
    ...perTokenLines(report),
    ...weights.map((w) => `  ${w}`),
    ...verified.map((v) => `  ${v}`),
  ];
}

/** Graph outputs with a row per token that the schedule shrank: the model's interface changed there. */
export function perTokenLines(report: CompileReport): string[] {
  return report.perTokenOutputs.map(
    (o) =>
      `  note: output '${o.output}' has one row per token on axis ${o.axis}: ${o.denseRows} → ${o.rows} rows (stage${o.stages.length > 1 ? "s" : ""} ${o.stages.join(", ")}); each row's token position is in ${o.positions.join(" then ")} (compile with --expose-indices)`,
  );
}

/** What compile's own verification confirmed (src/verify). */
function verifiedLine(report: CompileReport): string {
  const v = report.verification;
  const exact = v.stages.filter((s) => s.agreement === "shape").length;
  const rank = v.stages.filter((s) => s.agreement === "rank").length;
  const parts = [
    `${exact} stage shape${exact === 1 ? "" : "s"} confirmed`,
    ...(rank ? [`${rank} symbolic (rank and static sizes)`] : []),
    ...(v.stages.length - exact - rank ? [`${v.stages.length - exact - rank} not inferred`] : []),
  ];
  return `verified: graph structure (${v.nodes} nodes), ${parts.join(", ")}`;
}

async function runCheck(
  args: string[],
  opts: { json?: boolean; kvState?: boolean; expr?: string },
  io: Io,
): Promise<number> {
  // `check SPEC [MODEL]`, or `check -e TEXT [MODEL]`.
  if (args.length > (opts.expr === undefined ? 2 : 1))
    throw new PrunecError(
      "usage",
      `check takes SPEC [MODEL], or -e TEXT [MODEL]; too many arguments: ${args.join(" ")}`,
    );
  const [specPath, modelPath] = opts.expr === undefined ? [args[0], args[1]] : [undefined, args[0]];
  oneStdin([
    { arg: specPath, what: "the spec" },
    { arg: modelPath, what: "the model" },
  ]);
  const spec = await readSpecArg(specPath, opts.expr, io);
  const modelFile = modelPath !== undefined ? await readArg(modelPath, MODEL, io) : undefined;
  const model = modelFile ? { bytes: modelFile.bytes, name: modelFile.path } : undefined;
  const r = checkSpec(spec.text, spec.name, model, opts.kvState ? { kvState: true } : {});
  // A model that fails verification is a prunec bug, not a spec problem: compile's exit code.
  const code = r.ok ? 0 : r.refusal?.kind === "verify" ? r.refusal.exitCode : 1;
  if (opts.json) {
    const failure = r.ok
      ? undefined
      : errorJson(new PrunecError(r.refusal?.kind ?? "spec", r.refusal?.message ?? r.summary, r.diagnostics), code);
    io.out(
      JSON.stringify(
        {
          ok: r.ok,
          summary: r.summary,
          stages: r.stages,
          diagnostics: diagnosticsJson(r.diagnostics),
          ...(r.refusal ? { refusal: r.refusal } : {}),
          ...failure,
        },
        null,
        2,
      ),
    );
  } else if (r.ok) {
    human(io, r.summary);
  } else {
    // Compile's refusal in compile's words: its diagnostics, or its one message.
    io.err(
      `${r.diagnostics.length ? formatDiagnostics(r.diagnostics, spec.text) : errorText(r.refusal!)}\n\n${r.summary}`,
    );
  }
  return code;
}

async function runFmt(specPath: string | undefined, opts: { expr?: string; json?: boolean }, io: Io): Promise<number> {
  const source = await readSpecArg(specPath, opts.expr, io);
  const spec = parseOrThrow(source.text, source.name);
  const text = printSpec(spec);
  io.out(opts.json ? JSON.stringify({ file: source.name, formatted: text }, null, 2) : text);
  return 0;
}

/** The preprocessing flags `eval` (on an image folder) and `pack` take. */
function withPreprocessFlags(c: Command): Command {
  return c
    .option(
      "--size <HxW>",
      "image size fed to the model (default: the model's input size, or its preprocessor config's)",
    )
    .option(
      "--resize <how>",
      "fill (stretch to the size) or shortest-edge:N (scale, keep the aspect ratio, centre crop)",
    )
    .option("--kernel <name>", "resize kernel: nearest, linear, cubic or lanczos3 (default: the config's, else linear)")
    .option("--mean <c1,c2,c3>", "per-channel mean: the input is (pixel/255 - mean)/std")
    .option("--std <c1,c2,c3>", "per-channel std")
    .option("--preprocessor <file>", "a transformers preprocessor_config.json (default: the one beside the model)");
}

async function runPack(
  folder: string,
  opts: { model: string; output: string; json?: boolean } & PreprocessFlags,
  io: Io,
): Promise<void> {
  if (opts.output === DASH) throw new PrunecError("usage", "pack writes a .prds file; give its path, not -o -");
  const model = readInput(opts.model, MODEL).bytes;
  if (!isFolder(folder)) throw new PrunecError("io", `${folder}: not a folder (pack reads <folder>/<class>/<image>)`);
  const data = await folderDataset(folder, model, opts.model, opts, false);
  await writeAtomic(
    opts.output,
    [encodeDataset(data)],
    [inputRef(opts.model)].filter((x) => x !== undefined),
  );
  const h = data.header;
  const summary = {
    output: opts.output,
    n: h.n,
    classes: h.labels ?? [],
    shape: [h.channels, h.height, h.width],
    ...(h.mean ? { mean: h.mean, std: h.std } : {}),
  };
  if (opts.json) {
    io.out(JSON.stringify(summary, null, 2));
    return;
  }
  io.err(
    `wrote ${opts.output}: ${h.n} images of ${h.classes} classes (${(h.labels ?? []).join(", ")}), [${h.channels}, ${h.height}, ${h.width}]${h.mean ? `, mean ${h.mean.join(",")} std ${h.std?.join(",")}` : ""}`,
  );
}

function positiveInt(value: string, what: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new PrunecError("io", `${what} must be a positive integer, got '${value}'`);
  return n;
}

async function runEval(
  modelArg: string,
  opts: { data: string; ep: string; batch: string; json?: boolean } & PreprocessFlags,
  io: Io,
): Promise<void> {
  if (opts.ep !== "cpu" && opts.ep !== "wasm")
    throw new PrunecError("io", `--ep must be cpu or wasm, got '${opts.ep}'`);
  const ep = opts.ep;
  const batch = positiveInt(opts.batch, "--batch");
  oneStdin([
    { arg: modelArg, what: "the model" },
    { arg: opts.data, what: "--data" },
  ]);
  const modelFile = await readArg(modelArg, MODEL, io);
  const model = modelFile.bytes;
  const modelPath = modelFile.path;
  const { data, dataName } = await dataArg(opts.data, model, modelPath, opts, opts.json === true, io);
  const bar = await progress("eval", opts.json === true, "examples");
  const total = data.header.n;
  bar.tick(0, total); // shown from the start, at 0
  let r: EvalResult;
  try {
    r = await evaluate(model, modelPath, data, {
      ep,
      batch,
      onProgress: (done) => bar.tick(done, total),
      modelPath,
      command: "eval",
      dataName,
    });
  } finally {
    bar.stop();
  }
  const seg = r.segmentation;
  if (seg) {
    const names = data.header.labels ?? seg.iou.map((_, c) => String(c));
    if (opts.json) {
      io.out(
        JSON.stringify(
          {
            miou: seg.miou,
            iou: seg.iou,
            intersection: seg.intersection,
            union: seg.union,
            patchAccuracy: seg.patchAccuracy,
            patchCorrect: seg.patchCorrect,
            patchTotal: seg.patchTotal,
            n: r.n,
            patches: seg.patches,
            classes: names,
            ep: r.ep,
            tokensPerLayer: r.tokensPerLayer,
          },
          null,
          2,
        ),
      );
      return;
    }
    const pct = (v: number) => `${(100 * v).toFixed(2)}%`;
    const lines = [
      `${modelPath}: mIoU ${pct(seg.miou)} over ${seg.patchTotal} patches (${r.n} examples x ${seg.patches}) on ${dataName}, ${r.ep}`,
      `  IoU: ${seg.iou
        .map((v, c) => `${names[c]} ${v === null ? "n/a" : pct(v)} (${seg.intersection[c]}/${seg.union[c]})`)
        .join(", ")}`,
      `  patch accuracy ${pct(seg.patchAccuracy)} (${seg.patchCorrect}/${seg.patchTotal})`,
    ];
    if (r.tokensPerLayer) lines.push(`  tokens per layer: ${r.tokensPerLayer.join(" ")}`);
    human(io, lines.join("\n"));
    return;
  }
  if (opts.json) {
    io.out(
      JSON.stringify(
        { accuracy: r.accuracy, n: r.n, correct: r.correct, ep: r.ep, tokensPerLayer: r.tokensPerLayer },
        null,
        2,
      ),
    );
    return;
  }
  const lines = [
    `${modelPath}: top-1 accuracy ${(100 * r.accuracy).toFixed(2)}% (${r.correct}/${r.n}) on ${dataName}, ${r.ep}`,
  ];
  if (r.tokensPerLayer) lines.push(`  tokens per layer: ${r.tokensPerLayer.join(" ")}`);
  human(io, lines.join("\n"));
}

async function runBench(
  modelPath: string,
  specPaths: string[],
  opts: { batch: string; runs: string; json?: boolean; expr?: string[]; threads?: string },
  io: Io,
): Promise<void> {
  const exprs = opts.expr ?? [];
  if (!specPaths.length && !exprs.length)
    throw new PrunecError("usage", "missing the specs: give .prune files, '-' (stdin) or -e TEXT");
  oneStdin([{ arg: modelPath, what: "the model" }, ...specPaths.map((p) => ({ arg: p, what: "a spec" }))]);
  const modelFile = await readArg(modelPath, MODEL, io);
  const specs: { name: string; text: string }[] = [];
  for (const p of specPaths) specs.push(await readSpecArg(p, undefined, io));
  // Inline specs: `<inline>`, or `<inline 1>`, `<inline 2>`... when there are several.
  exprs.forEach((text, i) => specs.push({ name: exprs.length > 1 ? `<inline ${i + 1}>` : INLINE_NAME, text }));
  const r = await benchmark(modelFile.bytes, modelFile.path, specs, {
    batch: positiveInt(opts.batch, "--batch"),
    runs: positiveInt(opts.runs, "--runs"),
    ...(opts.threads !== undefined ? { threads: positiveInt(opts.threads, "--threads") } : {}),
    modelPath: modelFile.path,
    command: "bench",
  });
  io.out(opts.json ? JSON.stringify(r, null, 2) : wrapText(formatBench(r, { width: io.width }), io.width));
}

async function runReport(
  modelPath: string,
  specPaths: readonly string[],
  opts: { output: string; data?: string; examples: string; expr?: string; json?: boolean },
  io: Io,
): Promise<void> {
  if (opts.output === DASH)
    throw new PrunecError("usage", "report writes a folder of files, so -o - (stdout) cannot hold it; give a folder");
  oneStdin([
    { arg: modelPath, what: "the model" },
    ...specPaths.map((p) => ({ arg: p, what: "a spec" })),
    { arg: opts.data, what: "--data" },
  ]);
  const modelFile = await readArg(modelPath, MODEL, io);
  const model = modelFile.bytes;
  const modelName = modelFile.path;
  const specs = await reportSpecs(specPaths, opts.expr, io);
  const loaded = opts.data !== undefined ? await dataArg(opts.data, model, modelName, {}, false, io) : undefined;
  const data = loaded?.data;
  const dataFile = loaded?.file;
  const examples = positiveInt(opts.examples, "--examples");
  if (data?.patches !== undefined)
    throw new PrunecError(
      "apply",
      `${dataFile!.path}: report's overlays show one label per example; this set has per-patch labels (header field 'targets' is "patches")`,
    );
  if (data) {
    // Overlays run the model: check the weights and the runtime before the report folder is written.
    checkWeightFiles(model, modelName);
    checkDatasetFitsModel(data, model, dataFile!.path, modelName);
    await loadOrtNode("report");
  }
  const r = await renderReport(model, modelName, specs, data, examples, { modelPath: modelName, command: "report" });
  const inputs = [
    modelFile,
    ...specs.flatMap((s) => (s.input ? [s.input] : [])),
    ...(dataFile ? [dataFile] : []),
    ...weightInputs(model, modelName),
  ];
  const files = await saveReport(opts.output, r.files, inputs);
  io.out(
    opts.json
      ? JSON.stringify({ output: resolve(opts.output), files }, null, 2)
      : [`wrote ${files.length} files to ${opts.output}`, ...files.map((f) => `  ${f}`)].join("\n"),
  );
}

async function runInspect(modelPath: string, opts: { json?: boolean; explain?: boolean }, io: Io): Promise<void> {
  const model = await readArg(modelPath, MODEL, io);
  const report = inspectModel(model.bytes, model.path, { explain: opts.explain ?? false });
  io.out(opts.json ? JSON.stringify(report, null, 2) : wrapText(formatInspect(report, { width: io.width }), io.width));
}

/** Options of the default command that take a value: what follows them is not the command's name. */
const VALUE_OPTIONS = new Set(["-o", "--output", "-e", "--expr", "--target", "--external-data"]);

/** The first argument that is not an option (or an option's value), if any. */
function firstPositional(argv: readonly string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") return argv[i + 1];
    if (a === DASH || !a.startsWith("-")) return a;
    if (VALUE_OPTIONS.has(a)) i++;
  }
  return undefined;
}

/**
 * `prunec inpsect m.onnx` is a typo, not a model named 'inpsect': a first argument that is no
 * command and no existing file, but close to a command's name, is refused (exit 1) with the name.
 * An existing file of that name stays a model path.
 */
function checkCommandName(argv: readonly string[], names: readonly string[]): void {
  const word = firstPositional(argv);
  if (word === undefined || word === DASH || names.includes(word) || existsSync(word)) return;
  const near = closest(word, names);
  if (near !== undefined) throw new PrunecError("usage", `unknown command '${word}' (did you mean '${near}'?)`);
}

/** `--json` among the options (before a `--`). */
const wantsJson = (argv: readonly string[]) => {
  const end = argv.indexOf("--");
  return (end < 0 ? argv : argv.slice(0, end)).includes("--json");
};

const EXPR_HELP = "the spec's text inline (instead of a spec file; named <inline> in messages)";

export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
  const session: Session = { json: wantsJson(argv), stdoutIsData: false };
  const program = new Command();
  program
    .name("prunec")
    .usage("MODEL SPEC [options]      (compile, the default command)\n       prunec <command> [options]")
    .description(
      "Compile token-pruning schedules (.prune specs) into ONNX transformer models.\n'-' as a file is standard input (or, for -o, standard output).",
    )
    .version(VERSION, "-v, --version")
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s), outputError: () => {} })
    .showHelpAfterError(false);

  program
    .command("compile", { isDefault: true })
    .description(
      "prune MODEL as SPEC says and write the result (default command); MODEL may be a transformers.js model folder (docs/transformers-js.md)",
    )
    .argument(
      "<model>",
      "ONNX model file, - for stdin (then -o is required), or a transformers.js model folder (config.json, onnx/*.onnx, …)",
    )
    .argument("[spec]", ".prune spec file, or - for stdin (or -e TEXT)")
    .option("-e, --expr <text>", EXPR_HELP)
    .option(
      "-o, --output <file>",
      "output model (default: MODEL.pruned.onnx beside the input); - for stdout; for a model folder, the output folder (new or empty)",
    )
    .option(
      "--onnx <file>",
      "in a model folder, the ONNX file to compile, relative to it (default: onnx/model.onnx, else onnx/vision_encoder.onnx)",
    )
    .option("--expose-indices", "add graph outputs prunec.stageN.indices with the kept token positions")
    .option(
      "--kv-state",
      "KV-cache stages carry each evicted layer's slot validity (past_key_values.L.prunec_valid -> present.L.prunec_valid), so each example of a padded batch keeps its own count; a per-example stream stage on a cached decoder carries its padding's (past_key_values.stageN.prunec_valid), so decode steps keep it masked (required before linear-attention layers); the host feeds an empty one at the first call",
    )
    .option(
      "--target <ep>",
      "execution provider the model is for: cpu (any provider) or webgpu (selection kept GPU-resident)",
      "cpu",
    )
    .option(
      "--external-data <mode>",
      "weight files of a model with external data, when -o is in another folder: link (hard link beside the output, copy if linking fails), copy, or refuse (they must already be there)",
      "link",
    )
    .option(
      "--no-verify",
      "skip the onnxruntime smoke run of the compiled model (batch 1 and 2 on synthetic inputs) before writing it",
    )
    .option("--json", "print the compile report (or the error) as JSON")
    .option("--timings", "print each compile step's wall time (ms) to stderr")
    .action(async (model: string, spec: string | undefined, opts: CompileOptions) => {
      await runCompile(model, spec, opts, io, session);
    });

  let exit = 0;
  program
    .command("check")
    .description("check SPEC (and, given MODEL, that it applies to MODEL); prints the resolved schedule")
    .usage("[options] SPEC [MODEL], or -e TEXT [MODEL]")
    .argument("[spec]", ".prune spec file, or - for stdin")
    .argument("[model]", "ONNX model to check the spec against")
    .option("-e, --expr <text>", EXPR_HELP)
    .option("--json", "print the result and diagnostics as JSON")
    .option("--kv-state", "check as compile --kv-state would (per-example stages before linear attention need it)")
    .action(
      async (spec: string | undefined, model: string | undefined, opts: { json?: boolean; kvState?: boolean }) => {
        exit = await runCheck(
          [spec, model].filter((a): a is string => a !== undefined),
          opts,
          io,
        );
      },
    );

  program
    .command("fmt")
    .description("print SPEC in canonical form")
    .argument("[spec]", ".prune spec file, or - for stdin (or -e TEXT)")
    .option("-e, --expr <text>", EXPR_HELP)
    .option("--json", "print {file, formatted} as JSON")
    .action(async (spec: string | undefined, opts: { expr?: string; json?: boolean }) => {
      exit = await runFmt(spec, opts, io);
    });

  program
    .command("eval")
    .description(
      "top-1 accuracy of MODEL on a labelled .prds set, or mIoU, per-class IoU and patch accuracy on a set with per-patch labels (and the tokens per layer of a pruned model)",
    )
    .argument("<model>", "ONNX model file, or - for stdin")
    .requiredOption(
      "--data <path>",
      "labelled test set: a .prds file, - for stdin, or a folder with one subfolder of PNG/JPEG images per class",
    )
    .option("--ep <provider>", "execution provider: cpu (onnxruntime-node) or wasm (onnxruntime-web)", "cpu")
    .option("--batch <n>", "batch size", "32")
    .option("--json", "print the result as JSON");
  withPreprocessFlags(program.commands.at(-1)!).action(
    async (model: string, opts: { data: string; ep: string; batch: string; json?: boolean } & PreprocessFlags) => {
      await runEval(model, opts, io);
    },
  );

  withPreprocessFlags(
    program
      .command("pack")
      .description(
        "pack a folder of images (one subfolder per class, PNG or JPEG) into a .prds data set preprocessed for MODEL",
      )
      .argument("<folder>", "image folder: <folder>/<class>/<image>.png")
      .requiredOption(
        "--model <file>",
        "the ONNX model the images are for (its input size; a preprocessor_config.json beside it)",
      )
      .requiredOption("-o, --output <file>", "the .prds file to write")
      .option("--json", "print what was written as JSON"),
  ).action(async (folder: string, opts: { model: string; output: string; json?: boolean } & PreprocessFlags) => {
    await runPack(folder, opts, io);
  });

  program
    .command("bench")
    .description(
      "median latency of MODEL dense and compiled with each SPEC on ORT CPU, measured vs FLOPs-ideal speedup",
    )
    .argument("<model>", "ONNX model file, or - for stdin")
    .argument("[specs...]", ".prune spec files (one may be - for stdin)")
    .option(
      "-e, --expr <text>",
      "a spec's text inline (repeatable; named <inline>, or <inline 1>, <inline 2>... when several)",
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option("--batch <n>", "batch size", "1")
    .option("--runs <n>", "timed runs per model", "30")
    .option("--threads <n>", "intra-op threads per session (default: onnxruntime's, one per core)")
    .option("--json", "print the result as JSON")
    .action(
      async (
        model: string,
        specs: string[],
        opts: { batch: string; runs: string; json?: boolean; expr?: string[]; threads?: string },
      ) => {
        await runBench(model, specs, opts, io);
      },
    );

  program
    .command("report")
    .description(
      "write a Markdown + JSON report to DIR: tokens and FLOPs per layer for each SPEC, and with --data the accuracy of each against its FLOPs and kept-patch overlays",
    )
    .argument("<model>", "ONNX model file, or - for stdin")
    .argument("[specs...]", ".prune spec files (several: compared in one report), or - for stdin (or -e TEXT)")
    .option("-e, --expr <text>", EXPR_HELP)
    .requiredOption("-o, --output <dir>", "output folder")
    .option("--data <path>", "labelled set (.prds, or an image folder) for accuracy and kept-patch overlays")
    .option("--examples <n>", "how many examples to draw", "4")
    .option("--json", "print {output, files} as JSON")
    .action(
      async (
        model: string,
        specs: string[],
        opts: { output: string; data?: string; examples: string; expr?: string; json?: boolean },
      ) => {
        await runReport(model, specs, opts, io);
      },
    );

  program
    .command("inspect")
    .description("show the transformer layers, tokens and criteria prunec finds in MODEL")
    .argument("<model>", "ONNX model file, or - for stdin")
    .option("--json", "print the analysis as JSON")
    .option(
      "--explain",
      "also say, per layer, what prunec looked for and where matching stopped (JSON: the report's 'explanation' field)",
    )
    .action(async (model: string, opts: { json?: boolean; explain?: boolean }) => runInspect(model, opts, io));

  // Errors: one `prunec: error: ` line on stderr (located spec errors as `file:line:col: error:`
  // with the source line), or under --json one {"error": ...} object on stdout; the same exit code.
  const fail = (e: PrunecError): number => {
    if (!session.json) io.err(errorText(e));
    else (session.stdoutIsData ? io.err : io.out)(JSON.stringify(errorJson(e), null, 2));
    return e.exitCode;
  };
  try {
    if (argv.length === 0) {
      // Bare `prunec`: the help, as git and npm do, and exit 1 (nothing was done; a script whose
      // arguments came out empty must not pass).
      io.out(program.helpInformation());
      return 1;
    }
    // `-V` was the version flag before `-v`; it still works.
    const args = argv[0] === "-V" ? ["--version", ...argv.slice(1)] : argv;
    checkCommandName(args, [...program.commands.map((c) => c.name()), "help"]);
    await program.parseAsync(args, { from: "user" });
    return exit;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.exitCode === 0) return 0;
      return fail(new PrunecError("usage", e.message.replace(/^error: /, "")));
    }
    if (e instanceof PrunecError) return fail(e);
    const detail = e instanceof Error ? (e.stack ?? e.message) : String(e);
    if (!session.json) io.err(`${ERROR_PREFIX}internal error (a prunec bug: please report it): ${detail}`);
    else {
      const message = `internal error (a prunec bug: please report it): ${e instanceof Error ? e.message : String(e)}`;
      (session.stdoutIsData ? io.err : io.out)(
        JSON.stringify({ error: { code: 70, kind: "internal", message } }, null, 2),
      );
    }
    return 70;
  }
}
