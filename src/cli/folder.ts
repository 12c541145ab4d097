/**
 * Folder mode of compile: a transformers.js model folder (config.json, preprocessor_config.json,
 * onnx/*.onnx, tokenizer files…) in, a folder out that is the same with one ONNX file compiled.
 *
 * - The compiled file: `--onnx`, else onnx/model.onnx, else onnx/vision_encoder.onnx.
 * - Every other file of the folder is copied byte for byte (subfolders kept; symbolic links are
 *   followed and written as files), except the compiled file's dtype variants (same base name plus
 *   one of transformers.js's dtype suffixes, `_quantized`, `_fp16`…, and their `.onnx_data*`
 *   files): they are not pruned, so they are left out, and transformers.js asked for that dtype
 *   fails to find the file instead of running an unpruned model behind a pruned one's config.
 * - The compiled file's external data files are placed as the single-file compile places them
 *   (src/cli/weights.ts: hard link, else copy, by `--external-data`).
 * - Written atomically: everything is staged in a new folder beside OUTDIR, then renamed to OUTDIR
 *   in one rename(2); OUTDIR must not exist yet or be an empty folder, and must be neither the input
 *   folder nor inside it. On any failure or interrupt the staged folder is removed: nothing is left.
 */
import { lstatSync, mkdirSync, readdirSync, realpathSync, renameSync, statSync } from "node:fs";
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { PrunecError } from "../errors.js";
import { Staging, tempPath, writeError } from "./atomic.js";
import { errno, kindOf, reason, statIfAny, type InputRef } from "./files.js";
import { planPlacements, writeModelWithWeights, type ExternalDataMode, type Placement } from "./weights.js";

/** transformers.js's dtype file suffixes (src/utils/dtypes.js DEFAULT_DTYPE_SUFFIX_MAPPING, 4.x), fp32's '' aside. */
export const DTYPE_SUFFIXES = [
  "_quantized",
  "_fp16",
  "_int8",
  "_uint8",
  "_q4",
  "_q4f16",
  "_q2",
  "_q2f16",
  "_q1",
  "_q1f16",
  "_bnb4",
] as const;

/** The file compiled when `--onnx` is not given, in order. */
export const DEFAULT_ONNX = ["onnx/model.onnx", "onnx/vision_encoder.onnx"] as const;

/** `model_quantized` → `model`; a stem without a dtype suffix is its own base. */
export function dtypeBase(stem: string): string {
  for (const s of [...DTYPE_SUFFIXES].sort((a, b) => b.length - a.length))
    if (stem.endsWith(s)) return stem.slice(0, -s.length);
  return stem;
}

/** Every file under `dir` (relative paths with '/', sorted); links followed, a link cycle or a non-regular file refused. */
export function listFolder(dir: string): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  const walk = (abs: string, rel: string) => {
    const real = realpathSync(abs);
    if (seen.has(real)) throw new PrunecError("io", `${abs}: a folder link loops back to ${real}`);
    seen.add(real);
    for (const name of readdirSync(abs).sort()) {
      const p = join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      let st: ReturnType<typeof statSync>;
      try {
        st = statSync(p);
      } catch (e) {
        throw new PrunecError("io", `${p}: cannot read (${reason(e)})`);
      }
      if (st.isDirectory()) walk(p, r);
      else if (st.isFile()) out.push(r);
      else throw new PrunecError("io", `${p}: is ${kindOf(st)}, not a regular file (in the model folder ${dir})`);
    }
    seen.delete(real);
  };
  walk(dir, "");
  return out;
}

/** Which ONNX file of the folder to compile: `--onnx`, else the defaults; refused listing the .onnx files found. */
export function chooseOnnx(dir: string, files: readonly string[], onnx: string | undefined): string {
  if (onnx !== undefined) {
    const rel = relative(resolve(dir), resolve(dir, onnx)).split(sep).join("/");
    if (rel.startsWith("..") || rel === "") throw new PrunecError("io", `--onnx ${onnx}: not a file inside ${dir}`);
    if (!files.includes(rel))
      throw new PrunecError(
        "io",
        `--onnx ${onnx}: no such file in ${dir} (its .onnx files: ${onnxFiles(files).join(", ") || "none"})`,
      );
    return rel;
  }
  const found = DEFAULT_ONNX.find((f) => files.includes(f));
  if (found) return found;
  throw new PrunecError(
    "io",
    `${dir}: a model folder with neither ${DEFAULT_ONNX.join(" nor ")}; name the file to compile with --onnx (its .onnx files: ${onnxFiles(files).join(", ") || "none"})`,
  );
}

const onnxFiles = (files: readonly string[]) => files.filter((f) => f.toLowerCase().endsWith(".onnx"));

/** What happens to each file of the folder. */
export interface FolderPlan {
  dir: string;
  outDir: string;
  /** The compiled file, relative to `dir`. */
  onnx: string;
  /** Copied byte for byte. */
  copy: string[];
  /** The compiled file's dtype variants and their data files: left out. */
  leftOut: string[];
  /** The compiled file's external data, placed by src/cli/weights.ts (relative to `dir`). */
  weights: string[];
}

/**
 * The plan for a folder compile: which file is compiled, which are copied, which are left out.
 * `weightLocations`: the compiled model's external data locations (relative to its folder).
 */
