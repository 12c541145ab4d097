import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  createRegistry,
  formatDiagnostic,
  parseSpec,
  printSpec,
  stripSpans,
  STAGE_OPTIONS,
  type Amount,
  type ArgValue,
  type CriterionInfo,
  type Diagnostic,
  type SpecIR,
  type StageIR,
  type StageOption,
  type StagePosition,
} from "../grammar/index.js";
import { targetsOf } from "../grammar/registry.js";
import { OPTION_ARGS } from "../grammar/options.js";

const CRITERIA: CriterionInfo[] = [
  { name: "cls-attn", summary: "", args: {} },
  { name: "iga", summary: "", args: {} },
  { name: "k-center", summary: "", args: {} },
  {
    name: "random",
    summary: "",
    targets: ["stream", "kv"],
    args: { seed: { type: "integer", default: 0, doc: "" } },
  },
  {
    name: "cls-attn-ensemble",
    summary: "",
    args: {
      layers: { type: "range", doc: "" },
      mode: { type: "identifier", doc: "" },
      weight: { type: "number", doc: "" },
    },
  },
  { name: "crops", summary: "", args: { n: { type: "integer", doc: "" }, scale: { type: "number", doc: "" } } },
  // KV-cache criteria (`keep kv` / `drop kv` stages only).
  { name: "snapkv", summary: "", targets: ["kv"], args: { window: { type: "integer", default: 64, doc: "" } } },
  {
    name: "streaming",
    summary: "",
    targets: ["kv"],
    args: { sinks: { type: "integer", doc: "" }, recent: { type: "range", doc: "" } },
  },
  { name: "knorm", summary: "", targets: ["kv"], args: {} },
];
const registry = createRegistry(CRITERIA);
const RUNS = { numRuns: 300 };

const KEYWORDS = [
  "model",
  "tokens",
  "input",
  "after",
  "before",
  "in",
  "layers",
  "layer",
  "encoder",
  "keep",
  "drop",
  "merge",
  "kv",
  "during",
  "decode",
  "mass",
  "above",
  "of",
  "each",
  "by",
  "with",
  "across",
];

/** Every diagnostic position lies inside the text: real lines, columns at most one past the line end. */
function checkPositions(text: string, diagnostics: readonly Diagnostic[]): void {
  const lines = text.split(/\r\n|\r|\n/);
  for (const d of diagnostics) {
    const where = `${d.line}:${d.column}-${d.endLine}:${d.endColumn} (${d.message}) in ${JSON.stringify(text)}`;
    expect(d.line, where).toBeGreaterThanOrEqual(1);
    expect(d.line, where).toBeLessThanOrEqual(lines.length);
    expect(d.endLine, where).toBeGreaterThanOrEqual(d.line);
    expect(d.endLine, where).toBeLessThanOrEqual(lines.length);
    expect(d.column, where).toBeGreaterThanOrEqual(1);
    expect(d.column, where).toBeLessThanOrEqual(lines[d.line - 1]!.length + 1);
    expect(d.endColumn, where).toBeGreaterThanOrEqual(1);
    expect(d.endColumn, where).toBeLessThanOrEqual(lines[d.endLine - 1]!.length + 1);
    if (d.endLine === d.line) expect(d.endColumn, where).toBeGreaterThanOrEqual(d.column);
    expect(d.message.length, where).toBeGreaterThan(0);
    expect(formatDiagnostic(d, text).startsWith(`${d.file}:${d.line}:${d.column}: error: `)).toBe(true);
  }
}

function checkParse(text: string): void {
  const r = parseSpec(text, "p.prune", registry);
  checkPositions(text, r.diagnostics);
  for (const d of r.diagnostics) expect(d.message, text).not.toMatch(/^internal error/);
  if (r.diagnostics.length === 0) expect(r.spec).toBeDefined();
  else expect(r.spec).toBeUndefined();
}

// ---------- generators of valid IR (as the parser would produce it) ----------

const noNegZero = (n: number): number => (n === 0 ? 0 : n);
const identifier = fc
  .stringMatching(/^[A-Za-z_][A-Za-z0-9_-]{0,8}$/)
  .filter((s) => !KEYWORDS.includes(s.toLowerCase()));
