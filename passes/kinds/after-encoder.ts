/**
 * `after encoder`: the stage selects rows of the encoder's output (tokens, or merged tokens whose
 * score is the mean of their tokens' scores), scored at the last layer; it lowers like top-k (or
 * float keys under --target webgpu).
 */
import type { SelectionModule } from "./kind.js";
import { topK } from "./top-k.js";

export const afterEncoder: SelectionModule = {
  name: "after-encoder",
  summary: "TopK over the output rows' scores (merged rows: the mean over their tokens), ascending",
  check: (f) =>
    f.afterEncoder && !f.model.encoderOutput
      ? {
          why: "'after encoder' needs a model output with one row per token or per merged token (image features); this model's outputs have none",
          at: "position",
        }
      : undefined,
  select: topK.select,
};
