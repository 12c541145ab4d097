/**
 * Issue 13, spec and data part: what a fuzz campaign found. Binary content where a spec is expected
 * (exit 4, one line), specs without stages (the CLI refuses them), malformed `.prds` headers (exit 3
 * naming the field, never a TypeError), and linear time on pathological 1 MB specs. The time checks
 * are generous timeouts that catch a hang (the quadratic paths took minutes), not benchmarks.
 */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";
import { decodeSpec, formatDiagnostics, MAX_PRINTED, parseSpec, stripSpans } from "../grammar/index.js";
import { registry } from "../passes/registry.js";
import { checkSpec } from "../src/check.js";
import { compileModel } from "../src/compile.js";
import { checkDatasetFitsModel, parseDataset } from "../src/data/prds.js";
import { PrunecError } from "../src/errors.js";

const BIN = join(REPO_ROOT, "bin", "prunec.js");
const TINY = join(REPO_ROOT, "examples", "tiny-vit", "model.onnx");
const DIGITS = join(REPO_ROOT, "examples", "digits", "model.onnx");
const prunec = (...args: string[]) => {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};
const bytes = (s: string) => new TextEncoder().encode(s);
/** Guards against a hang, not a benchmark: the quadratic paths took minutes on these inputs. */
const HANG = 30_000;
const MB = 1_000_000;

/** Lines from `line(i)` until the text reaches `size` characters. */
function repeat(size: number, line: (i: number) => string): string {
  const parts: string[] = [];
  let length = 0;
  for (let i = 0; length < size; i++) {
    const l = line(i);
    parts.push(l);
    length += l.length;
  }
  return parts.join("");
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "prunec-robust-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("binary content where a spec is expected", () => {
  const why = (b: Uint8Array) => {
    const r = decodeSpec(b, "x.prune");
    return r.ok ? "text" : r.message;
  };

  it("names the first NUL byte or non-UTF-8 byte, a UTF-16 BOM, or too many control characters", () => {
    expect(why(bytes("after layer 1 keep by norm\0"))).toBe(
      "x.prune: not a .prune file: binary content (a NUL byte at offset 26)",
    );
    expect(why(new Uint8Array([0x61, 0x20, 0xe9, 0x0a]))).toBe(
      "x.prune: not a .prune file: binary content (invalid UTF-8 at offset 2)",
    );
    expect(why(new Uint8Array([0x61, 0xff, 0x00]))).toBe(
      "x.prune: not a .prune file: binary content (invalid UTF-8 at offset 1)",
    );
    expect(why(new Uint8Array([0xc0, 0xaf]))).toBe(
      "x.prune: not a .prune file: binary content (invalid UTF-8 at offset 0)",
    ); // overlong '/'
    expect(why(new Uint8Array([0xed, 0xa0, 0x80]))).toBe(
      "x.prune: not a .prune file: binary content (invalid UTF-8 at offset 0)",
    ); // a surrogate
    expect(why(new Uint8Array([0xff, 0xfe, 0x61, 0x00]))).toBe(
      "x.prune: not a .prune file: binary content (a UTF-16 byte order mark; save the spec as UTF-8)",
    );
    expect(why(bytes("\x01\x02\x1b\x7f after"))).toBe(
      "x.prune: not a .prune file: binary content (4 of 10 characters are control characters)",
    );
  });

  it("leaves text alone: UTF-8 names, a UTF-8 BOM (dropped), tabs, CR/LF, a stray control character", () => {
    expect(why(bytes("after layer 1 keep 25% by cls-attn # café, 日本\n"))).toBe("text");
    expect(decodeSpec(new Uint8Array([0xef, 0xbb, 0xbf, 0x61]), "x.prune")).toEqual({ ok: true, text: "a" });
    expect(why(bytes("after\tlayer 1 keep by norm\r\nafter layer 2 keep by norm\x01\r"))).toBe("text");
  });

  it(
    "an ONNX model given as the spec: exit 4 at once from check and compile, nothing written",
    () => {
      const message = `prunec: error: ${TINY}: not a .prune file: binary content (invalid UTF-8 at offset 20)\n`;
      const check = prunec("check", TINY);
      expect([check.code, check.stderr, check.stdout]).toEqual([4, message, ""]);
      const out = join(dir, "never.onnx");
      const compiled = prunec(TINY, TINY, "-o", out);
      expect([compiled.code, compiled.stderr]).toEqual([4, message]);
      expect(existsSync(out)).toBe(false);
    },
    HANG,
  );
});