export function planFolder(
  dir: string,
  outDir: string,
  files: readonly string[],
  onnx: string,
  weightLocations: readonly string[],
): FolderPlan {
  const onnxDir = dirname(onnx) === "." ? "" : `${dirname(onnx)}/`;
  const stem = basename(onnx).replace(/\.onnx$/i, "");
  const base = dtypeBase(stem);
  const family = new Set([base, ...DTYPE_SUFFIXES.map((s) => base + s)]);
  family.delete(stem);
  const weights = new Set(
    weightLocations.map((l) =>
      relative(".", join(onnxDir || ".", l))
        .split(sep)
        .join("/"),
    ),
  );
  const copy: string[] = [];
  const leftOut: string[] = [];
  for (const f of files) {
    if (f === onnx || weights.has(f)) continue;
    const inOnnxDir = onnxDir ? f.startsWith(onnxDir) && !f.slice(onnxDir.length).includes("/") : !f.includes("/");
    const name = inOnnxDir ? f.slice(onnxDir.length) : undefined;
    // A variant: `<base><suffix>.onnx`, or its external data `<base><suffix>.onnx_data…`.
    const m = name === undefined ? null : /^(.*)\.onnx(_data.*)?$/i.exec(name);
    if (m && family.has(m[1]!)) leftOut.push(f);
    else copy.push(f);
  }
  return { dir, outDir, onnx, copy, leftOut, weights: [...weights].filter((w) => files.includes(w)) };
}

/** The real path of `p`, or of its nearest existing ancestor joined with the rest. */
function canonicalPath(p: string): string {
  const abs = resolve(p);
  try {
    return realpathSync(abs);
  } catch {
    const parent = dirname(abs);
    return parent === abs ? abs : join(canonicalPath(parent), basename(abs));
  }
}

/** OUTDIR must be new (or an empty folder), and neither DIR nor inside it. Exit 2 otherwise. */
export function checkOutDir(dir: string, outDir: string): void {
  const d = canonicalPath(dir);
  const o = canonicalPath(outDir);
  if (o === d) throw new PrunecError("io", `${outDir}: is the input folder ${dir}; choose another -o`);
  if (o.startsWith(d.endsWith(sep) ? d : d + sep))
    throw new PrunecError("io", `${outDir}: is inside the input folder ${dir}; choose an -o outside it`);
  const st = statIfAny(outDir);
  if (!st) return;
  if (!st.isDirectory()) throw new PrunecError("io", `${outDir}: cannot write (it is ${kindOf(st)}, not a folder)`);
  if (readdirSync(outDir).length)
    throw new PrunecError(
      "io",
      `${outDir}: cannot write (a folder that is not empty; prunec writes a new folder and replaces nothing)`,
    );
}

/** An output folder staged beside OUTDIR; `commit` renames it into place. */
export interface StagedFolder {
  /** The compiled model's path in the staged folder, its weight files beside it. */
  readonly model: string;
  /** Rename the folder into place (OUTDIR checked once more first); returns how the weights were placed. */
  commit(): Placement[];
  rollback(): void;
}

/**
 * Stage the output folder: the compiled model (with its weights placed) and the copies, in a new
 * folder beside OUTDIR, which `commit` renames into place. Nothing is left behind on a failure,
 * here or at `rollback`. The CLI smoke-runs the staged model between the two (src/cli/main.ts), with
 * nothing of the input held.
 */
export async function stageFolder(
  plan: FolderPlan,
  parts: readonly Uint8Array[],
  modelBytes: Uint8Array,
  mode: ExternalDataMode,
  inputs: readonly InputRef[],
): Promise<StagedFolder> {
  const { dir, outDir, onnx } = plan;
  const staging = new Staging();
  let current = outDir;
  try {
    checkOutDir(dir, outDir);
    const parent = dirname(resolve(outDir));
    if (!statIfAny(parent)) {
      const made = mkdirSync(parent, { recursive: true });
      if (made !== undefined) staging.track(made);
    }
    const stage = tempPath(resolve(outDir));
    staging.track(stage); // tracked before it exists (see Staging.writeTemp)
    mkdirSync(stage);
    const dirs = new Set<string>();
    const ensure = (rel: string) => {
      const d = dirname(rel);
      if (d === "." || dirs.has(d)) return;
      mkdirSync(join(stage, d), { recursive: true });
      dirs.add(d);
    };
    for (const f of plan.copy) {
      current = join(outDir, f);
      ensure(f);
      const target = join(stage, f);
      const tmp = await staging.copyTemp(target, join(dir, f));
      staging.renameInto(tmp, target, inputs);
    }
    current = join(outDir, onnx);
    ensure(onnx);
    const modelOut = join(stage, onnx);
    const placed = await writeModelWithWeights(
      modelOut,
      parts,
      planPlacements(modelBytes, join(dir, onnx), modelOut, mode),
      inputs,
    );
    // (writeModelWithWeights holds the test hook's delay: everything is staged by then.)
    return {
      model: modelOut,
      commit: () => {
        try {
          checkOutDir(dir, outDir); // again: a file that appeared meanwhile is never replaced
          try {
            // rename(2) replaces only an empty folder (checked just above), never one with files.
            renameSync(stage, outDir);
          } catch (e) {
            if (errno(e) === "ENOTEMPTY" || errno(e) === "EEXIST")
              throw new Error("it appeared while prunec was writing; nothing was replaced");
            throw e;
          }
          staging.commit();
          return placed.map((p) => ({ ...p, target: join(outDir, relative(stage, p.target)) }));
        } catch (e) {
          staging.rollback();
          throw writeError(outDir, e);
        }
      },
      rollback: () => staging.rollback(),
    };
  } catch (e) {
    staging.rollback();
    throw writeError(current, e);
  }
}

/** Whether `path` names a folder (following links). */
export function isModelFolder(path: string): boolean {
  try {
    return lstatSync(path).isDirectory() || statSync(path).isDirectory();
  } catch {
    return false;
  }
}
