/**
 * The editor grammar (editors/prune.tmLanguage.json), run by the engine VS Code uses (vscode-textmate on
 * vscode-oniguruma), checked against editors/sample.prune and against prunec's own lexer and parser.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import oniguruma from "vscode-oniguruma";
import vsctm from "vscode-textmate";
import type { IGrammar, StateStack } from "vscode-textmate";
import { beforeAll, describe, expect, it } from "vitest";
import { createRegistry, formatDiagnostics, parseSpec, type CriterionInfo } from "../grammar/index.js";
import { isSeparator, KEYWORDS, lex } from "../grammar/lexer.js";
import { SpecParser } from "../grammar/parser.js";

const require = createRequire(import.meta.url);
const editorFile = (name: string): string => fileURLToPath(new URL(`../editors/${name}`, import.meta.url));
const GRAMMAR_PATH = editorFile("prune.tmLanguage.json");
const grammarText = readFileSync(GRAMMAR_PATH, "utf8");
const sampleText = readFileSync(editorFile("sample.prune"), "utf8");
const sampleLines = sampleText.split(/\r\n|\r|\n/);

const LEXER_KEYWORDS = KEYWORDS.map((t) => t.name.toLowerCase());
const ROOT = "source.prune";
const KW = "keyword.control.prune";
const NUM = "constant.numeric.prune";
const FUNC = "entity.name.function.prune";
const PARAM = "variable.parameter.prune";
const OPTION = "constant.language.prune";
const SET = "variable.other.prune";
const VALUE = "constant.other.prune";
const MODEL = "entity.name.type.prune";
const SEP = "punctuation.separator.prune";
const LPAREN = "punctuation.definition.arguments.begin.prune";
const RPAREN = "punctuation.definition.arguments.end.prune";
const ASSIGN = "keyword.operator.assignment.prune";
const RANGE_OP = "keyword.operator.range.prune";
const COMMENT = "comment.line.number-sign.prune";
const COMMENT_MARK = "punctuation.definition.comment.prune";
const INVALID = "invalid.illegal.character.prune";
/** The lexer's whitespace (grammar/lexer.ts), the only characters the grammar may leave outside every token. */
const LEXER_SPACE = /^[ \t\f\v\u00a0\ufeff]*$/;

interface Tok {
  text: string;
  start: number;
  end: number;
  scopes: string[];
}

let grammar: IGrammar;

beforeAll(async () => {
  // The WASM build of Oniguruma ships in the package; no network.
  await oniguruma.loadWASM(readFileSync(require.resolve("vscode-oniguruma/release/onig.wasm")));
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (patterns: string[]) => new oniguruma.OnigScanner(patterns),
      createOnigString: (s: string) => new oniguruma.OnigString(s),
    }),
    loadGrammar: async (scopeName: string) =>
      scopeName === ROOT ? vsctm.parseRawGrammar(grammarText, GRAMMAR_PATH) : null,
  });
  const loaded = await registry.loadGrammar(ROOT);
  if (loaded === null) throw new Error("the grammar did not load");
  grammar = loaded;
});

/** Tokenizes a text line by line, carrying the rule stack from line to line as an editor does. */
function tokenize(text: string, fresh = false): Tok[][] {
  let state: StateStack = vsctm.INITIAL;
  return text.split(/\r\n|\r|\n/).map((line) => {
    const result = grammar.tokenizeLine(line, fresh ? vsctm.INITIAL : state);
    state = result.ruleStack;
    return result.tokens
      .map((t) => {
        const start = Math.min(t.startIndex, line.length);
        const end = Math.min(t.endIndex, line.length);
        return { text: line.slice(start, end), start, end, scopes: t.scopes };
      })
      .filter((t) => t.end > t.start);
  });
}

const tokenizeLine = (line: string): Tok[] => tokenize(line)[0]!;

const show = (toks: readonly Tok[]): string =>
  toks.map((t) => `${JSON.stringify(t.text)}: ${t.scopes.slice(1).join(" ") || "-"}`).join("\n");

