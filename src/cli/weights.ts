/**
 * External weight files on disk, for the CLI. prunec keeps every initializer's external location as
 * it is (src/onnx/external.ts), and a location is relative to the model file's folder. So:
 * - before a model runs (eval/bench/report), every file it names is checked beside the model, never
 *   against the working directory, and must hold each tensor's bytes: onnxruntime would otherwise
 *   fail with a stack trace, or read a same-named file from wherever it was started;
 * - a compiled model written to another folder gets its weight files placed beside it (hard link,
 *   else copy), staged under temp names and committed only after everything succeeded.
 */
import { closeSync, mkdirSync, readSync, realpathSync, statSync, type Stats } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { decodeModel } from "../onnx/io.js";
import { checkExternalData, type ExternalRef } from "../onnx/external.js";
import { PrunecError } from "../errors.js";
import { checkOutput, inputRef, kindOf, openRegular, type InputRef } from "./files.js";
import { ioBuffer, Staging, testWriteDelay, writeError } from "./atomic.js";

/**
 * Each model's references, by its bytes: the CLI asks several times per command (the output's
 * checks, the weight placement, the runtime's), and each decode of a large graph costs tens of ms.
 * Bytes are never changed in place, so the answer for one array and path stays true.
 */
const refsOf = new WeakMap<Uint8Array, Map<string, readonly ExternalRef[]>>();

/** The model's external references; exit 3 for locations that leave the model's folder. */
export function externalRefs(model: Uint8Array, modelPath: string): readonly ExternalRef[] {
  const known = refsOf.get(model)?.get(modelPath);
  return known ?? rememberExternalRefs(model, modelPath, checkExternalData(decodeModel(model, modelPath), modelPath));
}

/**
 * Records what a compile of `model` (named `modelPath` in its messages) found checking its
 * external data: compile decodes and checks the input anyway, and decoding it again costs a
 * cold CLI 10 ms on a 1,500-node graph.
 */
export function rememberExternalRefs(
  model: Uint8Array,
  modelPath: string,
  refs: readonly ExternalRef[],
): readonly ExternalRef[] {
  let byPath = refsOf.get(model);
  if (!byPath) refsOf.set(model, (byPath = new Map()));
  byPath.set(modelPath, refs);
  return refs;
}

function statOrUndefined(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

function byteCount(ref: ExternalRef, key: "offset" | "length", modelPath: string): number | undefined {
  const v = ref[key];
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v))
    throw new PrunecError(
      "format",
      `${modelPath}: initializer '${ref.tensor}' has external data ${key} '${v}' (expected a byte count)`,
    );
  return Number(v);
}

export interface WeightFiles {
  /** The folder every location resolves against: the model file's. */
  dir: string;
  /** Location as written in the model → path on disk. */
  files: Map<string, string>;
}

/**
 * Every external weight file of `model` (read from `modelPath`; its bytes or its references),
 * checked: it exists beside the model and is long enough for each tensor stored in it. Exit 2
 * naming the file and the initializer.
 */
export function checkWeightFiles(model: Uint8Array | readonly ExternalRef[], modelPath: string): WeightFiles {
  const dir = dirname(modelPath);
  const files = new Map<string, string>();
  for (const ref of model instanceof Uint8Array ? externalRefs(model, modelPath) : model) {
    const file = join(dir, ref.location);
    const st = statOrUndefined(file);
    const of = `external data of initializer '${ref.tensor}' in ${modelPath}`;
    if (!st) throw new PrunecError("io", `${file}: no such file (${of}; locations resolve against the model's folder)`);
    if (!st.isFile()) throw new PrunecError("io", `${file}: is ${kindOf(st)}, not a regular file (${of})`);
    const offset = byteCount(ref, "offset", modelPath) ?? 0;
    const length = byteCount(ref, "length", modelPath) ?? ref.bytes;
    if (length !== undefined && st.size < offset + length) {
      throw new PrunecError(
        "io",
        `${file}: ${st.size} bytes, too short for initializer '${ref.tensor}' of ${modelPath} (needs offset ${offset} + length ${length} = ${offset + length} bytes)`,
      );
    }
    files.set(ref.location, file);
  }
  return { dir, files };
}

export type ExternalDataMode = "link" | "copy" | "refuse";
export const EXTERNAL_DATA_MODES: readonly ExternalDataMode[] = ["link", "copy", "refuse"];

/** One weight file the output reads: where it comes from, where it must be, and what to do. */
export interface Placement {
  location: string;
  source: string;
  target: string;
  /** `present`: the same file (same inode or identical bytes) is already there. */
  action: "link" | "copy" | "present";
}

function sameFolder(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return resolve(a) === resolve(b);
  }
}

/** The weight files beside the model that exist: inputs an output must never replace. */
export function weightInputs(model: Uint8Array, modelPath: string): InputRef[] {
  const dir = dirname(modelPath);
  return [...new Set(externalRefs(model, modelPath).map((r) => join(dir, r.location)))].flatMap(
    (f) => inputRef(f) ?? [],
  );
}

/** The folder's real path + the name: two spellings of one path compare equal even before it exists. */
function canonical(path: string): string {
  try {
    return join(realpathSync(dirname(path)), basename(path));
  } catch {
    return resolve(path);
  }
}