const word = fc.oneof(identifier, fc.constantFrom(...KEYWORDS));
const finite = fc.double({ noNaN: true, noDefaultInfinity: true }).map(noNegZero);
// Percentages have at most 6 decimal places (grammar/to-ir.ts): n / 10^d for d ≤ 6, in (0, 100].
const percent = fc.oneof(
  fc.integer({ min: 1, max: 100 }),
  fc
    .tuple(fc.integer({ min: 0, max: 6 }), fc.integer({ min: 1, max: 100_000_000 }))
    .map(([d, n]) => Number(((n % (100 * 10 ** d)) / 10 ** d || 1).toFixed(d))),
);
const layer = fc.integer({ min: -48, max: 48 }).map(noNegZero);

const amount = fc.oneof(
  percent.map((value) => ({ kind: "percent" as const, value })),
  fc.integer({ min: 1, max: 2 ** 40 }).map((value) => ({ kind: "count" as const, value })),
  percent.map((value) => ({ kind: "mass" as const, value })),
  finite.map((value) => ({ kind: "above" as const, value })),
);

const position = fc.oneof(
  layer.map((l) => ({ kind: "after-layer" as const, layer: l })),
  layer.map((l) => ({ kind: "in-layer" as const, layer: l })),
  fc.constant({ kind: "after-encoder" as const }),
  fc.constant({ kind: "before-layer-0" as const }),
);

/** Where a KV-cache stage may act: one layer, a range (A <= B when both ends have the same sign), every layer. */
const kvPosition = fc.oneof(
  layer.map((l) => ({ kind: "in-layer" as const, layer: l })),
  fc.tuple(layer, layer).map(([a, b]) => {
    const ordered = a < 0 === b < 0 && a > b ? [b, a] : [a, b];
    return { kind: "in-layers" as const, from: ordered[0]!, to: ordered[1]! };
  }),
  fc.constant({ kind: "all-layers" as const }),
);
const kvAmount = fc.oneof(
  percent.map((value) => ({ kind: "percent" as const, value })),
  fc.integer({ min: 1, max: 2 ** 40 }).map((value) => ({ kind: "count" as const, value })),
);

function argArbitrary(type: string): fc.Arbitrary<ArgValue> {
  switch (type) {
    case "integer":
      return fc.integer({ min: -1000, max: 1000 }).map(noNegZero);
    case "number":
      return finite;
    case "range":
      return fc.tuple(finite, finite).map(([a, b]): [number, number] => (a <= b ? [a, b] : [b, a]));
    default:
      return word;
  }
}

const criterionFor = (target: "stream" | "kv") =>
  fc.constantFrom(...CRITERIA.filter((c) => targetsOf(c).includes(target))).chain((info) => {
    const entries = Object.entries(info.args).map(([name, a]) =>
      fc.option(argArbitrary(a.type), { nil: undefined }).map((v) => [name, v] as const),
    );
    return fc.tuple(...entries).map((pairs) => {
      const args: Record<string, ArgValue> = {};
      for (const [name, v] of pairs) if (v !== undefined) args[name] = v;
      return { name: info.name, args };
    });
  });

const options = fc.shuffledSubarray([...STAGE_OPTIONS]) as fc.Arbitrary<StageOption[]>;

/** Written arguments for the options that take some (grammar/options.ts), each present or not. */
const optionArgs = fc.record(
  Object.fromEntries(
    STAGE_OPTIONS.map((o) => [
      o,
      fc.record(Object.fromEntries(Object.entries(OPTION_ARGS[o]).map(([name, a]) => [name, argArbitrary(a.type)])), {
        requiredKeys: [],
      }),
    ]),
  ) as Record<StageOption, fc.Arbitrary<Record<string, ArgValue>>>,
);
const span = { line: 1, column: 1, endLine: 1, endColumn: 1 };

