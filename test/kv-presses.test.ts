/**
 * The float64 KV-press references (test/reference/kv-presses.ts) against small cases worked by hand
 * from the authors' code (kvpress @ 8bb29b9, H2O @ ac75c2a, A2SF @ 00a617f; methods.md §17–§26).
 *
 * Most end-to-end cases use d = 1, scale 1, every query q_i = [1] and keys k_j = [ln a_j], so the
 * causal probabilities are P[i][j] = a_j / (a_0 + … + a_i) for j ≤ i: exact fractions by hand.
 */
import { describe, expect, it } from "vitest";
import { mulberry32 } from "../src/random.js";
import {
  a2sfScores,
  a2sfSelect,
  attendDecode,
  causalProbs,
  evictPrefill,
  expectedScores,
  h2oScores,
  heavyRecentSelect,
  keepPercentToRatio,
  keptCount,
  keptCountFromRatio,
  knormScores,
  kvpressSelect,
  observedScores,
  permuteCache,
  pyramidLayerBudget,
  randomScores,
  reduceGroups,
  roundHalfEven,
  snapkvScores,
  streamingScores,
  tovaScores,
  type LayerInput,
} from "./reference/kv-presses.js";

/** One query head, one KV head, d = 1: q_i = [1], k_j = [ln a_j], v_j = [j]. */
function logWeights(a: number[]): LayerInput {
  return {
    q: [a.map(() => [1])],
    k: [a.map((x) => [Math.log(x)])],
    v: [a.map((_, j) => [j])],
  };
}

function randomLayer(rng: () => number, heads: number, kvHeads: number, n: number, d: number): LayerInput {
  const mk = (h: number): number[][][] =>
    Array.from({ length: h }, () => Array.from({ length: n }, () => Array.from({ length: d }, () => rng() * 2 - 1)));
  return { q: mk(heads), k: mk(kvHeads), v: mk(kvHeads) };
}

function expectCloseRows(actual: number[][], expected: number[][], digits = 12): void {
  expect(actual.length).toBe(expected.length);
  actual.forEach((row, g) => {
    expect(row.length).toBe(expected[g]!.length);
    for (let t = 0; t < row.length; t++) expect(row[t]).toBeCloseTo(expected[g]![t]!, digits);
  });
}

describe("kept counts (ScorerPress.compress: int(N·(1 − r)))", () => {
  it("truncates in float64", () => {
    // 1 − 0.25 = 0.75 exactly; 10 · 0.75 = 7.5; int → 7 (a round would give 8).
    expect(keptCountFromRatio(10, 0.25)).toBe(7);
    // 1 − 0.9 = 0.09999999999999998; · 1000 = 99.99999999999997 → 99 (methods.md §17).
    expect(keptCountFromRatio(1000, 0.9)).toBe(99);
    // · 10 = 0.9999999999999998 → 0: the whole cache is evicted.
    expect(keptCountFromRatio(10, 0.9)).toBe(0);
    expect(() => keptCountFromRatio(10, 1)).toThrow();
  });

  it("keep kv P% is r = 1 − P/100, counted like kvpress", () => {
    // keep 10%: r = 1 − 0.1 = 0.9 → 99 of 1000, not 100.
    expect(keepPercentToRatio(10)).toBe(0.9);
    expect(keptCount(1000, { keepPercent: 10 })).toBe(99);
    // keep 75%: r = 0.25 → int(7.5) = 7 of 10.
    expect(keptCount(10, { keepPercent: 75 })).toBe(7);
    // keep K tokens: min(K, N).
    expect(keptCount(10, { keep: 4 })).toBe(4);
    expect(keptCount(10, { keep: 12 })).toBe(10);
  });

  it("Python round is half to even", () => {
    expect([0.5, 1.5, 2.5, 3.5, 2.4999999999999996, 10.5].map(roundHalfEven)).toEqual([0, 2, 2, 4, 2, 10]);
  });
});

