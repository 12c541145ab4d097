/**
 * Expected attention's rotary frequencies (passes/kv/rotary-frequencies.ts): θ recovered from a
 * model's constant cos/sin tables and proven against every row, or the table refused with where it
 * stops being cos/sin(p·θ). References: the tables are built here from known θ (HF's
 * inv_freq = base^(−2i/d)), in float64 rounded to float32 and from float32 angles as exporters do.
 */
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { GraphProtoSchema } from "../src/onnx/gen/onnx_pb.js";
import { floatTensor } from "../src/onnx/tensor.js";
import { Graph } from "../src/ir/graph.js";
import type { QueryRotary } from "../src/analysis/rotary.js";
import { rotaryFrequencies, rotaryTables } from "../passes/kv/rotary-frequencies.js";

const D = 16;
const HALF = D / 2;
const THETA = Array.from({ length: HALF }, (_, i) => 10000 ** ((-2 * i) / D));
const ROTARY: QueryRotary = {
  query: "q",
  layout: "tokens,heads·dims",
  cos: "cos",
  sin: "sin",
  form: "half",
  node: "rot",
};

/** Tables [rows, cols] from angle(p, i) (cols = HALF, or 2·HALF with the half repeated). */
function tables(rows: number, angle: (p: number, i: number) => number, form: "half" | "full" = "half"): Graph {
  const cols = form === "half" ? HALF : D;
  const cos: number[] = [];
  const sin: number[] = [];
  for (let p = 0; p < rows; p++)
    for (let c = 0; c < cols; c++) {
      cos.push(Math.cos(angle(p, c % HALF)));
      sin.push(Math.sin(angle(p, c % HALF)));
    }
  return new Graph(
    create(GraphProtoSchema, {
      initializer: [floatTensor("cos", cos, [rows, cols]), floatTensor("sin", sin, [rows, cols])],
    }),
  );
}

/** The tables' shape check, then the recovery: θ, or the first reason either gives. */
function recover(g: Graph, rotary: QueryRotary, headSize: number): { ok: number[] } | { why: string } {
  const tables = rotaryTables(g, rotary, headSize);
  return "why" in tables ? tables : rotaryFrequencies(g, rotary, tables.ok);
}
const recovered = (g: Graph, rotary = ROTARY, headSize = D): number[] => {
  const r = recover(g, rotary, headSize);
  if ("why" in r) throw new Error(r.why);
  return r.ok;
};
const refusal = (g: Graph, rotary = ROTARY, headSize = D): string => {
  const r = recover(g, rotary, headSize);
  return "why" in r ? r.why : "recovered";
};

describe("rotary frequencies from a model's cos/sin tables", () => {
  it("a float32 table of 128 rows (float64 angles): every θ_i within 1e-7 relative (float32 sin of a small angle)", () => {
    const got = recovered(tables(128, (p, i) => p * THETA[i]!));
    got.forEach((t, i) => expect(Math.abs(t - THETA[i]!) / THETA[i]!).toBeLessThan(1e-7));
  });

  it("a table of 32768 rows computed from float32 angles (an exporter's fp32 inv_freq · position): within 1e-6 relative", () => {
    const f32 = THETA.map(Math.fround);
    const got = recovered(tables(32768, (p, i) => Math.fround(p * f32[i]!)));
    got.forEach((t, i) => expect(Math.abs(t - THETA[i]!) / THETA[i]!).toBeLessThan(1e-6));
  });

  it("HF's full-width table (the half repeated) gives the same θ", () => {
    const got = recovered(
      tables(64, (p, i) => p * THETA[i]!, "full"),
      { ...ROTARY, form: "full" },
    );
    got.forEach((t, i) => expect(Math.abs(t - THETA[i]!) / THETA[i]!).toBeLessThan(1e-7));
  });

  it("refuses: scaled tables (YaRN's attention factor), angles not linear in p, partial rotary, halves that differ", () => {
    const scaled = tables(16, (p, i) => p * THETA[i]!);
    const cos = scaled.initializers.get("cos")!;
    const yarn = new Graph(
      create(GraphProtoSchema, {
        initializer: [
          floatTensor(
            "cos",
            Array.from(new Float32Array(cos.rawData.slice().buffer)).map((x) => x * 1.25),
            [16, HALF],
          ),
          scaled.initializers.get("sin")!,
        ],
      }),
    );
    expect(refusal(yarn)).toBe(
      "the rotary table 'cos''s row 0 is not cos/sin(0) = 1/0 (column 0: 1.25, 0): a scaled rotary",
    );
    // Dynamic NTK: the base grows past row 64, so rows 64.. are not p·θ of the first rows' θ.
    const ntk = tables(128, (p, i) => p * (p < 64 ? THETA[i]! : 20000 ** ((-2 * i) / D)));
    expect(refusal(ntk)).toMatch(
      /^the rotary table 'cos' is not cos\/sin\(p·θ\) at row \d+, column \d \(off by \d\.\d\de[-+]\d+\): not a linear rotary$/,
    );
    expect(
      refusal(
        tables(16, (p, i) => p * THETA[i]!),
        ROTARY,
        32,
      ),
    ).toBe(
      "'rot' rotates 16 of the head's 32 dimensions (partial rotary); kvpress's averaged rotation is defined over the whole head",
    );
    const halves = tables(16, (p, i) => p * THETA[i]!, "full");
    const c = halves.initializers.get("cos")!;
    const values = Array.from(new Float32Array(c.rawData.slice().buffer));
    values[5 * D + HALF + 2] = 0.5;
    const broken = new Graph(
      create(GraphProtoSchema, {
        initializer: [floatTensor("cos", values, [16, D]), halves.initializers.get("sin")!],
      }),
    );
    expect(refusal(broken, { ...ROTARY, form: "full" })).toBe(
      "the rotary table 'cos''s row 5 is not one half repeated (column 2 ≠ column 10)",
    );
  });
});
