/**
 * compile()'s post-condition: the rewritten graph is well formed (structure.ts), its shapes agree
 * with the token counts prunec declares at every stage (stage-shapes.ts), and no Reshape below a
 * stage changes the element count (reshapes.ts). A failure is a prunec bug,
 * reported as a PrunecError of kind "verify" naming the stage and the node or tensor, before
 * anything is encoded or written. Pure.
 */
import type { GraphProto } from "../onnx/gen/onnx_pb.js";
import type { TransformerInfo } from "../analysis/transformer.js";
import type { Dim } from "../analysis/dims.js";
import { batchDim } from "../ir/value-info.js";
import type { StagePlan } from "../plan-types.js";
import { PrunecError } from "../errors.js";
import { issueKey, structureIssues, type StructureIssue } from "./structure.js";
import { checkStageShapes, stageTarget, type StageShape } from "./stage-shapes.js";
import { reshapeIssues } from "./reshapes.js";
import { Graph, type NodeProto } from "../ir/graph.js";
import { analyzeFromInputs } from "../analysis/shapes.js";

export interface VerifyReport {
  /** Nodes of the main graph whose structure was checked (subgraphs included in the check). */
  nodes: number;
  /** Per stage: how far its output shape was confirmed by re-running shape inference. */
  stages: StageShape[];
  /** The inputs' batch size or symbol, where the analysis found a batch axis (what a smoke run varies). */
  batch?: Dim;
}

export const VERIFY_FAILED = "the compiled model failed verification (a prunec bug: please report it)";

/** "stage 0 (after layer 1 by cls-attn)": how every verification message names a stage. */
export function stageLabel(s: { stage: number; layer: number; criterion: string; encoder?: boolean }): string {
  return `stage ${s.stage} (${s.encoder ? "after encoder" : `after layer ${s.layer}`} by ${s.criterion})`;
}

function labelOfPlan(p: StagePlan): string {
  return stageLabel({
    stage: p.stage,
    layer: p.layer.index,
    criterion: p.criterion.name,
    encoder: p.encoder !== undefined,
  });
}

/** The stage whose nodes (named `prunec/stage<N>/…`, outputs `prunec.stage<N>.…`) an issue is about, if any. */
function stageOf(issue: StructureIssue, plans: readonly StagePlan[]): StagePlan | undefined {
  for (const text of [issue.node ?? "", issue.tensor]) {
    const m = /^prunec[/.]stage(\d+)[/.]/.exec(text);
    const plan = m ? plans.find((p) => p.stage === Number(m[1])) : undefined;
    if (plan) return plan;
  }
  return undefined;
}

/** Every node that reads a stage's stream (transitively), with the last stage it is below. */
function stageBelow(g: Graph, plans: readonly StagePlan[], info: TransformerInfo): Map<NodeProto, StagePlan> {
  const below = new Map<NodeProto, StagePlan>();
  for (const p of plans) {
    const t = stageTarget(p, info);
    if (t) for (const n of g.descendants(t.tensor)) below.set(n, p);
  }
  return below;
}

/**
 * Pre: `output` is `input` after the passes of `plans` (planned on `info`, the analysis of the graph the stages were applied to).
 * Post: returns what was verified, or throws PrunecError("verify").
 */
export function verifyCompiled(
  output: GraphProto,
  input: GraphProto,
  plans: readonly StagePlan[],
  info: TransformerInfo,
  modelName: string,
): VerifyReport {
  const found = structureIssues(output);
  if (found.length) {
    // Only what prunec introduced is its bug: a flaw the input model already had is left to it.
    const before = new Set(structureIssues(input).map(issueKey));
    const introduced = found.filter((i) => !before.has(issueKey(i)));
    if (introduced.length) {
      const first = introduced[0]!;
      const plan = stageOf(first, plans);
      const more = introduced.length > 1 ? ` (and ${introduced.length - 1} more)` : "";
      throw new PrunecError(
        "verify",
        `${modelName}: ${VERIFY_FAILED}: ${plan ? labelOfPlan(plan) : "after the stages"}: ${first.message}${more}`,
      );
    }
  }
  // One inference for both shape checks; declared shapes are ignored so they cannot mask a disagreement.
  // It is the inference of this graph's own nodes (shared with the steps that only declared outputs).
  const graph = Graph.of(output);
  const inferred = plans.length ? analyzeFromInputs(output).shapes : new Map();
  const { shapes, issues } = checkStageShapes(inferred, plans, info);
  if (issues.length) {
    const first = issues[0]!;
    throw new PrunecError("verify", `${modelName}: ${VERIFY_FAILED}: ${labelOfPlan(first.plan)}: ${first.message}`);
  }
  const below = stageBelow(graph, plans, info);
  const reshape = reshapeIssues(below.keys(), inferred)[0];
  if (reshape)
    throw new PrunecError(
      "verify",
      `${modelName}: ${VERIFY_FAILED}: ${labelOfPlan(below.get(reshape.node)!)}: ${reshape.message}`,
    );
  const batch = info.batchAxis !== undefined ? batchDim(output) : undefined;
  return { nodes: output.node.length, stages: shapes, ...(batch !== undefined ? { batch } : {}) };
}
