/**
 * Lossless model I/O: decodeModel → encodeModel reproduces every model byte for byte, keeps
 * unknown fields, does not copy weights, and keeps onnx.checker-clean models clean.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, relative } from "node:path";
import { create, createRegistry, equals, fromBinary, toBinary } from "@bufbuild/protobuf";
import { afterAll, describe, expect, it } from "vitest";
import { compile, compileModel } from "../src/compile.js";
import { decodeModel, encodeModel, encodeModelParts, nodeFields, concat as concatBytes } from "../src/onnx/io.js";
import { shallowCopy } from "../src/ir/copy.js";
import {
  file_onnx,
  GraphProtoSchema,
  ModelProtoSchema,
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  StringStringEntryProtoSchema,
  TensorProto_DataLocation,
  TensorProto_DataType,
  TensorProtoSchema,
  type ModelProto,
  type TensorProto,
} from "../src/onnx/gen/onnx_pb.js";
import { REPO_ROOT, SHARED_DIR, hasShared, sharedTitle } from "./helpers/shared.js";
import { findOnnx } from "./helpers/files.js";

const registry = createRegistry(file_onnx);
const sameModel = (a: ModelProto, b: ModelProto) => equals(ModelProtoSchema, a, b, { registry, unknown: true });

const EXAMPLE = join(REPO_ROOT, "examples", "tiny-vit", "model.onnx");
const SHARED_MODELS = join(SHARED_DIR, "models");
const sharedFiles = hasShared ? findOnnx(SHARED_MODELS) : [];
const label = (p: string) => (p === EXAMPLE ? "examples/tiny-vit/model.onnx" : `shared/${relative(SHARED_MODELS, p)}`);

/** Index of the first differing byte, or -1. */
function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

function* allTensors(m: ModelProto): Generator<TensorProto> {
  const g = m.graph;
  if (!g) return;
  yield* g.initializer;
  for (const n of g.node) for (const a of n.attribute) if (a.t) yield a.t;
}

describe("decode → encode round trip", () => {
  it("finds the models it is meant to cover", () => {
    if (hasShared) expect(sharedFiles.length).toBeGreaterThan(0);
  });
  // Without ../shared only the example is covered; say so with a visible skip.
  if (!hasShared) it.skip(sharedTitle("every .onnx under ../shared/models"), () => {});

  it.each([EXAMPLE, ...sharedFiles].map((p) => [label(p), p] as const))(
    "%s: byte-identical, equal field by field",
    (_name, path) => {
      const bytes = new Uint8Array(readFileSync(path));
      const model = decodeModel(bytes, path);
      const again = encodeModel(model);
      const at = firstDiff(bytes, again);
      expect(at, `first differing byte at ${at} (sizes ${bytes.length} → ${again.length})`).toBe(-1);
      const redecoded = decodeModel(again, `${path} (re-encoded)`);
      expect(sameModel(model, redecoded)).toBe(true);
    },
  );
});

// Wire-format helpers for the synthetic unknown-field test.
function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}
const concat = (...parts: (Uint8Array | number[])[]) => concatBytes(parts.map((p) => Uint8Array.from(p)));
const VARINT_9999 = [...varint((9999 << 3) | 0), ...varint(42)];
const BYTES_10000 = [...varint((10000 << 3) | 2), ...varint(3), 0x61, 0x62, 0x63];

describe("unknown fields", () => {
  it("a varint field 9999 in a NodeProto and in the ModelProto survives decode → encode", () => {
    const node = create(NodeProtoSchema, { opType: "Relu", input: ["x"], output: ["y"], name: "relu" });
    const nodeBytes = concat(toBinary(NodeProtoSchema, node), VARINT_9999);
    const nodeWithUnknown = fromBinary(NodeProtoSchema, nodeBytes);
    expect(nodeWithUnknown.$unknown?.map((u) => u.no)).toEqual([9999]);

    const model = create(ModelProtoSchema, {
      irVersion: 8n,
      opsetImport: [create(OperatorSetIdProtoSchema, { domain: "", version: 17n })],
      graph: create(GraphProtoSchema, { name: "g", node: [nodeWithUnknown] }),
    });
    const input = concat(toBinary(ModelProtoSchema, model), VARINT_9999, BYTES_10000);

    const decoded = decodeModel(input, "synthetic");
    expect(decoded.$unknown?.map((u) => u.no)).toEqual([9999, 10000]);
    expect(decoded.graph!.node[0]!.$unknown?.map((u) => u.no)).toEqual([9999]);

    const output = encodeModel(decoded);
    expect(firstDiff(input, output)).toBe(-1);
    // The raw bytes of the node's unknown field are inside the node's bytes in the output too.
    const redecoded = decodeModel(output, "synthetic (re-encoded)");
    expect(sameModel(decoded, redecoded)).toBe(true);
    expect(redecoded.graph!.node[0]!.$unknown?.[0]?.data).toEqual(new Uint8Array(varint(42)));
  });

  it("equality used above does see unknown fields (guards the test itself)", () => {
    const base = create(ModelProtoSchema, {
      irVersion: 8n,
      opsetImport: [create(OperatorSetIdProtoSchema, { version: 17n })],
      graph: create(GraphProtoSchema, { name: "g" }),
    });
    const bytes = toBinary(ModelProtoSchema, base);
    const a = decodeModel(concat(bytes, VARINT_9999), "a");
    const b = decodeModel(bytes, "b");
    expect(sameModel(a, b)).toBe(false);
    expect(equals(ModelProtoSchema, a, b)).toBe(true);
  });
});