/** The criteria the sample names, so that the sample can be checked by the real parser. */
const SAMPLE_CRITERIA: CriterionInfo[] = [
  ...[
    "cls-attn",
    "diversity",
    "similarity",
    "last-token-attn",
    "iga",
    "norm",
    "global-attn",
    "ttv",
    "k-center",
    "pagerank",
    "uniform",
    "hiprune",
    "spatial-rows",
  ].map((name): CriterionInfo => ({ name, summary: "", args: {} })),
  { name: "random", summary: "", args: { seed: { type: "integer", default: 0, doc: "" } } },
  {
    name: "cls-attn-ensemble",
    summary: "",
    args: { layers: { type: "range", doc: "" }, mode: { type: "identifier", doc: "" } },
  },
  { name: "crops", summary: "", args: { size: { type: "integer", doc: "" } } },
  ...["knorm", "h2o"].map((name): CriterionInfo => ({ name, summary: "", targets: ["kv"], args: {} })),
  { name: "snapkv", summary: "", targets: ["kv"], args: { window: { type: "integer", doc: "" } } },
  { name: "streaming", summary: "", targets: ["kv"], args: { sinks: { type: "integer", doc: "" } } },
  {
    name: "a2sf",
    summary: "",
    targets: ["kv"],
    args: { forget: { type: "number", doc: "" }, recent: { type: "integer", doc: "" } },
  },
];

describe("the editors/ folder", () => {
  it("holds a grammar that is valid JSON with scope source.prune for .prune files", () => {
    const raw = JSON.parse(grammarText) as Record<string, unknown>;
    expect(raw.scopeName).toBe("source.prune");
    expect(raw.fileTypes).toEqual(["prune"]);
    expect(raw.name).toBe("Prune");
  });

  it("is a VS Code extension whose language and grammar point at those files", () => {
    const manifest = JSON.parse(readFileSync(editorFile("package.json"), "utf8")) as {
      contributes: {
        languages: { id: string; extensions: string[]; configuration: string }[];
        grammars: { language: string; scopeName: string; path: string }[];
      };
    };
    expect(manifest.contributes.languages).toEqual([
      expect.objectContaining({ id: "prune", extensions: [".prune"], configuration: "./language-configuration.json" }),
    ]);
    expect(manifest.contributes.grammars).toEqual([
      { language: "prune", scopeName: "source.prune", path: "./prune.tmLanguage.json" },
    ]);
    const config = JSON.parse(readFileSync(editorFile("language-configuration.json"), "utf8")) as {
      comments: { lineComment: string };
      brackets: string[][];
      wordPattern: string;
    };
    expect(config.comments.lineComment).toBe("#");
    expect(config.brackets).toEqual([["(", ")"]]);
    const word = new RegExp(`^(?:${config.wordPattern})$`);
    for (const w of ["cls-attn", "image_mask", "25%", "-2", "0.01"]) expect(w).toMatch(word);
  });

  it("lists exactly the lexer's keywords", () => {
    const raw = JSON.parse(grammarText) as { repository: Record<string, { match?: string }> };
    // Keywords are written [Kk][Ee][Ee][Pp] (ASCII-only case folding, as in the lexer).
    const words = (match: string): string[] =>
      [...match.matchAll(/(?:\[[A-Z][a-z]\])+/g)].map((m) => m[0].replace(/\[([A-Z])([a-z])\]/g, "$2"));
    const sorted = (ws: string[]): string[] => [...ws].sort();
    expect(sorted(words(raw.repository.keyword!.match!))).toEqual(sorted(LEXER_KEYWORDS));
    // The token-set rule: its own keywords, then a look-ahead that refuses every keyword as a set name.
    const tokenSet = words(raw.repository["token-set"]!.match!);
    expect(tokenSet.slice(0, 5)).toEqual(["tokens", "input", "after", "of", "each"]);
    expect(sorted(tokenSet.slice(5))).toEqual(sorted(LEXER_KEYWORDS));
    // And no rule anywhere names a word the lexer does not reserve.
    for (const w of words(grammarText)) expect(LEXER_KEYWORDS).toContain(w);
  });

  it("has a sample that the real lexer and parser accept", () => {
    expect(lex(sampleText).errors).toEqual([]);
    const { spec, diagnostics } = parseSpec(sampleText, "sample.prune", createRegistry(SAMPLE_CRITERIA));
    expect(formatDiagnostics(diagnostics, sampleText)).toBe("");
    expect(spec!.stages.length).toBe(24);
    expect(spec!.tokenSets.map((s) => s.name)).toEqual(["image", "instruction", "context"]);
  });
});

