/**
 * The criteria of the language (design card and methods.md) that have no compiler module yet.
 * Declaring them here lets every spec the language allows parse and be checked (names, argument
 * names and types, required token sets); `compile` and `check` reject them with a clear message
 * until their module lands. An implemented criterion moves out of this list into its own module.
 */
import type { CriterionInfo } from "../grammar/registry.js";

export interface CatalogEntry extends CriterionInfo {
  /** Token sets the criterion reads (e.g. the instruction tokens that IGA's queries come from). */
  requiresSets?: string[];
  /** Which reference method it follows (methods.md section). */
  reference: string;
}

const none = {};

export const PLANNED: readonly CatalogEntry[] = [
  {
    name: "cls-attn-ensemble",
    summary: "sum over a layer range of the CLS query's attention, mean over heads",
    reference: "VTC-CLS, methods.md §2",
    args: { layers: { type: "range", doc: "first..last layer whose CLS attention is summed (inclusive)" } },
  },
  {
    name: "hiprune",
    summary: "anchors from an object layer, their ±1/±grid-width buffers, registers from the deep layer",
    reference: "HiPrune, methods.md §4",
    args: {
      object_layer: { type: "integer", doc: "layer whose global attention picks the anchors" },
      alpha: { type: "number", default: 0.1, doc: "anchor fraction: n_a = round(N'·alpha/5)" },
    },
  },
  {
    name: "fopru",
    summary: "column or row mean of patch-to-patch attention, whichever varies more",
    reference: "FoPru, methods.md §10",
    args: { strategy: { type: "identifier", default: "rank", doc: "`rank` (TopK of tokens) or `rows` (whole grid rows)" } },
  },
  {
    name: "pagerank",
    summary: "weighted PageRank over the attention graph, RMS over heads",
    reference: "AIM / Zero-TPrune, methods.md §8 and §12",
    args: {
      iterations: { type: "integer", default: 5, doc: "power iterations" },
      temperature: { type: "number", default: 0.1, doc: "softmax temperature of the logits" },
    },
  },
  { name: "flowcut", summary: "CLS attention plus value-norm information flow, running average across layers", reference: "FlowCut, methods.md §6", args: none },
  { name: "diversity", summary: "greedy max-min cosine-distance selection", reference: "DivPrune, methods.md §3", args: none },
  { name: "k-center", summary: "greedy farthest-point selection", reference: "ToDRE, methods.md §11", args: none },
  { name: "similarity", summary: "bipartite soft matching on keys for `merge` (size-weighted means)", reference: "ToMe, methods.md §16", args: none },
  { name: "spatial-rows", summary: "whole grid rows ranked by summed attention", reference: "FoPru row strategy, methods.md §10", args: none },
  { name: "crops", summary: "per-crop budgets over contiguous raster chunks", reference: "HoloV, methods.md §9", args: { count: { type: "integer", default: 16, doc: "number of chunks" } } },
  { name: "last-token-attn", summary: "attention of the last prompt token to image tokens in the previous layer", reference: "FastV, methods.md §14", requiresSets: ["image"], args: none },
  { name: "iga", summary: "instruction-guided attention: next layer's norm, q/k and rotary on instruction queries", reference: "TransPrune IGA, methods.md §5", requiresSets: ["image", "instruction"], args: none },
  { name: "ttv", summary: "token transition variation of the attention and MLP sub-blocks", reference: "TransPrune TTV, methods.md §5", requiresSets: ["image"], args: none },
  { name: "text-attn", summary: "attention of relevant text raters to image tokens", reference: "SparseVLM, methods.md §15", requiresSets: ["image"], args: none },
];
