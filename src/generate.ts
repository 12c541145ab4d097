/**
 * A greedy generation loop for decoders prunec compiles (and the dense ones they come from), for
 * onnxruntime-node and onnxruntime-web alike: the caller opens the session and passes its `Tensor`
 * class, so the library imports no runtime. What it feeds, as transformers.js does:
 *
 *   prefill: the caller's feeds (input_ids [B, S], left-padded; attention_mask, default all ones),
 *     position_ids (if the model takes them) = cumsum(mask) − 1 with pads at 1 (HF's convention),
 *     and an empty past for every `past_key_values.*` input the session declares: its symbolic
 *     batch axis B, every other symbolic axis 0 (transformers.js' empty cache; prunec's
 *     `--kv-state` validity `[batch, 0]` included);
 *   each decode step: each example's argmax token, the mask one column longer, the next dense
 *     position (the example's real tokens so far), every `present.*` output back as the
 *     `past_key_values.*` input of the same suffix (whatever its length: an evicted cache is
 *     shorter than the mask), and `stepFeeds(step)` for any other input.
 *
 * Every input the session declares must get a value at every call; one that does not is an error
 * naming it, not a silent default.
 */

/** The slice of an onnxruntime tensor the loop reads. */
export interface GenerateTensor {
  readonly dims: readonly number[];
  readonly type: string;
  readonly data: unknown;
}

/** The slice of an onnxruntime InferenceSession (node or web) the loop uses. */
export interface GenerateSession<T extends GenerateTensor> {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputMetadata?: readonly {
    name: string;
    isTensor: boolean;
    type?: string;
    shape?: readonly (number | string)[];
  }[];
  run(feeds: Record<string, T>): Promise<Record<string, T>>;
}

/** onnxruntime's `Tensor` constructor (from onnxruntime-node or onnxruntime-web). */
export type TensorClass<T extends GenerateTensor> = new (
  type: "int64" | "float32" | "float16" | "bool",
  data: BigInt64Array | Float32Array | Uint16Array | Uint8Array,
  dims: readonly number[],
) => T;

export interface GenerateOptions<T extends GenerateTensor> {
  Tensor: TensorClass<T>;
  /** Tokens to generate per example (the prefill's argmax is the first). */
  maxNewTokens: number;
  /** Stop an example at this token (it is kept); the loop ends when every example has stopped. */
  eosTokenId?: number | readonly number[];
  /** Inputs the loop does not know (an image mask, say) for decode step `step` (1, 2, …). */
  stepFeeds?: (step: number) => Record<string, T>;
  /** The logits output (default `logits`, [B, S, V]). */
  logits?: string;
  /** Keep each call's last logits row per example in the result. */
  keepLogits?: boolean;
}

export interface Generation {
  /** Per example: the generated tokens (up to and including its EOS). */
  tokens: number[][];
  /** With `keepLogits`: per call (prefill, then each decode step), [B·V] last rows. */
  logits?: Float32Array[];
  /** Calls made (the prefill and the decode steps). */
  calls: number;
}

const PAST = "past_key_values.";
const PRESENT = "present.";

function int64s(t: GenerateTensor, what: string): BigInt64Array {
  if (t.type !== "int64" || !(t.data instanceof BigInt64Array)) throw new Error(`generate: ${what} must be int64`);
  return t.data;
}

/** Empty past tensors for every `past_key_values.*` input, from the session's declared shapes. */
function emptyPasts<T extends GenerateTensor>(
  session: GenerateSession<T>,
  Tensor: TensorClass<T>,
  batch: number,
): Record<string, T> {
  const out: Record<string, T> = {};
  const meta = new Map((session.inputMetadata ?? []).map((m) => [m.name, m]));
  for (const name of session.inputNames) {
    if (!name.startsWith(PAST)) continue;
    const m = meta.get(name);
    if (!m?.shape || !m.type)
      throw new Error(`generate: the session declares no shape for '${name}', so its empty past cannot be built`);
    // Axis 0 is the batch; the other symbolic axes (the past length) start empty.
    const dims = m.shape.map((d, i) => (i === 0 ? batch : typeof d === "number" ? d : 0));
    if (m.type === "float32") out[name] = new Tensor("float32", new Float32Array(0), dims);
    else if (m.type === "float16") out[name] = new Tensor("float16", new Uint16Array(0), dims);
    else throw new Error(`generate: '${name}' is ${m.type}; empty pasts are built for float32 and float16`);
  }
  return out;
}

