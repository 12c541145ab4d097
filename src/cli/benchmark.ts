/**
 * `prunec bench`: latency of the dense model and of each compiled spec on ORT CPU, measured side by
 * side in one process, next to the FLOPs-ideal speedup from the token counts. Medians and quartiles;
 * sessions alternate in blocks and each block's first run is dropped. Pool threads sleep when idle
 * instead of spinning (onnxruntime's default): an idle session's spinning threads stole the cores of
 * the one being timed, which cost the small ops of a pruned model most (ViT-Ti batch 1, two threads:
 * 18-20 ms with spinning, 12 ms without, and 12 ms alone in its process).
 */
import { renderTable } from "../table.js";
import { decodeModel } from "../onnx/io.js";
import { Graph } from "../ir/graph.js";
import { analyzeTransformer } from "../analysis/transformer.js";
import { layerCosts, outsideFlops, totalFlops } from "../analysis/flops.js";
import { compile } from "../compile.js";
import { openSession, type Session, type SessionOptions } from "./runtime.js";
import { PrunecError } from "../errors.js";
import { firstInput } from "../data/prds.js";

export interface BenchRow {
  /** The spec's name (its file), or null for the dense model. */
  spec: string | null;
  tokensPerLayer: number[];
  medianMs: number;
  q1Ms: number;
  q3Ms: number;
  /** Dense median / this median. */
  speedup: number;
  /** Dense FLOPs / this model's FLOPs. */
  idealSpeedup: number;
  /** speedup / idealSpeedup. */
  ratio: number;
  /**
   * The oracle: the same schedule with every stage a static slice of the same number of tokens (no
   * scores, no selection; passes/kinds/oracle.ts). Absent for the dense row and for schedules
   * whose stages a static slice cannot stand in for (counts known only at run time, masks, merges).
   */
  oracle?: {
    medianMs: number;
    /** The measured speed as a fraction of the oracle's, oracle ms / measured ms (1: choosing the tokens is free). */
    ofOracle: number;
    /** (dense median / oracle median) / idealSpeedup: what the runtime makes of the fewer FLOPs. */
    oracleVsIdeal: number;
  };
}

export interface BenchResult {
  model: string;
  batch: number;
  runs: number;
  /** Intra-op threads per session (`--threads`), or null for onnxruntime's default. */
  threads: number | null;
  rows: BenchRow[];
}

export const BLOCK = 5;

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  return s[lo]! + (s[Math.min(lo + 1, s.length - 1)]! - s[lo]!) * (pos - lo);
}

/** A deterministic input of the model's shape with the given batch. */
export function benchInput(
  bytes: Uint8Array,
  name: string,
  batch: number,
): { name: string; data: Float32Array; dims: number[] } {
  const inp = firstInput(bytes, name)!;
  const dims = (inp.tensor?.dims ?? []).map((d, i) => {
    if (i === 0) return batch;
    if (typeof d === "number") return d;
    throw new PrunecError(
      "apply",
      `${name}: input '${inp.name}' has a symbolic size at axis ${i}; bench needs static sizes besides the batch`,
    );
  });
  const n = dims.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = 0.5 + 0.5 * Math.sin(i * 0.37);
  return { name: inp.name, data, dims };
}

