/**
 * `of SET` as both planners read it: prunec restricts a stage to a set given by a model input
 * (`tokens SET = input NAME`); a set defined otherwise is refused with the same words for stream
 * and KV-cache stages.
 */
import type { TokenSetDecl } from "../grammar/ir.js";

/** The model input marking the set's positions, or why the stage cannot use the set. */
export function setInput(set: TokenSetDecl, what: string): { input: string } | { why: string } {
  if (set.source.kind === "input") return { input: set.source.input };
  return {
    why: `'of ${set.name}': prunec restricts ${what} to sets given by a model input ('tokens ${set.name} = input NAME'); sets defined as '${set.source.kind} ...' are not supported yet`,
  };
}
