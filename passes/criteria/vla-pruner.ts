/**
 * vla-pruner (VLA-Pruner, methods.md §32; `MINT-SJTU/VLA-Pruner` @ fa5bfed): temporal-guided token
 * pruning for vision-language-action policies, run once per control step (`across frames`).
 *
 * What the authors' code does (file:line at fa5bfed):
 * - The current score c (modeling_llama.py `fastv_forward`, lines 1078–1097 with
 *   `use_prefil_attention`): layer K−1's attention, mean over heads, mean over ALL query rows
 *   (causally masked entries are 0 and count in the mean), at the image columns. Here: the stage's
 *   layer's attention, the same mean (`global-attn`'s score).
 * - The temporal score g (modeling_prismatic.py `predict_action`, lines 566–578): the last W = 3
 *   importance vectors (a deque, line 549), `weights = [γ^i for i in range(W−1, −1, −1)]` (line 573)
 *   and `guided += weights[i] · av_hist[−1 − i]` (lines 575–576): av_hist[−1], the NEWEST vector,
 *   gets γ^(W−1) and the OLDEST gets 1; then ÷ Σ (line 577). Until the deque is full nothing is
 *   pruned (line 568: `historical_attention` stays None, lines 592–603: r = 0).
 * - The importance vector v (lines 612–618, `_extract_action_modality_attentions` from line 640):
 *   layer 15's attention from the 7 action-producing query rows to the 256 image columns, columns
 *   the prefill pruned filled with 0 (lines 680–687), mean over heads, then over the rows.
 * - The selection (modeling_llama.py lines 1099–1120): k = round(n·(1 − r));
 *   U = unique(TopK(g, k) ∪ TopK(c, k)) (ascending positions); if |U| > k, `_redundancy_minization`
 *   (lines 950–971, DivPrune's greedy max-min on 1 − cos) over the LAYER-0 INPUT EMBEDDINGS of U
 *   picks k; else U is kept. (U holds TopK(c, k), so |U| ≥ k: every control step after the warm-up
 *   keeps exactly k.)
 *
 * Here (prunec): the action rows are placeholder rows of the same forward pass (`tokens action =
 * input action_mask`; OpenVLA-OFT's parallel decoding) instead of OpenVLA's autoregressive decode
 * steps, so v is read at the same call from layer `action_layer` below the stage (the kept columns
 * scattered back to their dense positions, pruned and padding columns 0, non-image columns 0). The
 * state is the history itself, float [B, R, N] (R = min(calls so far, W), oldest first; position i
 * is the stage input's position i); the call keeps every image token while R < W. k is the stage's
 * `keep P% of SET` rounded half up (Python's round is half-to-even). TopK ties go to the lower
 * position. Scores and state are float32 (the authors round g to bfloat16 first).
 */
import type { CriterionModule, KeptRows, Prepared, ScoreContext, Scorer, StageFacts } from "../criterion.js";
import type { NodeBuilder } from "../builder.js";
import { attentionOf, probabilities, type Attention } from "../attention/attention-map.js";
import { globalScores } from "./global-attn.js";
import { countPerExample } from "../adaptive.js";
import { maxMinSubset } from "../max-min-subset.js";

const FLOAT = 1;
const INT64 = 7;
const BOOL = 9;

/** The facts the scorer reads, narrowed by `prepare`. */
interface Facts {
  current: Attention;
  action: Attention;
  embeddings: string;
  gamma: number;
  window: number;
}

/** bool [B,N]: a set's membership over the stage's input rows (dense: the stage is the first). */
function membership(b: NodeBuilder, input: string, label: string): string {
  return b.op("Cast", [input], { to: BOOL }, label);
}

/** bool [B,Np]: in each example's top `k` (int64 [B,1]) of `score` among `members` (ties to the lower position). */
function topMembers(b: NodeBuilder, score: string, members: string, k: string, label: string): string {
  const masked = b.op("Where", [members, score, b.float([-Infinity], [], "minus_inf")], {}, `${label}_members`);
  const n = b.slice(b.op("Shape", [masked]), 0, 1, 2);
  const [, order] = b.opN("TopK", [masked, n], 2, { axis: -1, largest: 1, sorted: 1 }); // [B,Np] best first
  const places = b.op("Expand", [b.unsqueeze(b.range(n, "places"), [0]), b.op("Shape", [masked])], {}, "places");
  const rank = b.op("ScatterElements", [places, order!, places], { axis: 1 }, `${label}_rank`); // rank of each position
  return b.op("And", [b.op("Less", [rank, k], {}, `${label}_top`), members], {}, label);
}

/** bool: `yes` where `cond` (broadcast), else `no` (onnxruntime's CPU Where has no bool kernel). */
function pick(b: NodeBuilder, cond: string, yes: string, no: string, label: string): string {
  return b.op("Or", [b.op("And", [cond, yes]), b.op("And", [b.op("Not", [cond]), no])], {}, label);
}

