import { describe, expect, it } from "vitest";
import {
  createRegistry,
  closest,
  editDistance,
  formatDiagnostic,
  formatDiagnostics,
  parseSpec,
  printSpec,
  stripSpans,
  argsWithDefaults,
  type CriterionInfo,
  type CriterionRegistry,
} from "../grammar/index.js";

const CRITERIA: CriterionInfo[] = [
  { name: "cls-attn", summary: "attention from CLS", args: {} },
  {
    name: "cls-attn-ensemble",
    summary: "CLS attention averaged over layers",
    args: {
      layers: { type: "range", default: [8, 10], doc: "layers to average" },
      mode: { type: "identifier", default: "mean", doc: "how" },
    },
  },
  { name: "last-token-attn", summary: "FastV", args: {} },
  { name: "iga", summary: "instruction-guided attention", args: {} },
  { name: "random", summary: "random", args: { seed: { type: "integer", default: 0, doc: "seed" } } },
  { name: "diversity", summary: "DivPrune", args: {} },
  { name: "similarity", summary: "ToMe", args: { alpha: { type: "number", doc: "weight" } } },
  {
    name: "crops",
    summary: "crops",
    args: { n: { type: "integer", doc: "crop size" }, scale: { type: "number", default: 1, doc: "scale" } },
  },
];
const registry: CriterionRegistry = createRegistry(CRITERIA);

const parse = (text: string) => parseSpec(text, "spec.prune", registry);
const render = (text: string): string => formatDiagnostics(parse(text).diagnostics, text);

describe("the design card", () => {
  it("parses the one-liner", () => {
    const text = "after layer 2 keep 25% by cls-attn; in layer 16 drop by IGA";
    const { spec, diagnostics } = parse(text);
    expect(diagnostics).toEqual([]);
    expect(spec).toBeDefined();
    expect(stripSpans(spec!)).toEqual({
      tokenSets: [],
      stages: [
        {
          position: { kind: "after-layer", layer: 2 },
          target: "stream",
          action: "keep",
          amount: { kind: "percent", value: 25 },
          criterion: { name: "cls-attn", args: {} },
          options: [],
        },
        {
          position: { kind: "in-layer", layer: 16 },
          target: "stream",
          action: "drop",
          criterion: { name: "iga", args: {} },
          options: [],
        },
      ],
    });
    expect(spec!.stages[1]!.amount).toBeUndefined();
    expect(spec!.text).toBe(text);
    expect(spec!.file).toBe("spec.prune");
  });

  it("records spans of the layer, amount, criterion and statement", () => {
    const ok = parse(
      "model vit\n  after layer -2 keep mass 90% of image by Random(seed: 1) with mask\ntokens image = input m",
    );
    expect(ok.diagnostics).toEqual([]);
    const s = ok.spec!.stages[0]!;
    expect(s.span).toEqual({ line: 2, column: 3, endLine: 2, endColumn: 69 });
    expect(s.positionSpan).toEqual({ line: 2, column: 3, endLine: 2, endColumn: 17 });
    expect(s.layerSpan).toEqual({ line: 2, column: 15, endLine: 2, endColumn: 17 });
    expect(s.actionSpan).toEqual({ line: 2, column: 18, endLine: 2, endColumn: 22 });
    expect(s.amountSpan).toEqual({ line: 2, column: 23, endLine: 2, endColumn: 31 });
    expect(s.ofSpan).toEqual({ line: 2, column: 35, endLine: 2, endColumn: 40 });
    expect(s.criterion.span).toEqual({ line: 2, column: 44, endLine: 2, endColumn: 50 });
    expect(s.criterion.argSpans).toEqual({ seed: { line: 2, column: 57, endLine: 2, endColumn: 58 } });
    expect(s.optionSpans).toEqual([{ line: 2, column: 65, endLine: 2, endColumn: 69 }]);
    expect(s.criterion.name).toBe("random");
    expect(ok.spec!.model).toEqual({ name: "vit", span: { line: 1, column: 7, endLine: 1, endColumn: 10 } });
    expect(ok.spec!.tokenSets[0]).toEqual({
      name: "image",
      nameSpan: { line: 3, column: 8, endLine: 3, endColumn: 13 },
      source: { kind: "input", input: "m" },
      sourceSpan: { line: 3, column: 22, endLine: 3, endColumn: 23 },
      span: { line: 3, column: 1, endLine: 3, endColumn: 23 },
    });
  });
});

