/** Every failure prunec reports to a user is a PrunecError: a message meant to be read, and an exit code. */
export type ErrorKind =
  | "io" // file missing, unreadable, unwritable
  | "format" // not an ONNX model, truncated, invalid protobuf
  | "spec" // the .prune text does not parse or is out of range
  | "analysis" // the model is not a transformer prunec understands
  | "apply" // a valid spec that cannot be honoured on this model
  | "runtime" // an optional peer (onnxruntime-node / -web) a command needs is not installed
  | "verify"; // the compiled model failed prunec's own checks (a prunec bug)

export const EXIT_CODES: Record<ErrorKind, number> = {
  io: 2,
  format: 3,
  spec: 4,
  analysis: 5,
  apply: 6,
  runtime: 7,
  verify: 8,
};

import type { Diagnostic } from "../grammar/diagnostics.js";

export class PrunecError extends Error {
  readonly kind: ErrorKind;
  /** For spec errors: each diagnostic, so `--json` can report them as objects. */
  readonly diagnostics: readonly Diagnostic[];
  constructor(kind: ErrorKind, message: string, diagnostics: readonly Diagnostic[] = []) {
    super(message);
    this.kind = kind;
    this.name = "PrunecError";
    this.diagnostics = diagnostics;
  }
  get exitCode(): number {
    return EXIT_CODES[this.kind];
  }
}

/** How the CLI prints an error: spec and apply errors carry their own `file:line:col: error:` header. */
export function errorText(e: { kind: ErrorKind; message: string }): string {
  return e.kind === "spec" || e.kind === "apply" ? e.message : `prunec: error: ${e.message}`;
}
