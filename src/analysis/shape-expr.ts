/**
 * Symbolic integer arithmetic on dimensions. A symbolic Dim is a string; to compute with it we
 * read it as a polynomial over "atoms" (graph-input dim_params, fresh unknowns, floor/ceil
 * expressions) with integer coefficients. Strings this algebra printed are remembered with their
 * polynomial, so "batch_size*3" read back is the product it came from; any other string (a
 * dim_param, even one like "seq + 1") is an opaque atom. Instances are per analysis run.
 *
 * All atoms stand for sizes, so they are assumed to be non-negative integers; that is what lets
 * `compare` decide "batch_size == -1" (false) or max(n, 0) (n).
 */
import type { Dim } from "./dims.js";

interface Term {
  coef: number;
  /** Sorted; a repeated atom is a power. Empty for the constant term. */
  atoms: string[];
}
/** Canonical: terms sorted by `termKey`, no two with the same atoms, no zero coefficients. */
type Poly = Term[];

const termKey = (t: Term): string => t.atoms.join("\u0000");

/** Expressions above this many terms become opaque atoms, so printing stays readable. */
const MAX_TERMS = 8;

/**
 * Longer expression texts become fresh unknowns: exporters' sizes print in a few dozen
 * characters, and a malformed model chaining thousands of symbolic sums would otherwise grow one
 * text per op (quadratic time over the graph).
 */
const MAX_TEXT = 256;

function normalize(terms: Term[]): Poly {
  const byKey = new Map<string, Term>();
  for (const t of terms) {
    const k = termKey(t);
    const prev = byKey.get(k);
    if (prev) prev.coef += t.coef;
    else byKey.set(k, { coef: t.coef, atoms: t.atoms });
  }
  return [...byKey.values()]
    .filter((t) => t.coef !== 0)
    .sort((a, b) => {
      // Highest degree first, constant last, then by name: "a*b+c-1".
      if (a.atoms.length !== b.atoms.length) return b.atoms.length - a.atoms.length;
      const ka = termKey(a),
        kb = termKey(b);
      return ka < kb ? -1 : ka > kb ? 1 : 0;
    });
}

function constantOf(p: Poly): number | undefined {
  if (p.length === 0) return 0;
  if (p.length === 1 && p[0]!.atoms.length === 0) return p[0]!.coef;
  return undefined;
}

/** An atom needs parentheses inside a larger expression when it has an operator at top level. */
function needsParens(s: string): boolean {
  let depth = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === "(") depth++;
    else if (c === ")") depth--;
    else if (depth === 0 && (c === "+" || c === "*" || c === "/" || c === " " || (c === "-" && i > 0))) return true;
  }
  return s.startsWith("-");
}

const wrap = (s: string): string => (needsParens(s) ? `(${s})` : s);

/** `alone`: the term is the whole expression, so a lone atom with coefficient 1 prints bare. */
function printTerm(t: Term, alone: boolean): string {
  const factors = t.atoms.map((a) => (alone && t.atoms.length === 1 && t.coef === 1 ? a : wrap(a)));
  const mag = Math.abs(t.coef);
  if (factors.length === 0) return String(mag);
  if (mag !== 1) factors.push(String(mag));
  return factors.join("*");
}

function printPoly(p: Poly): string {
  let out = "";
  p.forEach((t, i) => {
    const body = printTerm(t, p.length === 1);
    if (i === 0) out = t.coef < 0 ? `-${body}` : body;
    else out += (t.coef < 0 ? "-" : "+") + body;
  });
  return out;
}

export class DimAlgebra {
  private readonly known = new Map<string, Poly>();
  private freshCount = 0;

  /** A new symbol for a size nothing determines (named like onnxruntime's "unk__N"). */
  fresh(): string {
    return `unk__${this.freshCount++}`;
  }

  isFresh(d: Dim): boolean {
    return typeof d === "string" && /^unk__\d+$/.test(d);
  }

  private poly(d: Dim): Poly {
    if (typeof d === "number") return d === 0 ? [] : [{ coef: d, atoms: [] }];
    return this.known.get(d) ?? [{ coef: 1, atoms: [d] }];
  }