describe("the language sketch", () => {
  it("parses the ViT example", () => {
    const text = [
      "# deit-small.prune: progressive pruning for a ViT with a CLS token",
      "model vit                                   # optional family hint",
      "",
      "after layer 2  keep 50% by cls-attn         # FasterVLM-style",
      "after layer 5  keep 25% by diversity",
      "after layer 8  merge 30% by similarity",
    ].join("\n");
    const { spec, diagnostics } = parse(text);
    expect(diagnostics).toEqual([]);
    expect(spec!.model?.name).toBe("vit");
    expect(spec!.stages.map((s) => [s.position, s.action, s.amount, s.criterion.name])).toEqual([
      [{ kind: "after-layer", layer: 2 }, "keep", { kind: "percent", value: 50 }, "cls-attn"],
      [{ kind: "after-layer", layer: 5 }, "keep", { kind: "percent", value: 25 }, "diversity"],
      [{ kind: "after-layer", layer: 8 }, "merge", { kind: "percent", value: 30 }, "similarity"],
    ]);
  });

  it("parses the LLaVA example with token sets", () => {
    const text = [
      "tokens image = input image_mask             # which positions are image tokens",
      "tokens instruction = after image            # the text after the image span",
      "in layer 2  drop 50% of image by last-token-attn     # FastV",
      "in layer 16 drop 75% of image by iga                 # TransPrune",
    ].join("\r\n");
    const { spec, diagnostics } = parse(text);
    expect(diagnostics).toEqual([]);
    expect(stripSpans(spec!)).toEqual({
      tokenSets: [
        { name: "image", source: { kind: "input", input: "image_mask" } },
        { name: "instruction", source: { kind: "after", set: "image" } },
      ],
      stages: [
        {
          position: { kind: "in-layer", layer: 2 },
          target: "stream",
          action: "drop",
          amount: { kind: "percent", value: 50 },
          of: "image",
          criterion: { name: "last-token-attn", args: {} },
          options: [],
        },
        {
          position: { kind: "in-layer", layer: 16 },
          target: "stream",
          action: "drop",
          amount: { kind: "percent", value: 75 },
          of: "image",
          criterion: { name: "iga", args: {} },
          options: [],
        },
      ],
    });
  });

  it("parses every position, amount, argument and option form", () => {
    const text = [
      "after encoder keep 64 by random",
      "before layer 0 drop 64 tokens by random(7)",
      "after layer -1 keep mass 90% by cls-attn-ensemble(layers: 8..10, mode: max)",
      "in layer 3 keep above 0.01 by cls-attn-ensemble(MODE: mean) with recycle, MASK",
      "in layer 4 merge above -1.5e-3 by similarity(alpha: -0.5)",
      "after layer 5 keep 12.5 % by crops(16, scale: 2)",
      "after layer 6 keep by cls-attn-ensemble(layers: -3..-1)",
      "after layer 7 keep 5% by random()",
    ].join(";");
    const { spec, diagnostics } = parse(text);
    expect(diagnostics).toEqual([]);
    expect(spec!.stages).toHaveLength(8);
    const st = spec!.stages;
    expect(st[0]!.position).toEqual({ kind: "after-encoder" });
    expect(st[0]!.amount).toEqual({ kind: "count", value: 64 });
    expect(st[1]!.position).toEqual({ kind: "before-layer-0" });
    expect(st[1]!.amount).toEqual({ kind: "count", value: 64 });
    expect(st[1]!.criterion.args).toEqual({ seed: 7 });
    expect(st[2]!.position).toEqual({ kind: "after-layer", layer: -1 });
    expect(st[2]!.amount).toEqual({ kind: "mass", value: 90 });
    expect(st[2]!.criterion.args).toEqual({ layers: [8, 10], mode: "max" });
    expect(st[3]!.amount).toEqual({ kind: "above", value: 0.01 });
    expect(st[3]!.criterion.args).toEqual({ mode: "mean" });
    expect(st[3]!.options).toEqual(["recycle", "mask"]);
    expect(st[4]!.amount).toEqual({ kind: "above", value: -0.0015 });
    expect(st[4]!.criterion.args).toEqual({ alpha: -0.5 });
    expect(st[5]!.amount).toEqual({ kind: "percent", value: 12.5 });
    expect(st[5]!.criterion.args).toEqual({ n: 16, scale: 2 });
    expect(st[6]!.amount).toBeUndefined();
    expect(st[6]!.criterion.args).toEqual({ layers: [-3, -1] });
    expect(st[7]!.criterion.args).toEqual({});
  });

  it("treats keywords and criterion names case-insensitively and stores them in lower case", () => {
    const { spec, diagnostics } = parse("MODEL ViT\nAfter LAYER 2 Keep 25% BY Cls-Attn WITH Recycle");
    expect(diagnostics).toEqual([]);
    expect(spec!.model?.name).toBe("vit");
    expect(spec!.stages[0]!.criterion.name).toBe("cls-attn");
    expect(spec!.stages[0]!.action).toBe("keep");
    expect(spec!.stages[0]!.options).toEqual(["recycle"]);
  });

  it("accepts keywords as criterion, argument and option-list names where unambiguous", () => {
    const reg = createRegistry([
      { name: "mass", summary: "", args: { layer: { type: "integer", doc: "" }, by: { type: "identifier", doc: "" } } },
    ]);
    const { spec, diagnostics } = parseSpec("after layer 1 keep 5% by mass(layer: 3, by: keep)", "k.prune", reg);
    expect(diagnostics).toEqual([]);
    expect(spec!.stages[0]!.criterion).toMatchObject({ name: "mass", args: { layer: 3, by: "keep" } });
  });

  it("accepts empty files, comments and blank statements", () => {
    for (const text of ["", "\n\n", "# nothing\n", " ; ;\n;", "\ufeffafter layer 1 keep 5% by iga"]) {
      const r = parse(text);
      expect(r.diagnostics).toEqual([]);
      expect(r.spec).toBeDefined();
    }
  });

  it("allows `of SET` naming any set when the file declares none (the model resolves it)", () => {
    const r = parse("in layer 2 drop 50% of image by iga");
    expect(r.diagnostics).toEqual([]);
    expect(r.spec!.stages[0]!.of).toBe("image");
  });

  it("lets stages name sets declared further down", () => {
    const r = parse("in layer 2 drop 50% of image by iga\ntokens image = input mask");
    expect(r.diagnostics).toEqual([]);
  });
});

