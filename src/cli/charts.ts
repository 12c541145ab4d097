/**
 * The report's charts, drawn by Vega-Lite and rendered to SVG by Vega in Node (no browser, no
 * canvas: text widths are Vega's estimates). Both are optional peers loaded only by `report`.
 * Axes come from Vega's nice scales, starting at zero, with SI-prefixed numbers (12k, 1.5M, 4.2G),
 * so a model of any size gets readable ticks.
 */
import type { TopLevelSpec } from "vega-lite";
import { importPeer } from "./peers.js";
import { runtimeError } from "./runtime.js";

export interface LayerRow {
  layer: number;
  denseTokens: number;
  prunedTokens: number;
  denseFlops: number;
  prunedFlops: number;
}

export interface BudgetPoint {
  /** The schedule's name (its spec file, or "dense"). */
  schedule: string;
  /** FLOPs per example, the whole model. */
  flops: number;
  accuracy: number;
}

type VegaLite = typeof import("vega-lite");
type Vega = typeof import("vega");

async function libraries(): Promise<{ vl: VegaLite; vega: Vega }> {
  let vl: VegaLite;
  let vega: Vega;
  try {
    vl = await importPeer("vega-lite");
  } catch (e) {
    throw runtimeError("vega-lite", "report", e);
  }
  try {
    vega = await importPeer("vega");
  } catch (e) {
    throw runtimeError("vega", "report", e);
  }
  return { vl, vega };
}

/** A Vega-Lite spec as SVG text. */
async function render(spec: TopLevelSpec): Promise<string> {
  const { vl, vega } = await libraries();
  const compiled = vl.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

const DENSE = "dense";
const FONT = { font: "sans-serif", labelFontSize: 11, titleFontSize: 12 };

/**
 * Tokens and FLOPs per layer, dense against each schedule: one panel per measure, each with its own
 * y scale from zero; the dense model dashed.
 */
export function layerChartSvg(schedules: readonly { name: string; layers: readonly LayerRow[] }[]): Promise<string> {
  const first = schedules[0]?.layers ?? [];
  const rows = [
    ...first.flatMap((l) => [
      { layer: l.layer, schedule: DENSE, measure: "tokens per layer", value: l.denseTokens },
      { layer: l.layer, schedule: DENSE, measure: "FLOPs per layer (per example)", value: l.denseFlops },
    ]),
    ...schedules.flatMap((s) =>
      s.layers.flatMap((l) => [
        { layer: l.layer, schedule: s.name, measure: "tokens per layer", value: l.prunedTokens },
        { layer: l.layer, schedule: s.name, measure: "FLOPs per layer (per example)", value: l.prunedFlops },
      ]),
    ),
  ];
  const names = [DENSE, ...schedules.map((s) => s.name)];
  return render({
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    data: { values: rows },
    background: "white",
    config: { axis: FONT, legend: { ...FONT, orient: "top" }, header: { labelFontSize: 13, labelFontWeight: "bold" } },
    facet: { row: { field: "measure", type: "nominal", title: null, sort: ["tokens per layer"] } },
    resolve: { scale: { y: "independent" } },
    spec: {
      width: 520,
      height: 170,
      mark: { type: "line", point: true, strokeWidth: 2 },
      encoding: {
        x: { field: "layer", type: "ordinal", title: "layer", axis: { labelAngle: 0 } },
        y: {
          field: "value",
          type: "quantitative",
          title: null,
          scale: { zero: true, nice: true },
          axis: { format: "~s" },
        },
        color: { field: "schedule", type: "nominal", title: null, scale: { domain: names } },
        strokeDash: {
          condition: { test: `datum.schedule === '${DENSE}'`, value: [5, 4] },
          value: [1, 0],
        },
      },
    },
  });
}

/** Accuracy against whole-model FLOPs per example, one point per schedule (dense included), labelled. */
export function budgetChartSvg(points: readonly BudgetPoint[]): Promise<string> {
  return render({
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    data: { values: points },
    background: "white",
    width: 520,
    height: 260,
    config: { axis: FONT, legend: FONT },
    layer: [
      {
        mark: { type: "point", filled: true, size: 80 },
        encoding: {
          x: {
            field: "flops",
            type: "quantitative",
            title: "FLOPs per example",
            // Room past the largest value for its label.
            scale: { domain: [0, 1.12 * Math.max(1, ...points.map((p) => p.flops))], nice: true },
            axis: { format: "~s" },
          },
          y: {
            field: "accuracy",
            type: "quantitative",
            title: "top-1 accuracy",
            scale: { zero: false, nice: true, padding: 16 },
            axis: { format: ".1%" },
          },
          // Each point carries its name: no legend.
          color: { field: "schedule", type: "nominal", legend: null },
        },
      },
      {
        mark: { type: "text", align: "center", dy: -12, fontSize: 11 },
        encoding: {
          x: { field: "flops", type: "quantitative" },
          y: { field: "accuracy", type: "quantitative" },
          text: { field: "schedule" },
        },
      },
    ],
  });
}