const specShape = fc
  .record({
    model: fc.option(
      word.map((w) => w.toLowerCase()),
      { nil: undefined },
    ),
    setNames: fc.uniqueArray(identifier, { maxLength: 4, selector: (s) => s }),
    inputs: fc.array(fc.oneof(identifier, fc.constant("")), { minLength: 4, maxLength: 4 }),
    stages: fc.array(
      fc.oneof(
        fc.record({
          target: fc.constant("stream" as const),
          position: position as fc.Arbitrary<StagePosition>,
          action: fc.constantFrom("keep" as const, "drop" as const, "merge" as const),
          amount: fc.option(amount, { nil: undefined }) as fc.Arbitrary<Amount | undefined>,
          ofIndex: fc.option(fc.nat(), { nil: undefined }),
          freeOf: identifier,
          criterion: criterionFor("stream"),
          options,
          optionArgs,
          across: fc.option(fc.constant("frames" as const), { nil: undefined }),
        }),
        fc.record({
          target: fc.constant("kv" as const),
          position: kvPosition as fc.Arbitrary<StagePosition>,
          during: fc.option(fc.constant("decode" as const), { nil: undefined }),
          action: fc.constantFrom("keep" as const, "drop" as const),
          amount: fc.option(kvAmount, { nil: undefined }) as fc.Arbitrary<Amount | undefined>,
          ofIndex: fc.option(fc.nat(), { nil: undefined }),
          freeOf: identifier,
          criterion: criterionFor("kv"),
          options: fc.constant([] as StageOption[]),
        }),
      ),
      { maxLength: 6 },
    ),
  })
  .map(({ model, setNames, inputs, stages }) => {
    const sets = setNames.map((name, i) => ({
      name,
      // An input-mask set, or one after an earlier set (an empty input string picks `after`).
      source:
        i > 0 && inputs[i] === ""
          ? { kind: "after" as const, set: setNames[i - 1]! }
          : { kind: "input" as const, input: inputs[i] || "mask" },
    }));
    return {
      model,
      sets,
      stages: stages.map(({ ofIndex, freeOf, ...s }) => {
        const of =
          ofIndex === undefined ? undefined : setNames.length > 0 ? setNames[ofIndex % setNames.length] : freeOf;
        return { ...s, of };
      }),
    };
  });

/** The IR a shape stands for; spans are placeholders (stripSpans ignores them). */
type Shape = typeof specShape extends fc.Arbitrary<infer T> ? T : never;

function toSpec(shape: Shape): SpecIR {
  const spec: SpecIR = {
    file: "gen.prune",
    text: "",
    tokenSets: shape.sets.map((s) => ({ name: s.name, nameSpan: span, source: s.source, sourceSpan: span, span })),
    stages: shape.stages.map((s) => {
      const st: StageIR = {
        position: s.position,
        positionSpan: span,
        target: s.target,
        action: s.action,
        actionSpan: span,
        criterion: { name: s.criterion.name, args: s.criterion.args, span, argSpans: {} },
        options: s.options,
        optionSpans: s.options.map(() => span),
        span,
      };
      // Only the written options' non-empty argument lists reach the IR (as to-ir.ts builds it).
      const written =
        "optionArgs" in s
          ? s.options.flatMap((o) => (Object.keys(s.optionArgs[o]).length > 0 ? [[o, s.optionArgs[o]] as const] : []))
          : [];
      if (written.length > 0) {
        st.optionArgs = Object.fromEntries(written);
        st.optionArgSpans = Object.fromEntries(
          written.map(([o, a]) => [o, Object.fromEntries(Object.keys(a).map((k) => [k, span]))]),
        );
      }
      if (s.target === "kv") st.kvSpan = span;
      if ("during" in s && s.during !== undefined) {
        st.during = s.during;
        st.duringSpan = span;
      }
      if (s.amount !== undefined) st.amount = s.amount;
      if (s.of !== undefined) st.of = s.of;
      if ("across" in s && s.across !== undefined) {
        st.across = s.across;
        st.acrossSpan = span;
      }
      return st;
    }),
  };
  if (shape.model !== undefined) spec.model = { name: shape.model, span };
  return spec;
}

// ---------- a noisy printer: same meaning, different text ----------

const noise = fc.record({
  upper: fc.boolean(),
  wide: fc.boolean(),
  semicolons: fc.boolean(),
  comments: fc.boolean(),
  crlf: fc.boolean(),
  countWord: fc.boolean(),
  positional: fc.boolean(),
  spacePercent: fc.boolean(),
  spaceRange: fc.boolean(),
});
type Noise = typeof noise extends fc.Arbitrary<infer T> ? T : never;