  private dim(p: Poly): Dim {
    const c = constantOf(p);
    if (c !== undefined) return c;
    if (p.length > MAX_TERMS) return this.atom(`(${printPoly(p)})`);
    const s = printPoly(p);
    if (s.length > MAX_TEXT) return this.fresh();
    // First meaning wins if a dim_param happens to spell the same text; equal text = equal size.
    if (!this.known.has(s)) this.known.set(s, p);
    return s;
  }

  /** Register `s` as an opaque atom (a floor/ceil expression) and return it. */
  private atom(s: string): Dim {
    if (s.length > MAX_TEXT) return this.fresh();
    if (!this.known.has(s)) this.known.set(s, [{ coef: 1, atoms: [s] }]);
    return s;
  }

  add(a: Dim, b: Dim): Dim {
    if (typeof a === "number" && typeof b === "number") return a + b;
    return this.dim(normalize([...this.poly(a), ...this.poly(b)]));
  }

  neg(a: Dim): Dim {
    if (typeof a === "number") return -a;
    return this.dim(this.poly(a).map((t) => ({ coef: -t.coef, atoms: t.atoms })));
  }

  sub(a: Dim, b: Dim): Dim {
    return this.add(a, this.neg(b));
  }

  mul(a: Dim, b: Dim): Dim {
    if (typeof a === "number" && typeof b === "number") return a * b;
    const out: Term[] = [];
    for (const x of this.poly(a))
      for (const y of this.poly(b)) out.push({ coef: x.coef * y.coef, atoms: [...x.atoms, ...y.atoms].sort() });
    return this.dim(normalize(out));
  }

  product(ds: readonly Dim[]): Dim {
    return ds.reduce<Dim>((acc, d) => this.mul(acc, d), 1);
  }

  sum(ds: readonly Dim[]): Dim {
    return ds.reduce<Dim>((acc, d) => this.add(acc, d), 0);
  }

  /** a / b when it divides exactly (as polynomials), else undefined. */
  exactDiv(a: Dim, b: Dim): Dim | undefined {
    if (typeof a === "number" && typeof b === "number") return b !== 0 && a % b === 0 ? a / b : undefined;
    const pa = this.poly(a),
      pb = this.poly(b);
    if (pb.length === 0) return undefined;
    if (printPoly(pa) === printPoly(pb)) return 1;
    if (pb.length !== 1) return undefined;
    const d = pb[0]!;
    const out: Term[] = [];
    for (const t of pa) {
      const rest = removeAtoms(t.atoms, d.atoms);
      if (rest === undefined || t.coef % d.coef !== 0) return undefined;
      out.push({ coef: t.coef / d.coef, atoms: rest });
    }
    return this.dim(normalize(out));
  }

  /** floor(a / b) for non-negative sizes; an opaque "floor(a/b)" atom when it does not simplify. */
  floorDiv(a: Dim, b: Dim): Dim | undefined {
    return this.roundedDiv(a, b, "floor");
  }

  ceilDiv(a: Dim, b: Dim): Dim | undefined {
    return this.roundedDiv(a, b, "ceil");
  }

  private roundedDiv(a: Dim, b: Dim, mode: "floor" | "ceil"): Dim | undefined {
    if (b === 0) return undefined;
    const round = mode === "floor" ? Math.floor : Math.ceil;
    if (typeof a === "number" && typeof b === "number") return round(a / b);
    const exact = this.exactDiv(a, b);
    if (exact !== undefined) return exact;
    const reduced = this.cancelCommon(a, b);
    if (reduced) return this.roundedDiv(reduced[0], reduced[1], mode);
    if (typeof b === "number" && b > 0) {
      // floor((q*b + r) / b) = q + floor(r / b) when r is a constant: pull out the divisible part.
      const q: Term[] = [];
      const r: Term[] = [];
      for (const t of this.poly(a)) {
        if (t.atoms.length > 0 && t.coef % b === 0) q.push({ coef: t.coef / b, atoms: t.atoms });
        else r.push(t);
      }
      const rest = normalize(r);
      const rc = constantOf(rest);
      if (rc !== undefined) return this.add(this.dim(normalize(q)), round(rc / b));
      // Whole multiples of b in the constant come out too: floor((h-16)/16) = floor(h/16)-1.
      const c = rest.find((t) => t.atoms.length === 0)?.coef ?? 0;
      const k = Math.floor(c / b);
      if (k !== 0) {
        const shifted = this.dim(normalize([...rest, { coef: -k * b, atoms: [] }]));
        const inner = this.roundedDiv(shifted, b, mode);
        return inner === undefined ? undefined : this.add(this.add(this.dim(normalize(q)), inner), k);
      }
      if (q.length > 0) {
        const inner = this.roundedDiv(this.dim(rest), b, mode);
        return inner === undefined ? undefined : this.add(this.dim(normalize(q)), inner);
      }
    }
    return this.atom(`${mode}(${wrap(String(a))}/${wrap(String(b))})`);
  }

