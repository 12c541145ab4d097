/**
 * `prunec eval`: top-1 accuracy of a (pruned or dense) model on a labelled `.prds` set; on a set
 * with per-patch labels (header `targets: "patches"`), mIoU, per-class IoU and patch accuracy of a
 * model whose output is [batch, patches, classes].
 */
import { decodeModel } from "../onnx/io.js";
import { batchInput, type Dataset } from "../data/prds.js";
import { argmax } from "../data/overlay.js";
import { openSession, type ExecutionProvider, type Session, type SessionOptions } from "./runtime.js";
import { META } from "../compile.js";
import { PrunecError } from "../errors.js";

/**
 * Per-patch scores, all from counts over every patch of the set (n·patches): IoU of class c =
 * |predicted c and labelled c| / |predicted c or labelled c|; mIoU = the mean over the classes whose
 * union is not empty (the others' IoU is null); patch accuracy = patches right / patches.
 */
export interface SegmentationScores {
  /** Patches per example. */
  patches: number;
  miou: number;
  iou: (number | null)[];
  intersection: number[];
  union: number[];
  patchCorrect: number;
  patchTotal: number;
  patchAccuracy: number;
}

export interface EvalResult {
  /** Top-1 accuracy; on a per-patch set, the patch accuracy. */
  accuracy: number;
  /** Examples. */
  n: number;
  /** Examples right; on a per-patch set, patches right. */
  correct: number;
  ep: ExecutionProvider;
  /** Tokens each layer processes, when the model was compiled by prunec. */
  tokensPerLayer: (number | string | null)[] | null;
  /** Predicted class per example; on a per-patch set, per patch (example-major). */
  predictions: number[];
  /** On a per-patch set: mIoU, per-class IoU, patch accuracy. */
  segmentation: SegmentationScores | null;
}

/** Scores from per-class counts (`SegmentationScores`' definitions). */
export function segmentationScores(
  patches: number,
  intersection: number[],
  union: number[],
  patchCorrect: number,
  patchTotal: number,
): SegmentationScores {
  const iou = intersection.map((x, c) => (union[c]! > 0 ? x / union[c]! : null));
  const present = iou.filter((v): v is number => v !== null);
  return {
    patches,
    miou: present.length ? present.reduce((a, b) => a + b, 0) / present.length : 0,
    iou,
    intersection,
    union,
    patchCorrect,
    patchTotal,
    patchAccuracy: patchCorrect / patchTotal,
  };
}

export function prunecMetadata(model: Uint8Array, name: string): Map<string, string> {
  return new Map(decodeModel(model, name).metadataProps.map((p) => [p.key, p.value]));
}

export async function evaluate(
  model: Uint8Array,
  modelName: string,
  data: Dataset,
  options: {
    ep: ExecutionProvider;
    batch: number;
    onProgress?: (done: number) => void;
    /** How messages name the data set. */
    dataName?: string;
    /** A session already open on `model` (the caller's to release): report reuses it for its overlays. */
    opened?: Session;
  } & Pick<SessionOptions, "modelPath" | "command">,
): Promise<EvalResult> {
  const meta = prunecMetadata(model, modelName);
  const tokens = meta.get(META.tokens);
  const session =
    options.opened ??
    (await openSession(model, options.ep, { modelPath: options.modelPath, command: options.command }));
  try {
    const input = session.inputNames[0]!;
    const output = session.outputNames.find((o) => !o.startsWith("prunec.")) ?? session.outputNames[0]!;
    const predictions: number[] = [];
    const classes = data.header.classes;
    // Rows per example: 1 (no patch axis) or the set's patches.
    const rows = data.patches ?? 1;
    const intersection = new Array<number>(classes).fill(0);
    const union = new Array<number>(classes).fill(0);
    let correct = 0;
    for (let from = 0; from < data.header.n; from += options.batch) {
      const to = Math.min(data.header.n, from + options.batch);
      const res = await session.run({ [input]: batchInput(data, from, to) }, [output]);
      const logits = res[output]!;
      const dims = logits.dims;
      if (data.patches === undefined) {
        if (dims.length !== 2 || dims[1] !== classes) {
          throw new PrunecError(
            "io",
            `${modelName}: output '${output}' has shape [${dims.join(", ")}]; expected [batch, ${classes}] logits`,
          );
        }
      } else if (dims.length !== 3 || dims[0] !== to - from || dims[1] !== rows || dims[2] !== classes) {
        throw new PrunecError(
          "io",
          `${modelName}: output '${output}' has shape [${dims.join(", ")}]; expected [batch, ${rows}, ${classes}] logits, ` +
            `one row of ${classes} per patch of ${options.dataName ?? "the data set"} (header fields 'patches' and 'classes')`,
        );
      }
      const values = logits.data as Float32Array;
      for (let i = 0; i < (to - from) * rows; i++) {
        const p = argmax(values.subarray(i * classes, (i + 1) * classes));
        const label = data.labels[from * rows + i]!;
        predictions.push(p);
        if (p === label) {
          correct++;
          intersection[p]!++;
          union[p]!++;
        } else {
          union[p]!++;
          union[label]!++;
        }
      }
      options.onProgress?.(to);
    }
    const n = data.header.n;
    return {
      accuracy: correct / (n * rows),
      n,
      correct,
      ep: options.ep,
      tokensPerLayer: tokens ? (JSON.parse(tokens) as (number | string | null)[]) : null,
      predictions,
      segmentation:
        data.patches === undefined ? null : segmentationScores(data.patches, intersection, union, correct, n * rows),
    };
  } finally {
    if (!options.opened) await session.release();
  }
}
