/** prunec's library API. Everything here runs without Node (no file system, no process). */
export { compile, type CompileOptions, type CompileResult, type CompileReport, type StageReport } from "./compile.js";
export { inspectModel, formatInspect, type InspectReport, type LayerReport } from "./inspect.js";
export { PrunecError, type ErrorKind } from "./errors.js";
export type { VerifyReport } from "./verify/verify.js";
export type { StageShape } from "./verify/stage-shapes.js";
export { VERSION } from "./version.js";
export { parseSpec, printSpec, formatDiagnostics, type Diagnostic } from "../grammar/index.js";
export type { SpecIR, StageIR } from "../grammar/ir.js";
export { registry as criteria } from "../passes/registry.js";
export {
  generate,
  runFrames,
  type FrameRun,
  type GenerateOptions,
  type GenerateSession,
  type GenerateTensor,
  type Generation,
  type TensorClass,
} from "./generate.js";
