/** `check`: spec ↔ model semantics with exact texts, summaries, JSON; `fmt`; docs kept in sync with the registry. */
import { describe, expect, it } from "vitest";
import { readFileSync, writeFileSync, mkdtempSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkSpec } from "../src/check.js";
import { formatDiagnostics } from "../grammar/index.js";
import { REPO_ROOT, describeShared, sharedModel } from "./helpers/shared.js";
import { DOC, renderDoc } from "../scripts/docs.js";

const TINY = { bytes: readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx")), name: "tiny.onnx" };
const CARD =
  "tokens image = input image_mask; tokens instruction = after image; after layer 2 keep 25% by cls-attn; in layer 16 drop of image by IGA";

function errors(spec: string, model = TINY): string {
  const r = checkSpec(spec, "s.prune", model);
  expect(r.ok).toBe(false);
  return formatDiagnostics(r.diagnostics, spec);
}

describe("check without a model", () => {
  it("accepts the design card's one-liner exactly as written and prints the resolved default", () => {
    const r = checkSpec(CARD, "card.prune");
    expect(r).toMatchObject({ ok: true, diagnostics: [] });
    expect(r.summary).toBe(
      "card.prune: ok, 2 stages: after layer 2 keep 25% by cls-attn; in layer 16 drop 50% (default) of image by iga",
    );
  });

  it("reports what the file alone shows about token sets: an undefined set (with a did-you-mean) and the sets a criterion needs", () => {
    const text = "in layer 4 drop 50% of imgae by iga";
    const r = checkSpec(text, "s.prune");
    expect(r.ok).toBe(false);
    expect(formatDiagnostics(r.diagnostics, text)).toBe(
      [
        "s.prune:1:24: error: token set 'imgae' is not defined; declare it with 'tokens imgae = input NAME' (a boolean model input marking its positions)",
        " 1 | in layer 4 drop 50% of imgae by iga",
        "   |                        ^~~~~",
        "   = help: did you mean 'image'?",
        "",
        "s.prune:1:33: error: iga needs the token set 'image', which this spec does not declare; add 'tokens image = input image_mask'",
        " 1 | in layer 4 drop 50% of imgae by iga",
        "   |                                 ^~~",
        "",
        "s.prune:1:33: error: iga needs the token set 'instruction', which this spec does not declare; add 'tokens instruction = after image'",
        " 1 | in layer 4 drop 50% of imgae by iga",
        "   |                                 ^~~",
      ].join("\n"),
    );
    const declared = checkSpec("tokens image = input m\nin layer 4 drop 50% of image by iga", "s.prune");
    expect(declared.diagnostics.map((d) => d.message)).toEqual([
      "iga needs the token set 'instruction', which this spec does not declare; add 'tokens instruction = after image'",
    ]);
  });

  it("reports syntax and registry errors, all of them", () => {
    const r = checkSpec("after layer 2 keep 25% by cls-atn\nafter layer 3 keep 250% by cls-attn", "s.prune");
    expect(r.diagnostics.map((d) => [d.line, d.column, d.message, d.suggestion])).toEqual([
      [1, 27, "unknown criterion 'cls-atn'", "cls-attn"],
      [2, 20, "amount must be in (0, 100]%, got 250%", undefined],
    ]);
    expect(r.summary).toBe("s.prune: 2 errors");
  });
});

describe("check against a model: each conflict names the spec text and the model fact", () => {
  const table: [string, string, string][] = [
    [
      "layer out of range",
      "after layer 4 keep 50% by cls-attn",
      "s.prune:1:13: error: layer 4 is out of range: the model has 4 layers (0..3, or -1..-4 from the end)\n 1 | after layer 4 keep 50% by cls-attn\n   |             ^",
    ],
    [
      "stages not in layer order",
      "after layer 2 keep 50% by cls-attn\nafter layer 1 keep 50% by cls-attn",
      "s.prune:2:13: error: stages must be in layer order: layer 1 comes after a stage at layer 2\n 2 | after layer 1 keep 50% by cls-attn\n   |             ^",
    ],
    [
      "a schedule that keeps no token",
      "after layer 1 drop 100% by cls-attn",
      "s.prune:1:20: error: this stage would keep 0 of 64 prunable tokens after layer 1; it must keep between 1 and 64\n 1 | after layer 1 drop 100% by cls-attn\n   |                    ^~~~",
    ],
    [
      "an undefined token set",
      "after layer 1 keep 50% of image by cls-attn",
      "s.prune:1:27: error: token set 'image' is not defined; declare it with 'tokens image = input NAME' (a boolean model input marking its positions)\n 1 | after layer 1 keep 50% of image by cls-attn\n   |                           ^~~~~",
    ],
    [
      "iga without an instruction set",
      "tokens image = input image_mask\nin layer 2 drop 50% of image by iga",
      "s.prune:2:33: error: iga needs the token set 'instruction', which this spec does not declare; add 'tokens instruction = after image'\n 2 | in layer 2 drop 50% of image by iga\n   |                                 ^~~",
    ],
    [
      "a token set input that is not a mask",
      "tokens image = input pixel_values\nafter layer 1 keep 50% by cls-attn",
      "s.prune:1:22: error: model input 'pixel_values' is float of rank 4; a token set needs a boolean or integer [batch, sequence] mask\n 1 | tokens image = input pixel_values\n   |                      ^~~~~~~~~~~~",
    ],
    [
      "more crops than tokens",
      "after layer 1 keep 50% by crops(count: 65)",
      "s.prune:1:27: error: crops cannot run after layer 1: count 65 is more than the 64 prunable tokens entering the stage: every chunk needs at least one token (crops(count: 64) makes one chunk per token)\n 1 | after layer 1 keep 50% by crops(count: 65)\n   |                           ^~~~~",
    ],
  ];
  it.each(table)("%s", (_what, spec, expected) => {
    expect(errors(spec)).toBe(expected);
  });

  it("reports every conflict of a file, ordered by position", () => {
    const r = checkSpec(
      "after layer 9 keep 50% by cls-attn\nafter layer 1 keep 50% of image by cls-attn\nafter layer 2 keep 50% by crops(count: 65)",
      "s.prune",
      TINY,
    );
    expect(r.diagnostics.map((d) => `${d.line}:${d.column}`)).toEqual(["1:13", "2:27", "3:27"]);
  });

  it("prints tokens per stage when the schedule applies", () => {
    const r = checkSpec("after layer 0 keep 25% by cls-attn\nafter layer 2 keep by cls-attn", "s.prune", TINY);
    expect(r.summary).toBe(
      "s.prune: ok on tiny.onnx, 2 stages: after layer 0 keep 25% by cls-attn (65 → 17 tokens); after layer 2 keep 50% (default) by cls-attn (17 → 9 tokens)",
    );
  });
});

describeShared("check against real exports", () => {
  it("cls-attn on a model without CLS (Qwen2-VL's vision tower)", () => {
    const model = {
      bytes: readFileSync(sharedModel("graph-only/qwen2-vl-2b-vision-tower-torchexport/model.onnx")),
      name: "qwen2vl.onnx",
    };
    expect(errors("after layer 30 keep 50% by cls-attn", model)).toBe(
      "s.prune:1:28: error: cls-attn cannot run after layer 30: the model has no CLS token (no learned token is concatenated in front of the patch tokens); use a criterion that does not need one\n 1 | after layer 30 keep 50% by cls-attn\n   |                            ^~~~~~~~",
    );
  });
});

describe("prunec check / fmt on the command line", () => {
  const dir = mkdtempSync(join(tmpdir(), "prunec-check-"));
  const run = (...args: string[]) =>
    spawnSync(process.execPath, [join(REPO_ROOT, "bin", "prunec.js"), ...args], { encoding: "utf8" });

  it("exit 0 and the summary when valid, exit 1 and diagnostics otherwise; --json gives objects", () => {
    const good = join(dir, "good.prune");
    writeFileSync(good, `${CARD}\n`);
    const ok = run("check", good);
    expect([ok.status, ok.stdout]).toEqual([
      0,
      `${good}: ok, 2 stages: after layer 2 keep 25% by cls-attn; in layer 16 drop 50% (default) of image by iga\n`,
    ]);
    const bad = join(dir, "bad.prune");
    writeFileSync(bad, "after layer 2 keep 25% by cls-atn\n");
    const no = run("check", bad);
    expect(no.status).toBe(1);
    expect(no.stderr).toBe(
      `${bad}:1:27: error: unknown criterion 'cls-atn'\n 1 | after layer 2 keep 25% by cls-atn\n   |                           ^~~~~~~\n   = help: did you mean 'cls-attn'?\n\n${bad}: 1 error\n`,
    );
    const json = JSON.parse(run("check", bad, "--json").stdout);
    expect(json.diagnostics).toEqual([
      {
        file: bad,
        line: 1,
        column: 27,
        end: { line: 1, column: 34 },
        message: "unknown criterion 'cls-atn'",
        suggestion: "cls-attn",
      },
    ]);
    const withModel = run("check", good, join(REPO_ROOT, "examples", "tiny-vit", "model.onnx"));
    expect(withModel.status).toBe(1);
    expect(withModel.stderr).toContain("layer 16 is out of range: the model has 4 layers");
  });

  it("fmt prints the canonical form, which parses to the same schedule", () => {
    const messy = join(dir, "messy.prune");
    writeFileSync(messy, "# x\nAFTER Layer 2   KEEP 25 %  BY Cls-Attn ;in layer 3 drop 10 tokens by CLS-ATTN\n");
    const r = run("fmt", messy);
    expect([r.status, r.stdout]).toEqual([
      0,
      "after layer 2 keep 25% by cls-attn\nin layer 3 drop 10 tokens by cls-attn\n",
    ]);
  });
});

it("docs/language.md's criteria table is what the registry generates", () => {
  const current = readFileSync(DOC, "utf8");
  expect(renderDoc(current)).toBe(current);
});