describe("nodes compile kept are written as their input bytes (nodeFields, encodeModelParts)", () => {
  const text = (s: string) => Array.from(new TextEncoder().encode(s));
  const lenField = (no: number, body: number[]) => [...varint((no << 3) | 2), ...varint(body.length), ...body];
  const opset = Array.from(toBinary(OperatorSetIdProtoSchema, create(OperatorSetIdProtoSchema, { version: 17n })));
  const model = (...graphs: number[][]) =>
    Uint8Array.from([...varint((1 << 3) | 0), 8, ...graphs.flatMap((g) => lenField(7, g)), ...lenField(8, opset)]);
  // A Relu whose fields come out of field-number order (op_type first): valid protobuf, not how serializers write.
  const shuffled = [
    ...lenField(4, text("Relu")),
    ...lenField(1, text("x")),
    ...lenField(2, text("y")),
    ...lenField(3, text("relu")),
  ];
  const canonical = Array.from(
    toBinary(NodeProtoSchema, create(NodeProtoSchema, { input: ["x"], output: ["y"], name: "relu", opType: "Relu" })),
  );

  it("a kept node keeps its input bytes (even out of field order); a node a pass added is encoded", () => {
    const input = model([...lenField(1, shuffled), ...lenField(2, text("g"))]);
    const decoded = decodeModel(input, "shuffled");
    const kept = nodeFields(decoded, input);
    expect(kept.size).toBe(1);
    expect(firstDiff(concatBytes(encodeModelParts(decoded, kept)), input)).toBe(-1);
    // Without them the node is encoded in field order: other bytes, the same model.
    const encoded = encodeModel(decoded);
    expect(firstDiff(encoded, input)).not.toBe(-1);
    expect(firstDiff(encoded, toBinary(ModelProtoSchema, decoded))).toBe(-1);
    expect(sameModel(decodeModel(encoded, "encoded"), decoded)).toBe(true);
    const added = create(NodeProtoSchema, { input: ["y"], output: ["z"], name: "neg", opType: "Neg" });
    const grown = shallowCopy(decoded, {
      graph: shallowCopy(decoded.graph!, { node: [...decoded.graph!.node, added] }),
    });
    const want = model([
      ...lenField(1, shuffled),
      ...lenField(1, Array.from(toBinary(NodeProtoSchema, added))),
      ...lenField(2, text("g")),
    ]);
    expect(firstDiff(concatBytes(encodeModelParts(grown, kept)), want)).toBe(-1);
  });

  it("a graph that comes in two parts (which protobuf merges) has no node fields: its nodes are encoded", () => {
    const input = model(lenField(1, shuffled), [...lenField(1, canonical), ...lenField(2, text("g"))]);
    const decoded = decodeModel(input, "two parts");
    expect(decoded.graph!.node.map((n) => n.opType)).toEqual(["Relu", "Relu"]);
    const kept = nodeFields(decoded, input);
    expect(kept.size).toBe(0);
    expect(firstDiff(concatBytes(encodeModelParts(decoded, kept)), toBinary(ModelProtoSchema, decoded))).toBe(-1);
  });

  it("compile writes the bytes encoding gives, on the shared models (written in field order)", () => {
    const bytes = new Uint8Array(readFileSync(EXAMPLE));
    const result = compile(bytes, "after layer 1 keep 50% by cls-attn");
    expect(firstDiff(result.model, toBinary(ModelProtoSchema, decodeModel(result.model, "compiled")))).toBe(-1);
  });
});

describe("weights are not copied", () => {
  it("raw_data of a decoded TensorProto is a view into the input buffer", () => {
    const bytes = new Uint8Array(readFileSync(EXAMPLE)); // its own ArrayBuffer, offset 0
    const model = decodeModel(bytes, EXAMPLE);
    const tensors = [...allTensors(model)].filter((t) => t.rawData.length > 0);
    expect(tensors.length).toBeGreaterThan(0);
    for (const t of tensors) {
      expect(t.rawData.buffer, t.name).toBe(bytes.buffer);
      expect(t.rawData.byteOffset + t.rawData.length).toBeLessThanOrEqual(bytes.length);
    }
    // Writing through the input shows up in the decoded tensor.
    const w = tensors.find((t) => t.dataType === TensorProto_DataType.FLOAT && t.rawData.length >= 4)!;
    const before = w.rawData[0];
    bytes[w.rawData.byteOffset] = (before! + 1) & 0xff;
    expect(w.rawData[0]).toBe((before! + 1) & 0xff);
  });
});

