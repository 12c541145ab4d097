/**
 * Selection + gather for WebGPU (`--target webgpu`). onnxruntime-web's WebGPU EP has no int64
 * arithmetic kernels, so the default lowering's index arithmetic (sort the int64 winners, add the
 * CLS offset, concatenate positions) runs on the CPU with GPU↔CPU copies in the middle of the
 * encoder. Here int64 only appears as TopK index outputs feeding GatherND; the ordering is done on
 * float keys, and CLS is concatenated as hidden states. Same kept set and order as `selectTopK`:
 *
 *   thr   = K-th best score
 *   key1  = pos − 2N if s > thr, pos if s = thr, pos + 2N otherwise   (unique keys)
 *   key1 ≤ K-th smallest key1  ⇔  kept: every token above thr, then tied ones by lower position
 *   key2  = pos if kept else pos + N;  TopK(key2, K, smallest).indices = kept positions, ascending
 *
 * Pre: batch-first stream [B, N, D]; static prunable count N and keep count K.
 * Post: returns the pruned stream [B, prefix + K, D] and the ascending kept positions int64 [B, K, 1].
 */
import type { NodeBuilder } from "./builder.js";

export function selectAndGatherFloat(
  b: NodeBuilder,
  scores: string,
  stream: string,
  n: number,
  k: number,
  prefix: number,
): { output: string; positions: string } {
  const kT = b.int64([k], [1], "k");
  const kth = (values: string) => b.slice(values, 1, k - 1, k); // [B,1,1]
  const pos = [...Array(n).keys()];
  const posT = b.float(pos, [1, n, 1], "positions");
  const s = b.unsqueeze(scores, [2]); // [B,N,1]
  const [best] = b.opN("TopK", [s, kT], 2, { axis: 1, largest: 1, sorted: 1 });
  const thr = kth(best!);
  const above = b.op("Greater", [s, thr]);
  const tied = b.op("Equal", [s, thr]);
  const key1 = b.op(
    "Where",
    [
      above,
      b.float(
        pos.map((p) => p - 2 * n),
        [1, n, 1],
        "above_keys",
      ),
      b.op("Where", [
        tied,
        posT,
        b.float(
          pos.map((p) => p + 2 * n),
          [1, n, 1],
          "below_keys",
        ),
      ]),
    ],
    {},
    "rank_keys",
  );
  const [smallest] = b.opN("TopK", [key1, kT], 2, { axis: 1, largest: 0, sorted: 1 });
  const kept = b.op("LessOrEqual", [key1, kth(smallest!)], {}, "kept_mask");
  const key2 = b.op(
    "Where",
    [
      kept,
      posT,
      b.float(
        pos.map((p) => p + n),
        [1, n, 1],
        "dropped_keys",
      ),
    ],
    {},
    "order_keys",
  );
  const [, positions] = b.opN("TopK", [key2, kT], 2, { axis: 1, largest: 0, sorted: 1 }); // [B,K,1] int64
  const patches = prefix ? b.slice(stream, 1, prefix) : stream;
  const gathered = b.op("GatherND", [patches, positions!], { batch_dims: 1 }, "gather_tokens");
  if (!prefix) return { output: gathered, positions: positions! };
  const special = b.slice(stream, 1, 0, prefix);
  return { output: b.op("Concat", [special, gathered], { axis: 1 }, "special_then_kept"), positions: positions! };
}