describe("line endings and a byte order mark", () => {
  const lines = [
    "# s.prune",
    "after layer 1 keep 25% by cls-attn",
    "after layer 3 keep 50% by cls-atn",
    "after layer 5 drop 2 tokens by norm",
  ];

  it("LF, CRLF, lone CR and a BOM give the same IR and the same diagnostic positions", () => {
    const variants = ["\n", "\r\n", "\r"].flatMap((eol) => [lines.join(eol) + eol, `\ufeff${lines.join(eol)}`]);
    const fixed = variants.map((t) => t.replace("cls-atn", "cls-attn"));
    const irs = fixed.map((t) => stripSpans(parseSpec(t, "s.prune", registry).spec!));
    for (const ir of irs) expect(ir).toEqual(irs[0]);
    for (const t of variants) {
      const d = parseSpec(t, "s.prune", registry).diagnostics;
      expect(d.map((x) => [x.line, x.column, x.endColumn, x.message])).toEqual([
        [3, 27, 34, "unknown criterion 'cls-atn'"],
      ]);
    }
    // Through the bytes path a UTF-8 BOM is dropped, so columns on line 1 are as without it.
    const decoded = decodeSpec(bytes("\ufeffafter layer 1 keep 25% by cls-atn\r\n"), "s.prune");
    expect(decoded.ok && parseSpec(decoded.text, "s.prune", registry).diagnostics[0]!.column).toBe(27);
  });
});

describe("a spec without stages", () => {
  const noStages = (file: string) => `${file}: no stages: the spec prunes nothing (an unpruned copy is not written)`;

  it(
    "compile refuses a 0-byte spec: exit 4, nothing written",
    () => {
      const spec = join(dir, "empty.prune");
      writeFileSync(spec, "");
      const out = join(dir, "empty.onnx");
      const r = prunec(TINY, spec, "-o", out);
      expect([r.code, r.stderr, r.stdout]).toEqual([4, `prunec: error: ${noStages(spec)}\n`, ""]);
      expect(existsSync(out)).toBe(false);
    },
    HANG,
  );

  it(
    "check says the same, with or without a model (exit 1, a refusal in --json)",
    () => {
      const spec = join(dir, "blank.prune");
      writeFileSync(spec, "  \n\n");
      const r = prunec("check", spec, TINY);
      expect([r.code, r.stderr]).toEqual([1, `prunec: error: ${noStages(spec)}\n\n${spec}: refused (no stages)\n`]);
      const c = checkSpec("# only a comment\n", "c.prune");
      expect(c).toMatchObject({
        ok: false,
        diagnostics: [],
        summary: "c.prune: refused (no stages)",
        refusal: { kind: "spec", exitCode: 4, message: noStages("c.prune") },
      });
    },
    HANG,
  );

  it("the library keeps the identity schedule unless asked to refuse", () => {
    const model = readFileSync(TINY);
    expect(compileModel(model, "", {}).report.stages).toEqual([]);
    for (const text of ["", "  \t\r\n", "# nothing yet\r\nmodel vit\ntokens image = input image_mask\n"]) {
      expect(() => compileModel(model, text, { specName: "x.prune", requireStages: true })).toThrow(
        new PrunecError("spec", noStages("x.prune")),
      );
    }
  });
});

