/**
 * `prunec report MODEL SPEC... -o DIR`: what schedules do to a model, for people. Renders
 * report.md + report.json, chart.svg (tokens and FLOPs per layer, dense vs each; src/cli/charts.ts) and,
 * given a labelled set, budget.svg (accuracy against FLOPs) and PNGs of the kept patches; then writes them all
 * (atomically, never over an input or a non-regular file) once everything has been rendered.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { decodeModel } from "../onnx/io.js";
import { Graph } from "../ir/graph.js";
import { analyzeTransformer } from "../analysis/transformer.js";
import { layerCosts, layerFlops, outsideFlops } from "../analysis/flops.js";
import { compile, type CompileReport } from "../compile.js";
import { batchInput, type Dataset } from "../data/prds.js";
import { argmax, keptPatches, overlayRgba } from "../data/overlay.js";
import { openSession, type SessionOptions } from "./runtime.js";
import { evaluate } from "./evaluate.js";
import { budgetChartSvg, layerChartSvg, type LayerRow } from "./charts.js";
import { Staging, testWriteDelay, writeError } from "./atomic.js";
import { checkOutput, kindOf, statIfAny, type InputRef } from "./files.js";
import { PrunecError } from "../errors.js";

export interface ReportFile {
  name: string;
  bytes: Uint8Array;
}

export interface ReportResult {
  files: ReportFile[];
  json: ReportJson;
}

/** One schedule's part of the report. */
export interface ScheduleJson {
  /** The spec's file name, as the charts label it. */
  name: string;
  spec: string;
  stages: CompileReport["stages"];
  /** Graph outputs with a row per token that the schedule shrank (compile.ts PerTokenOutput). */
  perTokenOutputs: CompileReport["perTokenOutputs"];
  layers: LayerRow[];
  totalFlops: { dense: number; pruned: number; outsideLayers: number };
  idealSpeedup: number;
  /** Top-1 accuracy on the whole data set, when one was given. */
  accuracy?: number;
  examples: { index: number; label: number; dense: number; pruned: number; keptPatches: number[] }[];
}

export interface ReportJson {
  model: string;
  dense: { flops: number; accuracy?: number };
  schedules: ScheduleJson[];
}

const SCALE = 4;

/** The overlay of example `index` as a PNG (src/data/overlay.ts). */
async function overlayPng(d: Dataset, index: number, grid: number, kept: ReadonlySet<number>): Promise<Buffer> {
  // Imported on first use: a compile never draws, and the CLI loads only what its command needs.
  const { PNG } = await import("pngjs");
  const { width, height, data } = overlayRgba(d, index, grid, kept, SCALE);
  const png = new PNG({ width, height });
  png.data.set(data);
  return PNG.sync.write(png);
}

/** A schedule to report on: its spec text and the name the charts give it. */
export interface ReportSpec {
  name: string;
  text: string;
  /** How compile's messages name the spec: its path, or `<inline>`. */
  file: string;
}

/** One schedule compiled, its FLOPs per layer. */
function schedule(
  model: Uint8Array,
  modelName: string,
  spec: ReportSpec,
  costs: ReturnType<typeof layerCosts>,
  outside: number,
) {
  const compiled = compile(model, spec.text, { modelName, specName: spec.file, exposeIndices: true });
  const layers = compiled.report.tokensPerLayer.map((t, i) => {
    const c = costs[i]!;
    return {
      layer: t.layer,
      denseTokens: Number(t.dense),
      prunedTokens: Number(t.pruned),
      denseFlops: layerFlops(c, Number(t.dense)),
      prunedFlops: layerFlops(c, Number(t.pruned)),
    };
  });
  const dense = outside + layers.reduce((s, l) => s + l.denseFlops, 0);
  const pruned = outside + layers.reduce((s, l) => s + l.prunedFlops, 0);
  const json: ScheduleJson = {
    name: spec.name,
    spec: spec.text,
    stages: compiled.report.stages,
    perTokenOutputs: compiled.report.perTokenOutputs,
    layers,
    totalFlops: { dense, pruned, outsideLayers: outside },
    idealSpeedup: dense / pruned,
    examples: [],
  };
  return { compiled, json };
}