describe("scopes in editors/sample.prune", () => {
  /** [the start of a line of the sample (unique), a token on it (its first occurrence), its exact scopes below source.prune]. */
  const TABLE: [line: string, token: string, scopes: string[]][] = [
    ["# sample.prune", "#", [COMMENT, COMMENT_MARK]],
    [
      "# sample.prune",
      " sample.prune: every construct of the .prune language, for the editor grammar and its tests.",
      [COMMENT],
    ],
    ["model vit", "model", [KW]],
    ["model vit", "vit", [MODEL]],
    ["model vit", " optional family hint; prunec infers it when absent", [COMMENT]],
    ["after layer 2  keep 50% by cls-attn", "after", [KW]],
    ["after layer 2  keep 50% by cls-attn", "layer", [KW]],
    ["after layer 2  keep 50% by cls-attn", "2", [NUM]],
    ["after layer 2  keep 50% by cls-attn", "keep", [KW]],
    ["after layer 2  keep 50% by cls-attn", "50%", [NUM]],
    ["after layer 2  keep 50% by cls-attn", "by", [KW]],
    ["after layer 2  keep 50% by cls-attn", "cls-attn", [FUNC]],
    ["after layer 2  keep 50% by cls-attn", "#", [COMMENT, COMMENT_MARK]],
    ["after layer 5  keep 25% by diversity", "25%", [NUM]],
    ["after layer 5  keep 25% by diversity", "diversity", [FUNC]],
    ["after layer 8  merge 30% by similarity", "merge", [KW]],
    ["after layer 8  merge 30% by similarity", "similarity", [FUNC]],
    ["tokens image = input image_mask", "tokens", [KW]],
    ["tokens image = input image_mask", "image", [SET]],
    ["tokens image = input image_mask", "=", [ASSIGN]],
    ["tokens image = input image_mask", "input", [KW]],
    ["tokens image = input image_mask", "image_mask", [SET]],
    ["tokens instruction = after image", "instruction", [SET]],
    ["tokens instruction = after image", "after", [KW]],
    ["tokens instruction = after image", "image", [SET]],
    ["in layer 2  drop 50% of image by last-token-attn", "in", [KW]],
    ["in layer 2  drop 50% of image by last-token-attn", "drop", [KW]],
    ["in layer 2  drop 50% of image by last-token-attn", "of", [KW]],
    ["in layer 2  drop 50% of image by last-token-attn", "image", [SET]],
    ["in layer 2  drop 50% of image by last-token-attn", "last-token-attn", [FUNC]],
    ["after layer 1 drop 50% of each image by last-token-attn", "of", [KW]],
    ["after layer 1 drop 50% of each image by last-token-attn", "each", [KW]],
    ["after layer 1 drop 50% of each image by last-token-attn", "image", [SET]],
    ["in layer 16 drop 75% of image by IGA", "16", [NUM]],
    ["in layer 16 drop 75% of image by IGA", "IGA", [FUNC]],
    ["after encoder keep 64 by norm", "encoder", [KW]],
    ["after encoder keep 64 by norm", "64", [NUM]],
    ["before layer 0", "before", [KW]],
    ["before layer 0", "0", [NUM]],
    ["before layer 0", "random", [FUNC]],
    ["before layer 0", "(", [LPAREN]],
    ["before layer 0", "seed", [PARAM]],
    ["before layer 0", ":", [SEP]],
    ["before layer 0", "1", [NUM]],
    ["before layer 0", ")", [RPAREN]],
    ["after layer -2", "-2", [NUM]],
    ["after layer -2", "tokens", [KW]],
    ["after layer -2", "image", [SET]],
    ["after layer 3 keep mass 90%", "mass", [KW]],
    ["after layer 3 keep mass 90%", "90%", [NUM]],
    ["after layer 4 drop above 0.01", "above", [KW]],
    ["after layer 4 drop above 0.01", "0.01", [NUM]],
    ["after layer 4 drop above 0.01", "k-center", [FUNC]],
    ["after layer 6 drop above -1.5e-3", "-1.5e-3", [NUM]],
    ["after layer 7 keep by uniform", "uniform", [FUNC]],
    ["after layer 9 keep 25% by cls-attn-ensemble", "cls-attn-ensemble", [FUNC]],
    ["after layer 9 keep 25% by cls-attn-ensemble", "layers", [PARAM]],
    ["after layer 9 keep 25% by cls-attn-ensemble", "8..10", [NUM]],
    ["after layer 9 keep 25% by cls-attn-ensemble", ",", [SEP]],
    ["after layer 9 keep 25% by cls-attn-ensemble", "mode", [PARAM]],
    ["after layer 9 keep 25% by cls-attn-ensemble", "mean", [VALUE]],
    ["after layer 10 keep 16 by crops(16)", "crops", [FUNC]],
    ["after layer 10 keep 16 by crops(16)", "(", [LPAREN]],
    ["after layer 11 keep 20% by spatial-rows()", ")", [RPAREN]],
    ["after layer 12 drop 50% by hiprune with recycle, mask", "with", [KW]],
    ["after layer 12 drop 50% by hiprune with recycle, mask", "recycle", [OPTION]],
    ["after layer 12 drop 50% by hiprune with recycle, mask", ",", [SEP]],
    ["after layer 12 drop 50% by hiprune with recycle, mask", "mask", [OPTION]],
    ["in layer 13", "instruction", [SET]],
    ["in layer 13", "mask", [OPTION]],
    ["in layer 13", ";", [SEP]],
    ["in layer 13", "AFTER", [KW]],
    ["in layer 13", "LAYER", [KW]],
    ["in layer 13", "Keep", [KW]],
    ["in layer 13", "BY", [KW]],
    ["in layer 13", "Random", [FUNC]],
    ["in layer 13", "SEED", [PARAM]],
    ["in layer 13", "WITH", [KW]],
    ["in layer 13", "Recycle", [OPTION]],
    ["tokens context = input context_mask", "context", [SET]],
    ["in layers 2..27 keep kv", "in", [KW]],
    ["in layers 2..27 keep kv", "layers", [KW]],
    ["in layers 2..27 keep kv", "2..27", [NUM]],
    ["in layers 2..27 keep kv", "kv", [KW]],
    ["in layers 2..27 keep kv", "snapkv", [FUNC]],
    ["in layers 2..27 keep kv", "window", [PARAM]],
    ["keep kv 512 tokens", "keep", [KW]],
    ["keep kv 512 tokens", "kv", [KW]],
    ["keep kv 512 tokens", "tokens", [KW]],
    ["keep kv 512 tokens", "streaming", [FUNC]],
    ["in layer 3 drop kv", "drop", [KW]],
    ["in layer 3 drop kv", "kv", [KW]],
    ["in layers 0..-1", "0..-1", [NUM]],
    ["in layers 0..-1", "context", [SET]],
    ["in layers 0..-1", "h2o", [FUNC]],
  ];

  const sampleTokens = (): Tok[][] => tokenize(sampleText);

  it.each(TABLE)("%s: %j", (prefix, token, scopes) => {
    const index = sampleLines.findIndex((l) => l.startsWith(prefix));
    expect(index, `no sample line starts with ${JSON.stringify(prefix)}`).toBeGreaterThanOrEqual(0);
    expect(
      sampleLines.filter((l) => l.startsWith(prefix)).length,
      `several sample lines start with ${JSON.stringify(prefix)}`,
    ).toBe(1);
    const toks = sampleTokens()[index]!;
    const tok = toks.find((t) => t.text === token);
    expect(tok, `no token ${JSON.stringify(token)} in\n${show(toks)}`).toBeDefined();
    expect(tok!.scopes).toEqual([ROOT, ...scopes]);
  });

  it("leaves no token unscoped but whitespace, and marks nothing invalid", () => {
    const lines = sampleTokens();
    expect(lines.length).toBe(sampleLines.length);
    lines.forEach((toks, i) => {
      expect(toks.map((t) => t.text).join(""), `line ${i + 1}`).toBe(sampleLines[i]);
      for (const t of toks) {
        const where = `line ${i + 1}, ${JSON.stringify(t.text)}: ${t.scopes.join(" ")}`;
        if (t.text.trim() === "") continue;
        expect(t.scopes[0], where).toBe(ROOT);
        expect(t.scopes.length, where).toBeGreaterThan(1);
        expect(t.scopes, where).not.toContain(INVALID);
      }
    });
  });

  it("tokenizes each line alone as it does within the file (no rule spans lines)", () => {
    expect(tokenize(sampleText, true)).toEqual(tokenize(sampleText));
  });
});

