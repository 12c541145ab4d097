/** The ORT log reader on lines captured from onnxruntime-web 1.30's WebGPU build (no browser needed). */
import { describe, expect, it } from "vitest";
import { locate, parsePlacement, CPU_EP, WEBGPU_EP } from "./placement.js";

const P = (sev: string, id: string, where: string, msg: string) =>
  `2026-11-26 10:13:59.123099 [${sev}:onnxruntime:${id}, ${where}] ${msg}`;
const LOG = [
  P("V", "Default", "webgpu_provider_factory.cc:151 ParseEpConfig", "WebGPU EP enable int64: 0"),
  P(
    "I",
    "m.pruned0",
    "webgpu_execution_provider.cc:665 GetCapability",
    "webgpu kernel not found in registries for Op type: TopK node name: prunec/stage0/cls-attn/TopK_11",
  ),
  P("I", "m.pruned0", "fallback_cpu_capability.cc:89 operator()", "Candidate for fallback CPU execution: /Gather_3"),
  P(
    "I",
    "m.pruned0",
    "transformer_memcpy.cc:393 AddCopyNode",
    "Add MemcpyFromHost after prunec/stage0/cls-attn/Unsqueeze_25_output for WebGpuExecutionProvider",
  ),
  P(
    "I",
    "m.pruned0",
    "transformer_memcpy.cc:393 AddCopyNode",
    "Add MemcpyToHost before prunec/stage0/cls-attn/TopK_10_output1 for WebGpuExecutionProvider",
  ),
  P("V", "m.pruned0", "session_state.cc:1377 VerifyEachNodeIsAssignedToAnEp", "Node placements"),
  P(
    "V",
    "m.pruned0",
    "session_state.cc:1383 VerifyEachNodeIsAssignedToAnEp",
    " Node(s) placed on [CPUExecutionProvider]. Number of nodes: 2",
  ),
  P("V", "m.pruned0", "session_state.cc:1385 VerifyEachNodeIsAssignedToAnEp", "  Gather (/Gather_3)"),
  P(
    "V",
    "m.pruned0",
    "session_state.cc:1385 VerifyEachNodeIsAssignedToAnEp",
    "  TopK (prunec/stage0/cls-attn/TopK_11)",
  ),
  P(
    "V",
    "m.pruned0",
    "session_state.cc:1383 VerifyEachNodeIsAssignedToAnEp",
    " Node(s) placed on [WebGpuExecutionProvider]. Number of nodes: 1",
  ),
  P(
    "V",
    "m.pruned0",
    "session_state.cc:1385 VerifyEachNodeIsAssignedToAnEp",
    "  TopK (prunec/stage0/cls-attn/TopK_10)",
  ),
  "\u001b[0;93m" +
    P(
      "W",
      "m.pruned0",
      "session_state.cc:1397 VerifyEachNodeIsAssignedToAnEp",
      "Some nodes were not assigned to the preferred execution providers which may or may not have an negative impact on performance. e.g. ORT explicitly assigns shape related ops to CPU to improve perf.",
    ) +
    "\u001b[m",
  P(
    "V",
    "other",
    "session_state.cc:1385 VerifyEachNodeIsAssignedToAnEp",
    "  Add (prunec/stage0/cls-attn/to_token_positions_13)",
  ),
];

describe("parsePlacement", () => {
  it("reads node placements, missing kernels, CPU fallbacks and copies of one session", () => {
    const log = parsePlacement(LOG, "m.pruned0");
    expect(log.found).toBe(true);
    expect(log.counts).toEqual({ [CPU_EP]: 2, [WEBGPU_EP]: 1 });
    expect(log.nodes.get("prunec/stage0/cls-attn/TopK_11")).toEqual({
      name: "prunec/stage0/cls-attn/TopK_11",
      opType: "TopK",
      ep: CPU_EP,
    });
    expect(log.nodes.get("prunec/stage0/cls-attn/TopK_10")?.ep).toBe(WEBGPU_EP);
    expect(log.nodes.has("prunec/stage0/cls-attn/to_token_positions_13")).toBe(false); // other session's line
    expect(log.noWebgpuKernel).toEqual([{ opType: "TopK", name: "prunec/stage0/cls-attn/TopK_11" }]);
    expect(log.cpuFallbackCandidates).toEqual(["/Gather_3"]);
    expect(log.memcpy.map((m) => `${m.kind} ${m.position} ${m.tensor}`)).toEqual([
      "MemcpyFromHost after prunec/stage0/cls-attn/Unsqueeze_25_output",
      "MemcpyToHost before prunec/stage0/cls-attn/TopK_10_output1",
    ]);
  });

  it("locates nodes, with the reason for each CPU one; unlisted nodes are 'absent' (optimised away)", () => {
    const log = parsePlacement(LOG, "m.pruned0");
    const where = locate(log, [
      { name: "prunec/stage0/cls-attn/TopK_10", opType: "TopK" },
      { name: "prunec/stage0/cls-attn/TopK_11", opType: "TopK" },
      { name: "/Gather_3", opType: "Gather" },
      { name: "prunec/stage0/cls-attn/gone", opType: "Identity" },
    ]);
    expect(where.map((w) => [w.where, w.reason ?? ""])).toEqual([
      ["webgpu", ""],
      ["cpu", "no WebGPU kernel (webgpu kernel not found in registries)"],
      ["cpu", "shape computation moved to CPU (Candidate for fallback CPU execution)"],
      ["absent", ""],
    ]);
  });

  it("handles the single-EP form 'All nodes placed on [EP]'", () => {
    const log = parsePlacement(
      [
        P("V", "x", "session_state.cc:1377 VerifyEachNodeIsAssignedToAnEp", "Node placements"),
        P(
          "V",
          "x",
          "session_state.cc:1380 VerifyEachNodeIsAssignedToAnEp",
          " All nodes placed on [WebGpuExecutionProvider]. Number of nodes: 10",
        ),
      ],
      "x",
    );
    expect(log.allOn).toBe(WEBGPU_EP);
    expect(log.counts).toEqual({ [WEBGPU_EP]: 10 });
    expect(locate(log, [{ name: "a", opType: "Add" }])[0]!.where).toBe("webgpu");
  });
});
