/**
 * Reading ONNX Runtime's verbose session log (as printed to the browser console by onnxruntime-web
 * 1.30's WebGPU build, the native C++ WebGPU EP compiled to wasm) for where each node runs.
 *
 * Every line has the prefix `YYYY-MM-DD hh:mm:ss.uuuuuu [S:onnxruntime:LOGID, FILE:LINE FUNC] `
 * (S = V/I/W/E/F; warnings are wrapped in ANSI colour codes). The messages used here:
 *
 *   session_state.cc  VerifyEachNodeIsAssignedToAnEp (VERBOSE, after partitioning and all graph
 *   transforms, so it lists the nodes that actually run):
 *     "Node placements"
 *     " All nodes placed on [EP]. Number of nodes: N"                  (one EP only)
 *     " Node(s) placed on [EP]. Number of nodes: N"  then one line per node: "  OpType (NodeName)"
 *   webgpu_execution_provider.cc GetCapability (INFO): why a node was not taken by WebGPU
 *     "webgpu kernel not found in registries for Op type: OP node name: NAME"
 *   fallback_cpu_capability.cc (INFO): nodes WebGPU could run but ORT moves to CPU because they
 *   compute shapes ("ORT explicitly assigns shape related ops to CPU to improve perf")
 *     "Candidate for fallback CPU execution: NAME"
 *   transformer_memcpy.cc AddCopyNode (INFO): device ↔ host copies inserted between EPs
 *     "Add MemcpyFromHost after TENSOR for WebGpuExecutionProvider"
 *     "Add MemcpyToHost before TENSOR for WebGpuExecutionProvider"
 */

export const WEBGPU_EP = "WebGpuExecutionProvider";
export const CPU_EP = "CPUExecutionProvider";

export interface PlacedNode {
  name: string;
  opType: string;
  ep: string;
}

export interface MemcpyNote {
  kind: "MemcpyToHost" | "MemcpyFromHost";
  /** "before"/"after" as ORT words it: a copy before a consumer's input, after a producer's output. */
  position: "before" | "after";
  tensor: string;
  ep: string;
}