/** Every file of the report, in memory: nothing is written until all of it rendered. */
export async function renderReport(
  model: Uint8Array,
  modelName: string,
  specs: readonly ReportSpec[],
  data?: Dataset,
  examples = 4,
  session: Pick<SessionOptions, "modelPath" | "command"> = {},
): Promise<ReportResult> {
  const graph = new Graph(decodeModel(model, modelName).graph!);
  const info = analyzeTransformer(graph, modelName);
  const costs = layerCosts(graph, info);
  const outside = outsideFlops(graph, info);
  const schedules = specs.map((s) => schedule(model, modelName, s, costs, outside));
  const json: ReportJson = {
    model: modelName,
    dense: { flops: schedules[0]!.json.totalFlops.dense },
    schedules: schedules.map((s) => s.json),
  };
  const files: ReportFile[] = [];
  const write = (name: string, content: string | Buffer) =>
    files.push({ name, bytes: typeof content === "string" ? Buffer.from(content, "utf8") : content });
  write("chart.svg", await layerChartSvg(json.schedules));

  if (data) {
    const evalOptions = { ep: "cpu" as const, batch: 32, ...session };
    const count = Math.min(examples, data.header.n);
    const prefix = info.cls.prefixTokens;
    const grid = Math.round(Math.sqrt(Number(info.tokens) - prefix));
    const input = batchInput(data, 0, count);
    // One session per model for both its accuracy and its overlays.
    const denseS = await openSession(model, "cpu", session);
    try {
      json.dense.accuracy = (await evaluate(model, modelName, data, { ...evalOptions, opened: denseS })).accuracy;
      const inName = denseS.inputNames[0]!;
      const d = await denseS.run({ [inName]: input }, denseS.outputNames.slice(0, 1));
      const dl = Object.values(d)[0]!;
      const classes = dl.dims.at(-1)!;
      for (const [i, { compiled, json: sj }] of schedules.entries()) {
        const prunedS = await openSession(compiled.model, "cpu", session);
        try {
          sj.accuracy = (await evaluate(compiled.model, modelName, data, { ...evalOptions, opened: prunedS })).accuracy;
          const stageOuts = compiled.report.stages.map((_, k) => `prunec.stage${k}.indices`);
          const p = await prunedS.run({ [inName]: input }, [
            ...prunedS.outputNames.filter((o) => !o.startsWith("prunec.")).slice(0, 1),
            ...stageOuts,
          ]);
          const logitsName = Object.keys(p).find((k) => !k.startsWith("prunec."))!;
          for (let b = 0; b < count; b++) {
            const indices = stageOuts.map((n) => ({ data: p[n]!.data as BigInt64Array, dims: p[n]!.dims }));
            const kept = keptPatches(indices, Number(info.tokens), prefix, b);
            sj.examples.push({
              index: b,
              label: data.labels[b]!,
              dense: argmax((dl.data as Float32Array).subarray(b * classes, (b + 1) * classes)),
              pruned: argmax((p[logitsName]!.data as Float32Array).subarray(b * classes, (b + 1) * classes)),
              keptPatches: kept,
            });
            write(overlayName(schedules.length, i, b), await overlayPng(data, b, grid, new Set(kept)));
          }
        } finally {
          await prunedS.release();
        }
      }
    } finally {
      await denseS.release();
    }
    write(
      "budget.svg",
      await budgetChartSvg([
        { schedule: "dense", flops: json.dense.flops, accuracy: json.dense.accuracy },
        ...json.schedules.map((s) => ({ schedule: s.name, flops: s.totalFlops.pruned, accuracy: s.accuracy! })),
      ]),
    );
  }
  write("report.json", `${JSON.stringify(json, null, 2)}\n`);
  write("report.md", markdown(json));
  return { files, json };
}

/** `example-B.png` for one schedule; `sI-example-B.png` for schedule I of several. */
function overlayName(schedules: number, i: number, b: number): string {
  return schedules === 1 ? `example-${b}.png` : `s${i}-example-${b}.png`;
}

/**
 * Write the rendered files into `outDir` (created if missing), all staged under temp names before
 * any is renamed into place; on failure or interrupt the temp files and a folder this made are
 * removed. Exit 2 naming the path and the reason. Returns the paths written.
 */