describe("diagnostics", () => {
  const cases: [string, string, string][] = [
    [
      "misspelled position keyword",
      "afer layer 2 keep 25% by cls-attn",
      `spec.prune:1:1: error: expected 'model', 'tokens', 'after', 'in', 'before', 'during', 'keep', 'drop' or 'merge', found 'afer'
 1 | afer layer 2 keep 25% by cls-attn
   | ^~~~
   = help: did you mean 'after'?`,
    ],
    [
      "misspelled action",
      "after layer 2 kepe 25% by cls-attn",
      `spec.prune:1:15: error: expected 'during', 'keep', 'drop' or 'merge', found 'kepe'
 1 | after layer 2 kepe 25% by cls-attn
   |               ^~~~
   = help: did you mean 'keep'?`,
    ],
    [
      "unknown criterion",
      "after layer 2 keep 25% by cls-atn",
      `spec.prune:1:27: error: unknown criterion 'cls-atn'
 1 | after layer 2 keep 25% by cls-atn
   |                           ^~~~~~~
   = help: did you mean 'cls-attn'?`,
    ],
    [
      "unknown criterion, no close match",
      "after layer 2 keep 25% by wombat",
      `spec.prune:1:27: error: unknown criterion 'wombat'
 1 | after layer 2 keep 25% by wombat
   |                           ^~~~~~`,
    ],
    [
      "percent above 100",
      "after layer 2 keep 250% by cls-attn",
      `spec.prune:1:20: error: amount must be in (0, 100]%, got 250%
 1 | after layer 2 keep 250% by cls-attn
   |                    ^~~`,
    ],
    [
      "zero percent",
      "after layer 2 drop 0% by cls-attn",
      `spec.prune:1:20: error: amount must be in (0, 100]%, got 0%
 1 | after layer 2 drop 0% by cls-attn
   |                    ^`,
    ],
    [
      "zero count",
      "after layer 2 keep 0 tokens by cls-attn",
      `spec.prune:1:20: error: token count must be a positive integer, got 0
 1 | after layer 2 keep 0 tokens by cls-attn
   |                    ^`,
    ],
    [
      "fractional count",
      "after layer 2 keep 6.5 by cls-attn",
      `spec.prune:1:20: error: token count must be a positive integer, got 6.5
 1 | after layer 2 keep 6.5 by cls-attn
   |                    ^~~`,
    ],
    [
      "mass out of range",
      "after layer 2 keep mass 120% by cls-attn",
      `spec.prune:1:25: error: mass must be in (0, 100]%, got 120%
 1 | after layer 2 keep mass 120% by cls-attn
   |                         ^~~`,
    ],
    [
      "mass without %",
      "after layer 2 keep mass 90 by cls-attn",
      `spec.prune:1:28: error: expected '%', found 'by'
 1 | after layer 2 keep mass 90 by cls-attn
   |                            ^~`,
    ],
    [
      "above without a number",
      "after layer 2 keep above high by cls-attn",
      `spec.prune:1:26: error: expected a number, found 'high'
 1 | after layer 2 keep above high by cls-attn
   |                          ^~~~`,
    ],
    [
      "fractional layer",
      "after layer 2.5 keep 25% by cls-attn",
      `spec.prune:1:13: error: layer must be an integer, got 2.5
 1 | after layer 2.5 keep 25% by cls-attn
   |             ^~~`,
    ],
    [
      "before a layer other than 0",
      "before layer 3 keep 25% by cls-attn",
      `spec.prune:1:14: error: 'before layer' takes only 0 (the input embeddings), got 3
 1 | before layer 3 keep 25% by cls-attn
   |              ^
   = help: did you mean 'after layer 2'?`,
    ],
    [
      "missing criterion at end of line",
      "after layer 2 keep 25%\n",
      `spec.prune:1:23: error: missing 'by CRITERION' (every stage needs a criterion)
 1 | after layer 2 keep 25%
   |                       ^`,
    ],
    [
      "missing criterion before ;",
      "after layer 2 keep 25% of image; after layer 3 keep 5% by iga",
      `spec.prune:1:32: error: missing 'by CRITERION' (every stage needs a criterion)
 1 | after layer 2 keep 25% of image; after layer 3 keep 5% by iga
   |                                ^`,
    ],
    [
      "criterion name missing at end of file",
      "after layer 2 keep 25% by",
      `spec.prune:1:26: error: expected a criterion name, found end of file
 1 | after layer 2 keep 25% by
   |                          ^`,
    ],
    [
      "unclosed argument list",
      "after layer 2 keep 25% by random(",
      `spec.prune:1:34: error: expected an argument or ')', found end of file
 1 | after layer 2 keep 25% by random(
   |                                  ^`,
    ],
    [
      "argument without a value",
      "after layer 2 keep 25% by random(seed: )",
      `spec.prune:1:40: error: expected a value, found ')'
 1 | after layer 2 keep 25% by random(seed: )
   |                                        ^`,
    ],
    [
      "trailing comma in the option list",
      "after layer 2 keep 25% by iga with mask,",
      `spec.prune:1:41: error: expected an option name, found end of file
 1 | after layer 2 keep 25% by iga with mask,
   |                                         ^`,
    ],
    [
      "misspelled amount keyword",
      "after layer 2 keep mas 90% by iga",
      `spec.prune:1:20: error: expected 'kv', 'heads', a number, 'mass', 'above', 'of' or 'by', found 'mas'
 1 | after layer 2 keep mas 90% by iga
   |                    ^~~
   = help: did you mean 'mass'?`,
    ],
    [
      "keyword glued to its number",
      "after layer2 keep 25% by iga",
      `spec.prune:1:7: error: expected 'layer' or 'encoder', found 'layer2'
 1 | after layer2 keep 25% by iga
   |       ^~~~~~
   = help: did you mean 'layer 2'?`,
    ],
    [
      "misspelled with",
      "after layer 2 keep 25% by iga wiht mask",
      `spec.prune:1:31: error: expected '(', 'with', 'across' or end of statement, found 'wiht'
 1 | after layer 2 keep 25% by iga wiht mask
   |                               ^~~~
   = help: did you mean 'with'?`,
    ],
    [
      "misspelled option",
      "after layer 2 keep 25% by iga with recyle",
      `spec.prune:1:36: error: unknown option 'recyle'
 1 | after layer 2 keep 25% by iga with recyle
   |                                    ^~~~~~
   = help: did you mean 'recycle'?`,
    ],
    [
      "unknown option, no close match",
      "after layer 2 keep 25% by iga with turbo",
      `spec.prune:1:36: error: unknown option 'turbo' (options: recycle, mask, renumber, restore)
 1 | after layer 2 keep 25% by iga with turbo
   |                                    ^~~~~`,
    ],
    [
      "duplicate option",
      "after layer 2 keep 25% by iga with mask, MASK",
      `spec.prune:1:42: error: option 'mask' is given twice
 1 | after layer 2 keep 25% by iga with mask, MASK
   |                                          ^~~~`,
    ],
    [
      "misspelled argument",
      "after layer 2 keep 25% by random(sed: 3)",
      `spec.prune:1:34: error: unknown argument 'sed' for criterion 'random'
 1 | after layer 2 keep 25% by random(sed: 3)
   |                                  ^~~
   = help: did you mean 'seed'?`,
    ],
    [
      "unknown argument, no close match",
      "after layer 2 keep 25% by random(temperature: 3)",
      `spec.prune:1:34: error: unknown argument 'temperature' for criterion 'random' (it takes: seed)
 1 | after layer 2 keep 25% by random(temperature: 3)
   |                                  ^~~~~~~~~~~`,
    ],
    [
      "argument for a criterion without arguments",
      "after layer 2 keep 25% by iga(1)",
      `spec.prune:1:31: error: criterion 'iga' takes no arguments
 1 | after layer 2 keep 25% by iga(1)
   |                               ^`,
    ],
    [
      "integer argument given a fraction",
      "after layer 2 keep 25% by random(seed: 1.5)",
      `spec.prune:1:40: error: argument 'seed' of 'random' must be an integer, got 1.5
 1 | after layer 2 keep 25% by random(seed: 1.5)
   |                                        ^~~`,
    ],
    [
      "range argument given a number",
      "after layer 2 keep 25% by cls-attn-ensemble(layers: 8)",
      `spec.prune:1:53: error: argument 'layers' of 'cls-attn-ensemble' must be a range like 8..10, got 8
 1 | after layer 2 keep 25% by cls-attn-ensemble(layers: 8)
   |                                                     ^`,
    ],
    [
      "empty range",
      "after layer 2 keep 25% by cls-attn-ensemble(layers: 10..8)",
      `spec.prune:1:53: error: argument 'layers' of 'cls-attn-ensemble' must be a range lo..hi with lo <= hi, got 10..8
 1 | after layer 2 keep 25% by cls-attn-ensemble(layers: 10..8)
   |                                                     ^~~~~`,
    ],
    [
      "identifier argument given a number",
      "after layer 2 keep 25% by cls-attn-ensemble(mode: 3)",
      `spec.prune:1:51: error: argument 'mode' of 'cls-attn-ensemble' must be a name, got 3
 1 | after layer 2 keep 25% by cls-attn-ensemble(mode: 3)
   |                                                   ^`,
    ],
    [
      "number argument given a name",
      "after layer 2 keep 25% by similarity(alpha: big)",
      `spec.prune:1:45: error: argument 'alpha' of 'similarity' must be a number, got 'big'
 1 | after layer 2 keep 25% by similarity(alpha: big)
   |                                             ^~~`,
    ],
    [
      "duplicate argument",
      "after layer 2 keep 25% by crops(4, n: 5)",
      `spec.prune:1:36: error: argument 'n' is given twice
 1 | after layer 2 keep 25% by crops(4, n: 5)
   |                                    ^`,
    ],
    [
      "positional after named",
      "after layer 2 keep 25% by crops(n: 4, 2)",
      `spec.prune:1:39: error: a positional argument cannot follow a named one; write 'name: value'
 1 | after layer 2 keep 25% by crops(n: 4, 2)
   |                                       ^`,
    ],
    [
      "too many positional arguments",
      "after layer 2 keep 25% by crops(4, 2, 1)",
      `spec.prune:1:39: error: criterion 'crops' takes at most 2 arguments (n, scale)
 1 | after layer 2 keep 25% by crops(4, 2, 1)
   |                                       ^`,
    ],
    [
      "unknown token set",
      "tokens image = input image_mask\nin layer 2 drop 50% of imgae by iga",
      `spec.prune:2:24: error: unknown token set 'imgae'
 2 | in layer 2 drop 50% of imgae by iga
   |                        ^~~~~
   = help: did you mean 'image'?`,
    ],
    [
      "unknown token set, no close match",
      "tokens image = input image_mask\ntokens text = after image\nin layer 2 drop 50% of audio by iga",
      `spec.prune:3:24: error: unknown token set 'audio' (declared: image, text)
 3 | in layer 2 drop 50% of audio by iga
   |                        ^~~~~`,
    ],
    [
      "token set after an unknown set",
      "tokens image = input image_mask\ntokens instruction = after imag",
      `spec.prune:2:28: error: unknown token set 'imag'
 2 | tokens instruction = after imag
   |                            ^~~~
   = help: did you mean 'image'?`,
    ],
    [
      "token set used before its declaration",
      "tokens instruction = after image\ntokens image = input image_mask",
      `spec.prune:1:28: error: token set 'image' is used before its declaration on line 2
 1 | tokens instruction = after image
   |                            ^~~~~`,
    ],
    [
      "token set declared twice",
      "tokens image = input a\ntokens image = input b",
      `spec.prune:2:8: error: token set 'image' is already declared on line 1
 2 | tokens image = input b
   |        ^~~~~`,
    ],
    [
      "token set named by a keyword",
      "tokens input = input mask",
      `spec.prune:1:8: error: expected a token set name, found 'input' ('input' is a keyword)
 1 | tokens input = input mask
   |        ^~~~~`,
    ],
    [
      "second model hint",
      "model vit\nmodel llava",
      `spec.prune:2:7: error: the model hint is already given on line 1
 2 | model llava
   |       ^~~~~`,
    ],
    [
      "stray characters",
      "after layer 2 keep 25% by iga @@",
      `spec.prune:1:31: error: unexpected characters '@@'
 1 | after layer 2 keep 25% by iga @@
   |                               ^~`,
    ],
    [
      "a lone minus",
      "after layer - 2 keep 25% by iga",
      `spec.prune:1:13: error: unexpected character '-'
 1 | after layer - 2 keep 25% by iga
   |             ^`,
    ],
    [
      "tabs keep the caret aligned",
      "\tafter layer 2 keep 25% by\tcls-atn",
      `spec.prune:1:28: error: unknown criterion 'cls-atn'
 1 | \tafter layer 2 keep 25% by\tcls-atn
   | \t                         \t^~~~~~~
   = help: did you mean 'cls-attn'?`,
    ],
    [
      "a statement split over lines",
      "after\nlayer 2 keep 25% by iga",
      `spec.prune:1:6: error: expected 'layer' or 'encoder', found end of line
 1 | after
   |      ^

spec.prune:2:1: error: expected 'model', 'tokens', 'after', 'in', 'before', 'during', 'keep', 'drop' or 'merge', found 'layer'
 2 | layer 2 keep 25% by iga
   | ^~~~~`,
    ],
  ];

  it.each(cases)("%s", (_name, text, expected) => {
    const r = parse(text);
    expect(r.spec).toBeUndefined();
    expect(render(text)).toBe(expected);
  });

  it("reports every error of a file in one run, in order", () => {
    const text = [
      "model vit",
      "afer layer 2 keep 25% by cls-attn",
      "after layer 3 keep 250% by cls-attn",
      "after layer 4 keep 25% by cls-atn; after layer 5 kepe 10% by iga",
      "after layer 6 keep 25% by iga   # fine",
      "after layer 7 keep 0 by random(sed: 2) with mask, recyle",
    ].join("\n");
    const { spec, diagnostics } = parse(text);
    expect(spec).toBeUndefined();
    expect(
      diagnostics.map((d) => `${d.line}:${d.column} ${d.message}${d.suggestion ? ` -> ${d.suggestion}` : ""}`),
    ).toEqual([
      "2:1 expected 'model', 'tokens', 'after', 'in', 'before', 'during', 'keep', 'drop' or 'merge', found 'afer' -> after",
      "3:20 amount must be in (0, 100]%, got 250%",
      "4:27 unknown criterion 'cls-atn' -> cls-attn",
      "4:50 expected 'during', 'keep', 'drop' or 'merge', found 'kepe' -> keep",
      "6:20 token count must be a positive integer, got 0",
      "6:32 unknown argument 'sed' for criterion 'random' -> seed",
      "6:51 unknown option 'recyle' -> recycle",
    ]);
    expect(diagnostics.every((d) => d.file === "spec.prune" && d.severity === "error")).toBe(true);
  });

  it("points at the offending token, not the line start", () => {
    const [d] = parse("   after layer 2 keep 25% by nope").diagnostics;
    expect(d).toMatchObject({ line: 1, column: 30, endLine: 1, endColumn: 34 });
  });

  it("never throws, even when the registry does", () => {
    const broken: CriterionRegistry = {
      get: () => {
        throw new Error("registry exploded");
      },
      names: () => [],
    };
    const r = parseSpec("after layer 2 keep 25% by iga", "x.prune", broken);
    expect(r.spec).toBeUndefined();
    expect(r.diagnostics).toHaveLength(1);
    expect(r.diagnostics[0]!.message).toBe("internal error while parsing: registry exploded");
  });
});