describe("SnapKV (snapkv_press.py)", () => {
  // a = [1, 4, 1, 3, 3, 1], Σ = 13. Window w = 1: the last query's row, P[5][j] = a_j / 13.
  // Prefix scores (j < 5) s = [1, 4, 1, 3, 3] / 13.
  // n_kept = int(6 · (1 − 0.6)) = int(2.4000000000000004) = 2: the window position 5 plus ONE prefix key.
  const x = logWeights([1, 4, 1, 3, 3, 1]);

  it("pooling (kernel 3) moves the winner from key 1 to key 2", () => {
    // avg_pool1d(3, stride 1, pad 1, zero padding counted): ×39 → [0+1+4, 1+4+1, 4+1+3, 1+3+3, 3+3+0] = [5, 6, 8, 7, 6].
    // Window score = max(pooled) + 1 = 8/39 + 1.
    const scores = snapkvScores(causalProbs(x.q, x.k, 1), 1, 1, 3);
    expectCloseRows(scores, [[5 / 39, 6 / 39, 8 / 39, 7 / 39, 6 / 39, 8 / 39 + 1]]);
    expect(
      evictPrefill([x], { method: "snapkv", budget: { ratio: 0.6 }, window: 1, kernel: 3 }, { scale: 1 }).kept,
    ).toEqual([[[2, 5]]]);
  });

  it("without pooling (kernel 1) key 1 wins; kernel 5 also picks key 2", () => {
    // kernel 1: s = [1, 4, 1, 3, 3]/13 → key 1.
    expect(
      evictPrefill([x], { method: "snapkv", budget: { ratio: 0.6 }, window: 1, kernel: 1 }, { scale: 1 }).kept,
    ).toEqual([[[1, 5]]]);
    // kernel 5 (pad 2, ÷5): ×65 → [0+0+1+4+1, 0+1+4+1+3, 1+4+1+3+3, 4+1+3+3+0, 1+3+3+0+0] = [6, 9, 12, 11, 7] → key 2.
    const scores = snapkvScores(causalProbs(x.q, x.k, 1), 1, 1, 5);
    expectCloseRows([scores[0]!.slice(0, 5)], [[6 / 65, 9 / 65, 12 / 65, 11 / 65, 7 / 65]]);
    expect(evictPrefill([x], { method: "snapkv", budget: { ratio: 0.6 }, window: 1 }, { scale: 1 }).kept).toEqual([
      [[2, 5]],
    ]);
  });

  it("refuses N ≤ window and even kernels", () => {
    const p = causalProbs(x.q, x.k, 1);
    expect(() => snapkvScores(p, 1, 6, 5)).toThrow();
    expect(() => snapkvScores(p, 1, 1, 4)).toThrow();
  });

  it("cache order is descending score (window first), prunec's is ascending", () => {
    const e = evictPrefill([x], { method: "snapkv", budget: { ratio: 0.6 }, window: 1, kernel: 3 }, { scale: 1 });
    expect(e.cacheOrder).toEqual([[[5, 2]]]);
    expect(e.keys).toEqual([[[[Math.log(1)], [Math.log(1)]]]]); // keys of positions 2 and 5 (a = 1 for both)
    expect(e.values).toEqual([[[[2], [5]]]]);
  });
});

