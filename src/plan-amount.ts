/** The amount a stage keeps, as the spec resolves it (shared by the stream and KV-cache planners). */
import type { StageIR } from "../grammar/ir.js";

/** Percentage kept when a stage omits its amount (documented in docs/language.md). */
export const DEFAULT_PERCENT = 50;

/** A stage's amount as the spec resolves it (the default made explicit). */
export function resolvedAmount(stage: StageIR): { text: string; isDefault: boolean } {
  const action = stage.target === "stream" ? stage.action : `${stage.action} ${stage.target}`;
  if (!stage.amount) return { text: `${action} ${DEFAULT_PERCENT}%`, isDefault: true };
  const a = stage.amount;
  const text =
    a.kind === "percent"
      ? `${a.value}%`
      : a.kind === "count"
        ? stage.target === "heads"
          ? String(a.value)
          : `${a.value} tokens`
        : a.kind === "mass"
          ? `mass ${a.value}%`
          : `above ${a.value}`;
  return { text: `${action} ${text}`, isDefault: false };
}
