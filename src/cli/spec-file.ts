/** A spec file's bytes as text for the CLI: binary content is refused at once (exit 4), before any parsing. */
import { decodeSpec } from "../../grammar/index.js";
import { PrunecError } from "../errors.js";

/** The text of the spec file `path`; `FILE: not a .prune file: binary content (...)` (exit 4) when it is not text. */
export function specFileText(bytes: Uint8Array, path: string): string {
  const r = decodeSpec(bytes, path);
  if (!r.ok) throw new PrunecError("spec", r.message);
  return r.text;
}
