/**
 * The PyTorch-eager comparison row of the bench table (issue 19): the same schedule as users run it
 * today, a FasterVLM-style patch of the torchvision model (bench/torch_eager.py), timed by Debian's
 * torch where it is installed. Never a runtime dependency: without torch the row says why it is absent.
 *
 * The comparison holds only if both keep the same tokens: the torch patch's kept positions must
 * equal prunec's `prunec.stage0.indices` on the bench's input, example by example, and torch's
 * dense logits must match onnxruntime's; otherwise this throws.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { compile } from "../src/compile.js";
import { benchInput } from "../src/cli/benchmark.js";
import { openSession } from "../src/cli/runtime.js";
import { analyzeTransformer } from "../src/analysis/transformer.js";
import { decodeModel } from "../src/onnx/io.js";
import { Graph } from "../src/ir/graph.js";

const PYTHON = "/usr/bin/python3";
/** float32 on two runtimes: the dense logits agree to ~1e-6; a mapping mistake is off by far more. */
const MAX_DENSE_DELTA = 1e-4;
const SCRIPT = join(import.meta.dirname, "torch_eager.py");
/** Debian's torch finds the reference BLAS unless pointed at OpenBLAS (and its threads must not spin). */
const TORCH_ENV = { LD_LIBRARY_PATH: "/usr/lib/x86_64-linux-gnu/openblas-pthread", OMP_WAIT_POLICY: "PASSIVE" };

export interface TorchRow {
  torch: string;
  threads: number;
  denseMs: number;
  prunedMs: number;
  /** max |Δ| of torch's dense logits against onnxruntime's, and of the pruned logits against prunec's. */
  denseDelta: number;
  prunedDelta: number;
}

/** Why torch cannot run here, or undefined when it can. */
export function torchMissing(): string | undefined {
  const r = spawnSync(PYTHON, ["-c", "import torch, torchvision, onnx"], {
    encoding: "utf8",
    env: { ...process.env, ...TORCH_ENV },
  });
  if (r.error) return `${PYTHON} not found`;
  return r.status === 0
    ? undefined
    : "torch, torchvision or onnx is not installed for /usr/bin/python3 (apt-get install python3-torch python3-torchvision python3-onnx)";
}

const maxDelta = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  if (a.length !== b.length) throw new Error(`logits differ in length: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
};

/**
 * Pre: `spec` is one `after layer L keep … by cls-attn` stage on a torchvision ViT file.
 * Post: torch's latencies, after its kept positions were checked equal to prunec's.
 */
export async function torchEagerRow(
  path: string,
  bytes: Uint8Array,
  spec: string,
  batch: number,
  runs: number,
  threads: number | undefined,
): Promise<TorchRow> {
  const compiled = compile(bytes, spec, { modelName: path, exposeIndices: true });
  const [stage] = compiled.report.stages;
  if (
    !stage ||
    compiled.report.stages.length !== 1 ||
    stage.criterion !== "cls-attn" ||
    typeof stage.tokensOut !== "number"
  )
    throw new Error(`${spec}: the torch row reproduces one cls-attn stage with a static count`);
  const info = analyzeTransformer(new Graph(decodeModel(bytes, path).graph!), path);
  const heads = info.layers[stage.layer]?.heads;
  if (heads === undefined) throw new Error(`${path}: no head count found for layer ${stage.layer}`);
  const input = benchInput(bytes, path, batch);
  const dir = mkdtempSync(join(tmpdir(), "prunec-torch-"));
  try {
    const file = join(dir, "x.f32");
    writeFileSync(file, new Uint8Array(input.data.buffer, input.data.byteOffset, input.data.byteLength));
    const args = [SCRIPT, "--onnx", path, "--heads", String(heads), "--layer", String(stage.layer)];
    args.push("--keep", String(stage.tokensOut - 1), "--input", file, "--batch", String(batch), "--runs", String(runs));
    if (threads !== undefined) args.push("--threads", String(threads));
    const r = spawnSync(PYTHON, args, { encoding: "utf8", env: { ...process.env, ...TORCH_ENV }, maxBuffer: 1 << 28 });
    if (r.status !== 0) throw new Error(`bench/torch_eager.py failed (exit ${r.status}): ${r.stderr}`);
    const out = JSON.parse(r.stdout) as {
      torch: string;
      threads: number;
      denseMs: number;
      prunedMs: number;
      logitsDense: number[];
      logitsPruned: number[];
      kept: number[][];
    };
    const feeds = { [input.name]: { data: input.data, dims: input.dims } };
    const dense = await openSession(bytes, "cpu", { modelPath: path });
    const pruned = await openSession(compiled.model, "cpu", { modelPath: path });
    try {
      const d = await dense.run(feeds);
      const p = await pruned.run(feeds);
      const logits = (o: typeof d) => o[dense.outputNames[0]!]!.data as Float32Array;
      const idx = p["prunec.stage0.indices"];
      if (!idx) throw new Error("the compiled model exposes no prunec.stage0.indices");
      const k = idx.dims[1]!;
      for (let b = 0; b < batch; b++) {
        const ours = Array.from(idx.data.subarray(b * k, (b + 1) * k), Number);
        const theirs = out.kept[b] ?? [];
        if (ours.join() !== theirs.join())
          throw new Error(`example ${b}: torch keeps [${theirs.join(", ")}], prunec keeps [${ours.join(", ")}]`);
      }
      // A weight taken from the wrong tensor would show here first: the models must be the same one.
      const denseDelta = maxDelta(out.logitsDense, logits(d));
      if (!(denseDelta <= MAX_DENSE_DELTA))
        throw new Error(`torch's dense logits differ from onnxruntime's by ${denseDelta} (> ${MAX_DENSE_DELTA})`);
      return {
        torch: out.torch,
        threads: out.threads,
        denseMs: out.denseMs,
        prunedMs: out.prunedMs,
        denseDelta,
        prunedDelta: maxDelta(out.logitsPruned, logits(p)),
      };
    } finally {
      await dense.release();
      await pruned.release();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
