/**
 * The criterion registry interface the parser validates against. The grammar knows no criterion:
 * whoever calls parseSpec supplies the registry (the real one is built from the criterion modules).
 */
import type { ArgValue, StageTarget } from "./ir.js";

/** number: any finite number; integer: a whole number; range: `lo..hi` with lo <= hi; identifier: a name. */
export type ArgType = "number" | "integer" | "range" | "identifier";

export interface ArgInfo {
  type: ArgType;
  default?: number | string | [number, number];
  /** No default value, but the criterion chooses one from the stage (documented in `doc`). */
  optional?: true;
  doc: string;
}

export interface CriterionInfo {
  /** Lower case: letters, digits and `-`, starting with a letter. */
  name: string;
  /** What it scores: the residual stream's tokens (the default) and/or KV-cache entries (`keep kv`). */
  targets?: readonly StageTarget[];
  summary: string;
  /** Declared in order; positional arguments bind in this order and printSpec writes them in it. */
  args: Record<string, ArgInfo>;
}

export interface CriterionRegistry {
  /** Looks a criterion up by its lower-case name. */
  get(name: string): CriterionInfo | undefined;
  /** All registered names (lower case). */
  names(): string[];
}

const NAME = /^[a-z][a-z0-9-]*$/;
const ARG_NAME = /^[A-Za-z_][A-Za-z0-9_-]*$/;

/** A registry over a fixed list. Throws on malformed or duplicate names (a programming error, not a spec error). */
export function createRegistry(criteria: readonly CriterionInfo[]): CriterionRegistry {
  const byName = new Map<string, CriterionInfo>();
  for (const info of criteria) {
    if (!NAME.test(info.name))
      throw new Error(`criterion name '${info.name}' must be lower case letters, digits and '-'`);
    if (byName.has(info.name)) throw new Error(`criterion '${info.name}' is registered twice`);
    for (const arg of Object.keys(info.args)) {
      if (!ARG_NAME.test(arg)) throw new Error(`criterion '${info.name}': bad argument name '${arg}'`);
    }
    byName.set(info.name, info);
  }
  return {
    get: (name) => byName.get(name),
    names: () => [...byName.keys()],
  };
}

/** The written arguments completed with the declared defaults, in declared order. */
export function argsWithDefaults(
  info: CriterionInfo,
  args: Readonly<Record<string, ArgValue>>,
): Record<string, ArgValue> {
  const out: Record<string, ArgValue> = {};
  for (const [name, arg] of Object.entries(info.args)) {
    const value = args[name] ?? arg.default;
    if (value !== undefined) out[name] = Array.isArray(value) ? [value[0], value[1]] : value;
  }
  return out;
}

/** What a criterion scores (stream tokens unless it says otherwise). */
export function targetsOf(info: CriterionInfo): readonly StageTarget[] {
  return info.targets ?? ["stream"];
}
