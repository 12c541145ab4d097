/**
 * The command line: a thin shell over the library. Owns files, exit codes and messages; the core
 * never touches the file system. Inputs are regular files read up to their size (src/cli/files.ts);
 * output is written atomically (temp file + rename, src/cli/atomic.ts), never over an input or a
 * file that is not a regular file; on failure or interrupt nothing is written.
 */
import { Command, CommanderError } from "commander";
import { basename, dirname, join, resolve } from "node:path";
import { compile, parseOrThrow, type CompileReport } from "../compile.js";
import { checkSpec, diagnosticsJson } from "../check.js";
import { formatDiagnostics, printSpec } from "../../grammar/index.js";
import { SingleBar, Presets } from "cli-progress";
import { checkDatasetFitsModel, encodeDataset, parseDataset } from "../data/prds.js";
import type { PreprocessFlags } from "./preprocess.js";
import { evalDataset, folderDataset, isFolder } from "./data-input.js";
import { evaluate, type EvalResult } from "./evaluate.js";
import { benchmark, formatBench } from "./benchmark.js";
import { renderReport, saveReport } from "./report.js";
import { loadOrtNode } from "./runtime.js";
import {
  checkWeightFiles,
  externalRefs,
  planPlacements,
  type Placement,
  weightInputs,
  writeModelWithWeights,
  EXTERNAL_DATA_MODES,
  type ExternalDataMode,
} from "./weights.js";
import { checkOutput, inputRef, readInput, type InputFile } from "./files.js";
import { checkOutDir, chooseOnnx, isModelFolder, listFolder, planFolder, writeFolder } from "./folder.js";
import { writeAtomic } from "./atomic.js";
import { inspectModel, formatInspect } from "../inspect.js";
import { specFileText } from "./spec-file.js";
import { PrunecError, errorText } from "../errors.js";
import { smokeRun, formatSmoke, type SmokeReport } from "./smoke.js";
import { VERSION } from "../version.js";

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
}

const defaultIo: Io = {
  out: (t) => process.stdout.write(t.endsWith("\n") ? t : `${t}\n`),
  err: (t) => process.stderr.write(t.endsWith("\n") ? t : `${t}\n`),
};

/** The bytes of an input file (a regular file; exit 2 otherwise). */
const readBytes = (path: string, what: string): Uint8Array => readInput(path, what).bytes;

export function defaultOutput(modelPath: string): string {
  const name = basename(modelPath).replace(/\.onnx$/i, "");
  return join(dirname(modelPath), `${name}.pruned.onnx`);
}

export { writeAtomic } from "./atomic.js";

interface CompileOpts {
  output?: string;
  exposeIndices?: boolean;
  kvState?: boolean;
  json?: boolean;
  target?: string;
  externalData?: string;
  verify?: boolean;
  onnx?: string;
}

function compileModes(opts: CompileOpts): { target: "cpu" | "webgpu"; mode: ExternalDataMode } {
  if (opts.target !== undefined && opts.target !== "cpu" && opts.target !== "webgpu")
    throw new PrunecError("io", `--target must be cpu or webgpu, got '${opts.target}'`);
  const mode = (opts.externalData ?? "link") as ExternalDataMode;
  if (!EXTERNAL_DATA_MODES.includes(mode))
    throw new PrunecError("io", `--external-data must be link, copy or refuse, got '${opts.externalData}'`);
  return { target: opts.target ?? "cpu", mode };
}

/** Compile MODEL with SPEC and smoke-run it (exit 8 before anything is written when onnxruntime cannot run it). */
async function compileChecked(
  modelFile: InputFile,
  specFile: InputFile,
  modelPath: string,
  specPath: string,
  opts: CompileOpts,
  target: "cpu" | "webgpu",
): Promise<{ result: ReturnType<typeof compile>; smoke: SmokeReport | undefined }> {
  const specText = specFileText(specFile.bytes, specPath);
  const result = compile(modelFile.bytes, specText, {
    modelName: modelPath,
    specName: specPath,
    exposeIndices: opts.exposeIndices ?? false,
    kvState: opts.kvState ?? false,
    target,
    requireStages: true,
  });
  const { report } = result;
  // Before writing: a model onnxruntime cannot load or run is refused (exit 8), never written.
  const smoke: SmokeReport | undefined =
    opts.verify === false
      ? undefined
      : await smokeRun(result.model, { modelPath, stages: report.stages, verification: report.verification });
  return { result, smoke };
}