export async function saveReport(
  outDir: string,
  files: readonly ReportFile[],
  inputs: readonly InputRef[],
): Promise<string[]> {
  const staging = new Staging();
  let current = outDir;
  try {
    const st = statIfAny(outDir);
    if (st && !st.isDirectory())
      throw new PrunecError("io", `${outDir}: cannot write (it is ${kindOf(st)}, not a directory)`);
    if (!st) {
      const made = mkdirSync(outDir, { recursive: true });
      if (made !== undefined) staging.track(made);
    }
    const paths = files.map((f) => join(outDir, f.name));
    for (const p of paths) checkOutput(p, inputs);
    const temps: string[] = [];
    for (const [i, f] of files.entries()) {
      current = paths[i]!;
      temps.push(await staging.writeTemp(current, [f.bytes]));
    }
    await testWriteDelay();
    for (const [i, p] of paths.entries()) {
      current = p;
      staging.renameInto(temps[i]!, p, inputs);
    }
    staging.commit();
    return paths;
  } catch (e) {
    staging.rollback();
    throw writeError(current, e);
  }
}

function markdown(r: ReportJson): string {
  const pct = (v: number | undefined) => (v === undefined ? "" : `${(100 * v).toFixed(2)}%`);
  const lines = [`# prunec report: ${r.model}`, ""];
  const several = r.schedules.length > 1;
  if (r.dense.accuracy !== undefined) {
    lines.push(
      "| schedule | FLOPs per example | FLOPs-ideal speedup | top-1 accuracy |",
      "|---|---|---|---|",
      `| dense | ${(r.dense.flops / 1e9).toFixed(4)} G | 1.00× | ${pct(r.dense.accuracy)} |`,
      ...r.schedules.map(
        (s) =>
          `| ${s.name} | ${(s.totalFlops.pruned / 1e9).toFixed(4)} G | ${s.idealSpeedup.toFixed(2)}× | ${pct(s.accuracy)} |`,
      ),
      "",
      "![accuracy against FLOPs](budget.svg)",
      "",
    );
  }
  lines.push("![tokens and FLOPs per layer](chart.svg)", "");
  for (const [i, s] of r.schedules.entries()) {
    lines.push(
      ...(several ? [`## ${s.name}`, ""] : []),
      "```prune",
      s.spec.trim(),
      "```",
      "",
      `FLOPs per example: dense ${(s.totalFlops.dense / 1e9).toFixed(3)} G, pruned ${(s.totalFlops.pruned / 1e9).toFixed(3)} G ` +
        `(outside the layers ${(s.totalFlops.outsideLayers / 1e9).toFixed(3)} G); FLOPs-ideal speedup **${s.idealSpeedup.toFixed(2)}×**.`,
      "",
      "| stage | layer | criterion | tokens in | tokens out |",
      "|---|---|---|---|---|",
      ...s.stages.map((x) => `| ${x.stage} | ${x.layer} | ${x.criterion} | ${x.tokensIn} | ${x.tokensOut} |`),
      "",
      ...s.perTokenOutputs.flatMap((o) => [
        `**Output \`${o.output}\` changes shape:** it has one row per token (axis ${o.axis}), ${o.denseRows} → ${o.rows} rows; row r is the token at position ${o.positions.map((p) => `\`${p}\``).join(" then ")} (composed in order).`,
        "",
      ]),
      "| layer | tokens dense | tokens pruned | GFLOPs dense | GFLOPs pruned |",
      "|---|---|---|---|---|",
      ...s.layers.map(
        (l) =>
          `| ${l.layer} | ${l.denseTokens} | ${l.prunedTokens} | ${(l.denseFlops / 1e9).toFixed(4)} | ${(l.prunedFlops / 1e9).toFixed(4)} |`,
      ),
      "",
    );
    if (s.examples.length) {
      lines.push(
        "Kept patches: dropped patches are faded and hatched in magenta; kept patches are edged in green.",
        "",
        "| example | label | dense prediction | pruned prediction | patches kept | image |",
        "|---|---|---|---|---|---|",
      );
      for (const e of s.examples) {
        const file = overlayName(r.schedules.length, i, e.index);
        lines.push(
          `| ${e.index} | ${e.label} | ${e.dense} | ${e.pruned} | ${e.keptPatches.length} | ![example ${e.index}](${file}) |`,
        );
      }
      lines.push("");
    }
  }
  if (r.dense.accuracy === undefined)
    lines.push(
      "(No sample set given: pass `--data SET.prds` or an image folder for accuracy and kept-patch overlays.)",
    );
  return `${lines.join("\n")}\n`;
}
