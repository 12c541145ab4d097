/**
 * How to turn an image into a model's input, decided before any image is read: from flags, else a
 * transformers `preprocessor_config.json` (given, or beside the model), else the model's own input
 * shape with pixel/255. The result must give the model's input size, or the command stops (exit 2)
 * naming what the model expects and what the preprocessing would give.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { PrunecError } from "../errors.js";
import { firstInput } from "../data/prds.js";
import type { Preprocess } from "./image-folder.js";

export interface PreprocessFlags {
  /** `HxW` or `N` (square). */
  size?: string;
  mean?: string;
  std?: string;
  /** `fill` (stretch) or `shortest-edge:N` (scale, keep the aspect, centre crop). */
  resize?: string;
  kernel?: string;
  /** A preprocessor_config.json; default: the one beside the model, if any. */
  preprocessor?: string;
}

/** The model's image input: its name and [channels, height, width] where static. */
interface ImageInput {
  name: string;
  dims: (number | string)[];
  channels: number | undefined;
  height: number | undefined;
  width: number | undefined;
}

function imageInput(modelBytes: Uint8Array, modelName: string): ImageInput {
  const input = firstInput(modelBytes, modelName);
  if (!input?.tensor) throw new PrunecError("io", `${modelName}: the model has no tensor input to feed images to`);
  const dims = input.tensor.dims ?? [];
  if (dims.length !== 4)
    throw new PrunecError(
      "io",
      `${modelName}: images go to an input [batch, channels, height, width], but input '${input.name}' is [${dims.join(", ")}]`,
    );
  const at = (i: number) => (typeof dims[i] === "number" ? (dims[i] as number) : undefined);
  return { name: input.name, dims, channels: at(1), height: at(2), width: at(3) };
}

/** PIL's resample codes, as transformers' configs write them. */
const PIL_KERNELS: Record<number, Preprocess["kernel"]> = { 0: "nearest", 1: "lanczos3", 2: "linear", 3: "cubic" };
const KERNELS: readonly Preprocess["kernel"][] = ["nearest", "linear", "cubic", "lanczos3"];

type Partial3 = Partial<Pick<Preprocess, "height" | "width" | "resize" | "kernel" | "mean" | "std">>;

function numbers(text: string, what: string): number[] {
  const v = text.split(",").map((x) => Number(x.trim()));
  if (!v.length || v.some((x) => !Number.isFinite(x)))
    throw new PrunecError("io", `${what} must be comma-separated numbers, got '${text}'`);
  return v;
}

/** What a transformers image processor's config says (the fields every ViT-style processor shares). */
function fromConfig(path: string): Partial3 {
  let c: Record<string, unknown>;
  try {
    c = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new PrunecError("io", `${path}: not a readable JSON preprocessor config (${(e as Error).message})`);
  }
  const out: Partial3 = {};
  const fail = (field: string, why: string): never => {
    throw new PrunecError("io", `${path}: field '${field}' ${why}`);
  };
  const size = c["size"];
  const crop = c["crop_size"] as { height?: unknown; width?: unknown } | undefined;
  if (c["do_resize"] !== false && size !== undefined) {
    const s = typeof size === "number" ? { height: size, width: size } : (size as Record<string, unknown>);
    if (typeof s["height"] === "number" && typeof s["width"] === "number") {
      out.height = s["height"];
      out.width = s["width"];
      out.resize = { kind: "fill" };
    } else if (typeof s["shortest_edge"] === "number") {
      out.resize = { kind: "shortest-edge", edge: s["shortest_edge"] };
      if (c["do_center_crop"] !== false && crop && typeof crop.height === "number" && typeof crop.width === "number") {
        out.height = crop.height;
        out.width = crop.width;
      }
    } else fail("size", `must be {height, width} or {shortest_edge}, got ${JSON.stringify(size)}`);
  }
  const resample = c["resample"];
  if (typeof resample === "number") {
    const k = PIL_KERNELS[resample];
    if (!k) fail("resample", `is ${resample}; prunec reads 0 (nearest), 1 (lanczos), 2 (bilinear) and 3 (bicubic)`);
    out.kernel = k;
  }
  if (
    c["do_rescale"] !== false &&
    typeof c["rescale_factor"] === "number" &&
    Math.abs(c["rescale_factor"] - 1 / 255) > 1e-9
  )
    fail("rescale_factor", `is ${c["rescale_factor"]}; prunec's data sets rescale by 1/255`);
  if (c["do_normalize"] !== false && c["image_mean"] !== undefined) {
    const mean = c["image_mean"];
    const std = c["image_std"];
    if (!Array.isArray(mean) || !mean.every((x) => typeof x === "number"))
      fail("image_mean", "must be an array of numbers");
    if (!Array.isArray(std) || !std.every((x) => typeof x === "number" && x > 0))
      fail("image_std", "must be an array of positive numbers");
    out.mean = mean as number[];
    out.std = std as number[];
  }
  return out;
}