async function runCompile(modelPath: string, specPath: string, opts: CompileOpts, io: Io): Promise<void> {
  if (isModelFolder(modelPath)) return runCompileFolder(modelPath, specPath, opts, io);
  if (opts.onnx !== undefined)
    throw new PrunecError("io", `--onnx names the file to compile in a model folder, but ${modelPath} is not a folder`);
  const { target, mode } = compileModes(opts);
  const out = resolve(opts.output ?? defaultOutput(modelPath));
  const modelFile = readInput(modelPath, "an ONNX model");
  const specFile = readInput(specPath, "a .prune spec");
  const modelBytes = modelFile.bytes;
  checkOutput(out, [modelFile, specFile]); // fail fast; the weight files are known after compile
  const { result, smoke } = await compileChecked(modelFile, specFile, modelPath, specPath, opts, target);
  const { parts, report } = result;
  // Never over the model, the spec or a weight file, by identity (links and spellings included).
  const inputs = [modelFile, specFile, ...weightInputs(modelBytes, modelPath)];
  checkOutput(out, inputs);
  // External locations are relative to the model: an output in another folder gets the weight files beside it.
  const placed = await writeModelWithWeights(out, parts, planPlacements(modelBytes, modelPath, out, mode), inputs);
  const externalData = placementLines(placed);
  if (opts.json) {
    io.out(JSON.stringify({ output: out, ...compileJson(report, smoke, externalData) }, null, 2));
    return;
  }
  io.out([`wrote ${out}`, ...summaryLines(report, smoke, externalData)].join("\n"));
}

/**
 * Folder mode (src/cli/folder.ts): DIR is a transformers.js model folder; OUTDIR gets its files
 * with one ONNX file compiled and that file's dtype variants left out.
 */
async function runCompileFolder(dir: string, specPath: string, opts: CompileOpts, io: Io): Promise<void> {
  const { target, mode } = compileModes(opts);
  if (opts.output === undefined)
    throw new PrunecError("io", `${dir} is a model folder: name the output folder with -o OUTDIR`);
  const outDir = resolve(opts.output);
  const files = listFolder(dir);
  const onnx = chooseOnnx(dir, files, opts.onnx);
  checkOutDir(dir, outDir); // fail fast
  const modelPath = join(dir, onnx);
  const modelFile = readInput(modelPath, "an ONNX model");
  const specFile = readInput(specPath, "a .prune spec");
  const { result, smoke } = await compileChecked(modelFile, specFile, modelPath, specPath, opts, target);
  const { parts, report } = result;
  const plan = planFolder(
    dir,
    outDir,
    files,
    onnx,
    externalRefs(modelFile.bytes, modelPath).map((r) => r.location),
  );
  const inputs = [modelFile, specFile, ...weightInputs(modelFile.bytes, modelPath)];
  const placed = await writeFolder(plan, parts, modelFile.bytes, mode, inputs);
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
    [
      `wrote ${outDir} (${onnx} compiled; ${plan.copy.length} other file${plan.copy.length === 1 ? "" : "s"} of ${dir} copied)`,
      ...summaryLines(report, smoke, externalData),
      ...leftOut.map((l) => `  ${l}`),
    ].join("\n"),
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
    `  ${report.addedNodes.length} nodes added`,
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

function runCheck(
  specPath: string,
  modelPath: string | undefined,
  opts: { json?: boolean; kvState?: boolean },
  io: Io,
): number {
  const text = specFileText(readBytes(specPath, "a .prune spec"), specPath);
  const model = modelPath ? { bytes: readBytes(modelPath, "an ONNX model"), name: modelPath } : undefined;
  const r = checkSpec(text, specPath, model, opts.kvState ? { kvState: true } : {});
  if (opts.json) {
    io.out(
      JSON.stringify(
        {
          ok: r.ok,
          summary: r.summary,
          stages: r.stages,
          diagnostics: diagnosticsJson(r.diagnostics),
          ...(r.refusal ? { refusal: r.refusal } : {}),
        },
        null,
        2,
      ),
    );
  } else if (r.ok) {
    io.out(r.summary);
  } else {
    // Compile's refusal in compile's words: its diagnostics, or its one message.
    io.err(`${r.diagnostics.length ? formatDiagnostics(r.diagnostics, text) : errorText(r.refusal!)}\n\n${r.summary}`);
  }
  // A model that fails verification is a prunec bug, not a spec problem: compile's exit code.
  return r.ok ? 0 : r.refusal?.kind === "verify" ? r.refusal.exitCode : 1;
}

function runFmt(specPath: string, io: Io): number {
  const text = specFileText(readBytes(specPath, "a .prune spec"), specPath);
  const spec = parseOrThrow(text, specPath);
  io.out(printSpec(spec));
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
  opts: { model: string; output: string } & PreprocessFlags,
  io: Io,
): Promise<void> {
  const model = readBytes(opts.model, "an ONNX model");
  if (!isFolder(folder)) throw new PrunecError("io", `${folder}: not a folder (pack reads <folder>/<class>/<image>)`);
  const data = await folderDataset(folder, model, opts.model, opts, false);
  await writeAtomic(
    opts.output,
    [encodeDataset(data)],
    [inputRef(opts.model)].filter((x) => x !== undefined),
  );
  const h = data.header;
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
  modelPath: string,
  opts: { data: string; ep: string; batch: string; json?: boolean } & PreprocessFlags,
  io: Io,
): Promise<void> {
  if (opts.ep !== "cpu" && opts.ep !== "wasm")
    throw new PrunecError("io", `--ep must be cpu or wasm, got '${opts.ep}'`);
  const ep = opts.ep;
  const batch = positiveInt(opts.batch, "--batch");
  const model = readBytes(modelPath, "an ONNX model");
  const data = await evalDataset(opts.data, model, modelPath, opts, opts.json === true);
  const bar =
    process.stderr.isTTY && !opts.json
      ? new SingleBar(
          { format: "eval {bar} {value}/{total} examples", hideCursor: true, stream: process.stderr },
          Presets.shades_classic,
        )
      : undefined;
  bar?.start(data.header.n, 0);
  let r: EvalResult;
  try {
    r = await evaluate(model, modelPath, data, {
      ep,
      batch,
      onProgress: (done) => bar?.update(done),
      modelPath,
      command: "eval",
      dataName: opts.data,
    });
  } finally {
    bar?.stop();
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
      `${modelPath}: mIoU ${pct(seg.miou)} over ${seg.patchTotal} patches (${r.n} examples x ${seg.patches}) on ${opts.data}, ${r.ep}`,
      `  IoU: ${seg.iou
        .map((v, c) => `${names[c]} ${v === null ? "n/a" : pct(v)} (${seg.intersection[c]}/${seg.union[c]})`)
        .join(", ")}`,
      `  patch accuracy ${pct(seg.patchAccuracy)} (${seg.patchCorrect}/${seg.patchTotal})`,
    ];
    if (r.tokensPerLayer) lines.push(`  tokens per layer: ${r.tokensPerLayer.join(" ")}`);
    io.out(lines.join("\n"));
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
    `${modelPath}: top-1 accuracy ${(100 * r.accuracy).toFixed(2)}% (${r.correct}/${r.n}) on ${opts.data}, ${r.ep}`,
  ];
  if (r.tokensPerLayer) lines.push(`  tokens per layer: ${r.tokensPerLayer.join(" ")}`);
  io.out(lines.join("\n"));
}