describe(".prds headers", () => {
  const prds = (header: unknown, body = 0, raw?: string) => {
    const json = bytes(raw ?? JSON.stringify(header));
    const out = new Uint8Array(12 + json.length + body);
    out.set(bytes("PRUNEDS1"));
    new DataView(out.buffer).setUint32(8, json.length, true);
    out.set(json, 12);
    return out;
  };
  const ok = { n: 2, channels: 1, height: 2, width: 3, classes: 10 };
  const fail = (b: Uint8Array) => {
    try {
      parseDataset(b, "x.prds");
    } catch (e) {
      expect(e).toBeInstanceOf(PrunecError);
      expect((e as PrunecError).exitCode).toBe(3);
      return (e as PrunecError).message.replace("x.prds: not a prunec dataset (", "").slice(0, -1);
    }
    return "no error";
  };

  it("names the field: the header's type, each size field, labels, sizes against the file, label bytes", () => {
    expect(fail(prds(null))).toBe("header must be a JSON object, got null");
    expect(fail(prds([1, 2]))).toBe("header must be a JSON object, got [1,2]");
    expect(fail(prds(undefined, 0, '"x"'))).toBe('header must be a JSON object, got "x"');
    expect(fail(prds(undefined, 0, '{"n":'))).toBe("header is not JSON");
    expect(fail(prds({ ...ok, n: "2" }, 14))).toBe("header field 'n' must be a positive integer");
    expect(fail(prds({ ...ok, width: 1.5 }, 14))).toBe("header field 'width' must be a positive integer");
    expect(fail(prds({ ...ok, classes: 2 ** 53 }, 14))).toBe("header field 'classes' must be a positive integer");
    expect(fail(prds({ ...ok, height: null }, 14))).toBe("header field 'height' must be a positive integer");
    expect(fail(prds({ ...ok, labels: ["a"] }, 14))).toBe(
      "header field 'labels' must be an array of 10 strings (one per class), got [\"a\"]",
    );
    // Huge sizes: an exact message, no allocation, no overflow.
    const huge = { ...ok, n: 2 ** 31, width: 2 ** 40 };
    const h = prds(huge, 14);
    expect(fail(h)).toBe(
      `expected ${BigInt(h.length - 14) + 2n ** 31n * (1n + 2n * 2n ** 40n)} bytes for ${2 ** 31} examples, found ${h.length}`,
    );
    const labels = prds(ok, 14);
    labels[labels.length - 14 + 1] = 10;
    expect(fail(labels)).toBe("label 10 of example 1 is not below header field 'classes' (10)");
    const long = prds(ok, 14);
    new DataView(long.buffer).setUint32(8, 0xffffffff, true);
    expect(fail(long)).toBe(`header length 4294967295 runs past the end of the file (${long.length} bytes)`);
    const latin1 = prds(undefined, 0, "{}");
    latin1[12] = 0xe9;
    expect(fail(latin1)).toBe("header is not UTF-8");
  });

  it("3,000 mutants (truncated, bit flips, header edits) fail only with PrunecError", () => {
    const base = prds({ ...ok, labels: [..."0123456789"] }, 14);
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    const values = [null, -1, 0, 1.5, "8", [], {}, true, 1e300, 2 ** 53, 2 ** 32, 3];
    for (let i = 0; i < 3000; i++) {
      let b = base.slice();
      if (i % 3 === 0) b = b.subarray(0, Math.floor(rnd() * b.length));
      else if (i % 3 === 1) {
        const at = Math.floor(rnd() * b.length);
        b[at] = b[at]! ^ (1 << Math.floor(rnd() * 8));
      } else {
        const edited: Record<string, unknown> = { ...ok };
        edited[["n", "channels", "height", "width", "classes", "labels"][i % 6]!] =
          values[Math.floor(rnd() * values.length)];
        b = prds(edited, 14);
      }
      try {
        parseDataset(b, "m.prds");
      } catch (e) {
        if (!(e instanceof PrunecError)) throw new Error(`mutant ${i}: ${String(e)}`);
      }
    }
  });

  it("a set whose images are not the model's input shape: exit 2 naming both", () => {
    const d = parseDataset(prds({ n: 1, channels: 1, height: 32, width: 128, classes: 10 }, 1 + 32 * 128), "d.prds");
    const e = (() => {
      try {
        checkDatasetFitsModel(d, readFileSync(DIGITS), "d.prds", "m.onnx");
      } catch (x) {
        return x as PrunecError;
      }
      return undefined;
    })();
    expect([e?.exitCode, e?.message]).toEqual([
      2,
      "d.prds: examples are float32 [batch, 1, 32, 128], but m.onnx's input 'pixel_values' is [batch_size, 1, 64, 64]",
    ]);
    const fits = parseDataset(prds({ n: 1, channels: 1, height: 64, width: 64, classes: 10 }, 1 + 64 * 64), "d.prds");
    expect(() => checkDatasetFitsModel(fits, readFileSync(DIGITS), "d.prds", "m.onnx")).not.toThrow();
  });

  describe("per-patch labels (targets: patches)", () => {
    // 2 examples, 2x3 pixels, 4 patches each: 12 + H + 2·4 label bytes + 2·6 pixel bytes.
    const seg = { ...ok, classes: 2, targets: "patches", patches: 4 };

    it("reads n·patches label bytes, example-major, then the pixels", () => {
      const b = prds(seg, 8 + 12);
      const at = b.length - 20;
      b.set([0, 1, 1, 0, 1, 0, 0, 1], at);
      b[at + 8 + 11] = 200;
      const d = parseDataset(b, "x.prds");
      expect(d.patches).toBe(4);
      expect([...d.labels]).toEqual([0, 1, 1, 0, 1, 0, 0, 1]);
      expect(d.pixels.length).toBe(12);
      expect(d.pixels[11]).toBe(200);
      // without targets (or with "examples") the set is per example, as before, and 'patches' is not read
      for (const h of [{ ...ok }, { ...ok, targets: "examples" }, { ...ok, targets: "examples", patches: "x" }]) {
        const e = parseDataset(prds(h, 14), "x.prds");
        expect([e.patches, e.labels.length, e.pixels.length]).toEqual([undefined, 2, 12]);
      }
    });

    it("names the field: targets, patches, the file's length, a label byte (exit 3)", () => {
      expect(fail(prds({ ...seg, targets: "pixels" }, 20))).toBe(
        'header field \'targets\' must be "examples" or "patches", got "pixels"',
      );
      expect(fail(prds({ ...seg, targets: 1 }, 20))).toBe(
        'header field \'targets\' must be "examples" or "patches", got 1',
      );
      for (const [v, shown] of [
        [undefined, "nothing"],
        [0, "0"],
        [-4, "-4"],
        [2.5, "2.5"],
        ["4", '"4"'],
        [null, "null"],
        [2 ** 53, "9007199254740992"],
      ] as const) {
        expect(fail(prds({ ...seg, patches: v }, 20))).toBe(
          `header field 'patches' must be a positive integer when 'targets' is "patches", got ${shown}`,
        );
      }
      // one label byte per example where 4 are due: the length names the patches
      const short = prds(seg, 2 + 12);
      expect(fail(short)).toBe(
        `expected ${short.length - 14 + 20} bytes for 2 examples of 4 patch labels, found ${short.length}`,
      );
      // huge patches: exact, no allocation
      const huge = prds({ ...seg, patches: 2 ** 52 }, 20);
      expect(fail(huge)).toBe(
        `expected ${BigInt(huge.length - 20) + 2n * (2n ** 52n + 6n)} bytes for 2 examples of ${2 ** 52} patch labels, found ${huge.length}`,
      );
      const bad = prds(seg, 20);
      bad[bad.length - 20 + 6] = 2; // example 1, patch 2
      expect(fail(bad)).toBe("label 2 of example 1, patch 2 is not below header field 'classes' (2)");
    });

    it("2,000 mutants of a per-patch set fail only with PrunecError", () => {
      const base = prds(seg, 20);
      let seed = 11;
      const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
      const values = [undefined, null, -1, 0, 1.5, "patches", "examples", 4, 8, 2 ** 53, 1e300, [], {}];
      for (let i = 0; i < 2000; i++) {
        let b = base.slice();
        if (i % 3 === 0) b = b.subarray(0, Math.floor(rnd() * b.length));
        else if (i % 3 === 1) {
          const at = Math.floor(rnd() * b.length);
          b[at] = b[at]! ^ (1 << Math.floor(rnd() * 8));
        } else {
          const edited: Record<string, unknown> = { ...seg };
          edited[["targets", "patches", "classes", "n"][i % 4]!] = values[Math.floor(rnd() * values.length)];
          b = prds(edited, 20);
        }
        try {
          parseDataset(b, "m.prds");
        } catch (e) {
          if (!(e instanceof PrunecError)) throw new Error(`mutant ${i}: ${String(e)}`);
        }
      }
    });
  });
});