describe("scopes of single lines", () => {
  const scopesOf = (line: string): [string, string][] =>
    tokenizeLine(line)
      .filter((t) => t.text.trim() !== "")
      .map((t) => [t.text, t.scopes.slice(1).join(" ")]);

  it("the design card's one-liner", () => {
    expect(scopesOf("after layer 2 keep 25% by cls-attn")).toEqual([
      ["after", KW],
      ["layer", KW],
      ["2", NUM],
      ["keep", KW],
      ["25%", NUM],
      ["by", KW],
      ["cls-attn", FUNC],
    ]);
  });

  it("every lexer keyword, in any case, and no longer name", () => {
    for (const k of LEXER_KEYWORDS) {
      const mixed = [...k].map((c, i) => (i % 2 === 0 ? c.toUpperCase() : c)).join("");
      for (const w of [k, k.toUpperCase(), mixed]) expect(scopesOf(w), w).toEqual([[w, KW]]);
      for (const w of [`${k}s`, `${k}-x`, `${k}_`, `${k}2`, `x${k}`, `x-${k}`].filter((w) => !isKeyword(w)))
        expect(scopesOf(w), w).toEqual([[w, ""]]);
    }
    // Not keywords of the lexer.
    for (const w of ["tokens-as-unit", "recycle", "mask", "encoders", "layered", "kv-cache", "kvs"])
      expect(scopesOf(w), w).toEqual([[w, ""]]);
    // Case folding is ASCII-only, as in the lexer: U+212A KELVIN SIGN is not a K.
    expect(scopesOf("\u212Aeep")).toEqual([
      ["\u212A", INVALID],
      ["eep", ""],
    ]);
  });

  it("keywords where a name is expected take the name's scope", () => {
    expect(scopesOf("model layer")).toEqual([
      ["model", KW],
      ["layer", MODEL],
    ]);
    expect(scopesOf("after layer 1 keep by mass(layer: in, with) with by, of")).toEqual([
      ["after", KW],
      ["layer", KW],
      ["1", NUM],
      ["keep", KW],
      ["by", KW],
      ["mass", FUNC],
      ["(", LPAREN],
      ["layer", PARAM],
      [":", SEP],
      ["in", VALUE],
      [",", SEP],
      ["with", VALUE],
      [")", RPAREN],
      ["with", KW],
      ["by", OPTION],
      [",", SEP],
      ["of", OPTION],
    ]);
    // A token set is never a keyword: `after layer` is a position, `after image` a set.
    expect(scopesOf("tokens t = after layer")).toEqual([
      ["tokens", KW],
      ["t", SET],
      ["=", ASSIGN],
      ["after", KW],
      ["layer", KW],
    ]);
  });

  it("numbers as the lexer reads them", () => {
    expect(scopesOf("1e5 -0.5E+2 2by 1e 1. 25 % 3 .. 4 .. @")).toEqual([
      ["1e5", NUM],
      ["-0.5E+2", NUM],
      ["2", NUM],
      ["by", KW],
      ["1", NUM],
      ["e", ""],
      ["1", NUM],
      [".", INVALID],
      ["25", NUM],
      ["%", NUM],
      ["3 .. 4", NUM],
      ["..", RANGE_OP],
      ["@", INVALID],
    ]);
  });

  it("an unclosed call ends with its statement", () => {
    expect(scopesOf("after layer 1 keep by f(a: 1; after layer 2 keep by g # (x")).toEqual([
      ["after", KW],
      ["layer", KW],
      ["1", NUM],
      ["keep", KW],
      ["by", KW],
      ["f", FUNC],
      ["(", LPAREN],
      ["a", PARAM],
      [":", SEP],
      ["1", NUM],
      [";", SEP],
      ["after", KW],
      ["layer", KW],
      ["2", NUM],
      ["keep", KW],
      ["by", KW],
      ["g", FUNC],
      ["#", `${COMMENT} ${COMMENT_MARK}`],
      [" (x", COMMENT],
    ]);
    const [first, second] = tokenize("x by f(a:\nkeep");
    expect(first!.at(-1)!.scopes).toEqual([ROOT, SEP]);
    expect(second!.map((t) => t.scopes)).toEqual([[ROOT, KW]]);
  });
});