async function runBench(
  modelPath: string,
  specPaths: string[],
  opts: { batch: string; runs: string; json?: boolean },
  io: Io,
): Promise<void> {
  const model = readBytes(modelPath, "an ONNX model");
  const specs = specPaths.map((p) => ({ name: p, text: specFileText(readBytes(p, "a .prune spec"), p) }));
  const r = await benchmark(model, modelPath, specs, {
    batch: positiveInt(opts.batch, "--batch"),
    runs: positiveInt(opts.runs, "--runs"),
    modelPath,
    command: "bench",
  });
  io.out(opts.json ? JSON.stringify(r, null, 2) : formatBench(r));
}

async function runReport(
  modelPath: string,
  specPaths: readonly string[],
  opts: { output: string; data?: string; examples: string },
  io: Io,
): Promise<void> {
  const modelFile = readInput(modelPath, "an ONNX model");
  const model = modelFile.bytes;
  const specFiles = specPaths.map((p) => readInput(p, "a .prune spec"));
  // Charts name each schedule by its file name (the path when two share a name).
  const names = specPaths.map((p) => basename(p));
  const specs = specFiles.map((f, i) => ({
    name: names.indexOf(names[i]!) === names.lastIndexOf(names[i]!) ? names[i]! : specPaths[i]!,
    text: specFileText(f.bytes, specPaths[i]!),
  }));
  // An image folder is read for the model (its preprocessing); a .prds file is checked against it below.
  const folder = opts.data !== undefined && isFolder(opts.data);
  const dataFile = opts.data && !folder ? readInput(opts.data, "a .prds data set") : undefined;
  const data = dataFile
    ? parseDataset(dataFile.bytes, dataFile.path)
    : folder
      ? await folderDataset(opts.data!, model, modelPath, {}, false)
      : undefined;
  const examples = positiveInt(opts.examples, "--examples");
  if (data?.patches !== undefined)
    throw new PrunecError(
      "apply",
      `${opts.data}: report's overlays show one label per example; this set has per-patch labels (header field 'targets' is "patches")`,
    );
  if (data) {
    // Overlays run the model: check the weights and the runtime before the report folder is written.
    checkWeightFiles(model, modelPath);
    checkDatasetFitsModel(data, model, opts.data!, modelPath);
    await loadOrtNode("report");
  }
  const r = await renderReport(model, modelPath, specs, data, examples, { modelPath, command: "report" });
  const inputs = [modelFile, ...specFiles, ...(dataFile ? [dataFile] : []), ...weightInputs(model, modelPath)];
  const files = await saveReport(opts.output, r.files, inputs);
  io.out([`wrote ${files.length} files to ${opts.output}`, ...files.map((f) => `  ${f}`)].join("\n"));
}

