/**
 * The campaign's last crash and hang classes (scripts/fuzz-campaign.ts, seed 1), kept as
 * regressions: each case is rebuilt from its seed and index and must end in a clean PrunecError,
 * quickly; the spec classes also give their exact message.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { buildCase, runInput } from "./cases.js";
import { checkSpec } from "../../src/check.js";
import { REPO_ROOT } from "../helpers/shared.js";

const TINY = { bytes: readFileSync(join(REPO_ROOT, "examples", "tiny-vit", "model.onnx")), name: "tiny.onnx" };
const message = (spec: string) => checkSpec(spec, "s.prune", TINY).diagnostics.map((d) => d.message);

describe("fuzz campaign regressions (seed 1)", () => {
  it("a percentage written with too many digits is a spec error, not an internal one", () => {
    expect(message("after layer 0 keep 0.0000000001% by cls-attn")).toEqual([
      "a percentage has at most 6 decimal places, got 0.0000000001%",
    ]);
    expect(message("after layer 0 keep 5e-324% by cls-attn")).toEqual([
      "a percentage has at most 6 decimal places, got 5e-324%",
    ]);
    expect(message("after layer 0 keep 12.5% by cls-attn")).toEqual([]);
  });

  it("hiprune with a per-example count is refused (it sizes its anchors from a static budget)", () => {
    expect(message("after layer 3 keep above 1 by hiprune(object_layer: 3)")).toEqual([
      "'above' keeps a number of tokens that depends on the input; hiprune sizes its selection from the stage's budget, which must be one static count",
    ]);
  });

  it("pagerank's iterations are bounded (each one is unrolled into the graph): no hang", { timeout: 10_000 }, () => {
    expect(message("after layer 0 drop 50% by pagerank(iterations: 2147483648)")).toEqual([
      "pagerank cannot run after layer 0: iterations must be at most 100 (each is one MatMul unrolled into the graph), got 2147483648",
    ]);
  });

  for (const [attack, index] of [
    ["model:proto:attribute-edit", 381],
    ["model:proto:input-arity", 377],
  ] as const) {
    it(`${attack}#${index}: an inconsistent head count stays unknown (no fractional head size reaching a pass)`, {
      timeout: 30_000,
    }, () => {
      const r = runInput(buildCase({ seed: 1, attack, index }));
      expect([r.outcome, r.detail]).toEqual([
        "clean",
        expect.stringMatching(/number of heads of layer \d could not be determined/),
      ]);
    });
  }
});