describe("observed attention (kvpress) vs H2O's unnormalized sum", () => {
  // a = [1, 1, 1, 6]: rows P0 = [1], P1 = [1/2, 1/2], P2 = [1/3, 1/3, 1/3], P3 = [1/9, 1/9, 1/9, 6/9].
  // Column sums (H2O): s0 = 1 + 1/2 + 1/3 + 1/9 = 35/18, s1 = 1/2 + 1/3 + 1/9 = 17/18, s2 = 1/3 + 1/9 = 8/18,
  //   s3 = 6/9 = 12/18.
  // Observed (÷ (N − j) = 4, 3, 2, 1): 35/72 ≈ 0.486, 17/54 ≈ 0.315, 2/9 ≈ 0.222, 2/3 ≈ 0.667.
  const x = logWeights([1, 1, 1, 6]);
  const probs = causalProbs(x.q, x.k, 1);

  it("scores", () => {
    expectCloseRows(h2oScores(probs, 1), [[35 / 18, 17 / 18, 8 / 18, 12 / 18]]);
    expectCloseRows(observedScores(probs, 1), [[35 / 72, 17 / 54, 2 / 9, 2 / 3]]);
  });

  it("the normalization changes the kept set", () => {
    // r = 0.5 → int(4 · 0.5) = 2 kept. Observed: keys 3 (2/3) and 0 (35/72) → [0, 3].
    expect(evictPrefill([x], { method: "observed", budget: { ratio: 0.5 } }, { scale: 1 }).kept).toEqual([[[0, 3]]]);
    // H2O's rule with hh 2, recent 0: N = 4 > 2, topk(s, 2) = keys 0 (35/18), 1 (17/18) → [0, 1].
    expect(evictPrefill([x], { method: "h2o", heavy: 2, recent: 0 }, { scale: 1 }).kept).toEqual([[[0, 1]]]);
    // Same unnormalized scores through kvpress's plain top-2: also [0, 1].
    expect(kvpressSelect(h2oScores(probs, 1), 2).kept).toEqual([[0, 1]]);
    // hh 1, recent 1: topk(s[:3], 1) = key 0, then [3, 4) → [0, 3].
    expect(evictPrefill([x], { method: "h2o", heavy: 1, recent: 1 }, { scale: 1 }).kept).toEqual([[[0, 3]]]);
    // N ≤ hh + recent: nothing evicted.
    expect(heavyRecentSelect(h2oScores(probs, 1), 3, 1)).toEqual([[0, 1, 2, 3]]);
  });
});

