/** The contract between a stage and the criterion module that scores its tokens. */
import type { Graph } from "../src/ir/graph.js";
import type { LayerInfo, TransformerInfo } from "../src/analysis/transformer.js";
import type { Dim } from "../src/analysis/dims.js";
import type { NodeBuilder } from "./builder.js";
import type { CriterionInfo } from "../grammar/registry.js";
import type { ArgValue } from "../grammar/ir.js";

export interface ScoreContext {
  graph: Graph;
  model: TransformerInfo;
  layer: LayerInfo;
  /** Criterion arguments as the spec resolved them. */
  args: Readonly<Record<string, ArgValue>>;
  b: NodeBuilder;
  /** Special tokens (CLS, registers) in front of the prunable ones; they are never scored. */
  prefix: number;
  /** The residual stream leaving the layer, before the stage's gather (criteria may read it). */
  stream: string;
  /** Tokens entering the stage (prefix included), when known statically. */
  tokens: number | undefined;
}

/** A criterion: its registry entry (name, summary, declared arguments) plus how it scores. */
export interface CriterionModule extends CriterionInfo {
  /** Token sets the criterion reads, which the spec must declare. */
  requiresSets?: string[];
  /** What a model must have for the criterion to run, in words (for docs). */
  needs: string;
  /**
   * Why this criterion cannot score tokens at `layer`, as a sentence naming the model fact, or
   * undefined when it can. Called before anything is emitted, so a bad spec writes nothing.
   */
  unsupported(model: TransformerInfo, layer: LayerInfo, tokensIn?: Dim): string | undefined;
  /**
   * Emit the scoring subgraph. Returns a float tensor [batch, prunable] (batch = 1 for models whose
   * residual stream has no batch axis), higher = more important.
   */
  score(ctx: ScoreContext): string;
}
