/**
 * `prunec report MODEL SPEC -o DIR`: what a schedule does to a model, for people. Renders
 * report.md + report.json, chart.svg (tokens and FLOPs per layer, dense vs pruned) and, given a
 * labelled sample set, one PNG per example with the dropped patches dimmed; then writes them all
 * (atomically, never over an input or a non-regular file) once everything has been rendered.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { PNG } from "pngjs";
import { decodeModel } from "../onnx/io.js";
import { Graph } from "../ir/graph.js";
import { analyzeTransformer } from "../analysis/transformer.js";
import { layerCosts, layerFlops, outsideFlops } from "../analysis/flops.js";
import { compile, type CompileReport } from "../compile.js";
import { batchInput, type Dataset } from "../data/prds.js";
import { openSession, type SessionOptions } from "./runtime.js";
import { argmax } from "./evaluate.js";
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

export interface ReportJson {
  model: string;
  spec: string;
  stages: CompileReport["stages"];
  /** Graph outputs with a row per token that the schedule shrank (compile.ts PerTokenOutput). */
  perTokenOutputs: CompileReport["perTokenOutputs"];
  layers: { layer: number; denseTokens: number; prunedTokens: number; denseFlops: number; prunedFlops: number }[];
  totalFlops: { dense: number; pruned: number; outsideLayers: number };
  idealSpeedup: number;
  examples: { index: number; label: number; dense: number; pruned: number; keptPatches: number[] }[];
}

const SCALE = 4;

/** A two-panel line chart: tokens per layer and GFLOPs per layer, dense vs pruned. */
export function chartSvg(layers: ReportJson["layers"]): string {
  const W = 640;
  const H = 220;
  const pad = { l: 60, r: 20, t: 30, b: 40 };
  const panel = (
    title: string,
    dense: number[],
    pruned: number[],
    yFmt: (v: number) => string,
    offsetY: number,
  ): string => {
    const max = Math.max(...dense, ...pruned, 1);
    const x = (i: number) => pad.l + (i * (W - pad.l - pad.r)) / Math.max(1, dense.length - 1);
    const y = (v: number) => offsetY + pad.t + (1 - v / max) * (H - pad.t - pad.b);
    const path = (vs: number[]) => vs.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    const ticks = [0, 0.5, 1]
      .map(
        (f) =>
          `<text x="${pad.l - 6}" y="${(y(max * f) + 4).toFixed(1)}" text-anchor="end" font-size="11">${yFmt(max * f)}</text>`,
      )
      .join("");
    const xs = dense
      .map(
        (_, i) =>
          `<text x="${x(i).toFixed(1)}" y="${offsetY + H - pad.b + 16}" text-anchor="middle" font-size="11">${i}</text>`,
      )
      .join("");
    return [
      `<text x="${pad.l}" y="${offsetY + 18}" font-size="13" font-weight="bold">${title}</text>`,
      `<line x1="${pad.l}" y1="${offsetY + H - pad.b}" x2="${W - pad.r}" y2="${offsetY + H - pad.b}" stroke="#888"/>`,
      ticks,
      xs,
      `<path d="${path(dense)}" fill="none" stroke="#888" stroke-width="2" stroke-dasharray="5,4"/>`,
      `<path d="${path(pruned)}" fill="none" stroke="#1f77b4" stroke-width="2.5"/>`,
    ].join("\n");
  };
  const legend = `<g font-size="12"><line x1="${W - 190}" y1="14" x2="${W - 165}" y2="14" stroke="#888" stroke-width="2" stroke-dasharray="5,4"/><text x="${W - 160}" y="18">dense</text><line x1="${W - 110}" y1="14" x2="${W - 85}" y2="14" stroke="#1f77b4" stroke-width="2.5"/><text x="${W - 80}" y="18">pruned</text></g>`;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${2 * H + 20}" viewBox="0 0 ${W} ${2 * H + 20}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    legend,
    panel(
      "tokens per layer",
      layers.map((l) => l.denseTokens),
      layers.map((l) => l.prunedTokens),
      (v) => v.toFixed(0),
      0,
    ),
    panel(
      "GFLOPs per layer (per example)",
      layers.map((l) => l.denseFlops / 1e9),
      layers.map((l) => l.prunedFlops / 1e9),
      (v) => v.toFixed(3),
      H,
    ),
    `<text x="${W / 2}" y="${2 * H + 12}" text-anchor="middle" font-size="12">layer</text>`,
    `</svg>`,
  ].join("\n");
}

/** The image (first channel), upscaled, with the patches not in `kept` dimmed and kept ones outlined. */
export function overlayPng(d: Dataset, index: number, grid: number, kept: ReadonlySet<number>): Buffer {
  const { channels, height, width } = d.header;
  const png = new PNG({ width: width * SCALE, height: height * SCALE });
  const base = index * channels * height * width;
  const ph = height / grid;
  const pw = width / grid;
  for (let y = 0; y < height * SCALE; y++) {
    for (let x = 0; x < width * SCALE; x++) {
      const sy = Math.floor(y / SCALE);
      const sx = Math.floor(x / SCALE);
      const patch = Math.floor(sy / ph) * grid + Math.floor(sx / pw);
      const v = d.pixels[base + sy * width + sx]!;
      const on = kept.has(patch);
      const edge = on && (y % (ph * SCALE) === 0 || x % (pw * SCALE) === 0);
      const o = (y * width * SCALE + x) * 4;
      const g = on ? v : Math.round(v * 0.25);
      png.data[o] = edge ? 40 : g;
      png.data[o + 1] = edge ? 200 : g;
      png.data[o + 2] = edge ? 80 : on ? g : Math.min(255, g + 40);
      png.data[o + 3] = 255;
    }
  }
  return PNG.sync.write(png);
}

