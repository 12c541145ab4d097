/** The `.prune` language front end: public API. */
export { parseSpec, type ParseResult } from "./parse-spec.js";
export { printSpec } from "./print.js";
export { stripSpans, type Spanless } from "./strip-spans.js";
export { diagnosticAt, formatDiagnostic, formatDiagnostics, MAX_PRINTED, type Diagnostic } from "./diagnostics.js";
export {
  createRegistry,
  argsWithDefaults,
  type ArgType,
  type ArgInfo,
  type CriterionInfo,
  type CriterionRegistry,
} from "./registry.js";
export { closest, editDistance } from "./suggest.js";
export { decodeSpec, type SpecText } from "./spec-text.js";
export {
  STAGE_OPTIONS,
  type Action,
  type Amount,
  type ArgValue,
  type CriterionUse,
  type ModelHint,
  type Span,
  type SpecIR,
  type StageIR,
  type StageOption,
  type StagePosition,
  type TokenSetDecl,
  type TokenSetSource,
} from "./ir.js";