function noisyText(spec: SpecIR, n: Noise): string {
  const kw = (k: string): string => (n.upper ? k.toUpperCase() : k);
  const sp = n.wide ? " \t " : " ";
  const pct = n.spacePercent ? " %" : "%";
  const statements: string[] = [];
  for (const s of spec.stages) {
    const parts: string[] = [];
    const p = s.position;
    if (p.kind === "after-layer") parts.push(kw("after"), kw("layer"), String(p.layer));
    else if (p.kind === "in-layer") parts.push(kw("in"), kw("layer"), String(p.layer));
    else if (p.kind === "in-layers")
      parts.push(kw("in"), kw("layers"), n.spaceRange ? `${p.from} .. ${p.to}` : `${p.from}..${p.to}`);
    else if (p.kind === "after-encoder") parts.push(kw("after"), kw("encoder"));
    else if (p.kind === "before-layer-0") parts.push(kw("before"), kw("layer"), "0");
    if (s.during === "decode") parts.push(kw("during"), kw("decode"));
    parts.push(kw(s.action));
    if (s.target === "kv") parts.push(kw("kv"));
    const a = s.amount;
    if (a?.kind === "percent") parts.push(`${a.value}${pct}`);
    if (a?.kind === "count") parts.push(n.countWord ? `${a.value} ${kw("tokens")}` : String(a.value));
    if (a?.kind === "mass") parts.push(kw("mass"), `${a.value}${pct}`);
    if (a?.kind === "above") parts.push(kw("above"), String(a.value));
    if (s.of !== undefined) parts.push(kw("of"), s.of);
    const info = registry.get(s.criterion.name)!;
    const declared = Object.keys(info.args);
    const fmt = (v: ArgValue): string => (Array.isArray(v) ? `${v[0]}..${v[1]}` : String(v));
    // Positional for the longest declared prefix that is present (when asked), then named in reverse order.
    const args: string[] = [];
    let i = 0;
    if (n.positional)
      for (; i < declared.length && s.criterion.args[declared[i]!] !== undefined; i++)
        args.push(fmt(s.criterion.args[declared[i]!]!));
    const rest = declared
      .slice(i)
      .filter((d) => s.criterion.args[d] !== undefined)
      .reverse();
    for (const d of rest) args.push(`${n.upper ? d.toUpperCase() : d}: ${fmt(s.criterion.args[d]!)}`);
    parts.push(
      kw("by"),
      `${n.upper ? s.criterion.name.toUpperCase() : s.criterion.name}${args.length > 0 || n.positional ? `(${args.join(", ")})` : ""}`,
    );
    // Option arguments named (upper case when asked); an option without any sometimes gets `()`.
    const option = (o: StageOption): string => {
      const written = Object.entries(s.optionArgs?.[o] ?? {}).map(
        ([k, v]) => `${n.upper ? k.toUpperCase() : k}: ${fmt(v)}`,
      );
      return `${kw(o)}${written.length > 0 || n.positional ? `(${written.join(", ")})` : ""}`;
    };
    if (s.options.length > 0) parts.push(kw("with"), s.options.map(option).join(`${sp},${sp}`));
    if (s.across !== undefined) parts.push(kw("across"), kw(s.across));
    statements.push(parts.join(sp));
  }
  const sets = spec.tokenSets.map((t) =>
    [
      kw("tokens"),
      t.name,
      "=",
      t.source.kind === "input" ? `${kw("input")} ${t.source.input}` : `${kw("after")} ${t.source.set}`,
    ].join(sp),
  );
  // Stages first, then the model hint, then the sets: order between kinds does not matter.
  const all = [...statements, ...(spec.model ? [`${kw("model")}${sp}${spec.model.name}`] : []), ...sets];
  const eol = n.crlf ? "\r\n" : "\n";
  const comment = n.comments ? `${sp}# note: keep 250% by nothing; afer` : "";
  // A comment runs to the end of the line, so with `;` separators it can only close the whole line.
  const body = n.semicolons ? `${all.join(`;${sp}`)};${comment}` : all.map((l) => `${sp}${l}${comment}`).join(eol);
  return (n.comments ? `# header${eol}${eol}` : "") + body + eol;
}