// ---------------------------------------------------------------------------------------------------
// Property tests: the grammar against the real lexer (any text) and the real parser (valid statements).

const RUNS = { numRuns: 300 };

/** Per character of a line, what the lexer made of it. */
interface LexMap {
  kind: (number | "space" | "comment" | "error")[];
  tokenType: string[];
  starts: Set<number>;
  ends: Set<number>;
}

function lexMap(line: string): LexMap {
  const { tokens, errors } = lex(line);
  const kind: LexMap["kind"] = Array.from({ length: line.length }, () => "space" as const);
  const comment = line.indexOf("#");
  if (comment >= 0) for (let i = comment; i < line.length; i++) kind[i] = "comment";
  for (const e of errors) for (let i = e.offset; i < e.offset + e.length; i++) kind[i] = "error";
  const starts = new Set<number>();
  const ends = new Set<number>();
  tokens.forEach((t, n) => {
    for (let i = t.startOffset; i < t.startOffset + t.image.length; i++) kind[i] = n;
    starts.add(t.startOffset);
    ends.add(t.startOffset + t.image.length);
  });
  return { kind, tokenType: tokens.map((t) => t.tokenType.name), starts, ends };
}

const NAME_SCOPES = [FUNC, MODEL, PARAM, OPTION, VALUE];
/** What the grammar may call each lexer token (the last scope; "" = only source.prune). */
const ALLOWED: Record<string, string[]> = {
  Identifier: [...NAME_SCOPES, SET, ""],
  Number: [NUM],
  Percent: [NUM],
  DotDot: [NUM, RANGE_OP],
  LParen: [LPAREN],
  RParen: [RPAREN],
  Comma: [SEP],
  Colon: [SEP],
  Semicolon: [SEP],
  Equals: [ASSIGN],
};
for (const t of KEYWORDS) ALLOWED[t.name] = [KW, ...NAME_SCOPES];