function runInspect(modelPath: string, opts: { json?: boolean; explain?: boolean }, io: Io): void {
  const report = inspectModel(readBytes(modelPath, "an ONNX model"), modelPath, { explain: opts.explain ?? false });
  io.out(opts.json ? JSON.stringify(report, null, 2) : formatInspect(report));
}

export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
  const program = new Command();
  program
    .name("prunec")
    .description("Compile token-pruning schedules (.prune specs) into ONNX transformer models.")
    .version(VERSION, "-V, --version")
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .showHelpAfterError(false);

  program
    .command("compile", { isDefault: true })
    .description(
      "prune MODEL as SPEC says and write the result (default command); MODEL may be a transformers.js model folder (docs/transformers-js.md)",
    )
    .argument("<model>", "ONNX model file, or a transformers.js model folder (config.json, onnx/*.onnx, …)")
    .argument("<spec>", ".prune spec file")
    .option(
      "-o, --output <file>",
      "output model (default: MODEL.pruned.onnx beside the input); for a model folder, the output folder (new or empty)",
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
    .option("--json", "print the compile report as JSON")
    .action(async (model: string, spec: string, opts: CompileOpts) => {
      await runCompile(model, spec, opts, io);
    });

  let exit = 0;
  program
    .command("check")
    .description("check SPEC (and, given MODEL, that it applies to MODEL); prints the resolved schedule")
    .argument("<spec>", ".prune spec file")
    .argument("[model]", "ONNX model to check the spec against")
    .option("--json", "print the result and diagnostics as JSON")
    .option("--kv-state", "check as compile --kv-state would (per-example stages before linear attention need it)")
    .action((spec: string, model: string | undefined, opts: { json?: boolean; kvState?: boolean }) => {
      exit = runCheck(spec, model, opts, io);
    });

  program
    .command("fmt")
    .description("print SPEC in canonical form")
    .argument("<spec>", ".prune spec file")
    .action((spec: string) => {
      exit = runFmt(spec, io);
    });

  program
    .command("eval")
    .description(
      "top-1 accuracy of MODEL on a labelled .prds set, or mIoU, per-class IoU and patch accuracy on a set with per-patch labels (and the tokens per layer of a pruned model)",
    )
    .argument("<model>", "ONNX model file")
    .requiredOption(
      "--data <path>",
      "labelled test set: a .prds file, or a folder with one subfolder of PNG/JPEG images per class",
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
      .requiredOption("-o, --output <file>", "the .prds file to write"),
  ).action(async (folder: string, opts: { model: string; output: string } & PreprocessFlags) => {
    await runPack(folder, opts, io);
  });

  program
    .command("bench")
    .description(
      "median latency of MODEL dense and compiled with each SPEC on ORT CPU, measured vs FLOPs-ideal speedup",
    )
    .argument("<model>", "ONNX model file")
    .argument("<specs...>", ".prune spec files")
    .option("--batch <n>", "batch size", "1")
    .option("--runs <n>", "timed runs per model", "30")
    .option("--json", "print the result as JSON")
    .action(async (model: string, specs: string[], opts: { batch: string; runs: string; json?: boolean }) => {
      await runBench(model, specs, opts, io);
    });

  program
    .command("report")
    .description(
      "write a Markdown + JSON report to DIR: tokens and FLOPs per layer for each SPEC, and with --data the accuracy of each against its FLOPs and kept-patch overlays",
    )
    .argument("<model>", "ONNX model file")
    .argument("<specs...>", ".prune spec files (several: compared in one report)")
    .requiredOption("-o, --output <dir>", "output folder")
    .option("--data <path>", "labelled set (.prds, or an image folder) for accuracy and kept-patch overlays")
    .option("--examples <n>", "how many examples to draw", "4")
    .action(async (model: string, specs: string[], opts: { output: string; data?: string; examples: string }) => {
      await runReport(model, specs, opts, io);
    });

  program
    .command("inspect")
    .description("show the transformer layers, tokens and criteria prunec finds in MODEL")
    .argument("<model>", "ONNX model file")
    .option("--json", "print the analysis as JSON")
    .option(
      "--explain",
      "also say, per layer, what prunec looked for and where matching stopped (JSON: the report's 'explanation' field)",
    )
    .action((model: string, opts: { json?: boolean; explain?: boolean }) => runInspect(model, opts, io));

  try {
    await program.parseAsync(argv, { from: "user" });
    return exit;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 1;
    if (e instanceof PrunecError) {
      io.err(errorText(e));
      return e.exitCode;
    }
    io.err(`prunec: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    return 70;
  }
}
