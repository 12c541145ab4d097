/**
 * `-` on the command line: a model, spec or data set read from standard input, a model written to
 * standard output (`-o -`). Standard input is read once, so at most one input may be `-`; a spec
 * may also be given inline (`-e TEXT`). Names in messages: `<stdin>`, `<inline>`.
 */
import { fstatSync } from "node:fs";
import { PrunecError } from "../errors.js";
import type { FileId } from "./files.js";

export const DASH = "-";
export const STDIN_NAME = "<stdin>";
export const INLINE_NAME = "<inline>";

/** All of standard input, as bytes. */
export async function readAllStdin(): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Which file standard input is (a `< model.onnx` redirect is that file, so `-o model.onnx` is refused). */
export function stdinId(): FileId {
  try {
    const st = fstatSync(0, { bigint: true });
    return { dev: st.dev, ino: st.ino };
  } catch {
    return { dev: -1n, ino: -1n };
  }
}

/** At most one of `inputs` (what each is, e.g. "the model") may be `-`: exit 1 otherwise. */
export function oneStdin(inputs: readonly { arg: string | undefined; what: string }[]): void {
  const dashes = inputs.filter((i) => i.arg === DASH);
  if (dashes.length > 1)
    throw new PrunecError(
      "usage",
      `standard input can be read only once: '-' is given for ${dashes.map((d) => d.what).join(" and ")}`,
    );
}

/**
 * The width human output fits: `COLUMNS` when set, else the terminal's when the stream is a TTY,
 * else none (piped output keeps whole lines, for grep; `--json` is for tools).
 */
export function terminalWidth(
  stream: { isTTY?: boolean; columns?: number } = process.stdout,
  env: NodeJS.ProcessEnv = process.env,
): number | undefined {
  const fromEnv = Number(env.COLUMNS);
  if (env.COLUMNS !== undefined && Number.isInteger(fromEnv) && fromEnv > 0) return fromEnv;
  return stream.isTTY && stream.columns && stream.columns > 0 ? stream.columns : undefined;
}