function checkAgainstLexer(line: string): void {
  const map = lexMap(line);
  const toks = tokenizeLine(line);
  for (const t of toks) {
    const where = `${JSON.stringify(t.text)} at ${t.start} (${t.scopes.join(" ")}) in ${JSON.stringify(line)}\n${show(toks)}`;
    const kinds = map.kind.slice(t.start, t.end);
    const last = t.scopes.length > 1 ? t.scopes[t.scopes.length - 1]! : "";
    if (kinds.every((k) => k === "comment")) {
      expect(t.scopes[1], where).toBe(COMMENT);
    } else if (LEXER_SPACE.test(t.text) && kinds.every((k) => k === "space")) {
      expect(t.scopes, where).toEqual([ROOT]);
    } else if (kinds.every((k) => k === "error")) {
      expect(last, where).toBe(INVALID);
    } else {
      // Lexer tokens, whole: one, or (numbers only) several with the spaces between them.
      expect(map.starts.has(t.start) && map.ends.has(t.end), where).toBe(true);
      expect(
        kinds.every((k) => typeof k === "number" || k === "space"),
        where,
      ).toBe(true);
      const covered = [...new Set(kinds.filter((k): k is number => typeof k === "number"))];
      if (covered.length > 1) expect(last, where).toBe(NUM);
      for (const n of covered) expect(ALLOWED[map.tokenType[n]!], `${map.tokenType[n]}: ${where}`).toContain(last);
    }
  }
}

