/**
 * A folder of images (one subfolder per class) as a data set preprocessed for a model
 * (./preprocess.ts, ./image-folder.ts), with a progress bar on a terminal. Whatever the
 * preprocessing gives fits the model's input, or the command stops with exit 2 naming both shapes.
 */
import { statSync } from "node:fs";
import type { Dataset } from "../data/prds.js";
import { modelLabels, readImageFolder } from "./image-folder.js";
import { dirname, join } from "node:path";
import { preprocessFor, type PreprocessFlags } from "./preprocess.js";

export function isFolder(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/**
 * A progress bar on a terminal's stderr (none in pipes or with --json), counting `unit`; it
 * appears at the first tick.
 */
export async function progress(
  label: string,
  quiet: boolean,
  unit = "images",
): Promise<{ tick: (done: number, total: number) => void; stop: () => void }> {
  if (quiet || !process.stderr.isTTY) return { tick: () => {}, stop: () => {} };
  // Imported on first use: only a terminal gets a bar, and a compile never loads it.
  const { SingleBar, Presets } = await import("cli-progress");
  const bar = new SingleBar(
    { format: `${label} {bar} {value}/{total} ${unit}`, hideCursor: true, stream: process.stderr },
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
  const bar = await progress("read", quiet);
  try {
    return await readImageFolder(dir, preprocess, bar.tick, known);
  } finally {
    bar.stop();
  }
}
