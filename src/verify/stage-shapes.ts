/**
 * Do the compiled graph's shapes agree with what prunec declares at each stage? On shapes inferred
 * from the result with declared value_info ignored (the passes declare the pruned stream's shape
 * themselves, which would otherwise mask a gather that computes something else), the tensor each
 * stage writes must have the dense tensor's rank, its static non-token dims, and the stage's token
 * count on the token axis. Symbolic counts: rank and static dims only. Pure.
 */
import type { Dim, Shape, ShapeMap } from "../analysis/dims.js";
import type { TransformerInfo } from "../analysis/transformer.js";
import type { StagePlan } from "../plan-types.js";

/** How far a stage's shape was confirmed: every dim, all but a symbolic token count, or not at all (not inferred). */
export type Agreement = "shape" | "rank" | "unknown";

export interface StageShape {
  stage: number;
  /** The tensor the stage writes (the residual leaving its layer, or the encoder output). */
  tensor: string;
  tokenAxis: number;
  /** The dense shape with the stage's token count on the token axis; undefined when the dense shape is unknown. */
  expected?: Shape;
  inferred?: Shape;
  agreement: Agreement;
}

export interface StageShapeIssue {
  plan: StagePlan;
  tensor: string;
  message: string;
}

const show = (s: readonly Dim[]) => `[${s.join(", ")}]`;

/** The tensor a stage writes, its token axis, and the token count it leaves there. */
export function stageTarget(
  plan: StagePlan,
  info: TransformerInfo,
): { tensor: string; tokenAxis: number; tokens: Dim } | undefined {
  const tensor = plan.encoder?.tensor ?? plan.layer.residual?.output;
  const tokenAxis = plan.encoder?.tokenAxis ?? info.tokenAxis;
  if (tensor === undefined || tokenAxis === undefined) return undefined;
  // A masked stage removes nothing: its stream keeps every token.
  return { tensor, tokenAxis, tokens: plan.mask ? plan.tokensIn : plan.tokensOut };
}

function compareShapes(
  expected: Shape,
  inferred: Shape,
  tokenAxis: number,
): { agreement: Agreement; mismatch?: string } {
  if (inferred.length !== expected.length)
    return { agreement: "unknown", mismatch: `rank ${inferred.length}, expected rank ${expected.length}` };
  let exact = true;
  for (let i = 0; i < expected.length; i++) {
    const e = expected[i]!;
    const x = inferred[i]!;
    // Only a difference between two numbers is a provable disagreement; symbols may stand for anything.
    if (typeof e === "number" && typeof x === "number") {
      if (e !== x)
        return {
          agreement: "unknown",
          mismatch:
            i === tokenAxis ? `${x} tokens on axis ${i}, expected ${e}` : `size ${x} on axis ${i}, expected ${e}`,
        };
    } else if (e !== x) exact = false;
  }
  return { agreement: exact ? "shape" : "rank" };
}

/**
 * Each stage's shape check, and the disagreements (an empty list: the shapes agree as far as they
 * are known). `inferred`: the compiled graph's shapes, inferred with declared value_info ignored.
 */
export function checkStageShapes(
  inferred: ShapeMap,
  plans: readonly StagePlan[],
  info: TransformerInfo,
): { shapes: StageShape[]; issues: StageShapeIssue[] } {
  // Stages at the same tensor: the last one's count is what the graph holds there.
  const last = new Map<string, StagePlan>();
  // Masked stages remove nothing: the stream holds what the last gathering stage left (or the dense count).
  const held = new Map<StagePlan, Dim | undefined>();
  let current: Dim | undefined = info.tokens;
  for (const p of plans) {
    if (!p.mask) current = p.tokensOut;
    held.set(p, current);
    const t = stageTarget(p, info);
    if (t) last.set(t.tensor, p);
  }
  const shapes: StageShape[] = [];
  const issues: StageShapeIssue[] = [];
  for (const plan of last.values()) {
    const target = stageTarget(plan, info)!;
    const t = { ...target, tokens: held.get(plan) ?? target.tokens };
    const dense = info.shapes.get(t.tensor);
    const got = inferred.get(t.tensor);
    const expected = dense?.map((d, i) => (i === t.tokenAxis ? t.tokens : d));
    const row: StageShape = { stage: plan.stage, tensor: t.tensor, tokenAxis: t.tokenAxis, agreement: "unknown" };
    if (expected) row.expected = expected;
    if (got) row.inferred = got;
    if (expected && got) {
      const c = compareShapes(expected, got, t.tokenAxis);
      row.agreement = c.agreement;
      if (c.mismatch) {
        issues.push({
          plan,
          tensor: t.tensor,
          message: `tensor '${t.tensor}' (the stream the stage writes) has inferred shape ${show(got)} (${c.mismatch}); prunec declares ${show(expected)} (${t.tokens} tokens on axis ${t.tokenAxis})`,
        });
      }
    }
    shapes.push(row);
  }
  return { shapes, issues };
}