function argmax(data: Float32Array, from: number, size: number): number {
  let best = 0;
  for (let i = 1; i < size; i++) if (data[from + i]! > data[from + best]!) best = i;
  return best;
}

export interface FrameRun<T extends GenerateTensor> {
  /** Per call, the outputs asked for (every output when `outputs` is not given). */
  outputs: Record<string, T>[];
}

/**
 * A loop over frames for models compiled with `across frames` (passes/frames.ts) or any other model
 * whose state is `past_key_values.*` → `present.*` pairs: one call per element of `frames` (the
 * caller's feeds for it, e.g. pixel_values [B, …]), with an empty past for every
 * `past_key_values.*` input at the first call (built from the session's declared shapes, as
 * `generate` does: the first call of an `across frames` stage keeps every token) and every
 * `present.*` output of a call fed back as the next call's past. The batch is axis 0 of the first
 * frame's first feed.
 */
export async function runFrames<T extends GenerateTensor>(
  session: GenerateSession<T>,
  frames: readonly Record<string, T>[],
  options: { Tensor: TensorClass<T>; outputs?: readonly string[] },
): Promise<FrameRun<T>> {
  const first = frames[0] && Object.values(frames[0])[0];
  if (!first?.dims.length) throw new Error("runFrames: the first frame has no batched feed");
  let carried = emptyPasts(session, options.Tensor, first.dims[0]!);
  const outputs: Record<string, T>[] = [];
  for (const [t, feeds] of frames.entries()) {
    const call = { ...carried, ...feeds };
    const missing = session.inputNames.filter((n) => !(n in call));
    if (missing.length)
      throw new Error(
        `runFrames: no value for the session's input${missing.length > 1 ? "s" : ""} ${missing.map((n) => `'${n}'`).join(", ")} at frame ${t}`,
      );
    const out = await session.run(call);
    carried = {};
    for (const name of session.outputNames)
      if (name.startsWith(PRESENT)) carried[`${PAST}${name.slice(PRESENT.length)}`] = out[name]!;
    outputs.push(options.outputs ? Object.fromEntries(options.outputs.map((n) => [n, out[n]!])) : out);
  }
  return { outputs };
}