describe("A2SF (A2SF @ 00a617f: attention.py, policies/a2sf.py, policies/base.py)", () => {
  const x = logWeights([1, 1, 1, 6]);
  const probs = causalProbs(x.q, x.k, 1);

  it("forgetting over query positions changes the kept set vs H2O", () => {
    // λ = 0.5, N = 4: query weights λ^(3 − i) = [1/8, 1/4, 1/2, 1].
    // s0 = 1·1/8 + 1/2·1/4 + 1/3·1/2 + 1/9·1 = (9 + 9 + 12 + 8)/72 = 38/72
    // s1 = 1/2·1/4 + 1/3·1/2 + 1/9 = (9 + 12 + 8)/72 = 29/72;  s2 = 1/3·1/2 + 1/9 = 20/72;  s3 = 6/9 = 48/72.
    expectCloseRows(a2sfScores(probs, 1, 0.5), [[38 / 72, 29 / 72, 20 / 72, 48 / 72]]);
    // total 2, recent 0: N = 4 > 2, topk(s, 2) = keys 3, 0 → [0, 3].
    expect(evictPrefill([x], { method: "a2sf", total: 2, forget: 0.5, recent: 0 }, { scale: 1 }).kept).toEqual([
      [[0, 3]],
    ]);
    // λ = 1 is H2O's sum: 35/18, 17/18, 8/18, 12/18 → [0, 1].
    expect(evictPrefill([x], { method: "a2sf", total: 2, forget: 1, recent: 0 }, { scale: 1 }).kept).toEqual([
      [[0, 1]],
    ]);
  });

  it("budget: max(int(total), 2); N ≤ total keeps all; recent tail", () => {
    const s = a2sfScores(probs, 1, 0.5);
    expect(a2sfSelect(s, 1, 0)).toEqual([[0, 3]]); // total → max(1, 2) = 2
    expect(a2sfSelect(s, 2.9, 0)).toEqual([[0, 3]]); // int(2.9) = 2
    expect(a2sfSelect(s, 4, 0)).toEqual([[0, 1, 2, 3]]); // N = 4 ≤ 4
    // total 2, recent 1: select 1 from s[:3] = [38, 29, 20]/72 → key 0, then [3] → [0, 3].
    expect(a2sfSelect(s, 2, 1)).toEqual([[0, 3]]);
    // total 3, recent 2: select 1 from s[:2] → key 0, then [2, 3].
    expect(a2sfSelect(s, 3, 2)).toEqual([[0, 2, 3]]);
  });

  // Two query heads on one KV head (G = 2), N = 4, λ = 0.5 (weights 1/8, 1/4, 1/2, 1); P0 = [1], P1 = [.5, .5] both.
  // head 0: P2 = [.3, .6, .1],  P3 = [.25, .45, .05, .25]
  //   s0 = .125 + .125 + .15 + .25 = .65,  s1 = .125 + .3 + .45 = .875,  s2 = .05 + .05 = .1,   s3 = .25
  // head 1: P2 = [.3, .1, .6],  P3 = [.25, .05, .45, .25]
  //   s0 = .65,                           s1 = .125 + .05 + .05 = .225, s2 = .3 + .45 = .75,  s3 = .25
  // group sum: [1.3, 1.1, .85, .5]; the mean is exactly half of it.
  const gqa = [
    [
      [1, 0, 0, 0],
      [0.5, 0.5, 0, 0],
      [0.3, 0.6, 0.1, 0],
      [0.25, 0.45, 0.05, 0.25],
    ],
    [
      [1, 0, 0, 0],
      [0.5, 0.5, 0, 0],
      [0.3, 0.1, 0.6, 0],
      [0.25, 0.05, 0.45, 0.25],
    ],
  ];

  it("scores sum over the GQA group; the group picks a key neither head picks alone", () => {
    const s = a2sfScores(gqa, 1, 0.5);
    expectCloseRows(s, [[1.3, 1.1, 0.85, 0.5]]);
    // total 2, recent 1: select 1 from s[:3]: group → key 0; head 0 alone → key 1 (.875); head 1 alone → key 2 (.75).
    expect(a2sfSelect(s, 2, 1)).toEqual([[0, 3]]);
    expect(a2sfSelect(a2sfScores([gqa[0]!], 1, 0.5), 2, 1)).toEqual([[1, 3]]);
    expect(a2sfSelect(a2sfScores([gqa[1]!], 1, 0.5), 2, 1)).toEqual([[2, 3]]);
  });

  it("sum vs mean over the group only scales the scores by G: same kept set", () => {
    const sum = a2sfScores(gqa, 1, 0.5);
    const perHead = gqa.map((rows) => rows[0]!.map((_, j) => rows.reduce((a, r, i) => a + 0.5 ** (3 - i) * r[j]!, 0)));
    const mean = reduceGroups(perHead, 1, "mean");
    expectCloseRows(mean, [[0.65, 0.55, 0.425, 0.25]]);
    for (const total of [2, 3])
      for (const recent of [0, 1]) expect(a2sfSelect(mean, total, recent)).toEqual(a2sfSelect(sum, total, recent));
  });
});

describe("GQA mapping: query head h reads KV head floor(h / G)", () => {
  it("groups are consecutive query heads (repeat_kv), not interleaved", () => {
    // 4 query heads, 2 KV heads: group 0 = heads 0, 1; group 1 = heads 2, 3.
    const perHead = [
      [1, 0],
      [3, 0],
      [0, 5],
      [0, 7],
    ];
    expect(reduceGroups(perHead, 2, "mean")).toEqual([
      [2, 0],
      [0, 6],
    ]); // interleaved would give [[.5, 2.5], [1.5, 3.5]]
    expect(reduceGroups(perHead, 2, "sum")).toEqual([
      [4, 0],
      [0, 12],
    ]);
  });

  it("causalProbs: head h attends over KV head floor(h/2)", () => {
    // d = 1, scale 1, N = 2, q = [1]. KV head 0 keys [ln 1, ln 3] → last row [1/4, 3/4]; KV head 1 keys [ln 3, ln 1] → [3/4, 1/4].
    const q = Array.from({ length: 4 }, () => [[1], [1]]);
    const k = [
      [[0], [Math.log(3)]],
      [[Math.log(3)], [0]],
    ];
    const p = causalProbs(q, k, 1);
    expectCloseRows(
      p.map((h) => h[1]!),
      [
        [0.25, 0.75],
        [0.25, 0.75],
        [0.75, 0.25],
        [0.75, 0.25],
      ],
    );
  });
});

