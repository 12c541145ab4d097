/**
 * Bytes to `.prune` text, refusing what is not text: a file given where a spec is expected (an
 * ONNX model, an image) gets one clear message instead of thousands of syntax errors.
 *
 * Binary content, checked over the whole file (one linear pass each):
 *   - a UTF-16 byte order mark (FF FE / FE FF): text, but not UTF-8;
 *   - a NUL byte, or bytes that are not UTF-8 (overlong forms, surrogates and code points past
 *     U+10FFFF included): whichever comes first is named, with its byte offset;
 *   - control characters (C0 other than tab, LF, VT, FF, CR; DEL; C1) in more than 10% of the
 *     characters. A few stray ones are left to the parser, which points at each.
 * A UTF-8 byte order mark is dropped; CRLF, CR and LF all end a line (grammar/source.ts).
 */

export type SpecText = { ok: true; text: string } | { ok: false; message: string };

/** Share of control characters above which a file counts as binary. */
export const MAX_CONTROL_RATIO = 0.1;

/** The offset of the first byte that breaks UTF-8 (RFC 3629), or -1. */
export function invalidUtf8At(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const c = b[i]!;
    if (c < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) need = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      need = 2;
      if (c === 0xe0) lo = 0xa0; // overlong
      if (c === 0xed) hi = 0x9f; // UTF-16 surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3;
      if (c === 0xf0) lo = 0x90; // overlong
      if (c === 0xf4) hi = 0x8f; // past U+10FFFF
    } else return i;
    for (let k = 1; k <= need; k++) {
      const x = b[i + k];
      if (x === undefined || x < (k === 1 ? lo : 0x80) || x > (k === 1 ? hi : 0xbf)) return i;
    }
    i += need + 1;
  }
  return -1;
}

function isControl(code: number): boolean {
  return (
    (code < 0x20 && code !== 0x09 && code !== 0x0a && code !== 0x0b && code !== 0x0c && code !== 0x0d) ||
    (code >= 0x7f && code <= 0x9f)
  );
}

/** Why these bytes are not a text file, or undefined when they are. */
export function binaryReason(bytes: Uint8Array): string | undefined {
  if (bytes.length >= 2 && ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff))) {
    return "a UTF-16 byte order mark; save the spec as UTF-8";
  }
  // The earlier of the first NUL and the first non-UTF-8 byte (a NUL is not a continuation byte,
  // so validating up to it finds exactly the bad sequences that start before it).
  const nul = bytes.indexOf(0);
  const bad = invalidUtf8At(nul >= 0 ? bytes.subarray(0, nul) : bytes);
  if (bad >= 0) return `invalid UTF-8 at offset ${bad}`;
  if (nul >= 0) return `a NUL byte at offset ${nul}`;
  return undefined;
}

/**
 * Decodes a spec file's bytes. `file` names it in the message:
 * `FILE: not a .prune file: binary content (a NUL byte at offset 4)`.
 */
export function decodeSpec(bytes: Uint8Array, file: string): SpecText {
  const fail = (why: string): SpecText => ({
    ok: false,
    message: `${file}: not a .prune file: binary content (${why})`,
  });
  const reason = binaryReason(bytes);
  if (reason !== undefined) return fail(reason);
  // Valid UTF-8 by now; the decoder drops a UTF-8 byte order mark.
  const text = new TextDecoder("utf-8").decode(bytes);
  let controls = 0;
  let chars = 0;
  for (const ch of text) {
    chars++;
    if (isControl(ch.codePointAt(0)!)) controls++;
  }
  if (controls > MAX_CONTROL_RATIO * chars) return fail(`${controls} of ${chars} characters are control characters`);
  return { ok: true, text };
}