/** The test criteria plus KV-cache ones (`random` scores both), as passes/registry.ts will list them. */
const KV_CRITERIA: CriterionInfo[] = [
  ...CRITERIA.map((c): CriterionInfo => (c.name === "random" ? { ...c, targets: ["stream", "kv"] } : c)),
  { name: "snapkv", summary: "SnapKV", targets: ["kv"], args: { window: { type: "integer", default: 64, doc: "" } } },
  { name: "streaming", summary: "StreamingLLM", targets: ["kv"], args: { sinks: { type: "integer", doc: "" } } },
  { name: "knorm", summary: "key norm", targets: ["kv"], args: {} },
  { name: "h2o", summary: "H2O", targets: ["kv"], args: {} },
];
const kvRegistry = createRegistry(KV_CRITERIA);
const parseKv = (text: string) => parseSpec(text, "spec.prune", kvRegistry);
const renderKv = (text: string): string => formatDiagnostics(parseKv(text).diagnostics, text);

describe("stages on the KV cache", () => {
  it("parses keep kv / drop kv with a layer range, one layer, or no position (every layer)", () => {
    const text = [
      "in layers 2..27 keep kv 25% by snapkv(window: 32)",
      "keep kv 512 tokens by streaming(sinks: 4)          # no position: every layer",
      "in layer 3 drop kv 75% by knorm",
      "tokens context = input context_mask",
      "in layers 0..-1 keep kv 50% of context by h2o      # negative ends count from the end",
    ].join("\n");
    const { spec, diagnostics } = parseKv(text);
    expect(diagnostics).toEqual([]);
    expect(stripSpans(spec!)).toEqual({
      tokenSets: [{ name: "context", source: { kind: "input", input: "context_mask" } }],
      stages: [
        {
          position: { kind: "in-layers", from: 2, to: 27 },
          target: "kv",
          action: "keep",
          amount: { kind: "percent", value: 25 },
          criterion: { name: "snapkv", args: { window: 32 } },
          options: [],
        },
        {
          position: { kind: "all-layers" },
          target: "kv",
          action: "keep",
          amount: { kind: "count", value: 512 },
          criterion: { name: "streaming", args: { sinks: 4 } },
          options: [],
        },
        {
          position: { kind: "in-layer", layer: 3 },
          target: "kv",
          action: "drop",
          amount: { kind: "percent", value: 75 },
          criterion: { name: "knorm", args: {} },
          options: [],
        },
        {
          position: { kind: "in-layers", from: 0, to: -1 },
          target: "kv",
          action: "keep",
          amount: { kind: "percent", value: 50 },
          of: "context",
          criterion: { name: "h2o", args: {} },
          options: [],
        },
      ],
    });
  });

  it("records the spans of 'kv', the layer range, and the action word as the position of an every-layer stage", () => {
    const { spec, diagnostics } = parseKv("  in layers -4 .. -1 drop KV 30% by knorm\nKeep Kv by h2o");
    expect(diagnostics).toEqual([]);
    const [ranged, every] = spec!.stages;
    expect(ranged!.position).toEqual({ kind: "in-layers", from: -4, to: -1 });
    expect(ranged!.positionSpan).toEqual({ line: 1, column: 3, endLine: 1, endColumn: 21 });
    expect(ranged!.layerSpan).toEqual({ line: 1, column: 13, endLine: 1, endColumn: 21 });
    expect(ranged!.actionSpan).toEqual({ line: 1, column: 22, endLine: 1, endColumn: 26 });
    expect(ranged!.kvSpan).toEqual({ line: 1, column: 27, endLine: 1, endColumn: 29 });
    expect(every!.position).toEqual({ kind: "all-layers" });
    expect(every!.target).toBe("kv");
    expect(every!.positionSpan).toEqual({ line: 2, column: 1, endLine: 2, endColumn: 5 });
    expect(every!.actionSpan).toEqual(every!.positionSpan);
    expect(every!.kvSpan).toEqual({ line: 2, column: 6, endLine: 2, endColumn: 8 });
    expect(every!.layerSpan).toBeUndefined();
  });

  it("marks stream stages as such, and lets a criterion that scores both serve both", () => {
    const { spec, diagnostics } = parseKv("after layer 2 keep 25% by random(3); in layers 1..1 drop kv by random");
    expect(diagnostics).toEqual([]);
    expect(spec!.stages.map((st) => [st.target, st.position, st.kvSpan === undefined])).toEqual([
      ["stream", { kind: "after-layer", layer: 2 }, true],
      ["kv", { kind: "in-layers", from: 1, to: 1 }, false],
    ]);
  });

  it("accepts mixed-sign ranges (resolved against the model later) and 'kv' and 'layers' as names", () => {
    const reg = createRegistry([
      { name: "kv", summary: "", targets: ["kv", "stream"], args: { layers: { type: "range", doc: "" } } },
    ]);
    const text =
      "model kv\nin layers -2..30 keep kv by kv(layers: 0..3)\nafter layer 1 keep by KV(LAYERS: 1..2) with kv";
    const { diagnostics } = parseSpec(text, "k.prune", reg);
    // `kv` is an option name here, so only the option is unknown.
    expect(diagnostics.map((d) => `${d.line}:${d.column} ${d.message}`)).toEqual([
      "3:45 unknown option 'kv' (options: recycle, mask, renumber, restore)",
    ]);
    const ok = parseSpec(text.replace(" with kv", ""), "k.prune", reg);
    expect(ok.diagnostics).toEqual([]);
    expect(ok.spec!.model!.name).toBe("kv");
    expect(ok.spec!.stages[0]!.position).toEqual({ kind: "in-layers", from: -2, to: 30 });
    expect(ok.spec!.stages[1]!.criterion.args).toEqual({ layers: [1, 2] });
  });

  it("prints the canonical form, which parses back to the same IR", () => {
    const text = "IN LAYERS 0 .. -1 KEEP KV 50 % OF ctx BY H2O\ntokens ctx = input m\ndrop kv 64 by streaming(4)";
    const r = parseKv(text);
    expect(r.diagnostics).toEqual([]);
    const printed = printSpec(r.spec!);
    expect(printed).toBe(
      [
        "tokens ctx = input m",
        "in layers 0..-1 keep kv 50% of ctx by h2o",
        "drop kv 64 tokens by streaming(sinks: 4)",
        "",
      ].join("\n"),
    );
    expect(stripSpans(parseKv(printed).spec!)).toEqual(stripSpans(r.spec!));
  });

  const cases: [string, string, string][] = [
    [
      "a stream stage without a position",
      "keep 25% by cls-attn",
      `spec.prune:1:1: error: a stage on the residual stream needs a position: 'after layer L', 'in layer L' or 'after encoder'; only 'keep kv' / 'drop kv' stages may omit it (every layer)
 1 | keep 25% by cls-attn
   | ^~~~`,
    ],
    [
      "a layer range on a stream stage",
      "in layers 2..5 keep by cls-attn",
      `spec.prune:1:1: error: 'in layers A..B' is for KV-cache stages ('keep kv' / 'drop kv'); a stage on the residual stream acts once: 'after layer L' or 'in layer L'
 1 | in layers 2..5 keep by cls-attn
   | ^~~~~~~~~~~~~~`,
    ],
    [
      "merge kv",
      "in layer 3 merge kv 25% by snapkv",
      `spec.prune:1:12: error: 'merge kv' is not supported: a KV-cache stage keeps or drops entries ('keep kv' / 'drop kv')
 1 | in layer 3 merge kv 25% by snapkv
   |            ^~~~~~~~`,
    ],
    [
      "kv after the encoder",
      "after encoder keep kv by snapkv",
      `spec.prune:1:1: error: 'after encoder' has no KV cache: write 'in layer L', 'in layers A..B', or no position for every layer
 1 | after encoder keep kv by snapkv
   | ^~~~~~~~~~~~~`,
    ],
    [
      "kv before layer 0",
      "before layer 0 drop kv by knorm",
      `spec.prune:1:1: error: 'before layer 0' has no KV cache: write 'in layer L', 'in layers A..B', or no position for every layer
 1 | before layer 0 drop kv by knorm
   | ^~~~~~~~~~~~~~`,
    ],
    [
      "kv after a layer",
      "after layer 3 keep kv 25% by snapkv",
      `spec.prune:1:1: error: a KV-cache stage acts on a layer's own cache: write 'in layer L' (or 'in layers A..B', or no position for every layer)
 1 | after layer 3 keep kv 25% by snapkv
   | ^~~~~~~~~~~~~
   = help: did you mean 'in layer 3'?`,
    ],
    [
      "a reversed layer range",
      "in layers 27..2 keep kv by snapkv",
      `spec.prune:1:11: error: a layer range A..B needs A <= B, got 27..2
 1 | in layers 27..2 keep kv by snapkv
   |           ^~~~~
   = help: did you mean '2..27'?`,
    ],
    [
      "a reversed layer range counted from the end",
      "in layers -1..-4 drop kv by knorm",
      `spec.prune:1:11: error: a layer range A..B needs A <= B, got -1..-4
 1 | in layers -1..-4 drop kv by knorm
   |           ^~~~~~
   = help: did you mean '-4..-1'?`,
    ],
    [
      "a fractional end of a layer range",
      "in layers 0..2.5 keep kv by snapkv",
      `spec.prune:1:14: error: layer must be an integer, got 2.5
 1 | in layers 0..2.5 keep kv by snapkv
   |              ^~~`,
    ],
    [
      "a mass amount on the KV cache",
      "keep kv mass 90% by snapkv",
      `spec.prune:1:9: error: 'mass' amounts are not supported for the KV cache: write 'keep kv P%' or 'keep kv K tokens'
 1 | keep kv mass 90% by snapkv
   |         ^~~~~~~~`,
    ],
    [
      "a threshold on the KV cache",
      "in layer 2 drop kv above 0.5 by knorm",
      `spec.prune:1:20: error: 'above' amounts are not supported for the KV cache: write 'drop kv P%' or 'drop kv K tokens'
 1 | in layer 2 drop kv above 0.5 by knorm
   |                    ^~~~~~~~~`,
    ],
    [
      "options on a KV-cache stage",
      "keep kv 50% by snapkv with mask, recycle",
      `spec.prune:1:28: error: options apply to stream stages: a 'keep kv' stage takes no 'with' options
 1 | keep kv 50% by snapkv with mask, recycle
   |                            ^~~~~~~~~~~~~`,
    ],
    [
      "a stream criterion on the KV cache",
      "in layer 3 keep kv by cls-attn",
      `spec.prune:1:23: error: criterion 'cls-attn' does not score the KV cache (KV-cache criteria: random, snapkv, streaming, knorm, h2o)
 1 | in layer 3 keep kv by cls-attn
   |                       ^~~~~~~~`,
    ],
    [
      "a KV-cache criterion on the stream",
      "in layer 3 keep 25% by snapkv",
      `spec.prune:1:12: error: criterion 'snapkv' scores the KV cache, not the residual stream: write 'keep kv'
 1 | in layer 3 keep 25% by snapkv
   |            ^~~~
   = help: did you mean 'keep kv'?`,
    ],
    [
      "a KV-cache criterion without kv or a position: one error",
      "drop 50% by knorm",
      `spec.prune:1:1: error: criterion 'knorm' scores the KV cache, not the residual stream: write 'drop kv'
 1 | drop 50% by knorm
   | ^~~~
   = help: did you mean 'drop kv'?`,
    ],
    [
      "a misspelt criterion on the KV cache",
      "keep kv by snapk",
      `spec.prune:1:12: error: unknown criterion 'snapk'
 1 | keep kv by snapk
   |            ^~~~~
   = help: did you mean 'snapkv'?`,
    ],
    [
      "one number after 'in layers'",
      "in layers 3 keep kv by snapkv",
      `spec.prune:1:4: error: 'in layers' takes a range A..B (both ends included); for one layer write 'in layer 3'
 1 | in layers 3 keep kv by snapkv
   |    ^~~~~~
   = help: did you mean 'layer'?`,
    ],
    [
      "a range after 'in layer'",
      "in layer 2..27 keep kv by snapkv",
      `spec.prune:1:1: error: 'in layer' takes a single layer; a range of layers is written 'in layers A..B'
 1 | in layer 2..27 keep kv by snapkv
   | ^~~~~~~~
   = help: did you mean 'in layers'?`,
    ],
    [
      "a range after 'after layer'",
      "After Layer 2..5 keep kv by snapkv",
      `spec.prune:1:1: error: 'after layer' takes a single layer; a range of layers is written 'in layers A..B'
 1 | After Layer 2..5 keep kv by snapkv
   | ^~~~~~~~~~~
   = help: did you mean 'in layers'?`,
    ],
    [
      "'after layers' with a range",
      "after layers 2..5 keep kv by snapkv",
      `spec.prune:1:1: error: 'after' takes a single layer ('after layer L'); a range of layers is written 'in layers A..B'
 1 | after layers 2..5 keep kv by snapkv
   | ^~~~~~~~~~~~
   = help: did you mean 'in layers'?`,
    ],
    [
      "'after layers' with one layer",
      "after layers 2 keep by cls-attn",
      `spec.prune:1:7: error: expected 'layer' or 'encoder', found 'layers'
 1 | after layers 2 keep by cls-attn
   |       ^~~~~~
   = help: did you mean 'layer'?`,
    ],
    [
      "a range without 'in'",
      "layers 2..5 keep kv by snapkv",
      `spec.prune:1:1: error: expected 'model', 'tokens', 'after', 'in', 'before', 'during', 'keep', 'drop' or 'merge', found 'layers'
 1 | layers 2..5 keep kv by snapkv
   | ^~~~~~
   = help: did you mean 'in layers'?`,
    ],
    [
      "'kv' after the amount",
      "keep 25% kv by snapkv",
      `spec.prune:1:10: error: 'kv' goes right after the action word: 'keep kv ...' or 'drop kv ...'
 1 | keep 25% kv by snapkv
   |          ^~`,
    ],
    [
      "'kv' before the action",
      "in layer 3 kv drop by snapkv",
      `spec.prune:1:12: error: 'kv' goes right after the action word: 'keep kv ...' or 'drop kv ...'
 1 | in layer 3 kv drop by snapkv
   |            ^~`,
    ],
    [
      "a criterion without 'by'",
      "keep kv 25% snapkv(window: 8)",
      `spec.prune:1:13: error: missing 'by' before the criterion 'snapkv'
 1 | keep kv 25% snapkv(window: 8)
   |             ^~~~~~
   = help: did you mean 'by snapkv'?`,
    ],
    [
      "keep kv without a criterion",
      "keep kv 25%",
      `spec.prune:1:12: error: missing 'by CRITERION' (every stage needs a criterion)
 1 | keep kv 25%
   |            ^`,
    ],
    [
      "a layer range without its end",
      "in layers 2.. keep kv by h2o",
      `spec.prune:1:15: error: expected a number, found 'keep'
 1 | in layers 2.. keep kv by h2o
   |               ^~~~`,
    ],
    [
      "'kv' as a token set name",
      "tokens kv = input m",
      `spec.prune:1:8: error: expected a token set name, found 'kv' ('kv' is a keyword)
 1 | tokens kv = input m
   |        ^~`,
    ],
  ];

  it.each(cases)("%s", (_name, text, expected) => {
    const r = parseKv(text);
    expect(r.spec).toBeUndefined();
    expect(renderKv(text)).toBe(expected);
  });

  it("says when no KV-cache criterion is registered", () => {
    expect(render("keep kv by cls-attn")).toBe(
      `spec.prune:1:12: error: criterion 'cls-attn' does not score the KV cache (no KV-cache criterion is registered)
 1 | keep kv by cls-attn
   |            ^~~~~~~~`,
    );
  });

  it("reports each problem of a KV-cache stage in one run", () => {
    const { diagnostics } = parseKv("after encoder merge kv mass 90% by cls-attn with mask, turbo");
    expect(
      diagnostics.map((d) => `${d.line}:${d.column} ${d.message}${d.suggestion ? ` -> ${d.suggestion}` : ""}`),
    ).toEqual([
      "1:1 'after encoder' has no KV cache: write 'in layer L', 'in layers A..B', or no position for every layer",
      "1:15 'merge kv' is not supported: a KV-cache stage keeps or drops entries ('keep kv' / 'drop kv')",
      "1:24 'mass' amounts are not supported for the KV cache: write 'merge kv P%' or 'merge kv K tokens'",
      "1:36 criterion 'cls-attn' does not score the KV cache (KV-cache criteria: random, snapkv, streaming, knorm, h2o)",
      "1:50 options apply to stream stages: a 'merge kv' stage takes no 'with' options",
    ]);
  });
});

