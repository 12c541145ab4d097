/**
 * Which files the CLI may read and replace. Inputs must be regular files, read up to the size they
 * had when opened (a FIFO would block forever, /dev/zero never ends); an output may only replace a
 * regular file that is not one of the inputs, compared by device and inode (symbolic links, hard
 * links and every spelling of a path are the same file).
 */
import {
  accessSync,
  closeSync,
  constants,
  fstatSync,
  openSync,
  readSync,
  statSync,
  type BigIntStats,
  type Stats,
} from "node:fs";
import { constants as bufferConstants } from "node:buffer";
import { dirname, resolve } from "node:path";
import { PrunecError } from "../errors.js";

/** A file by identity: the same (dev, ino) is the same file, whatever the path. */
export interface FileId {
  dev: bigint;
  ino: bigint;
}

/** A file prunec reads: what it was called and which file that was. */
export interface InputRef {
  path: string;
  id: FileId;
}

export interface InputFile extends InputRef {
  bytes: Uint8Array;
}

/** `ENOTDIR: not a directory` from a Node fs error (its message also repeats the syscall and path). */
export function reason(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const code = (e as NodeJS.ErrnoException).code;
  return typeof code === "string" && e.message.startsWith(`${code}: `) ? e.message.split(", ")[0]! : e.message;
}

export function errno(e: unknown): string | undefined {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === "string" ? code : undefined;
}

/** What a file that is not a regular file is, in words. */
export function kindOf(
  st: Pick<
    Stats,
    "isFile" | "isDirectory" | "isFIFO" | "isCharacterDevice" | "isBlockDevice" | "isSocket" | "isSymbolicLink"
  >,
): string {
  if (st.isDirectory()) return "a directory";
  if (st.isFIFO()) return "a FIFO (named pipe)";
  if (st.isCharacterDevice()) return "a character device";
  if (st.isBlockDevice()) return "a block device";
  if (st.isSocket()) return "a socket";
  if (st.isSymbolicLink()) return "a symbolic link";
  return st.isFile() ? "a regular file" : "not a regular file";
}

const sameId = (a: FileId, b: FileId) => a.dev === b.dev && a.ino === b.ino;

/** The file `path` names now (following links), or undefined when there is none. Other failures throw. */
export function statIfAny(path: string): BigIntStats | undefined {
  try {
    return statSync(path, { bigint: true });
  } catch (e) {
    if (errno(e) === "ENOENT") return undefined;
    throw e;
  }
}

/**
 * Open a regular file for reading without ever blocking: O_NONBLOCK makes opening a FIFO return at
 * once (a path swapped for one after a check must not hang), and the fd's own fstat decides.
 * `refuse` turns what the file is into the caller's message.
 */
export function openRegular(path: string, refuse: (what: string) => PrunecError): { fd: number; st: BigIntStats } {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  try {
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile()) throw refuse(kindOf(st));
    return { fd, st };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/**
 * Read an input: a regular file, exactly the size it had when opened (bytes appended meanwhile are
 * not read; a file that shrinks meanwhile is an error). Exit 2 naming the path and what it is.
 */
export function readInput(path: string, what: string): InputFile {
  const refuse = (kind: string) => new PrunecError("io", `${path}: is ${kind}, not a regular file (expected ${what})`);
  let opened: { fd: number; st: BigIntStats };
  try {
    // A path check first, for the message: opening some devices has effects of its own.
    const st = statIfAny(path);
    if (!st) throw new PrunecError("io", `${path}: no such file (expected ${what})`);
    if (!st.isFile()) throw refuse(kindOf(st));
    opened = openRegular(path, refuse);
  } catch (e) {
    if (e instanceof PrunecError) throw e;
    if (errno(e) === "ENOENT") throw new PrunecError("io", `${path}: no such file (expected ${what})`);
    throw new PrunecError("io", `${path}: cannot read (${reason(e)})`);
  }
  const { fd, st } = opened;
  try {
    if (st.size > BigInt(bufferConstants.MAX_LENGTH))
      throw new PrunecError(
        "io",
        `${path}: ${st.size} bytes, more than prunec can read at once (${bufferConstants.MAX_LENGTH})`,
      );
    const size = Number(st.size);
    const bytes = Buffer.allocUnsafe(size);
    let off = 0;
    while (off < size) {
      const n = readSync(fd, bytes, off, size - off, off);
      if (n === 0)
        throw new PrunecError("io", `${path}: cannot read (it shrank from ${size} to ${off} bytes while being read)`);
      off += n;
    }
    return { path, id: { dev: st.dev, ino: st.ino }, bytes };
  } catch (e) {
    if (e instanceof PrunecError) throw e;
    throw new PrunecError("io", `${path}: cannot read (${reason(e)})`);
  } finally {
    closeSync(fd);
  }
}

/** The identity of an existing file, or undefined when there is none (weights compile does not need). */
export function inputRef(path: string): InputRef | undefined {
  try {
    const st = statIfAny(path);
    return st ? { path, id: { dev: st.dev, ino: st.ino } } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * May a file be written at `out` (an absolute path)? Its folder must exist and be writable; an
 * existing `out` must be a regular file and none of `inputs`. Exit 2 naming the path and the reason.
 * Checked before any work is written, and again just before the rename (src/cli/atomic.ts).
 */
export function checkOutput(out: string, inputs: readonly InputRef[]): void {
  const cannot = (why: string) => new PrunecError("io", `${out}: cannot write (${why})`);
  let st: BigIntStats | undefined;
  try {
    st = statIfAny(out);
    if (!st) {
      const dir = dirname(out);
      const ds = statIfAny(dir);
      if (!ds) throw cannot(`ENOENT: no such directory ${dir}`);
      if (!ds.isDirectory()) throw cannot(`ENOTDIR: ${dir} is not a directory`);
    }
    // Root ignores permission bits, but not a read-only or immutable file system.
    accessSync(dirname(out), constants.W_OK);
  } catch (e) {
    if (e instanceof PrunecError) throw e;
    throw cannot(reason(e));
  }
  if (!st) return;
  if (st.isDirectory()) throw cannot("it is a directory");
  if (!st.isFile()) throw cannot(`it is ${kindOf(st)}; prunec replaces only regular files`);
  for (const input of inputs) {
    if (!sameId(st, input.id)) continue;
    const alias = resolve(input.path) === resolve(out) ? "" : ` (the same file as ${input.path})`;
    throw new PrunecError("io", `${out}: refusing to overwrite an input file${alias}; choose another -o`);
  }
}