/** Every file of the report, in memory: nothing is written until all of it rendered. */
export async function renderReport(
  model: Uint8Array,
  modelName: string,
  spec: string,
  data?: Dataset,
  examples = 4,
  session: Pick<SessionOptions, "modelPath" | "command"> = {},
  specName?: string,
): Promise<ReportResult> {
  const graph = new Graph(decodeModel(model, modelName).graph!);
  const info = analyzeTransformer(graph, modelName);
  const costs = layerCosts(graph, info);
  const outside = outsideFlops(graph, info);
  const compiled = compile(model, spec, {
    modelName,
    ...(specName !== undefined ? { specName } : {}),
    exposeIndices: true,
  });
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
  const json: ReportJson = {
    model: modelName,
    spec,
    stages: compiled.report.stages,
    perTokenOutputs: compiled.report.perTokenOutputs,
    layers,
    totalFlops: { dense, pruned, outsideLayers: outside },
    idealSpeedup: dense / pruned,
    examples: [],
  };
  const files: ReportFile[] = [];
  const write = (name: string, content: string | Buffer) =>
    files.push({ name, bytes: typeof content === "string" ? Buffer.from(content, "utf8") : content });
  write("chart.svg", chartSvg(layers));

  if (data) {
    const count = Math.min(examples, data.header.n);
    const prefix = info.cls.prefixTokens;
    const grid = Math.round(Math.sqrt(Number(info.tokens) - prefix));
    const input = batchInput(data, 0, count);
    const denseS = await openSession(model, "cpu", session);
    const prunedS = await openSession(compiled.model, "cpu", session);
    try {
      const inName = denseS.inputNames[0]!;
      const d = await denseS.run({ [inName]: input }, denseS.outputNames.slice(0, 1));
      const stageOuts = compiled.report.stages.map((_, i) => `prunec.stage${i}.indices`);
      const p = await prunedS.run({ [inName]: input }, [
        ...prunedS.outputNames.filter((o) => !o.startsWith("prunec.")).slice(0, 1),
        ...stageOuts,
      ]);
      const logitsName = Object.keys(p).find((k) => !k.startsWith("prunec."))!;
      const dl = Object.values(d)[0]!;
      const classes = dl.dims.at(-1)!;
      for (let b = 0; b < count; b++) {
        // Compose the stages: each stage's indices number its own input tokens.
        let tokens: number[] = [...Array(Number(info.tokens)).keys()];
        for (const name of stageOuts) {
          const idx = p[name]!;
          const k = idx.dims.at(-1)!;
          tokens = Array.from((idx.data as BigInt64Array).subarray(b * k, (b + 1) * k), (v) => tokens[Number(v)]!);
        }
        const keptPatches = tokens.filter((t) => t >= prefix).map((t) => t - prefix);
        json.examples.push({
          index: b,
          label: data.labels[b]!,
          dense: argmax((dl.data as Float32Array).subarray(b * classes, (b + 1) * classes)),
          pruned: argmax((p[logitsName]!.data as Float32Array).subarray(b * classes, (b + 1) * classes)),
          keptPatches,
        });
        write(`example-${b}.png`, overlayPng(data, b, grid, new Set(keptPatches)));
      }
    } finally {
      await denseS.release();
      await prunedS.release();
    }
  }
  write("report.json", `${JSON.stringify(json, null, 2)}\n`);
  write("report.md", markdown(json));
  return { files, json };
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
  const lines = [
    `# prunec report: ${r.model}`,
    "",
    "```prune",
    r.spec.trim(),
    "```",
    "",
    `FLOPs per example: dense ${(r.totalFlops.dense / 1e9).toFixed(3)} G, pruned ${(r.totalFlops.pruned / 1e9).toFixed(3)} G ` +
      `(outside the layers ${(r.totalFlops.outsideLayers / 1e9).toFixed(3)} G); FLOPs-ideal speedup **${r.idealSpeedup.toFixed(2)}×**.`,
    "",
    "| stage | layer | criterion | tokens in | tokens out |",
    "|---|---|---|---|---|",
    ...r.stages.map((s) => `| ${s.stage} | ${s.layer} | ${s.criterion} | ${s.tokensIn} | ${s.tokensOut} |`),
    "",
    ...r.perTokenOutputs.flatMap((o) => [
      `**Output \`${o.output}\` changes shape:** it has one row per token (axis ${o.axis}), ${o.denseRows} → ${o.rows} rows; row r is the token at position ${o.positions.map((p) => `\`${p}\``).join(" then ")} (composed in order).`,
      "",
    ]),
    "![tokens and FLOPs per layer](chart.svg)",
    "",
    "| layer | tokens dense | tokens pruned | GFLOPs dense | GFLOPs pruned |",
    "|---|---|---|---|---|",
    ...r.layers.map(
      (l) =>
        `| ${l.layer} | ${l.denseTokens} | ${l.prunedTokens} | ${(l.denseFlops / 1e9).toFixed(4)} | ${(l.prunedFlops / 1e9).toFixed(4)} |`,
    ),
    "",
  ];
  if (r.examples.length) {
    lines.push("## Kept patches", "", "Dropped patches are dimmed; kept patches are outlined.", "");
    lines.push(
      "| example | label | dense prediction | pruned prediction | patches kept | image |",
      "|---|---|---|---|---|---|",
    );
    for (const e of r.examples)
      lines.push(
        `| ${e.index} | ${e.label} | ${e.dense} | ${e.pruned} | ${e.keptPatches.length} | ![example ${e.index}](example-${e.index}.png) |`,
      );
  } else {
    lines.push("(No sample set given: pass `--data SET.prds` for overlays of the kept patches.)");
  }
  return `${lines.join("\n")}\n`;
}