/** float [B,N]: g, the history weighted oldest 1 … newest γ^(W−1) (modeling_prismatic.py line 573), ÷ Σ. */
function temporalScore(b: NodeBuilder, past: string, f: Facts): string {
  const w = f.window;
  // Zero rows in front make W rows at every call (only read once the past holds W).
  const rows = b.slice(b.op("Pad", [past, b.int64([0, w, 0, 0, 0, 0], [6], "history_pad")]), 1, -w);
  const weights = Array.from({ length: w }, (_, j) => f.gamma ** j); // row j: j-th oldest
  const g = b.reduce(
    "ReduceSum",
    b.op("Mul", [rows, b.float(weights, [1, w, 1], "history_weights")], {}, "weighted"),
    [1],
    0,
  );
  const total = b.op("Max", [b.reduce("ReduceSum", g, [1], 1), b.float([1e-30], [], "tiny")], {}, "history_total");
  return b.op("Div", [g, total], {}, "temporal_score");
}

/**
 * float [B,R,N]: the past as [batch, rows, the stage's tokens]. A host builds the first call's empty
 * past from the declared shape, where a symbolic token axis is 0 ([B,0,0]); no rows, any width.
 */
function history(b: NodeBuilder, past: string, stream: string): string {
  const n = b.slice(b.op("Shape", [stream]), 0, 1, 2);
  const shape = b.op("Concat", [b.int64([0, -1], [2], "batch_rows"), n], { axis: 0 }, "history_shape");
  return b.op("Reshape", [past, shape], {}, "history");
}

function scorer(f: Facts): Scorer {
  // score(), count() and next() share one emission per stage.
  let count: string | undefined;
  let past: string | undefined;
  const score = (ctx: ScoreContext): string => {
    const { b, prefix, frame, amount, ofSet } = ctx;
    if (!frame || !ofSet || !amount)
      throw new Error("vla-pruner needs 'of SET' and 'across frames' (checked by the plan)");
    past = history(b, frame.past, ctx.stream);
    const members = b.slice(ctx.sets?.get(ofSet.name) ?? membership(b, ofSet.input, "set_mask"), 1, prefix); // [B,Np]
    const real = b.reduce("ReduceSum", b.op("Cast", [members], { to: INT64 }), [1], 1); // [B,1]
    const c = globalScores(b, f.current, prefix); // [B,Np]
    const k = countPerExample(b, amount, { scores: c, ranked: c, real, minimum: 0 }); // [B,1]
    const g = b.slice(temporalScore(b, past, f), 1, prefix);
    const union = b.op(
      "Or",
      [topMembers(b, g, members, k, "temporal_top"), topMembers(b, c, members, k, "current_top")],
      {},
      "union",
    );
    const size = b.reduce("ReduceSum", b.op("Cast", [union], { to: INT64 }), [1], 1);
    const x = b.slice(b.op("Cast", [f.embeddings], { to: FLOAT }, "embeddings"), 1, prefix);
    const picked = maxMinSubset(b, x, union, b.op("Min", [k, size], {}, "pick_count"));
    const filtered = pick(b, b.op("Greater", [size, k], {}, "union_over_budget"), picked, union, "kept");
    // Warm-up: fewer than W past vectors keep every member (modeling_prismatic.py lines 568, 592–603).
    const held = b.slice(b.op("Shape", [past]), 0, 1, 2);
    const warm = b.op("Less", [held, b.int64([f.window], [1], "window")], {}, "warming_up");
    const kept = pick(b, warm, members, filtered, "kept_or_all");
    count = b.op("Where", [warm, real, k], {}, "kept_count");
    return b.op("Cast", [kept], { to: FLOAT }, "kept_score");
  };
  return {
    kind: "score",
    score,
    count: () => {
      if (!count) throw new Error("vla-pruner: count before score");
      return count;
    },
    next: (ctx, kept) => {
      if (!past) throw new Error("vla-pruner: next before score");
      return next(ctx, kept, past, f);
    },
  };
}