describe("across frames", () => {
  it("parses 'across frames' at the end of a stream stage, in any case, after options or not", () => {
    const { spec, diagnostics } = parse(
      "after layer 0 keep 25% by cls-attn across frames\nafter layer 2 keep 50% by random(3) with mask ACROSS Frames",
    );
    expect(diagnostics).toEqual([]);
    expect(spec!.stages.map((s) => [s.across, s.acrossSpan])).toEqual([
      ["frames", { line: 1, column: 36, endLine: 1, endColumn: 49 }],
      ["frames", { line: 2, column: 47, endLine: 2, endColumn: 60 }],
    ]);
    expect(spec!.stages[1]!.options).toEqual(["mask"]);
    expect(parse("after layer 0 keep 25% by cls-attn").spec!.stages[0]!.across).toBeUndefined();
  });

  it("prints it last, and the printed form parses back to the same IR", () => {
    const text = "after layer 2 keep 50% by random(seed: 3) with mask across frames\n";
    const { spec } = parse("after layer 2 keep 50% by RANDOM(3) with mask across FRAMES");
    expect(printSpec(spec!)).toBe(text);
    expect(stripSpans(parse(text).spec!)).toEqual(stripSpans({ ...spec!, text }));
  });

  it("refuses another word after 'across', and 'across frames' on KV-cache and head stages", () => {
    expect(render("after layer 0 keep 25% by cls-attn across frame")).toBe(
      `spec.prune:1:43: error: 'across' takes 'frames' (state carried from one call of the model to the next), got 'frame'
 1 | after layer 0 keep 25% by cls-attn across frame
   |                                           ^~~~~
   = help: did you mean 'frames'?`,
    );
    const kv = parseKv("in layer 1 keep kv 25% by snapkv across frames").diagnostics;
    expect(kv.map((d) => `${d.line}:${d.column} ${d.message}`)).toEqual([
      "1:34 'across frames' is for stages on the residual stream: a 'keep kv' stage carries nothing from one frame to the next",
    ]);
    expect(render("after layer 0 keep 25% by cls-attn across")).toContain("expected a name");
  });
});