  /**
   * a/b with factors common to every term cancelled (gcd of the coefficients, shared atoms):
   * floor(hw*1280/5120) is floor(hw/4). Undefined when nothing cancels.
   */
  private cancelCommon(a: Dim, b: Dim): [Dim, Dim] | undefined {
    const pa = this.poly(a),
      pb = this.poly(b);
    const terms = [...pa, ...pb];
    if (terms.length === 0) return undefined;
    const g = terms.reduce((acc, t) => gcd(acc, Math.abs(t.coef)), 0);
    let shared = terms[0]!.atoms.slice();
    for (const t of terms.slice(1)) shared = shared.filter((x, i) => t.atoms.includes(x) && shared.indexOf(x) === i);
    if (g <= 1 && shared.length === 0) return undefined;
    const cut = (p: Poly): Dim =>
      this.dim(normalize(p.map((t) => ({ coef: t.coef / g, atoms: removeAtoms(t.atoms, shared) ?? t.atoms }))));
    return [cut(pa), cut(pb)];
  }

  /** a mod b; only when both are numbers or b divides a. */
  mod(a: Dim, b: Dim): Dim | undefined {
    if (typeof a === "number" && typeof b === "number") return b === 0 ? undefined : a - b * Math.floor(a / b);
    return this.exactDiv(a, b) !== undefined ? 0 : undefined;
  }

  /** Sign of a - b: -1, 0, 1, or undefined when it depends on the symbols (which may be 0). */
  compare(a: Dim, b: Dim): -1 | 0 | 1 | undefined {
    if (typeof a === "number" && typeof b === "number") return a < b ? -1 : a > b ? 1 : 0;
    if (a === b) return 0; // one symbol (the batch, the sequence): the common case of broadcasting
    const { c, sym } = this.difference(a, b);
    if (sym.length === 0) return c < 0 ? -1 : c > 0 ? 1 : 0;
    if (sym.every((t) => t.coef > 0) && c > 0) return 1;
    if (sym.every((t) => t.coef < 0) && c < 0) return -1;
    return undefined;
  }

  /** Whether a >= b holds for every non-negative value of the symbols. */
  geq(a: Dim, b: Dim): boolean {
    if (typeof a === "number" && typeof b === "number") return a >= b;
    if (a === b) return true;
    const { c, sym } = this.difference(a, b);
    return c >= 0 && sym.every((t) => t.coef > 0);
  }

  /** a - b split into its constant and its symbolic terms. */
  private difference(a: Dim, b: Dim): { c: number; sym: Term[] } {
    const diff = normalize([...this.poly(a), ...this.poly(b).map((t) => ({ coef: -t.coef, atoms: t.atoms }))]);
    const sym = diff.filter((t) => t.atoms.length > 0);
    return { c: diff.find((t) => t.atoms.length === 0)?.coef ?? 0, sym };
  }

  equal(a: Dim, b: Dim): boolean {
    return this.compare(a, b) === 0;
  }

  max(a: Dim, b: Dim): Dim | undefined {
    return this.geq(a, b) ? a : this.geq(b, a) ? b : undefined;
  }

  min(a: Dim, b: Dim): Dim | undefined {
    return this.geq(a, b) ? b : this.geq(b, a) ? a : undefined;
  }
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/** `atoms` minus the multiset `remove`, or undefined if `remove` is not contained. */
function removeAtoms(atoms: readonly string[], remove: readonly string[]): string[] | undefined {
  const rest = atoms.slice();
  for (const r of remove) {
    const i = rest.indexOf(r);
    if (i < 0) return undefined;
    rest.splice(i, 1);
  }
  return rest;
}