/** Same inode, or same size and bytes. */
function sameContent(a: string, sa: Stats, b: string, sb: Stats): boolean {
  if (sa.dev === sb.dev && sa.ino === sb.ino) return true;
  if (sa.size !== sb.size) return false;
  // Opened without blocking and checked again by fd: a path swapped for a FIFO is refused, not waited on.
  const refuse = (path: string) => (kind: string) => new PrunecError("io", `${path}: is ${kind}, not a regular file`);
  const fa = openRegular(a, refuse(a)).fd;
  let fb: number;
  try {
    fb = openRegular(b, refuse(b)).fd;
  } catch (e) {
    closeSync(fa);
    throw e;
  }
  try {
    const ba = ioBuffer("compare-a", 1 << 20);
    const bb = ioBuffer("compare-b", 1 << 20);
    for (let pos = 0; pos < sa.size; ) {
      const n = readSync(fa, ba, 0, ba.length, pos);
      if (n === 0 || readSync(fb, bb, 0, n, pos) !== n || !ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
      pos += n;
    }
    return true;
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/**
 * What writing the compiled model to `out` needs for its external data to resolve. Nothing when
 * `out` is in the model's folder. Otherwise each weight file must exist beside the model, and beside
 * `out` either be absent (then linked or copied, by `mode`) or be the same file. Checks only:
 * throws (exit 2) before anything is written.
 */
export function planPlacements(model: Uint8Array, modelPath: string, out: string, mode: ExternalDataMode): Placement[] {
  const refs = externalRefs(model, modelPath);
  if (!refs.length || sameFolder(dirname(modelPath), dirname(out))) return [];
  const placements: Placement[] = [];
  const seen = new Set<string>();
  for (const ref of refs) {
    if (seen.has(ref.location)) continue;
    seen.add(ref.location);
    const source = join(dirname(modelPath), ref.location);
    const target = join(dirname(out), ref.location);
    const used = `initializer '${ref.tensor}'`;
    if (canonical(target) === canonical(out)) {
      throw new PrunecError(
        "io",
        `${out}: the output has the name of its own external data file '${ref.location}' (${used}); choose another -o`,
      );
    }
    const ss = statOrUndefined(source);
    if (!ss) {
      throw new PrunecError(
        "io",
        `${source}: no such file (external data of ${used} in ${modelPath}); it is needed beside ${out}, which is in another folder`,
      );
    }
    if (!ss.isFile())
      throw new PrunecError(
        "io",
        `${source}: is ${kindOf(ss)}, not a regular file (external data of ${used} in ${modelPath})`,
      );
    const ts = statOrUndefined(target);
    if (ts) {
      if (ts.isFile() && sameContent(source, ss, target, ts)) {
        placements.push({ location: ref.location, source, target, action: "present" });
        continue;
      }
      throw new PrunecError(
        "io",
        `${target}: exists and differs from ${source}, the external data ${out} would read (${used}); remove or rename it, or choose an -o in another folder`,
      );
    }
    if (mode === "refuse") {
      throw new PrunecError(
        "io",
        `${target}: no such file; ${out} would read ${used} from it (--external-data refuse). Link or copy ${source} there, or use --external-data link|copy`,
      );
    }
    placements.push({ location: ref.location, source, target, action: mode });
  }
  return placements;
}

/**
 * A model staged under a temp name beside its output with its weight files placed under their own
 * names: `commit` gives the model its name, `rollback` removes everything the write made. It
 * holds none of the model's bytes.
 */
export interface StagedModel {
  /** The model's temp path. */
  readonly file: string;
  /** Rename the model into place (checked once more first); returns how each weight file was placed. */
  commit(): Placement[];
  rollback(): void;
}

/**
 * Stage the model for `out` with its weight files placed as planned: the model and the weights are
 * written under temp names first (src/cli/atomic.ts), then the weights take their names (never over
 * an existing file). On any failure, or SIGINT/SIGTERM/SIGHUP, every temp file, placed weight file
 * and created folder is removed. `inputs`: files the output must not replace (src/cli/files.ts
 * checkOutput).
 */
export async function stageModelWithWeights(
  out: string,
  parts: readonly Uint8Array[],
  placements: readonly Placement[],
  inputs: readonly InputRef[] = [],
): Promise<StagedModel> {
  const staging = new Staging();
  // Identities only: an InputFile's bytes must not outlive the staging.
  const refs: InputRef[] = inputs.map(({ path, id }) => ({ path, id }));
  let current = out;
  try {
    checkOutput(out, refs);
    const tmp = await staging.writeTemp(out, parts);
    const done: Placement[] = [];
    const staged: { tmp: string; p: Placement }[] = [];
    for (const p of placements) {
      if (p.action === "present") {
        done.push(p);
        continue;
      }
      current = p.target;
      // Locations may name subfolders; the output folder itself exists (the model's temp is in it).
      const folder = mkdirSync(dirname(p.target), { recursive: true });
      if (folder !== undefined) staging.track(folder);
      // Linking fails across devices, or on a file system without hard links: then copy.
      const linked = p.action === "link" ? staging.linkTemp(p.target, p.source) : undefined;
      const t = linked ?? (await staging.copyTemp(p.target, p.source));
      staged.push({ tmp: t, p: { ...p, action: linked !== undefined ? "link" : "copy" } });
    }
    await testWriteDelay();
    for (const { tmp: t, p } of staged) {
      current = p.target;
      staging.placeNew(t, p.target);
      done.push(p);
    }
    return {
      file: tmp,
      commit() {
        try {
          staging.renameInto(tmp, out, refs);
          staging.commit();
          return done;
        } catch (e) {
          staging.rollback();
          throw writeError(out, e);
        }
      },
      rollback: () => staging.rollback(),
    };
  } catch (e) {
    staging.rollback();
    throw writeError(current, e);
  }
}

/**
 * Write the model to `out` with its weight files placed as planned, all or nothing
 * (stageModelWithWeights, then its commit). Returns how each file was placed.
 */
export async function writeModelWithWeights(
  out: string,
  parts: readonly Uint8Array[],
  placements: readonly Placement[],
  inputs: readonly InputRef[] = [],
): Promise<Placement[]> {
  return (await stageModelWithWeights(out, parts, placements, inputs)).commit();
}
