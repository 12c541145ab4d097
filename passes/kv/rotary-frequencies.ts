/**
 * The rotary frequencies θ_i of a layer's constant cos/sin tables (row p = cos/sin(p·θ_i)), which
 * expected attention needs at positions past the table's end (kvpress computes HF's rotary at
 * N … N + n_future − 1, wherever the table stops). Recovered from the table and then proven: every
 * row must be cos/sin(p·θ_i) within float32 rounding of the angle, else the reason names the row and
 * column that differ (YaRN's attention factor, dynamic NTK and other non-linear scalings are not
 * `p·θ`: never guessed; expected attention then averages the table's own rows instead).
 */
import type { Graph, TensorProto } from "../../src/ir/graph.js";
import { readNumbers } from "../../src/onnx/tensor.js";
import type { QueryRotary } from "../../src/analysis/rotary.js";
import type { Prepared } from "../criterion.js";

/** Largest table read (elements): Gemma-3's 131072 × 128 fits. */
const MAX_TABLE = 1 << 25;

const recovered = new WeakMap<TensorProto, Prepared<number[]>>();

/** The shape of a query rotary's tables: `rows` positions, `columns` stored, `half` = head_size/2 rotated pairs. */
export interface RotaryTables {
  rows: number;
  columns: number;
  half: number;
  /** Element type of the tables (1 float, 10 float16). */
  elemType: number;
}

/** The tables' shape, or why expected attention cannot use them: the head must be rotated whole (kvpress's R̄ is head_size × head_size). */
export function rotaryTables(g: Graph, rotary: QueryRotary, headSize: number): Prepared<RotaryTables> {
  const cos = g.constantTensor(rotary.cos);
  const sin = g.constantTensor(rotary.sin);
  if (!cos || !sin) return { why: `the rotary tables '${rotary.cos}' / '${rotary.sin}' are not constant` };
  const [rows, columns] = cos.dims.map(Number);
  if (cos.dims.length !== 2 || sin.dims.length !== 2 || sin.dims.some((d, i) => d !== cos.dims[i]) || !rows || !columns)
    return {
      why: `the rotary tables '${rotary.cos}' / '${rotary.sin}' are not two [positions, columns] tables of one shape`,
    };
  const half = rotary.form === "half" ? columns : columns / 2;
  if (half * 2 !== headSize)
    return {
      why: `'${rotary.node}' rotates ${half * 2} of the head's ${headSize} dimensions (partial rotary); kvpress's averaged rotation is defined over the whole head`,
    };
  if (cos.dataType !== 1 && cos.dataType !== 10)
    return { why: `the rotary table '${rotary.cos}' is not float or float16 (type ${cos.dataType})` };
  return { ok: { rows, columns, half, elemType: cos.dataType } };
}

/**
 * θ_i for i < head_size/2, recovered from the tables (shape checked by `rotaryTables`) and proven on
 * every row; why not, when the table is stored outside the model or is not cos/sin(p·θ).
 */
export function rotaryFrequencies(g: Graph, rotary: QueryRotary, tables: RotaryTables): Prepared<number[]> {
  const cos = g.constantTensor(rotary.cos);
  const sin = g.constantTensor(rotary.sin);
  if (!cos || !sin) return { why: `the rotary tables '${rotary.cos}' / '${rotary.sin}' are not constant` };
  const { rows, columns: cols, half } = tables;
  const known = recovered.get(cos);
  if (known) return known;
  const result = recover(rotary, readNumbers(cos, MAX_TABLE), readNumbers(sin, MAX_TABLE), rows, cols, half);
  recovered.set(cos, result);
  return result;
}

function recover(
  rotary: QueryRotary,
  cos: number[] | undefined,
  sin: number[] | undefined,
  rows: number,
  cols: number,
  half: number,
): Prepared<number[]> {
  const at = `rotary table '${rotary.cos}'`;
  if (!cos || !sin)
    return {
      why: `the ${at} is stored in an external weight file (prunec does not read weight files) or is larger than ${MAX_TABLE} values`,
    };
  if (rows < 2) return { why: `the ${at} has ${rows} row; the frequencies need two` };
  if (rotary.form === "full")
    for (let p = 0; p < rows; p++)
      for (let i = 0; i < half; i++)
        if (cos[p * cols + i] !== cos[p * cols + half + i] || sin[p * cols + i] !== sin[p * cols + half + i])
          return { why: `the ${at}'s row ${p} is not one half repeated (column ${i} ≠ column ${half + i})` };
  const theta: number[] = [];
  for (let i = 0; i < half; i++) {
    const c = (p: number) => cos[p * cols + i]!;
    const s = (p: number) => sin[p * cols + i]!;
    if (Math.abs(c(0) - 1) > 1e-6 || Math.abs(s(0)) > 1e-6)
      return { why: `the ${at}'s row 0 is not cos/sin(0) = 1/0 (column ${i}: ${c(0)}, ${s(0)}): a scaled rotary` };
    // From row 1, then refined on rows 2, 4, 8, … (the angle unwrapped by the estimate so far).
    let t = Math.atan2(s(1), c(1));
    for (let p = 2; p < rows; p *= 2) {
      const phase = Math.atan2(s(p), c(p));
      t = (phase + 2 * Math.PI * Math.round((p * t - phase) / (2 * Math.PI))) / p;
    }
    theta.push(t);
  }
  // Every row, within float32 rounding of a table computed from float32 angles.
  for (let p = 0; p < rows; p++)
    for (let i = 0; i < half; i++) {
      const tol = 1e-5 + 2e-7 * p * Math.abs(theta[i]!);
      const dc = Math.abs(cos[p * cols + i]! - Math.cos(p * theta[i]!));
      const ds = Math.abs(sin[p * cols + i]! - Math.sin(p * theta[i]!));
      if (dc > tol || ds > tol)
        return {
          why: `the ${at} is not cos/sin(p·θ) at row ${p}, column ${i} (off by ${Math.max(dc, ds).toExponential(2)}): not a linear rotary`,
        };
    }
  return { ok: theta };
}