const spaces = fc.constantFrom("", " ", "  ", "\t", "\u00a0");
const somePiece = fc.oneof(
  fc.constantFrom(...LEXER_KEYWORDS).chain((k) => fc.mixedCase(fc.constant(k))),
  fc.constantFrom(
    "image",
    "cls-attn",
    "layered",
    "kv-cache",
    "keep-x",
    "_a1",
    "tokens-as-unit",
    "IGA",
    "x2by",
    "a--",
    "B_",
    "e",
    "E5",
  ),
  fc.constantFrom("2", "-2", "0.01", "1e5", "-1.5e-3", "25", "1e", "1.", "007", "3e+", ".5"),
  fc.constantFrom(
    "%",
    "..",
    "...",
    "(",
    ")",
    ",",
    ":",
    "=",
    ";",
    ".",
    "-",
    "@",
    "!",
    '"',
    "\u212A",
    "é",
    "# by x (",
    "#",
  ),
);
const anyLine = fc
  .array(fc.tuple(spaces, somePiece), { maxLength: 14 })
  .map((parts) => parts.map(([s, p]) => s + p).join(""));

/** A piece of a generated statement and the exact scope the grammar must give it ("" for spaces: not checked). */
type Piece = [text: string, scope: string];
const sp = (min: 0 | 1): fc.Arbitrary<Piece[]> =>
  fc.constantFrom(...(min === 0 ? [""] : []), " ", "  ", "\t").map((s): Piece[] => (s === "" ? [] : [[s, ""]]));
const seq = (...parts: fc.Arbitrary<Piece[]>[]): fc.Arbitrary<Piece[]> => fc.tuple(...parts).map((ps) => ps.flat());
const one = (arb: fc.Arbitrary<string>, scope: string): fc.Arbitrary<Piece[]> => arb.map((t): Piece[] => [[t, scope]]);
const kw = (...words: string[]): fc.Arbitrary<Piece[]> =>
  fc
    .constantFrom(...words)
    .chain((w) => fc.mixedCase(fc.constant(w)))
    .map((w): Piece[] => [[w, KW]]);
const lit = (text: string, scope: string): fc.Arbitrary<Piece[]> => fc.constant<Piece[]>([[text, scope]]);
const opt = (arb: fc.Arbitrary<Piece[]>): fc.Arbitrary<Piece[]> =>
  fc.option(arb, { nil: undefined }).map((p) => p ?? []);

const isKeyword = (w: string): boolean => LEXER_KEYWORDS.includes(w.toLowerCase());
const identifier = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_-]{0,7}$/).filter((w) => !isKeyword(w));
const anyWord = fc.oneof(
  identifier,
  fc.constantFrom(...LEXER_KEYWORDS).chain((k) => fc.mixedCase(fc.constant(k))),
);
const number = fc.stringMatching(/^-?[0-9]{1,3}(\.[0-9]{1,2})?([eE][+-]?[0-9])?$/);