describe("formatDiagnostic", () => {
  it("renders header, source line, caret and help with a gutter as wide as the line number", () => {
    const text = Array.from({ length: 11 }, (_, i) => `after layer ${i} keep 5% by iga`).join("\n");
    const d = {
      file: "f.prune",
      line: 11,
      column: 27,
      endLine: 11,
      endColumn: 30,
      message: "oops",
      suggestion: "x",
      severity: "error" as const,
    };
    expect(formatDiagnostic(d, text)).toBe(
      `f.prune:11:27: error: oops
 11 | after layer 10 keep 5% by iga
    |                           ^~~
    = help: did you mean 'x'?`,
    );
  });

  it("draws a single caret for an insertion point and runs a multi-line span to the line end", () => {
    const text = "abc\ndef";
    expect(
      formatDiagnostic(
        { file: "f", line: 1, column: 4, endLine: 1, endColumn: 4, message: "m", severity: "error" },
        text,
      ),
    ).toBe("f:1:4: error: m\n 1 | abc\n   |    ^");
    expect(
      formatDiagnostic(
        { file: "f", line: 1, column: 2, endLine: 2, endColumn: 2, message: "m", severity: "error" },
        text,
      ),
    ).toBe("f:1:2: error: m\n 1 | abc\n   |  ^~");
  });

  it("omits the snippet when the line is not in the text", () => {
    expect(
      formatDiagnostic(
        { file: "f", line: 9, column: 1, endLine: 9, endColumn: 2, message: "m", severity: "error" },
        "x",
      ),
    ).toBe("f:9:1: error: m");
  });
});

