/**
 * The data a command evaluates on: a `.prds` file, or a folder of images (one subfolder per class)
 * preprocessed for the model (src/data/preprocess.ts, src/data/image-folder.ts). Either way the
 * examples fit the model's input, or the command stops with exit 2 naming both shapes.
 */
import { statSync } from "node:fs";
import { SingleBar, Presets } from "cli-progress";
import { checkDatasetFitsModel, parseDataset, type Dataset } from "../data/prds.js";
import { modelLabels, readImageFolder } from "./image-folder.js";
import { dirname, join } from "node:path";
import { preprocessFor, type PreprocessFlags } from "./preprocess.js";
import { readInput } from "./files.js";

export function isFolder(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** A progress bar on a terminal's stderr (none in pipes or with --json). */
function progress(label: string, quiet: boolean): { tick: (done: number, total: number) => void; stop: () => void } {
  if (quiet || !process.stderr.isTTY) return { tick: () => {}, stop: () => {} };
  const bar = new SingleBar(
    { format: `${label} {bar} {value}/{total} images`, hideCursor: true, stream: process.stderr },
    Presets.shades_classic,
  );
  let started = false;
  return {
    tick: (done, total) => {
      if (!started) bar.start(total, 0);
      started = true;
      bar.update(done);
    },
    stop: () => started && bar.stop(),
  };
}

/** The images of `dir` as a data set for `model` (its preprocessing from the flags or its config). */
export async function folderDataset(
  dir: string,
  model: Uint8Array,
  modelPath: string,
  flags: PreprocessFlags,
  quiet: boolean,
): Promise<Dataset> {
  const { preprocess } = preprocessFor(model, modelPath, flags);
  // A transformers model folder names its classes: folders named after them take the model's ids.
  const known = modelLabels(join(dirname(modelPath), "config.json"));
  const bar = progress("read", quiet);
  try {
    return await readImageFolder(dir, preprocess, bar.tick, known);
  } finally {
    bar.stop();
  }
}

/** `--data PATH` for a model: a .prds file checked against the model, or an image folder read for it. */
export async function evalDataset(
  path: string,
  model: Uint8Array,
  modelPath: string,
  flags: PreprocessFlags,
  quiet: boolean,
): Promise<Dataset> {
  if (isFolder(path)) return folderDataset(path, model, modelPath, flags, quiet);
  const data = parseDataset(readInput(path, "a .prds data set or an image folder").bytes, path);
  checkDatasetFitsModel(data, model, path, modelPath); // exit 2 naming both, not onnxruntime's error
  return data;
}