/** Greedy generation: prefill `feeds`, then decode steps until `maxNewTokens` or every example's EOS. */
export async function generate<T extends GenerateTensor>(
  session: GenerateSession<T>,
  feeds: Record<string, T>,
  options: GenerateOptions<T>,
): Promise<Generation> {
  const { Tensor } = options;
  const logitsName = options.logits ?? "logits";
  const eos = new Set(options.eosTokenId === undefined ? [] : [options.eosTokenId].flat());
  const ids = feeds["input_ids"];
  if (ids?.dims.length !== 2) throw new Error("generate: feeds need input_ids [batch, sequence]");
  const [batch, seq] = ids.dims as [number, number];
  int64s(ids, "input_ids");
  let mask = feeds["attention_mask"]
    ? Array.from(int64s(feeds["attention_mask"], "attention_mask"), Number)
    : new Array<number>(batch * seq).fill(1);
  if (mask.length !== batch * seq) throw new Error("generate: attention_mask must have input_ids' shape");
  for (let b = 0; b < batch; b++)
    if (mask[b * seq + seq - 1] !== 1)
      throw new Error(`generate: example ${b}'s last token is padding; left-pad the batch (the last position is read)`);
  const takes = new Set(session.inputNames);
  const real = Array.from({ length: batch }, (_, b) => mask.slice(b * seq, (b + 1) * seq).reduce((a, x) => a + x, 0));
  let call: Record<string, T> = { ...emptyPasts(session, Tensor, batch), ...feeds };
  if (takes.has("attention_mask") && !feeds["attention_mask"])
    call["attention_mask"] = new Tensor("int64", BigInt64Array.from(mask, BigInt), [batch, seq]);
  if (takes.has("position_ids") && !feeds["position_ids"]) {
    const positions = new BigInt64Array(batch * seq);
    for (let b = 0; b < batch; b++) {
      let p = -1;
      for (let j = 0; j < seq; j++) {
        if (mask[b * seq + j]) p++;
        positions[b * seq + j] = BigInt(mask[b * seq + j] ? p : 1);
      }
    }
    call["position_ids"] = new Tensor("int64", positions, [batch, seq]);
  }
  const tokens: number[][] = Array.from({ length: batch }, () => []);
  const done = new Array<boolean>(batch).fill(false);
  const kept: Float32Array[] = [];
  let total = seq;
  let calls = 0;
  let carried: Record<string, T> = {};
  for (let step = 0; step < options.maxNewTokens; step++) {
    if (step > 0) {
      const next: Record<string, T> = { ...(options.stepFeeds?.(step) ?? {}) };
      const grown: number[] = [];
      for (let b = 0; b < batch; b++) grown.push(...mask.slice(b * total, (b + 1) * total), 1);
      mask = grown;
      total += 1;
      next["input_ids"] = new Tensor("int64", BigInt64Array.from(tokens.map((t) => BigInt(t.at(-1)!))), [batch, 1]);
      if (takes.has("attention_mask"))
        next["attention_mask"] = new Tensor("int64", BigInt64Array.from(mask, BigInt), [batch, total]);
      if (takes.has("position_ids"))
        next["position_ids"] = new Tensor(
          "int64",
          BigInt64Array.from(real, (n) => BigInt(n + step - 1)),
          [batch, 1],
        );
      call = { ...carried, ...next };
    }
    const missing = session.inputNames.filter((n) => !(n in call));
    if (missing.length)
      throw new Error(
        `generate: no value for the session's input${missing.length > 1 ? "s" : ""} ${missing.map((n) => `'${n}'`).join(", ")} at ${step === 0 ? "the prefill" : `decode step ${step}`}${step === 0 ? "" : " (pass it with options.stepFeeds)"}`,
      );
    const out = await session.run(call);
    calls++;
    const logits = out[logitsName];
    if (!logits || !(logits.data instanceof Float32Array) || logits.dims.length !== 3)
      throw new Error(`generate: the session returned no float32 '${logitsName}' [batch, sequence, vocab]`);
    const [, rows, vocab] = logits.dims as [number, number, number];
    const last = new Float32Array(batch * vocab);
    for (let b = 0; b < batch; b++) {
      const from = ((b + 1) * rows - 1) * vocab;
      last.set(logits.data.subarray(from, from + vocab), b * vocab);
      if (!done[b]) {
        const t = argmax(logits.data, from, vocab);
        tokens[b]!.push(t);
        if (eos.has(t)) done[b] = true;
      } else tokens[b]!.push(tokens[b]!.at(-1)!); // fed again, trimmed below
    }
    if (options.keepLogits) kept.push(last);
    if (done.every(Boolean)) break;
    // This call's presents are the next call's pasts.
    carried = {};
    for (const name of session.outputNames)
      if (name.startsWith(PRESENT)) carried[`${PAST}${name.slice(PRESENT.length)}`] = out[name]!;
  }
  return {
    tokens: tokens.map((t) => {
      const stop = t.findIndex((x) => eos.has(x));
      return stop < 0 ? t : t.slice(0, stop + 1);
    }),
    ...(options.keepLogits ? { logits: kept } : {}),
    calls,
  };
}
