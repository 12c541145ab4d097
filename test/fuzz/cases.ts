/**
 * One fuzz case: (seed, attack, index) → a mutated input (deterministic) → the prunec library run
 * on it in-process → an outcome:
 *   clean  a PrunecError (what a user sees as exit 1-8), or check's diagnostics;
 *   ok     compiled / parsed (a compiled model must decode again);
 *   crash  anything thrown that is not a PrunecError, an "internal error" diagnostic, or a
 *          compiled model that does not decode;
 *   hang   the case ran past its time guard (decided by the pool, which terminates the worker).
 */
import { compile } from "../../src/compile.js";
import { inspectModel } from "../../src/inspect.js";
import { checkSpec } from "../../src/check.js";
import { parseDataset, batchInput } from "../../src/data/prds.js";
import { decodeModel } from "../../src/onnx/io.js";
import { PrunecError } from "../../src/errors.js";
import { parseSpec, printSpec } from "../../grammar/index.js";
import { registry } from "../../passes/registry.js";
import { REPO_ROOT } from "../helpers/shared.js";
import { caseRng, type Rng } from "./rng.js";
import { flipModel, protoEdit, PROTO_EDITS, truncateModel, weightRanges } from "./model-mutators.js";
import { generateSpec, mutateSpec, SPEC_MUTATIONS, type SpecMutation } from "./spec-mutators.js";
import { mutatePrds, PRDS_MUTATIONS, type PrdsMutation } from "./prds-mutators.js";
import { seedDatasets, seedModels, seedWeight, type SeedModel } from "./seeds.js";

export type Family = "model" | "spec" | "prds";
export type Outcome = "clean" | "ok" | "crash" | "hang";

/** Every attack, by family: the rows of the campaign's table. */
export const ATTACKS: Record<Family, readonly string[]> = {
  model: ["model:truncate", "model:flip", ...PROTO_EDITS.map((e) => `model:proto:${e}`), "model:proto:combo"],
  spec: SPEC_MUTATIONS.map((m) => `spec:${m}`),
  prds: PRDS_MUTATIONS.map((m) => `prds:${m}`),
};

export interface CaseId {
  seed: number;
  attack: string;
  index: number;
}

/** The mutated input of a case: exactly what the library (or the CLI) is given. */
export interface CaseInput {
  family: Family;
  description: string;
  /** The model the case runs on (the mutant for model attacks). */
  model?: { name: string; source: string; bytes: Uint8Array };
  spec?: string;
  prds?: Uint8Array;
  /** Model cases: also run check SPEC MODEL (compile in memory: the same path, so not every case). */
  check?: boolean;
  /** Compile options (by case index: every third case targets webgpu, every fifth exposes indices). */
  options: { target: "cpu" | "webgpu"; exposeIndices: boolean };
}

const optionsFor = (index: number): CaseInput["options"] => ({
  target: index % 3 === 1 ? "webgpu" : "cpu",
  exposeIndices: index % 5 === 2,
});

/** The compile options as CLI flags (what the description and the CLI runs say). */
export function optionFlags(o: CaseInput["options"]): string[] {
  return [...(o.target === "webgpu" ? ["--target", "webgpu"] : []), ...(o.exposeIndices ? ["--expose-indices"] : [])];
}
const withOptions = (description: string, index: number): string => {
  const flags = optionFlags(optionsFor(index));
  return flags.length ? `${description} [compiled with ${flags.join(" ")}]` : description;
};

export interface CaseResult extends CaseId {
  outcome: Outcome;
  description: string;
  /** Error name and message (clean, crash), or what succeeded (ok). */
  detail: string;
  /** The top of the stack of a crash. */
  stack?: string;
  ms: number;
}

export const familyOf = (attack: string): Family => attack.split(":")[0] as Family;

let seeds: SeedModel[] | undefined;
const weightCache = new Map<string, [number, number][]>();

function pickSeed(r: Rng): SeedModel {
  seeds ??= seedModels();
  return r.weighted(seeds.map((s) => [seedWeight(s), s] as const));
}

