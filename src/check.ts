/**
 * `prunec check SPEC [MODEL]`: every check compile would make, without writing anything. Without a
 * model: syntax, criteria and their arguments. With a model: compile itself runs in memory (no
 * encoding, no writing, no onnxruntime smoke run), so check refuses exactly what compile refuses,
 * with the same message, and reports the token count after each stage.
 */
import type { Diagnostic } from "../grammar/diagnostics.js";
import { parseSpec } from "../grammar/index.js";
import type { SpecIR, StageIR } from "../grammar/ir.js";
import { registry } from "../passes/registry.js";
import { resolvedAmount, checkSpecSets } from "./plan.js";
import { compileModel, noStagesMessage, type StageReport } from "./compile.js";
import { EXIT_CODES, PrunecError, type ErrorKind } from "./errors.js";

export interface CheckedStage {
  line: number;
  text: string;
  tokensIn?: number | string;
  tokensOut?: number | string;
}

export interface CheckResult {
  ok: boolean;
  diagnostics: Diagnostic[];
  stages: CheckedStage[];
  /** One line: the resolved schedule when ok, the error count otherwise. */
  summary: string;
  /**
   * Compile's refusal, as compile reports it: on the model (its diagnostics, if any, are in
   * `diagnostics`), or of a spec without stages (kind "spec"; the CLI's compile refuses it).
   */
  refusal?: { kind: ErrorKind; exitCode: number; message: string };
}

function position(stage: StageIR): string {
  const p = stage.position;
  if (p.kind === "after-encoder") return "after encoder";
  if (p.kind === "before-layer-0") return "before layer 0";
  if (p.kind === "all-layers") return "in every layer";
  if (p.kind === "in-layers") return `in layers ${p.from}..${p.to}`;
  return `${p.kind === "after-layer" ? "after" : "in"} layer ${p.layer}`;
}

function stageText(stage: StageIR): string {
  const amount = resolvedAmount(stage);
  const args = Object.entries(stage.criterion.args).map(
    ([k, v]) => `${k}: ${Array.isArray(v) ? `${v[0]}..${v[1]}` : v}`,
  );
  const criterion = stage.criterion.name + (args.length ? `(${args.join(", ")})` : "");
  const of = stage.of !== undefined ? ` of ${stage.of}` : "";
  const withs = stage.options.length ? ` with ${stage.options.join(", ")}` : "";
  const across = stage.across ? ` across ${stage.across}` : "";
  return `${position(stage)} ${amount.text}${amount.isDefault ? " (default)" : ""}${of} by ${criterion}${withs}${across}`;
}

export function checkSpec(
  specText: string,
  specName: string,
  model?: { bytes: Uint8Array; name: string },
  /** Compile options that change what is refused (`--kv-state`: per-example stages before linear attention). */
  options: { kvState?: boolean } = {},
): CheckResult {
  const parsed = parseSpec(specText, specName, registry);
  const fail = (diagnostics: Diagnostic[]): CheckResult => ({
    ok: false,
    diagnostics,
    stages: [],
    summary: `${specName}: ${diagnostics.length} error${diagnostics.length === 1 ? "" : "s"}`,
  });
  if (!parsed.spec || parsed.diagnostics.length) return fail(parsed.diagnostics);
  const spec: SpecIR = parsed.spec;
  // Compile (the CLI) refuses a spec that prunes nothing; check says so, with or without a model.
  if (!spec.stages.length) {
    const refusal = { kind: "spec" as const, exitCode: EXIT_CODES.spec, message: noStagesMessage(specName) };
    return { ok: false, diagnostics: [], stages: [], summary: `${specName}: refused (no stages)`, refusal };
  }
  // What the file alone shows (sets it uses but never declares, sets a criterion needs); with a
  // model the planner reports the same through compile.
  if (!model) {
    const sets = checkSpecSets(spec);
    if (sets.length) return fail(sets);
  }
  let planned: StageReport[] | undefined;
  if (model) {
    try {
      planned = compileModel(model.bytes, specText, {
        modelName: model.name,
        specName,
        ...(options.kvState ? { kvState: true } : {}),
      }).report.stages;
    } catch (e) {
      // What compile refuses (exit 6, or 8 for a model that fails verification) is check's finding;
      // anything else (unreadable model, not a transformer) fails check as it fails compile.
      if (!(e instanceof PrunecError) || (e.kind !== "apply" && e.kind !== "verify")) throw e;
      const refusal = { kind: e.kind, exitCode: e.exitCode, message: e.message };
      if (e.diagnostics.length) return { ...fail([...e.diagnostics]), refusal };
      return { ok: false, diagnostics: [], stages: [], summary: `${specName}: refused on ${model.name}`, refusal };
    }
  }
  const stages = spec.stages.map((s, i): CheckedStage => {
    const out: CheckedStage = { line: s.span.line, text: stageText(s) };
    const plan = planned?.[i];
    if (plan) {
      out.tokensIn = plan.tokensIn;
      out.tokensOut = plan.tokensOut;
    }
    return out;
  });
  const on = model ? ` on ${model.name}` : "";
  const list = stages
    .map((s) => s.text + (s.tokensOut !== undefined ? ` (${s.tokensIn} → ${s.tokensOut} tokens)` : ""))
    .join("; ");
  return {
    ok: true,
    diagnostics: [],
    stages,
    summary: `${specName}: ok${on}, ${stages.length} stage${stages.length === 1 ? "" : "s"}${stages.length ? `: ${list}` : ""}`,
  };
}

/** Diagnostics as editors want them (defined with the error objects of `--json`). */
export { diagnosticsJson } from "./errors.js";