describe("TOVA (tova_press.py)", () => {
  // MHA, 2 heads = 2 KV heads, N = 4. Last rows: head 0 [.5, .1, .1, .3], head 1 [.1, .3, .4, .2].
  // Mean over ALL heads for j < 3: [.3, .2, .25]; last position gets .3 + 1 = 1.3; every KV head the same.
  const probs = [
    [
      [1, 0, 0, 0],
      [0.5, 0.5, 0, 0],
      [0.2, 0.3, 0.5, 0],
      [0.5, 0.1, 0.1, 0.3],
    ],
    [
      [1, 0, 0, 0],
      [0.5, 0.5, 0, 0],
      [0.2, 0.3, 0.5, 0],
      [0.1, 0.3, 0.4, 0.2],
    ],
  ];
  it("averages over all heads, so every KV head keeps the same set", () => {
    const s = tovaScores(probs, 2);
    expectCloseRows(s, [
      [0.3, 0.2, 0.25, 1.3],
      [0.3, 0.2, 0.25, 1.3],
    ]);
    // n_kept = int(4 · 0.5) = 2: last token + key 0 for both heads. (Per KV head, head 1 would keep [2, 3].)
    expect(kvpressSelect(s, 2).kept).toEqual([
      [0, 3],
      [0, 3],
    ]);
    expect(kvpressSelect(s, 2).cacheOrder).toEqual([
      [3, 0],
      [3, 0],
    ]);
  });
});

describe("Knorm (knorm_press.py) and left padding", () => {
  // pad = 2 slots (keys [0, 0], [0.1, 0]: the smallest norms), then real keys with norms 5, 1, 2, 10.
  const k = [
    [
      [0, 0],
      [0.1, 0],
      [3, 4],
      [1, 0],
      [0, 2],
      [6, 8],
    ],
  ];
  const x: LayerInput = { q: [k[0]!.map(() => [1, 0])], k, v: [k[0]!.map((_, t) => [t, -t])] };

  it("scores are −‖k‖₂", () => {
    expectCloseRows(knormScores(k), [[-0, -0.1, -5, -1, -2, -10]]);
  });

  it("pads are never kept nor counted", () => {
    // Real N = 4, r = 0.5 → int(2) = 2 kept: norms 1 (slot 3) and 2 (slot 4).
    const e = evictPrefill([x], { method: "knorm", budget: { ratio: 0.5 } }, { pad: 2 });
    expect(e.kept).toEqual([[[3, 4]]]);
    expect(e.keys).toEqual([
      [
        [
          [1, 0],
          [0, 2],
        ],
      ],
    ]);
    expect(e.values).toEqual([
      [
        [
          [3, -3],
          [4, -4],
        ],
      ],
    ]);
    // Treating the pads as context (kvpress on a padded row): N = 6 → 3 kept, two of them pads.
    expect(evictPrefill([x], { method: "knorm", budget: { ratio: 0.5 } }).kept).toEqual([[[0, 1, 3]]]);
  });

  it("each padded example computes what it would alone (every press)", () => {
    const rng = mulberry32(7);
    const layers = [randomLayer(rng, 4, 2, 12, 3), randomLayer(rng, 4, 2, 12, 3)];
    const pad = 3;
    const padded = layers.map((l) => {
      const junk = (x: number[][][]) => x.map((rows) => [...rows.slice(0, pad).map((r) => r.map(() => 50)), ...rows]);
      return { q: junk(l.q), k: junk(l.k), v: junk(l.v) };
    });
    const specs = [
      { method: "knorm", budget: { ratio: 0.4 } },
      { method: "snapkv", budget: { ratio: 0.5 }, window: 3 },
      { method: "pyramidkv", budget: { ratio: 0.5 }, window: 2, beta: 2 },
      { method: "streaming", budget: { keepPercent: 50 }, sinks: 2 },
      { method: "observed", budget: { keep: 5 } },
      { method: "tova", budget: { ratio: 0.5 } },
      { method: "random", budget: { ratio: 0.5 }, seed: 3 },
      { method: "h2o", heavy: 3, recent: 2 },
      { method: "a2sf", total: 6, forget: 0.9, recent: 2 },
    ] as const;
    for (const spec of specs) {
      const alone = evictPrefill(layers, spec);
      const withPad = evictPrefill(padded, spec, { pad });
      expect(withPad.kept).toEqual(alone.kept.map((l) => l.map((g) => g.map((t) => t + pad))));
      expect(withPad.keys).toEqual(alone.keys);
      expect(withPad.kept.flat(2).every((t) => t >= pad)).toBe(true);
    }
  });
});