describe("pathological 1 MB specs finish (linear time) with bounded output", () => {
  const parse = (text: string) => {
    const r = parseSpec(text, "big.prune", registry);
    return { ...r, printed: formatDiagnostics(r.diagnostics, text) };
  };

  it(
    "1 MB of broken lines: the first 100 diagnostics, then a count",
    () => {
      const broken = [
        "after layer 2 keep 250% by cls-atn",
        "aftr layer x",
        "keep by",
        "after layer 1 keep 5% by nosuch(a: 1)",
        "tokens x = after y",
        "@@@ $$$",
      ];
      const r = parse(repeat(MB, (i) => `${broken[i % broken.length]!}\n`));
      expect(r.diagnostics.length).toBeGreaterThan(50_000);
      expect(r.printed.split("\n\n")).toHaveLength(MAX_PRINTED + 1);
      expect(r.printed.endsWith(`… and ${r.diagnostics.length - MAX_PRINTED} more errors`)).toBe(true);
    },
    HANG,
  );

  it(
    "1 MB of valid stages, on lines and on one line; check without a model",
    () => {
      const text = repeat(MB, (i) => `after layer ${i % 12} keep 50% by cls-attn\n`);
      const c = checkSpec(text, "big.prune");
      expect(c.ok).toBe(true);
      expect(c.stages.length).toBeGreaterThan(25_000);
      expect(parse(text.replaceAll("\n", "; ")).spec!.stages.length).toBe(c.stages.length);
    },
    HANG,
  );

  it(
    "one 1 MB statement: a huge argument list, word, number or run of bad characters; a diagnostic stays short",
    () => {
      const cases = [
        `after layer 1 keep 50% by cls-attn(${"1, ".repeat(MB / 3)}`, // unclosed: content assist on the whole list
        `after layer 1 keep 50% by cls-attn(${"1, ".repeat(MB / 3)}1)`, // closed: one error per argument
        `after layer 1 keep 50% by ${"x".repeat(MB)}`,
        `after layer ${"9".repeat(MB)} keep 50% by cls-attn`,
        `after layer 1 keep 50% by norm ${"@".repeat(MB)}`,
        `tokens ${"a".repeat(MB / 2)} = input m\nafter layer 1 keep of ${"a".repeat(MB / 2 - 1)}b by norm`, // suggestion over two huge names
      ];
      for (const text of cases) {
        const r = parse(text);
        expect(r.diagnostics.length).toBeGreaterThan(0);
        expect(r.printed.length).toBeLessThan(100 * 1000);
        for (const d of r.diagnostics.slice(0, 10)) expect(d.message.length).toBeLessThan(400);
      }
    },
    HANG,
  );

  it(
    "thousands of token sets and errors naming them: hint lists and suggestions stay bounded",
    () => {
      const sets = repeat(MB / 2, (i) => `tokens s${i} = input m${i}\n`);
      const errors = repeat(MB / 2, (i) => `tokens t${i} = after u${i}\nafter layer 1 keep of v${i} by norm\n`);
      const r = parse(sets + errors);
      expect(r.diagnostics.length).toBeGreaterThan(10_000);
      expect(r.diagnostics.every((d) => d.message.length < 400)).toBe(true);
      expect(r.diagnostics.find((d) => d.message.startsWith("unknown token set 'v0'"))!.message).toMatch(
        /\(declared: s0, s1, .*, … \(\d+ in all\)\)$/,
      );
    },
    HANG,
  );

  it(
    "check SPEC MODEL with 5,000 stages on the tiny ViT: compile's refusals, 100 printed",
    () => {
      const text = repeat(175_000, (i) => `after layer ${i % 12} keep 50% by cls-attn\n`);
      const r = checkSpec(text, "big.prune", { bytes: readFileSync(TINY), name: "tiny.onnx" });
      expect(r.ok).toBe(false);
      expect(r.refusal?.exitCode).toBe(6);
      expect(r.diagnostics.length).toBeGreaterThan(4000);
      expect(r.refusal!.message.split("\n\n")).toHaveLength(MAX_PRINTED + 1);
    },
    HANG,
  );
});
