/** Every failure prunec reports to a user is a PrunecError: a message meant to be read, and an exit code. */
export type ErrorKind =
  | "usage" // the command line itself: an unknown command or option, a missing or contradictory argument
  | "io" // file missing, unreadable, unwritable
  | "format" // not an ONNX model, truncated, invalid protobuf
  | "spec" // the .prune text does not parse or is out of range
  | "analysis" // the model is not a transformer prunec understands
  | "apply" // a valid spec that cannot be honoured on this model
  | "runtime" // an optional peer (onnxruntime-node / -web) a command needs is not installed
  | "verify"; // the compiled model failed prunec's own checks (a prunec bug)

export const EXIT_CODES: Record<ErrorKind, number> = {
  usage: 1,
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
  /** The file the error is about, when there is one (`--json` reports it as `file`). */
  readonly file: string | undefined;
  constructor(kind: ErrorKind, message: string, diagnostics: readonly Diagnostic[] = [], file?: string) {
    super(message);
    this.kind = kind;
    this.name = "PrunecError";
    this.diagnostics = diagnostics;
    this.file = file ?? diagnostics[0]?.file;
  }
  get exitCode(): number {
    return EXIT_CODES[this.kind];
  }
}

/** Every error line on stderr that is not a located diagnostic starts with this. */
export const ERROR_PREFIX = "prunec: error: ";

/**
 * How the CLI prints an error. Errors located in a spec (diagnostics) print as compilers do,
 * `file:line:col: error: message` with the source line and a caret, so editors and CI problem
 * matchers read them; every other error is one `prunec: error: ` line.
 */
export function errorText(e: { kind: ErrorKind; message: string; diagnostics?: readonly Diagnostic[] }): string {
  return e.diagnostics?.length ? e.message : `${ERROR_PREFIX}${e.message}`;
}

/** A diagnostic as `--json` reports it (`prunec check --json` and every `error` object). */
export function diagnosticsJson(ds: readonly Diagnostic[]) {
  return ds.map((d) => ({
    file: d.file,
    line: d.line,
    column: d.column,
    end: { line: d.endLine, column: d.endColumn },
    message: d.message,
    ...(d.suggestion !== undefined ? { suggestion: d.suggestion } : {}),
  }));
}

/** The error object every command prints on stdout under `--json` (with the same exit code). */
export interface ErrorJson {
  error: {
    code: number;
    kind: ErrorKind | "internal";
    message: string;
    file?: string;
    line?: number;
    column?: number;
    diagnostics?: ReturnType<typeof diagnosticsJson>;
  };
}

/**
 * `{"error": {code, kind, message, file?, line?, column?, diagnostics?}}`: a located error gives its
 * first diagnostic's message and position, and every diagnostic in `diagnostics`; `code` is the exit code.
 */
export function errorJson(e: PrunecError, code = e.exitCode): ErrorJson {
  const first = e.diagnostics[0];
  return {
    error: {
      code,
      kind: e.kind,
      message: first ? first.message : e.message,
      ...(e.file !== undefined ? { file: e.file } : {}),
      ...(first ? { line: first.line, column: first.column, diagnostics: diagnosticsJson(e.diagnostics) } : {}),
    },
  };
}