function weightsOf(s: SeedModel): [number, number][] {
  let w = weightCache.get(s.name);
  if (!w) weightCache.set(s.name, (w = weightRanges(s.bytes())));
  return w;
}

/** Build the input of a case (deterministic: the same id always gives the same bytes). */
export function buildCase(id: CaseId): CaseInput {
  const r = caseRng(id.seed, id.attack, id.index);
  const [family, kind, sub] = id.attack.split(":") as [Family, string, string | undefined];
  if (family === "model") {
    const s = pickSeed(r);
    const bytes = s.bytes();
    const spec = r.pick(s.specs);
    let m: ReturnType<typeof truncateModel>;
    if (kind === "truncate") m = truncateModel(r, bytes, weightsOf(s));
    else if (kind === "flip") m = flipModel(r, bytes, weightsOf(s));
    else if (sub === "combo")
      m = protoEdit(
        r,
        bytes,
        Array.from({ length: r.int(2, 4) }, () => r.pick(PROTO_EDITS)),
      );
    else m = protoEdit(r, bytes, [sub!]);
    return {
      family,
      description: withOptions(`${s.name}: ${m.description}`, id.index),
      model: { name: s.name, source: s.source, bytes: m.bytes },
      spec,
      check: id.index % 4 === 0,
      options: optionsFor(id.index),
    };
  }
  if (family === "spec") {
    seeds ??= seedModels();
    // The model the spec is compiled on: mostly the shipped ViTs, sometimes fused ViT or a decoder.
    const usual = seeds.filter((s) =>
      ["tiny-vit", "digits", "fused-vit", "decoder-gqa", "export:seqfirst-opset17", "export:deit-two-tokens"].includes(
        s.name,
      ),
    );
    const target = r.weighted<SeedModel>(
      (usual.length ? usual : seeds).map(
        (s) => [s.name === "tiny-vit" ? 6 : s.name.startsWith("decoder") ? 3 : 1, s] as const,
      ),
    );
    const base = r.chance(0.15) ? r.pick(target.specs) : generateSpec(r, target.layers);
    const m = mutateSpec(r, kind as SpecMutation, base);
    return {
      family,
      description: withOptions(
        `${m.description} (on ${target.name}); base ${JSON.stringify(base.slice(0, 200))}`,
        id.index,
      ),
      model: { name: target.name, source: target.source, bytes: target.bytes() },
      spec: m.text,
      options: optionsFor(id.index),
    };
  }
  const d = r.pick(seedDatasets());
  const m = mutatePrds(r, kind as PrdsMutation, d.bytes());
  return { family, description: `${d.name}: ${m.description}`, prds: m.bytes, options: optionsFor(id.index) };
}

function stackTop(e: unknown, frames = 6): string | undefined {
  if (!(e instanceof Error) || !e.stack) return undefined;
  return e.stack
    .split("\n")
    .filter((l) => l.trim().startsWith("at "))
    .slice(0, frames)
    .map((l) => l.trim().replace("file://", "").replace(`${REPO_ROOT}/`, ""))
    .join("\n");
}

const errorLine = (e: unknown): string =>
  (e instanceof Error ? `${e.name}: ${e.message}` : `thrown non-Error: ${String(e)}`).slice(0, 600);

/** A thrown value as an outcome: PrunecError is a clean error (unless it admits to being internal). */
function classify(e: unknown): { outcome: Outcome; detail: string; stack?: string } {
  if (e instanceof PrunecError && !/internal error/i.test(e.message))
    return { outcome: "clean", detail: `PrunecError(${e.kind}): ${e.message.slice(0, 300)}` };
  const stack = stackTop(e);
  return { outcome: "crash", detail: errorLine(e), ...(stack ? { stack } : {}) };
}

class Crash extends Error {
  override name = "FuzzFinding";
}