describe("printSpec", () => {
  it("prints the canonical form: one statement per line, lower case, arguments in declared order", () => {
    const text = [
      "after layer 5 keep 12.5 % by CROPS(scale: 2, n: 16) with MASK, recycle;   before layer 0 drop 64 by random",
      "tokens instruction = after image",
      "MODEL ViT",
      "in layer 16 drop mass 90% of image by cls-attn-ensemble(mode: mean, layers: 8..10)",
      "tokens image = input image_mask",
      "after encoder keep above 1e-7 by iga",
    ].join("\n");
    const r = parse(
      text
        .replace("tokens instruction = after image\n", "")
        .replace(
          "tokens image = input image_mask",
          "tokens image = input image_mask\ntokens instruction = after image",
        ),
    );
    expect(r.diagnostics).toEqual([]);
    expect(printSpec(r.spec!)).toBe(
      [
        "model vit",
        "tokens image = input image_mask",
        "tokens instruction = after image",
        "after layer 5 keep 12.5% by crops(n: 16, scale: 2) with mask, recycle",
        "before layer 0 drop 64 tokens by random",
        "in layer 16 drop mass 90% of image by cls-attn-ensemble(layers: 8..10, mode: mean)",
        "after encoder keep above 1e-7 by iga",
        "",
      ].join("\n"),
    );
    const again = parse(printSpec(r.spec!));
    expect(again.diagnostics).toEqual([]);
    expect(stripSpans(again.spec!)).toEqual(stripSpans(r.spec!));
  });
});

