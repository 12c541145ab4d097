/**
 * SpAtten's cascade head pruning (HPCA'21, §III-B; methods.md §27: no public code, so this is
 * written from the paper's equations, independent of prunec): a head's importance is the magnitude
 * of its attention output, Σ_i Σ_d |O_l[h][i][d]|, accumulated over layers from layer 0; a stage
 * keeps the K most important heads left, and the pruned heads leave every later layer (their
 * accumulated importance with them). One example at a time, in float64; ties go to the lower head.
 */

/** One stage: per layer since the previous stage (up to this one's), each head's output O_h (N·d values, any order; NaN-free). */
export interface HeadStage {
  layers: (ArrayLike<number> | undefined)[][];
  keep: number;
}

/** Per stage: the heads kept (dense ids, ascending). A pruned head's output is `undefined` in later layers. */
export function spattenHeads(stages: readonly HeadStage[], heads: number): number[][] {
  const kept: number[][] = [];
  let alive = Array.from({ length: heads }, (_, h) => h);
  const importance = new Array<number>(heads).fill(0);
  for (const stage of stages) {
    for (const layer of stage.layers) {
      for (const h of alive) {
        const o = layer[h];
        if (!o) throw new Error(`head ${h} is alive but the layer has no output for it`);
        let s = 0;
        for (let i = 0; i < o.length; i++) s += Math.abs(o[i]!);
        importance[h]! += s;
      }
    }
    const ranked = [...alive].sort((a, b) => importance[b]! - importance[a]! || a - b);
    alive = ranked.slice(0, stage.keep).sort((a, b) => a - b);
    kept.push(alive);
  }
  return kept;
}