/** Run the library on a case's input, in this thread. */
export function runInput(input: CaseInput): { outcome: Outcome; detail: string; stack?: string } {
  try {
    if (input.family === "model") {
      const { bytes, name } = input.model!;
      // inspect, compile and check each run; any non-PrunecError is a crash. The outcome is
      // compile's: ok when it compiled, else its clean error.
      const steps: string[] = [];
      let compileError: unknown;
      const step = (f: () => string, isCompile = false): void => {
        try {
          steps.push(f());
        } catch (e) {
          if (!(e instanceof PrunecError) || /internal error/i.test(e.message)) throw e;
          if (isCompile) compileError = e;
        }
      };
      step(() => `inspect: ${inspectModel(bytes, name).layers.length} layers`);
      step(() => {
        const out = compile(bytes, input.spec!, { modelName: name, specName: "fuzz.prune", ...input.options });
        decodeOutput(out.model);
        return `compile: ${out.report.stages.length} stage(s), ${out.model.length} bytes`;
      }, true);
      if (input.check)
        step(() => {
          const c = checkSpec(input.spec!, "fuzz.prune", { bytes, name });
          internalDiagnostics(c.diagnostics);
          if (!c.ok) throw new PrunecError(c.refusal?.kind ?? "spec", c.refusal?.message ?? c.summary);
          return "check: ok";
        });
      if (compileError !== undefined) return classify(compileError);
      return { outcome: "ok", detail: steps.join("; ") };
    }
    if (input.family === "spec") {
      const text = input.spec!;
      const c = checkSpec(text, "fuzz.prune");
      internalDiagnostics(c.diagnostics);
      if (!c.ok)
        return {
          outcome: "clean",
          detail: `check: ${c.diagnostics.length} diagnostic(s): ${c.diagnostics[0]?.message.slice(0, 200) ?? c.summary}`,
        };
      // fmt: the canonical form must parse again.
      const parsed = parseSpec(text, "fuzz.prune", registry);
      const printed = printSpec(parsed.spec!);
      const again = parseSpec(printed, "fmt.prune", registry);
      if (!again.spec)
        throw new Crash(
          `fmt output does not parse: ${JSON.stringify(printed.slice(0, 200))}: ${again.diagnostics[0]?.message}`,
        );
      const { bytes, name } = input.model!;
      const out = compile(bytes, text, { modelName: name, specName: "fuzz.prune", ...input.options });
      decodeOutput(out.model);
      return { outcome: "ok", detail: `compiled on ${name}: ${out.report.stages.length} stage(s)` };
    }
    const d = parseDataset(input.prds!, "fuzz.prds");
    const x = batchInput(d, 0, Math.min(d.header.n, 2));
    return { outcome: "ok", detail: `${d.header.n} examples, batch of ${x.dims.join("×")}` };
  } catch (e) {
    return classify(e);
  }
}

function internalDiagnostics(ds: readonly { message: string }[]): void {
  const bad = ds.find((d) => /internal error/i.test(d.message));
  if (bad) throw new Crash(`diagnostic: ${bad.message}`);
}

function decodeOutput(bytes: Uint8Array): void {
  try {
    decodeModel(bytes, "compiled output");
  } catch (e) {
    throw new Crash(`the compiled model does not decode: ${errorLine(e)}`);
  }
}

/** Build and run one case in this thread (no time guard: see pool.ts). */
export function runCase(id: CaseId): CaseResult {
  const input = buildCase(id);
  const t = performance.now();
  const r = runInput(input);
  return { ...id, ...r, description: input.description, ms: performance.now() - t };
}

/** `count` case ids of each attack of `families`, interleaved (so a bounded run covers every attack). */
export function caseIds(seed: number, counts: Partial<Record<Family, number>>): CaseId[] {
  const ids: CaseId[] = [];
  for (const [family, total] of Object.entries(counts) as [Family, number][]) {
    const attacks = ATTACKS[family];
    for (let i = 0; i < total; i++)
      ids.push({ seed, attack: attacks[i % attacks.length]!, index: Math.floor(i / attacks.length) });
  }
  return ids;
}
