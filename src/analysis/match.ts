/**
 * Matchers that say why they did not match, and where they stopped (in the spirit of onnxscript's
 * rewriter, where every non-match carries a reason and the value it failed at).
 *
 * A matcher returns `Match<T>`: `{ ok: value }`, or a `Miss` with the reason and the node or tensor
 * where matching stopped. The analysis keeps only the values (its facts are the same either way);
 * `prunec inspect --explain` and the planner's refusals print the reasons. Reasons are built only
 * where a matcher already looks, and every list they name is capped, so explaining stays linear.
 */
import type { NodeProto } from "../ir/graph.js";

export interface Miss {
  why: string;
  /** The node where matching stopped (its name, or `Op → 'output'` for an unnamed node). */
  node?: string;
  /** Or the tensor where it stopped. */
  tensor?: string;
}

export type Match<T> = { ok: T } | Miss;

/** One thing a matcher looked for: what it found, or why it found nothing and where it stopped. */
export interface Step {
  looked: string;
  found?: string;
  miss?: Miss;
}

/** A node as reasons name it: its name, or its op and first output when it has none. */
export function nodeName(n: NodeProto): string {
  return n.name || `${n.opType} → '${n.output[0] ?? ""}'`;
}

/** `'name' (Op)`. */
export function label(n: NodeProto): string {
  return `'${nodeName(n)}' (${n.opType})`;
}

export function missAt(why: string, n: NodeProto): Miss {
  return { why, node: nodeName(n) };
}

export function missAtTensor(why: string, t: string): Miss {
  return { why, tensor: t };
}

export function isOk<T>(m: Match<T>): m is { ok: T } {
  return "ok" in m;
}

export function okOf<T>(m: Match<T>): T | undefined {
  return "ok" in m ? m.ok : undefined;
}

/** Where a miss stopped, as text: ` at node 'n'`, ` at tensor 't'`, or nothing. */
export function whereText(m: Miss): string {
  return m.node !== undefined ? ` at node '${m.node}'` : m.tensor !== undefined ? ` at tensor '${m.tensor}'` : "";
}

/** The reason with where it stopped: `why at node 'n'`. */
export function missText(m: Miss): string {
  return `${m.why}${whereText(m)}`;
}

/** Up to `cap` items joined with ", ", then "and N more". */
export function capped(items: readonly string[], cap = 4): string {
  const shown = items.slice(0, cap).join(", ");
  return items.length > cap ? `${shown} and ${items.length - cap} more` : shown;
}

/** Records what a matcher looked for into `trace` (when given), and passes the result on. */
export function look<T>(trace: Step[] | undefined, looked: string, m: Match<T>, found: (v: T) => string): Match<T> {
  if (trace) trace.push("ok" in m ? { looked, found: found(m.ok) } : { looked, miss: plainMiss(m) });
  return m;
}

/** A miss with only its reason and place (matchers may carry more, e.g. how far they got). */
export function plainMiss(m: Miss): Miss {
  const out: Miss = { why: m.why };
  if (m.node !== undefined) out.node = m.node;
  if (m.tensor !== undefined) out.tensor = m.tensor;
  return out;
}