describe("grammar properties", () => {
  it("print then parse gives the same IR", () => {
    fc.assert(
      fc.property(specShape, (shape) => {
        const spec = toSpec(shape);
        const text = printSpec(spec);
        const r = parseSpec(text, "gen.prune", registry);
        expect(r.diagnostics, text).toEqual([]);
        expect(stripSpans(r.spec!)).toEqual(stripSpans(spec));
        expect(printSpec(r.spec!)).toBe(text);
      }),
      RUNS,
    );
  });

  it("noisy spellings of a spec parse to the same IR as its canonical form", () => {
    fc.assert(
      fc.property(specShape, noise, (shape, n) => {
        const spec = toSpec(shape);
        const text = noisyText(spec, n);
        const r = parseSpec(text, "gen.prune", registry);
        expect(r.diagnostics, text).toEqual([]);
        expect(stripSpans(r.spec!)).toEqual(stripSpans(spec));
        checkPositions(text, []);
      }),
      RUNS,
    );
  });

  it("arbitrary text never throws and every diagnostic lies inside it", () => {
    fc.assert(fc.property(fc.string({ maxLength: 200 }), checkParse), { numRuns: 500 });
    fc.assert(fc.property(fc.string({ unit: "binary", maxLength: 120 }), checkParse), { numRuns: 300 });
  });

  it("token soup never throws and every diagnostic lies inside it", () => {
    const piece = fc.oneof(
      fc.constantFrom(...KEYWORDS, "cls-attn", "IGA", "random", "crops", "image", "recycle", "mask", "snapkv", "KV"),
      fc.constantFrom("%", "(", ")", ",", ":", "..", "=", ";", "\n", "\r\n", "\r", "#", "-", ".", "@", "\t", ""),
      fc.integer({ min: -300, max: 300 }).map(String),
      fc.double({ noNaN: true }).map(String),
    );
    const soup = fc
      .array(fc.tuple(piece, fc.constantFrom(" ", "", "  ")), { maxLength: 30 })
      .map((ps) => ps.map(([p, s]) => p + s).join(""));
    fc.assert(fc.property(soup, checkParse), { numRuns: 1000 });
  });

  it("mutated valid specs never throw and every diagnostic lies inside them", () => {
    const mutation = fc.record({
      kind: fc.constantFrom("delete", "insert", "replace", "swap-lines", "duplicate"),
      at: fc.nat(),
      length: fc.integer({ min: 1, max: 6 }),
      insert: fc.oneof(
        fc.string({ maxLength: 6 }),
        fc.constantFrom("kepe", "afer", "%", "..", "(", ";", "\n", "-", "250", "0", "1.5", "x:"),
      ),
    });
    fc.assert(
      fc.property(specShape, fc.array(mutation, { minLength: 1, maxLength: 4 }), (shape, ms) => {
        let text = printSpec(toSpec(shape));
        for (const m of ms) {
          const at = text.length === 0 ? 0 : m.at % (text.length + 1);
          if (m.kind === "delete") text = text.slice(0, at) + text.slice(at + m.length);
          else if (m.kind === "insert") text = text.slice(0, at) + m.insert + text.slice(at);
          else if (m.kind === "replace") text = text.slice(0, at) + m.insert + text.slice(at + m.length);
          else {
            const lines = text.split("\n");
            const i = at % lines.length;
            if (m.kind === "duplicate") lines.splice(i, 0, lines[i]!);
            else lines.reverse();
            text = lines.join("\n");
          }
        }
        checkParse(text);
      }),
      { numRuns: 1000 },
    );
  });

  it("reports at most one syntax error per statement and one diagnostic per broken statement at least", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.constantFrom(
            "after layer 2 keep 250% by cls-attn",
            "afer layer 1 keep 5% by iga",
            "in layer 3 drop by nope",
            "keep kv 5% by iga",
            "in layers 3 keep kv by snapkv",
            "after layer 1 keep 5% by iga",
          ),
          { maxLength: 8 },
        ),
        (stmts) => {
          const text = stmts.join("\n");
          const r = parseSpec(text, "p.prune", registry);
          const broken = stmts.filter((s) => s !== "after layer 1 keep 5% by iga").length;
          expect(r.diagnostics).toHaveLength(broken);
          checkPositions(text, r.diagnostics);
        },
      ),
      RUNS,
    );
  });
});
