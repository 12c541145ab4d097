/** norm: the L2 norm of each token of the residual stream leaving the layer (a baseline). */
import type { CriterionModule, ScoreContext } from "../criterion.js";

function score({ b, model, stream, prefix }: ScoreContext): string {
  const hiddenAxis = model.batchAxis === undefined ? 1 : 2;
  const norms = b.reduce("ReduceL2", stream, [hiddenAxis], 0); // [B,N] or [N]
  const batched = model.batchAxis === undefined ? b.unsqueeze(norms, [0]) : norms;
  return b.slice(batched, 1, prefix);
}

export const norm: CriterionModule = {
  name: "norm",
  paddingSafe: true,
  summary: "L2 norm of each token of the residual stream leaving the layer",
  args: {},
  needs: "nothing beyond the residual stream",
  prepare: () => ({ ok: { kind: "score", score } }),
};
