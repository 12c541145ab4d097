/**
 * cls-attn against PyTorch: the bench's FasterVLM-style patch of the torchvision model
 * (bench/torch_eager.py: layer L attends with need_weights=True, the CLS row averaged over heads
 * scores the patches, topk, kept in position order) must keep, example by example, the positions
 * prunec's compiled model exposes, and its logits must match onnxruntime's. An independent
 * reference: torch's own attention module and topk on the file's weights, not prunec's graph.
 *
 * Needs Debian's python3-torch, python3-torchvision and python3-onnx; skipped, with the reason,
 * without them (CI runs it in the exports step, after installing torch, with PRUNEC_REQUIRE_TORCH=1).
 */
import { describe, expect, it } from "vitest";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { torchEagerRow, torchMissing } from "../bench/torch-eager.js";
import { REPO_ROOT } from "./helpers/shared.js";

const missing = torchMissing();

// CI's exports step sets this after installing torch: there a skip would hide a broken install.
if (process.env.PRUNEC_REQUIRE_TORCH === "1")
  it("torch is installed (PRUNEC_REQUIRE_TORCH=1)", () => {
    expect(missing).toBeUndefined();
  });
const DIGITS = join(REPO_ROOT, "examples", "digits", "model.onnx");
const VIT = join(REPO_ROOT, "..", "shared", "models", "synthetic", "vit-ti16-cls-randinit", "model.onnx");

describe.skipIf(missing !== undefined)(
  `cls-attn equals a PyTorch-eager FasterVLM patch${missing ? ` (skipped: ${missing})` : ""}`,
  () => {
    const cases = [
      { path: DIGITS, spec: "after layer 2 keep 25% by cls-attn", batch: 4 },
      { path: DIGITS, spec: "after layer 0 keep 50% by cls-attn", batch: 3 },
      { path: VIT, spec: "after layer 2 keep 25% by cls-attn", batch: 1 },
    ];
    for (const c of cases)
      it.skipIf(!existsSync(c.path))(
        `${c.path.split("/").slice(-2).join("/")}, ${c.spec}, batch ${c.batch}`,
        async () => {
          // torchEagerRow throws, naming the example, when a kept position differs.
          const row = await torchEagerRow(c.path, readFileSync(c.path), c.spec, c.batch, 1, 1);
          expect(row.denseDelta).toBeLessThan(1e-4);
          expect(row.prunedDelta).toBeLessThan(1e-4);
        },
        120_000,
      );
  },
);