export async function benchmark(
  bytes: Uint8Array,
  modelName: string,
  specs: { name: string; text: string }[],
  options: { batch: number; runs: number; threads?: number } & Pick<SessionOptions, "modelPath" | "command">,
): Promise<BenchResult> {
  const graph = new Graph(decodeModel(bytes, modelName).graph!);
  const info = analyzeTransformer(graph, modelName);
  const costs = layerCosts(graph, info);
  const fixed = outsideFlops(graph, info);
  const flops = (tokens: number[]) => fixed + totalFlops(costs, tokens);
  const dense = info.layers.map(() => Number(info.tokens));
  const variants: { spec: string | null; model: Uint8Array; tokens: number[]; oracleOf?: number }[] = [
    { spec: null, model: bytes, tokens: dense },
  ];
  for (const spec of specs) {
    const r = compile(bytes, spec.text, { modelName, specName: spec.name });
    const tokens = r.report.tokensPerLayer.map((t) => Number(t.pruned));
    const row = variants.push({ spec: spec.name, model: r.model, tokens }) - 1;
    // The oracle of this schedule, measured in the same alternation (none when a stage cannot be a static slice).
    const oracle = oracleModel(bytes, spec, modelName);
    if (oracle) variants.push({ spec: null, model: oracle, tokens, oracleOf: row });
  }
  const input = benchInput(bytes, modelName, options.batch);
  const sessions: Session[] = [];
  try {
    // Compiled variants keep the input's external locations: they resolve beside the input too.
    for (const v of variants)
      sessions.push(
        await openSession(v.model, "cpu", {
          modelPath: options.modelPath,
          command: options.command,
          spinning: false,
          ...(options.threads !== undefined ? { threads: options.threads } : {}),
        }),
      );
    const feed = { [input.name]: { data: input.data, dims: input.dims } };
    for (const s of sessions) for (let i = 0; i < 3; i++) await s.run(feed);
    const times: number[][] = sessions.map(() => []);
    for (let b = 0; b < Math.ceil(options.runs / BLOCK); b++) {
      for (let k = 0; k < sessions.length; k++) {
        await sessions[k]!.run(feed);
        for (let i = 0; i < BLOCK; i++) {
          const t = performance.now();
          await sessions[k]!.run(feed);
          times[k]!.push(performance.now() - t);
        }
      }
    }
    const denseMedian = quantile(times[0]!, 0.5);
    const rows: BenchRow[] = [];
    for (const [k, v] of variants.entries()) {
      const medianMs = quantile(times[k]!, 0.5);
      const idealSpeedup = flops(dense) / flops(v.tokens);
      if (v.oracleOf !== undefined) {
        const of = rows[rows.length - 1]!;
        of.oracle = {
          medianMs,
          ofOracle: medianMs / of.medianMs,
          oracleVsIdeal: denseMedian / medianMs / idealSpeedup,
        };
        continue;
      }
      const speedup = denseMedian / medianMs;
      rows.push({
        spec: v.spec,
        tokensPerLayer: v.tokens,
        medianMs,
        q1Ms: quantile(times[k]!, 0.25),
        q3Ms: quantile(times[k]!, 0.75),
        speedup,
        idealSpeedup,
        ratio: speedup / idealSpeedup,
      });
    }
    return { model: modelName, batch: options.batch, runs: times[0]!.length, threads: options.threads ?? null, rows };
  } finally {
    for (const s of sessions) await s.release();
  }
}

/** The schedule with every stage a static slice (passes/kinds/oracle.ts), or undefined when one cannot be. */
function oracleModel(
  bytes: Uint8Array,
  spec: { name: string; text: string },
  modelName: string,
): Uint8Array | undefined {
  try {
    return compile(bytes, spec.text, { modelName, specName: spec.name, oracle: true }).model;
  } catch {
    return undefined;
  }
}

/** The result as a table (fitted to `width`: a long spec name is cut in the middle). */
export function formatBench(r: BenchResult, options: { width?: number } = {}): string {
  const rows = r.rows.map((row) => [
    row.spec ?? "dense",
    `${row.medianMs.toFixed(2)} [${row.q1Ms.toFixed(1)}–${row.q3Ms.toFixed(1)}]`,
    `${row.speedup.toFixed(2)}×`,
    // A count that differs per example has no one FLOPs figure.
    Number.isFinite(row.idealSpeedup) ? `${row.idealSpeedup.toFixed(2)}×` : "n/a",
    Number.isFinite(row.ratio) ? row.ratio.toFixed(2) : "n/a",
  ]);
  const threads = r.threads === null ? "default threads" : `${r.threads} thread${r.threads === 1 ? "" : "s"}`;
  const table = { width: options.width, separator: " | " };
  const oracles = r.rows.filter((row) => row.oracle);
  return [
    `${r.model}: ORT CPU, ${threads} (idle threads sleep, not spin), batch ${r.batch}, ${r.runs} runs per model (alternating blocks of ${BLOCK}), median [q1–q3]`,
    ...renderTable(["model", "latency ms", "speedup", "FLOPs-ideal", "ratio"], rows, { ...table, right: [2, 3, 4] }),
    ...(oracles.length
      ? [
          "oracle: each stage a static slice of as many tokens (no scores, no selection); of oracle = oracle ms / measured ms (1: choosing the tokens costs nothing); oracle/ideal = the oracle's speedup / FLOPs-ideal",
          ...renderTable(
            ["model", "oracle ms", "of oracle", "oracle/ideal"],
            oracles.map((row) => [
              row.spec ?? "dense",
              row.oracle!.medianMs.toFixed(2),
              row.oracle!.ofOracle.toFixed(2),
              row.oracle!.oracleVsIdeal.toFixed(2),
            ]),
            { ...table, right: [1, 2, 3] },
          ),
        ]
      : []),
  ].join("\n");
}
