/**
 * onnxruntime-node feeds shared by the decoder benchmarks: int64 tensors, a merged decoder's empty
 * past (what transformers.js feeds at prefill), a run's presents as the next call's past, and the
 * bytes a run's KV cache holds.
 */
import "./no-telemetry.js";
import * as ort from "onnxruntime-node";

type Outputs = ort.InferenceSession.OnnxValueMapType;

/** int64 tensor from numbers or rows of numbers. */
export function int64(values: readonly number[], dims: readonly number[]): ort.Tensor {
  return new ort.Tensor(
    "int64",
    BigInt64Array.from(values, (v) => BigInt(v)),
    [...dims],
  );
}

/** `past_key_values.L.key/value` of length 0 for every layer. */
export function emptyPast(
  o: { layers: number; kvHeads: number; headSize: number },
  batch = 1,
): Record<string, ort.Tensor> {
  const f: Record<string, ort.Tensor> = {};
  for (let l = 0; l < o.layers; l++)
    for (const kv of ["key", "value"])
      f[`past_key_values.${l}.${kv}`] = new ort.Tensor("float32", new Float32Array(0), [
        batch,
        o.kvHeads,
        0,
        o.headSize,
      ]);
  return f;
}

/**
 * Empty `past_key_values.L.prunec_*` state inputs (decode-time scores, `--kv-state` validity) a
 * compiled model declares: batch first, its fixed sizes, 0 for the growing axis.
 */
export function emptyStates(session: ort.InferenceSession, batch = 1): Record<string, ort.Tensor> {
  const f: Record<string, ort.Tensor> = {};
  for (const m of session.inputMetadata) {
    if (!/^past_key_values\.(\d+|stage\d+)\.prunec_/.test(m.name) || !m.isTensor) continue;
    const dims = m.shape.map((d, i) => (i === 0 ? batch : typeof d === "number" ? d : 0));
    f[m.name] = new ort.Tensor("float32", new Float32Array(0), dims);
  }
  return f;
}

/** Every `present.*` output of a run as the next call's `past_key_values.*`. */
export function pastOf(out: Outputs): Record<string, ort.Tensor> {
  const f: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(out))
    if (name.startsWith("present.")) f[name.replace(/^present/, "past_key_values")] = t as ort.Tensor;
  return f;
}

/** Bytes of a run's `present.*` outputs (the KV cache it leaves). */
export function cacheBytes(out: Outputs): number {
  return Object.entries(out)
    .filter(([name]) => name.startsWith("present."))
    .reduce((s, [, t]) => s + ((t as ort.Tensor).data as Float32Array).byteLength, 0);
}