const value = fc.oneof(
  one(number, NUM),
  seq(one(number, NUM), sp(0), lit("..", NUM), sp(0), one(number, NUM)),
  one(anyWord, VALUE),
);
const arg = seq(opt(seq(one(anyWord, PARAM), sp(0), lit(":", SEP), sp(0))), value);
const args = seq(
  sp(0),
  lit("(", LPAREN),
  sp(0),
  opt(
    seq(
      arg,
      fc.array(seq(sp(0), lit(",", SEP), sp(0), arg), { maxLength: 3 }).map((a) => a.flat()),
    ),
  ),
  sp(0),
  lit(")", RPAREN),
);
const options = seq(
  sp(1),
  kw("with"),
  sp(1),
  one(anyWord, OPTION),
  fc.array(seq(sp(0), lit(",", SEP), sp(0), one(anyWord, OPTION)), { maxLength: 2 }).map((a) => a.flat()),
);
const amount = fc.oneof(
  seq(one(number, NUM), sp(0), lit("%", NUM)),
  seq(one(number, NUM), opt(seq(sp(1), kw("tokens")))),
  seq(kw("mass"), sp(1), one(number, NUM), sp(0), lit("%", NUM)),
  seq(kw("above"), sp(1), one(number, NUM)),
);
const position = fc.oneof(
  seq(kw("after", "in", "before"), sp(1), kw("layer"), sp(1), one(number, NUM)),
  seq(kw("after"), sp(1), kw("encoder")),
  seq(kw("in"), sp(1), kw("layers"), sp(1), one(number, NUM), sp(0), lit("..", NUM), sp(0), one(number, NUM)),
);
const stage = seq(
  opt(seq(position, sp(1))),
  kw("keep", "drop", "merge"),
  opt(seq(sp(1), kw("kv"))),
  opt(seq(sp(1), amount)),
  opt(seq(sp(1), kw("of"), sp(1), one(identifier, SET))),
  sp(1),
  kw("by"),
  sp(1),
  one(anyWord, FUNC),
  opt(args),
  opt(options),
);
const statement = fc.oneof(
  { arbitrary: stage, weight: 4 },
  seq(kw("model"), sp(1), one(anyWord, MODEL)),
  seq(
    kw("tokens"),
    sp(1),
    one(identifier, SET),
    sp(0),
    lit("=", ASSIGN),
    sp(0),
    kw("input", "after"),
    sp(1),
    one(identifier, SET),
  ),
);
const validLine = seq(
  sp(0),
  statement,
  fc.array(seq(sp(0), lit(";", SEP), sp(0), statement), { maxLength: 2 }).map((a) => a.flat()),
  sp(0),
  opt(seq(lit("#", `${COMMENT} ${COMMENT_MARK}`), one(fc.constantFrom("", " by x(", " after layer 2"), COMMENT))),
);

let sharedParser: SpecParser | undefined;

/** The generated line is a valid statement list for the real parser (syntax only: the registry is not consulted). */
function checkParses(line: string): void {
  const { tokens, errors } = lex(line);
  expect(errors, line).toEqual([]);
  const chunks: (typeof tokens)[] = [[]];
  for (const t of tokens) {
    if (isSeparator(t)) chunks.push([]);
    else chunks[chunks.length - 1]!.push(t);
  }
  const parser = (sharedParser ??= new SpecParser());
  for (const chunk of chunks.filter((c) => c.length > 0)) {
    parser.input = chunk;
    parser.statement();
    expect(
      parser.errors.map((e) => e.message),
      line,
    ).toEqual([]);
  }
}

describe("the grammar and the real front end agree", () => {
  it("on any line: token boundaries, comments, lexing errors and token kinds", () => {
    fc.assert(
      fc.property(anyLine, (line) => checkAgainstLexer(line)),
      RUNS,
    );
  });

  it("on valid statements: each name gets the scope of its role in the parser", () => {
    fc.assert(
      fc.property(validLine, (pieces) => {
        const line = pieces.map(([t]) => t).join("");
        checkParses(line);
        checkAgainstLexer(line);
        const toks = tokenizeLine(line);
        let at = 0;
        for (const [text, scope] of pieces) {
          if (scope !== "") {
            for (let i = at; i < at + text.length; i++) {
              const tok = toks.find((t) => t.start <= i && i < t.end)!;
              expect(
                tok.scopes.slice(1).join(" "),
                `${JSON.stringify(text)} in ${JSON.stringify(line)}\n${show(toks)}`,
              ).toBe(scope);
            }
          }
          at += text.length;
        }
      }),
      RUNS,
    );
  });

  it("on several lines: a line tokenizes the same whatever the line before it", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            anyLine,
            validLine.map((p) => p.map(([t]) => t).join("")),
          ),
          { maxLength: 6 },
        ),
        (lines) => {
          const text = lines.join("\n");
          expect(tokenize(text)).toEqual(tokenize(text, true));
        },
      ),
      RUNS,
    );
  });
});
