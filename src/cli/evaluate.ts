/** `prunec eval`: top-1 accuracy of a (pruned or dense) model on a labelled `.prds` set. */
import { decodeModel } from "../onnx/io.js";
import { batchInput, type Dataset } from "../data/prds.js";
import { openSession, type ExecutionProvider, type SessionOptions } from "./runtime.js";
import { META } from "../compile.js";
import { PrunecError } from "../errors.js";

export interface EvalResult {
  accuracy: number;
  n: number;
  correct: number;
  ep: ExecutionProvider;
  /** Tokens each layer processes, when the model was compiled by prunec. */
  tokensPerLayer: (number | string | null)[] | null;
  /** Predicted class per example. */
  predictions: number[];
}

export function prunecMetadata(model: Uint8Array, name: string): Map<string, string> {
  return new Map(decodeModel(model, name).metadataProps.map((p) => [p.key, p.value]));
}

export function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

export async function evaluate(
  model: Uint8Array,
  modelName: string,
  data: Dataset,
  options: { ep: ExecutionProvider; batch: number; onProgress?: (done: number) => void } & Pick<
    SessionOptions,
    "modelPath" | "command"
  >,
): Promise<EvalResult> {
  const meta = prunecMetadata(model, modelName);
  const tokens = meta.get(META.tokens);
  const session = await openSession(model, options.ep, { modelPath: options.modelPath, command: options.command });
  try {
    const input = session.inputNames[0]!;
    const output = session.outputNames.find((o) => !o.startsWith("prunec.")) ?? session.outputNames[0]!;
    const predictions: number[] = [];
    let correct = 0;
    for (let from = 0; from < data.header.n; from += options.batch) {
      const to = Math.min(data.header.n, from + options.batch);
      const res = await session.run({ [input]: batchInput(data, from, to) }, [output]);
      const logits = res[output]!;
      const classes = logits.dims.at(-1)!;
      if (logits.dims.length !== 2 || classes !== data.header.classes) {
        throw new PrunecError(
          "apply",
          `${modelName}: output '${output}' has shape [${logits.dims.join(", ")}]; expected [batch, ${data.header.classes}] logits`,
        );
      }
      for (let i = 0; i < to - from; i++) {
        const p = argmax((logits.data as Float32Array).subarray(i * classes, (i + 1) * classes));
        predictions.push(p);
        if (p === data.labels[from + i]) correct++;
      }
      options.onProgress?.(to);
    }
    const n = data.header.n;
    return {
      accuracy: correct / n,
      n,
      correct,
      ep: options.ep,
      tokensPerLayer: tokens ? (JSON.parse(tokens) as (number | string | null)[]) : null,
      predictions,
    };
  } finally {
    await session.release();
  }
}