export interface PlacementLog {
  /** Whether the "Node placements" block was seen at all. */
  found: boolean;
  /** Node name → where it runs (from the per-node lines; empty when ORT printed "All nodes placed on"). */
  nodes: Map<string, PlacedNode>;
  /** EP → node count, as ORT states it. */
  counts: Record<string, number>;
  /** Set when ORT printed " All nodes placed on [EP]". */
  allOn: string | undefined;
  /** "webgpu kernel not found in registries" lines. */
  noWebgpuKernel: { opType: string; name: string }[];
  /** "Candidate for fallback CPU execution" lines (node names). */
  cpuFallbackCandidates: string[];
  memcpy: MemcpyNote[];
  /** The raw lines the above came from (prefix stripped), for the report. */
  evidence: string[];
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: ANSI colour codes (ESC [ … m) in onnxruntime logs
const ANSI = /\u001b\[[0-9;]*m/g;
const PREFIX = /^\S+ \S+ \[([VIWEF]):onnxruntime:([^,]*), ([^:\]]+):(\d+) ([^\]]+)\] ?(.*)$/;

interface LogLine {
  severity: string;
  logId: string;
  file: string;
  func: string;
  message: string;
}

function parseLine(raw: string): LogLine | undefined {
  const m = PREFIX.exec(raw.replace(ANSI, "").trimEnd());
  if (!m) return undefined;
  return { severity: m[1]!, logId: m[2]!, file: m[3]!, func: m[5]!, message: m[6]! };
}

/**
 * Parse the lines of one session's log. `logId` (the session option) filters out other sessions'
 * lines; lines logged by the default logger ("Default") are kept too.
 */
export function parsePlacement(lines: readonly string[], logId?: string): PlacementLog {
  const out: PlacementLog = {
    found: false,
    nodes: new Map(),
    counts: {},
    allOn: undefined,
    noWebgpuKernel: [],
    cpuFallbackCandidates: [],
    memcpy: [],
    evidence: [],
  };
  let currentEp: string | undefined;
  for (const raw of lines.flatMap((l) => l.split("\n"))) {
    const line = parseLine(raw);
    if (!line) continue;
    if (logId !== undefined && line.logId !== logId && line.logId !== "Default") continue;
    const msg = line.message;
    if (line.func === "VerifyEachNodeIsAssignedToAnEp") {
      if (msg.trim() === "Node placements") {
        out.found = true;
        out.evidence.push(msg);
        continue;
      }
      const all = /^\s*All nodes placed on \[([^\]]+)\]\. Number of nodes: (\d+)/.exec(msg);
      if (all) {
        out.allOn = all[1]!;
        out.counts[all[1]!] = Number(all[2]);
        out.evidence.push(msg);
        currentEp = undefined;
        continue;
      }
      const group = /^\s*Node\(s\) placed on \[([^\]]+)\]\. Number of nodes: (\d+)/.exec(msg);
      if (group) {
        currentEp = group[1]!;
        out.counts[currentEp] = Number(group[2]);
        out.evidence.push(msg);
        continue;
      }
      const node = /^\s+(\S+) \((.*)\)$/.exec(msg);
      if (node && currentEp !== undefined) {
        out.nodes.set(node[2]!, { name: node[2]!, opType: node[1]!, ep: currentEp });
        out.evidence.push(msg);
        continue;
      }
      continue;
    }
    const noKernel = /webgpu kernel not found in registries for Op type: (\S+) node name: (.*)$/.exec(msg);
    if (noKernel) {
      out.noWebgpuKernel.push({ opType: noKernel[1]!, name: noKernel[2]! });
      out.evidence.push(msg);
      continue;
    }
    const candidate = /Candidate for fallback CPU execution: (.*)$/.exec(msg);
    if (candidate) {
      out.cpuFallbackCandidates.push(candidate[1]!);
      out.evidence.push(msg);
      continue;
    }
    const copy = /Add (MemcpyToHost|MemcpyFromHost) (before|after) (\S+) for (\S+)/.exec(msg);
    if (copy) {
      out.memcpy.push({
        kind: copy[1] as MemcpyNote["kind"],
        position: copy[2] as MemcpyNote["position"],
        tensor: copy[3]!,
        ep: copy[4]!,
      });
      out.evidence.push(msg);
    }
  }
  return out;
}

export type Where = "webgpu" | "cpu" | "absent";

export interface NodeWhere {
  name: string;
  opType: string;
  where: Where;
  /** Why it is on the CPU, from the log: "no WebGPU kernel" or "shape computation moved to CPU". */
  reason?: string;
}

/**
 * Where each of `names` (prunec's added nodes, with their op types from the compiled model) runs.
 * "absent": the node is not in the placement list, i.e. a graph optimisation removed or fused it.
 */
export function locate(log: PlacementLog, names: readonly { name: string; opType: string }[]): NodeWhere[] {
  const noKernel = new Set(log.noWebgpuKernel.map((n) => n.name));
  const fallback = new Set(log.cpuFallbackCandidates);
  return names.map(({ name, opType }) => {
    const placed = log.nodes.get(name);
    let where: Where;
    if (placed) where = placed.ep === WEBGPU_EP ? "webgpu" : placed.ep === CPU_EP ? "cpu" : (placed.ep as Where);
    else if (log.allOn !== undefined) where = log.allOn === WEBGPU_EP ? "webgpu" : "cpu";
    else where = "absent";
    const entry: NodeWhere = { name, opType: placed?.opType ?? opType, where };
    if (where === "cpu") {
      if (noKernel.has(name)) entry.reason = "no WebGPU kernel (webgpu kernel not found in registries)";
      else if (fallback.has(name))
        entry.reason = "shape computation moved to CPU (Candidate for fallback CPU execution)";
      else entry.reason = "unexplained";
    }
    return entry;
  });
}