/** The history after this call: v appended, the oldest beyond W dropped. */
function next(ctx: ScoreContext, kept: KeptRows, past: string, f: Facts): string {
  const { b, frame, ofSet } = ctx;
  const action = ctx.setInputs?.get("action");
  if (!frame || !ofSet || !action)
    throw new Error("vla-pruner needs 'across frames' and an action set (checked by the plan)");
  const positions = kept.positions; // [B,K'], −1 on padding
  const valid = b.op("GreaterOrEqual", [positions, b.int64([0], [], "zero")], {}, "real_rows");
  const safe = b.op("Where", [valid, positions, b.int64([0], [], "first")], {}, "row_positions");
  const actionRows = b.op(
    "Cast",
    [b.op("And", [b.op("GatherElements", [membership(b, action, "action_mask"), safe], { axis: 1 }), valid])],
    { to: FLOAT },
    "action_rows",
  ); // [B,K']
  const heads = b.reduceMean(probabilities(b, f.action, "all"), [1], 0); // [B,K',K']
  const rows = b.op("Max", [b.reduce("ReduceSum", actionRows, [1], 1), b.float([1], [], "one")], {}, "action_count");
  const toKept = b.op(
    "Div",
    [b.squeeze(b.op("MatMul", [b.unsqueeze(actionRows, [1]), heads], {}, "action_attention"), [1]), rows],
    {},
    "action_mean",
  ); // [B,K']
  // Back to dense columns: a one-hot [B,K',N] (padding rows match no column), so pruned columns are 0.
  const n = b.slice(b.op("Shape", [ctx.stream]), 0, 1, 2);
  const onehot = b.op(
    "Cast",
    [b.op("Equal", [b.unsqueeze(positions, [2]), b.range(n, "columns")], {}, "kept_column")],
    { to: FLOAT },
    "dense_columns",
  );
  const dense = b.squeeze(b.op("MatMul", [b.unsqueeze(toKept, [1]), onehot], {}, "dense_attention"), [1]); // [B,N]
  const image = b.op("Cast", [membership(b, ofSet.input, "image_mask")], { to: FLOAT }, "image_columns");
  const v = b.op("Mul", [dense, image], {}, "importance");
  const both = b.op("Concat", [past, b.unsqueeze(v, [1])], { axis: 1 }, "history_then_now");
  return b.slice(both, 1, -f.window);
}

function prepare({ model, layer, args }: StageFacts): Prepared<Scorer> {
  const at = Number(args["action_layer"]);
  const gamma = Number(args["gamma"]);
  const window = Number(args["window"]);
  if (!(window >= 1)) return { why: `window: ${window} must be at least 1 (past importance vectors)` };
  if (!(gamma > 0)) return { why: `gamma: ${gamma} must be positive (the history's decay)` };
  if (at <= layer.index || at >= model.layers.length)
    return {
      why: `action_layer: ${at} must be a layer below the stage (after layer ${layer.index}) and at most ${model.layers.length - 1}: the action rows' attention is read after the stage's pruning`,
    };
  if (model.batchAxis !== 0 || model.tokenAxis !== 1)
    return {
      why: "the residual stream must be batch-first [batch, tokens, hidden] (each example is its own sequence of control steps)",
    };
  const embeddings = model.layers[0]?.residual?.input;
  if (!embeddings)
    return {
      why: "the diversity filter reads layer 0's input embeddings, and layer 0's residual stream was not found",
    };
  const current = attentionOf(layer);
  if ("why" in current) return current;
  const actionLayer = model.layers[at];
  if (!actionLayer) return { why: `layer ${at} does not exist` };
  const action = attentionOf(actionLayer);
  if ("why" in action) return { why: `action_layer ${at}: ${action.why}` };
  return { ok: scorer({ current: current.ok, action: action.ok, embeddings, gamma, window }) };
}

export const vlaPruner: CriterionModule = {
  name: "vla-pruner",
  summary:
    "VLA-Pruner (methods.md §32): the union of the top-k image tokens by the current layer's mean attention and by a decayed history of the action rows' attention (read at action_layer, below the stage, at earlier calls), filtered to k by greedy max-min diversity of the layer-0 embeddings; every image token while the history fills",
  args: {
    action_layer: {
      type: "integer",
      default: 15,
      doc: "the layer whose action rows' attention to the image is recorded (OpenVLA: 15)",
    },
    gamma: {
      type: "number",
      default: 0.8,
      doc: "the history's decay: the oldest vector weighs 1, the newest gamma^(window−1) (the authors' code)",
    },
    window: {
      type: "integer",
      default: 3,
      doc: "past importance vectors kept; nothing is pruned until that many exist",
    },
  },
  requiresSets: ["action"],
  readsSets: ["action"],
  needs:
    "'across frames' and 'of SET' (the image) with 'keep P%' or 'keep K tokens'; a declared `tokens action = input NAME` set (the action rows); attention probabilities at the stage's layer and at action_layer; a batch-first stream",
  frames: {
    holds:
      "the last `window` importance vectors (oldest first): float [batch, ≤ window, tokens], 0 at pruned and non-image columns",
    required:
      "vla-pruner weighs the action rows' attention of earlier control steps, which only a state carried from call to call holds",
    counts: "it keeps every member while its history fills (the first `window` calls), then k = the amount's count",
    readsLayer: (args) => Number(args["action_layer"]),
    dims: (tokens) => ["prunec_vla_history", tokens],
  },
  prepare,
};