describe("registry helpers", () => {
  it("fills defaults in declared order", () => {
    const info = registry.get("cls-attn-ensemble")!;
    expect(argsWithDefaults(info, { mode: "max" })).toEqual({ layers: [8, 10], mode: "max" });
    expect(Object.keys(argsWithDefaults(registry.get("crops")!, { n: 4 }))).toEqual(["n", "scale"]);
  });

  it("rejects malformed registries", () => {
    expect(() => createRegistry([{ name: "Bad_Name", summary: "", args: {} }])).toThrow();
    expect(() => createRegistry([CRITERIA[0]!, CRITERIA[0]!])).toThrow();
  });
});

describe("suggestions", () => {
  it("measures edits with transpositions", () => {
    expect(editDistance("kepe", "keep")).toBe(1);
    expect(editDistance("afer", "after")).toBe(1);
    expect(editDistance("", "abc")).toBe(3);
    expect(editDistance("cls-atn", "cls-attn")).toBe(1);
  });

  it("suggests only plausible typos", () => {
    expect(closest("IGA", ["iga", "ttv"])).toBe("iga");
    expect(closest("of", ["by"])).toBeUndefined();
    expect(closest("drp", ["drop", "keep"])).toBe("drop");
    expect(closest("similarty", ["similarity", "diversity"])).toBe("similarity");
    expect(closest("zzzzzz", ["similarity"])).toBeUndefined();
  });
});