describe("encodeModel writes what toBinary writes", () => {
  const tensor = (name: string, bytes: number, extra: { docString?: string } = {}) =>
    create(TensorProtoSchema, {
      name,
      dims: [BigInt(bytes / 4)],
      dataType: TensorProto_DataType.FLOAT,
      rawData: new Uint8Array(bytes).map((_, i) => i * 7),
      ...extra,
    });

  it("initializers small and large in any order, with unknown fields, an external one and one without raw_data", () => {
    const withUnknown = fromBinary(TensorProtoSchema, concat(toBinary(TensorProtoSchema, tensor("u", 8)), VARINT_9999));
    const external = create(TensorProtoSchema, {
      name: "ext",
      dims: [4n],
      dataType: TensorProto_DataType.FLOAT,
      dataLocation: TensorProto_DataLocation.EXTERNAL,
      externalData: [create(StringStringEntryProtoSchema, { key: "location", value: "w.bin" })],
    });
    const ints = create(TensorProtoSchema, {
      name: "i",
      dims: [3n],
      dataType: TensorProto_DataType.INT64,
      int64Data: [1n, -2n, 3n],
    });
    const model = create(ModelProtoSchema, {
      irVersion: 8n,
      opsetImport: [create(OperatorSetIdProtoSchema, { version: 17n })],
      graph: create(GraphProtoSchema, {
        name: "g",
        initializer: [
          tensor("s0", 16),
          tensor("big0", 8192),
          withUnknown,
          tensor("s1", 4092, { docString: "just small" }),
          external,
          tensor("big1", 4096),
          ints,
          tensor("empty", 0),
        ],
      }),
    });
    expect(firstDiff(encodeModel(model), toBinary(ModelProtoSchema, model))).toBe(-1);
  });

  it.each([
    [EXAMPLE, "after layer 1 keep 50% by cls-attn"],
    [join(SHARED_MODELS, "graph-only", "gemma-3-4b-vlm", "decoder_model_merged.onnx"), "keep kv 50% by knorm"],
    [
      join(SHARED_MODELS, "graph-only", "qwen2-vl-2b-vision-tower-torchexport", "model.onnx"),
      "after layer 0 keep 50% by norm",
    ],
  ])("a model compile built (%s, %s)", (path, spec) => {
    if (!existsSync(path)) return; // ../shared absent: the example row still runs
    const { model } = compileModel(new Uint8Array(readFileSync(path)), spec);
    expect(firstDiff(encodeModel(model), toBinary(ModelProtoSchema, model))).toBe(-1);
  });
});

// onnx.checker: clean after a round trip if clean before.
const PYTHON = process.env["PRUNEC_PYTHON"] ?? "/usr/bin/python3";
const CHECKER = join(REPO_ROOT, "scripts", "onnx_check.py");
const hasPyOnnx = spawnSync(PYTHON, ["-c", "import onnx"], { stdio: "ignore" }).status === 0;
const checkerTitle = (t: string) =>
  hasPyOnnx ? t : `${t} (needs ${PYTHON} with onnx: missing; apt-get install python3-onnx)`;

describe.skipIf(!hasPyOnnx)(checkerTitle("onnx.checker: a clean model stays clean after decode → encode"), () => {
  const tmp = mkdtempSync(join(tmpdir(), "prunec-roundtrip-"));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  /** Check both files in one python run; returns each file's "OK ..."/"FAIL ..." line. */
  function check(files: string[]): string[] {
    const r = spawnSync(PYTHON, [CHECKER, "--ignore-external", ...files], { encoding: "utf8" });
    if (r.status !== 0 && r.status !== 1) throw new Error(`onnx_check.py exited ${r.status}: ${r.stderr}`);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(files.length);
    return lines;
  }

  it.each([EXAMPLE, ...sharedFiles].map((p, i) => [label(p), p, i] as const))("%s", (_name, path, i) => {
    const out = join(tmp, `${i}-${basename(path)}`);
    writeFileSync(out, encodeModel(decodeModel(new Uint8Array(readFileSync(path)), path)));
    const [before, after] = check([path, out]);
    if (before!.startsWith("OK ")) {
      expect(after, `clean before, not after: ${after}`).toMatch(/^OK /);
    } else {
      console.info(`${label(path)}: not checker-clean before the round trip, so not required after: ${before}`);
    }
    if (path === EXAMPLE) expect(before).toMatch(/^OK /);
  });
});