describe("StreamingLLM (streaming_llm_press.py)", () => {
  it("sinks plus the most recent", () => {
    // N = 10, sinks 2, r = 0.5: n_kept = 5, n_pruned = 5 → zeros on [2, 7) → kept 0, 1, 7, 8, 9.
    expect(kvpressSelect(streamingScores(10, 1, 2, 5), 5).kept).toEqual([[0, 1, 7, 8, 9]]);
    // r = 0.25: n_kept = int(7.5) = 7, n_pruned = 3 → zeros on [2, 5) → 0, 1, 5 … 9.
    const x = logWeights([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(evictPrefill([x], { method: "streaming", budget: { ratio: 0.25 }, sinks: 2 }).kept).toEqual([
      [[0, 1, 5, 6, 7, 8, 9]],
    ]);
    // Default 4 sinks, r = 0.5: zeros on [4, 9) → 0, 1, 2, 3, 9.
    expect(evictPrefill([x], { method: "streaming", budget: { ratio: 0.5 } }).kept).toEqual([[[0, 1, 2, 3, 9]]]);
  });

  it("with left padding the sinks are the first real tokens", () => {
    // pad 2 + 10 real tokens, sinks 2, r = 0.5: real kept 0, 1, 7, 8, 9 → slots 2, 3, 9, 10, 11.
    const x = logWeights([1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(evictPrefill([x], { method: "streaming", budget: { ratio: 0.5 }, sinks: 2 }, { pad: 2 }).kept).toEqual([
      [[2, 3, 9, 10, 11]],
    ]);
    expect(() => streamingScores(4, 1, 4, 2)).toThrow(); // N > n_sink asserted
  });
});

describe("PyramidKV get_layer_budget (pyramidkv_press.py)", () => {
  it("methods.md's example: N 4096, r 0.5, L 32, w 64, β 20", () => {
    // c = 2048, min = 102.4, max = 4096 − 102.4 = 3993.6 < N − w = 4032; steps = 3891.2/31 = 125.5225…
    // l0 round(3993.6) = 3994; l15 round(3993.6 − 1882.8387) = round(2110.76) = 2111; l31 round(102.4) = 102.
    expect([0, 15, 31].map((l) => pyramidLayerBudget(l, 32, 4096, 0.5, 64, 20))).toEqual([3994, 2111, 102]);
    // r = 0.75: c = 1024, min = 51.2 < 64 → fallback round(1024) = 1024 everywhere.
    expect(pyramidLayerBudget(5, 32, 4096, 0.75, 64, 20)).toBe(1024);
  });

  it("small configs by hand", () => {
    // N 30, w 2, β 4, L 4, r 0.5: cap − w = 15, min 3.75, max 26.25 < 28; steps 22.5/3 = 7.5
    // → round(26.25, 18.75, 11.25, 3.75) = 26, 19, 11, 4.
    expect([0, 1, 2, 3].map((l) => pyramidLayerBudget(l, 4, 30, 0.5, 2, 4))).toEqual([26, 19, 11, 4]);
    // N 20, w 2, β 4, L 3, r 0.5: min 2.5, max 17.5 < 18; steps 7.5 → round(17.5) = 18, 10, round(2.5) = 2 (half to even).
    expect([0, 1, 2].map((l) => pyramidLayerBudget(l, 3, 20, 0.5, 2, 4))).toEqual([18, 10, 2]);
    // Clamp: N 20, w 2, β 8, r 0.25: c 15, min 1.875, max 28.125 ≥ 18 → max 18, min 30 − 18 = 12; steps 3 → 18, 15, 12.
    expect([0, 1, 2].map((l) => pyramidLayerBudget(l, 3, 20, 0.25, 2, 8))).toEqual([18, 15, 12]);
    // Clamp to min = w: N 21, w 2, β 20, r 0.5: c 10.5, max 20.475 ≥ 19 → max 19, min 21 − 19 = 2 ≥ 2;
    // steps 8.5 → 19, round(10.5) = 10, 2.
    expect([0, 1, 2].map((l) => pyramidLayerBudget(l, 3, 21, 0.5, 2, 20))).toEqual([19, 10, 2]);
    // Fallback: N 14, w 2, β 20, r 0.75: c 3.5, min .175 < 2 → round(3.5) = 4 (SnapKV's int(3.5) would keep 3).
    expect(pyramidLayerBudget(0, 3, 14, 0.75, 2, 20)).toBe(4);
    expect(keptCountFromRatio(14, 0.75)).toBe(3);
  });

  it("evictPrefill applies the per-layer budget, window always kept", () => {
    // N 20, w 2, β 4, L 3, r 0.5 → 18, 10, 2 kept; at layer 2 only the window (18, 19) remains.
    const rng = mulberry32(11);
    const layers = [0, 1, 2].map(() => randomLayer(rng, 2, 1, 20, 4));
    const e = evictPrefill(layers, { method: "pyramidkv", budget: { ratio: 0.5 }, window: 2, beta: 4 });
    expect(e.kept.map((l) => l[0]!.length)).toEqual([18, 10, 2]);
    expect(e.kept[2]).toEqual([[18, 19]]);
    for (const l of e.kept) expect(l[0]!.slice(-2)).toEqual([18, 19]);
  });
});

describe("random (random_press.py stand-in)", () => {
  it("mulberry32 row-major per layer; a seed gives every layer the same set", () => {
    const next = mulberry32(5);
    const draws = Array.from({ length: 6 }, () => next());
    expect(randomScores(2, 3, 5)).toEqual([draws.slice(0, 3), draws.slice(3, 6)]);
    const rng = mulberry32(1);
    const layers = [0, 1, 2].map(() => randomLayer(rng, 2, 2, 9, 2));
    const e = evictPrefill(layers, { method: "random", budget: { ratio: 0.5 }, seed: 5 });
    expect(e.kept[0]![0]!.length).toBe(4); // int(9 · 0.5) = 4
    expect(e.kept[1]).toEqual(e.kept[0]);
    expect(e.kept[2]).toEqual(e.kept[0]);
  });
});

describe("ratio 0 and decode", () => {
  it("r = 0 returns the cache untouched", () => {
    const x = logWeights([1, 2, 3, 4, 5]);
    expect(evictPrefill([x], { method: "observed", budget: { ratio: 0 } }).kept).toEqual([[[0, 1, 2, 3, 4]]]);
    expect(evictPrefill([x], { method: "snapkv", budget: { keepPercent: 100 }, window: 1 }).kept).toEqual([
      [[0, 1, 2, 3, 4]],
    ]);
  });

  it("attendDecode by hand", () => {
    // K = [ln 1, ln 3], V = [0, 4]; q = [1] → weights [1/4, 3/4] → 3; q = [0] → [1/2, 1/2] → 2. Two query heads share KV head 0.
    const out = attendDecode([[1], [0]], [[[0], [Math.log(3)]]], [[[0], [4]]], 1);
    expectCloseRows(out, [[3], [2]]);
  });

  it("attention over the kept cache does not depend on its order", () => {
    const rng = mulberry32(3);
    const layer = randomLayer(rng, 4, 2, 10, 4);
    const e = evictPrefill([layer], { method: "observed", budget: { ratio: 0.5 } });
    const kept = e.kept[0]!;
    const order = e.cacheOrder[0]!.map((idx, g) => idx.map((t) => kept[g]!.indexOf(t)));
    expect(order).not.toEqual(kept.map((idx) => idx.map((_, i) => i))); // really a different order
    const q = Array.from({ length: 4 }, () => Array.from({ length: 4 }, () => rng() * 2 - 1));
    const asc = attendDecode(q, e.keys[0]!, e.values[0]!);
    const byScore = attendDecode(q, permuteCache(e.keys[0]!, order), permuteCache(e.values[0]!, order));
    expectCloseRows(byScore, asc, 12);
  });
});

describe("expected attention (expected_attention_press.py, utils.py get_prerope_query_states)", () => {
  // d = 2, one head: pre-RoPE queries from position n_sink = 1 on are [1, 0] and [3, 0]:
  // μ = [2, 0], Σ = [[1, 0], [0, 0]] (÷ N − n_sink = 2). Keys after the sink: [1, 0] and [0, 1].
  const layer: LayerInput = {
    q: [
      [
        [0, 0],
        [0, 0],
        [0, 0],
      ],
    ],
    qPre: [
      [
        [9, 9],
        [1, 0],
        [3, 0],
      ],
    ],
    k: [
      [
        [5, 5],
        [1, 0],
        [0, 1],
      ],
    ],
    v: [
      [
        [1, 1],
        [3, 4],
        [0, 2],
      ],
    ],
  };

  it("without rotation (θ = 0: R̄ = I): μ·k/√d + kᵀΣk/(2d), softmax over the non-sink keys, × ‖v‖, the sink at max + 1", () => {
    const e = Math.exp(Math.SQRT2 + 0.25); // key [1, 0]: 2/√2 + 1/4; key [0, 1]: 0
    const p = [e / (e + 1), 1 / (e + 1)];
    const scores = expectedScores(layer.qPre!, layer.k, layer.v, { theta: [0], sinks: 1, future: 1 });
    expectCloseRows(scores, [[p[0]! * 5 + 1, p[0]! * 5, p[1]! * 2]]);
    expect(
      evictPrefill([layer], { method: "expected", budget: { keep: 2 }, theta: [0], sinks: 1, future: 1 }).kept,
    ).toEqual([[[0, 1]]]);
  });

  it("the rotation to the next position turns the mean query to the other key (θ = π/6 at position N = 3: μR̄ᵀ = [0, 2], R̄ΣR̄ᵀ = [[0, 0], [0, 1]])", () => {
    const o = { theta: [Math.PI / 6], sinks: 1, future: 1, vnorm: false };
    const e = Math.exp(Math.SQRT2 + 0.25); // key [0, 1]: 2/√2 + 1/4; key [1, 0]: 0
    const scores = expectedScores(layer.qPre!, layer.k, layer.v, o);
    expectCloseRows(scores, [[e / (1 + e) + 1, 1 / (1 + e), e / (1 + e)]]);
    expect(evictPrefill([layer], { method: "expected", budget: { keep: 2 }, ...o }).kept).toEqual([[[0, 2]]]);
    // Averaged over positions 3 and 4 (angles π/2, 2π/3): R̄ = [[c, −s], [s, c]], μR̄ᵀ = [2c, 2s].
    const c = (Math.cos(Math.PI / 2) + Math.cos((2 * Math.PI) / 3)) / 2;
    const sn = (Math.sin(Math.PI / 2) + Math.sin((2 * Math.PI) / 3)) / 2;
    const two = expectedScores(layer.qPre!, layer.k, layer.v, { ...o, future: 2, covariance: false });
    const a = Math.exp((2 * c) / Math.SQRT2);
    const b = Math.exp((2 * sn) / Math.SQRT2);
    expectCloseRows(two, [[b / (a + b) + 1, a / (a + b), b / (a + b)]]);
  });

  it("needs more entries than sinks (kvpress asserts it)", () => {
    expect(() => expectedScores(layer.qPre!, layer.k, layer.v, { theta: [0] })).toThrow(
      "Input should contain more tokens than n_sink=4",
    );
  });
});