/** The preprocessing for this model: flags over its preprocessor config over its input shape. */
export function preprocessFor(
  modelBytes: Uint8Array,
  modelName: string,
  flags: PreprocessFlags,
): { preprocess: Preprocess; config: string | undefined } {
  const input = imageInput(modelBytes, modelName);
  const beside = join(dirname(modelName), "preprocessor_config.json");
  const config = flags.preprocessor ?? (existsSync(beside) ? beside : undefined);
  const p: Partial3 = config ? fromConfig(config) : {};
  if (flags.size !== undefined) {
    const m = /^(\d+)(?:x(\d+))?$/.exec(flags.size);
    if (!m) throw new PrunecError("io", `--size must be HxW or N, got '${flags.size}'`);
    p.height = Number(m[1]);
    p.width = Number(m[2] ?? m[1]);
  }
  if (flags.resize !== undefined) {
    const m = /^(?:(fill)|shortest-edge:(\d+))$/.exec(flags.resize);
    if (!m) throw new PrunecError("io", `--resize must be fill or shortest-edge:N, got '${flags.resize}'`);
    p.resize = m[1] ? { kind: "fill" } : { kind: "shortest-edge", edge: Number(m[2]) };
  }
  if (flags.kernel !== undefined) {
    const k = KERNELS.find((x) => x === flags.kernel);
    if (!k) throw new PrunecError("io", `--kernel must be one of ${KERNELS.join(", ")}, got '${flags.kernel}'`);
    p.kernel = k;
  }
  if (flags.mean !== undefined) p.mean = numbers(flags.mean, "--mean");
  if (flags.std !== undefined) p.std = numbers(flags.std, "--std");
  const channels = input.channels;
  if (channels !== 1 && channels !== 3)
    throw new PrunecError(
      "io",
      `${modelName}: input '${input.name}' is [${input.dims.join(", ")}]; images are read as 1 (grey) or 3 (RGB) channels`,
    );
  const height = p.height ?? input.height;
  const width = p.width ?? input.width;
  if (height === undefined || width === undefined)
    throw new PrunecError(
      "io",
      `${modelName}: input '${input.name}' is [${input.dims.join(", ")}], whose image size is not fixed; give --size HxW or a preprocessor_config.json`,
    );
  const gives = `[batch, ${channels}, ${height}, ${width}]`;
  if ((input.height !== undefined && input.height !== height) || (input.width !== undefined && input.width !== width))
    throw new PrunecError(
      "io",
      `${modelName}: input '${input.name}' expects [${input.dims.join(", ")}], but the preprocessing${config && flags.size === undefined ? ` (${config})` : ""} gives ${gives}`,
    );
  if ((p.mean === undefined) !== (p.std === undefined))
    throw new PrunecError("io", "a normalisation needs both a mean and a std (--mean and --std)");
  for (const [what, v] of [
    ["mean", p.mean],
    ["std", p.std],
  ] as const)
    if (v && v.length !== channels)
      throw new PrunecError(
        "io",
        `the ${what} has ${v.length} values, but the model's images have ${channels} channels`,
      );
  if (p.std?.some((x) => !(x > 0))) throw new PrunecError("io", "every std must be positive");
  const preprocess: Preprocess = {
    height,
    width,
    channels,
    resize: p.resize ?? { kind: "fill" },
    kernel: p.kernel ?? "linear",
    ...(p.mean && p.std ? { mean: p.mean, std: p.std } : {}),
  };
  return { preprocess, config };
}
