/**
 * `with mask`: the stage removes nothing. Its kept positions become a key bias (−1e9 on the dropped
 * tokens) added to the attention logits of every later layer (passes/mask-recycle.ts); the stream
 * and all shapes stay as they are, and later stages rank only the tokens still unmasked.
 */
import { addKeyBias, keptOneHot, maskBias } from "../mask-recycle.js";
import { splice } from "../splice.js";
import type { StageSetup, Selection } from "./kind.js";
import type { GraphProto } from "../../src/ir/graph.js";
import type { StageEffect } from "../stream-state.js";

export function lowerMask(s: StageSetup, sel: Selection): { graph: GraphProto; effect: StageEffect } {
  const { b, model, plan } = s;
  // Per-example counts: the positions with padding as −1 (nothing is gathered, so they are what is exposed too).
  const indices = sel.exposed ?? sel.indices;
  if (!indices) throw new Error("'with mask' needs the kept indices (float keys are not chosen for masked stages)");
  const bias = maskBias(b, keptOneHot(b, indices, s.stream, s.tokenAxis));
  const rewired = addKeyBias(b, model, plan.layer.index + 1, b.unsqueeze(bias, [1, 2]), { label: "mask" });
  // The mask's Adds read logits computed further down: the splice restores a topological order.
  const graph = splice(s.proto, {
    label: `stage ${plan.stage} (with mask)`,
    after: s.stream,
    nodes: b.nodes,
    initializers: b.initializers,
    replaced: rewired,
  });
  return {
    graph,
    effect: {
      tokens: plan.tokensOut,
      added: b.nodes,
      record: { indices, lowering: "index", ...(sel.counts ? { counts: sel.counts } : {}) },
      carried: new Map(),
      maskBias: bias,
      sets: s.state.sets,
    },
  };
}
