/**
 * Atomic writes for the CLI: each file is written under a temp name in its target folder and then
 * renamed into place, so a reader sees the old file or the whole new one, never half of it. Temp
 * names are short (`.prunec-<pid>-<random>.tmp`: a target name at the file-name limit still has
 * room) and created exclusively (never through a name someone else made). Everything a write made
 * is removed when it fails or is interrupted (src/cli/interrupt.ts); a failure is exit 2 naming the
 * path and the system's reason.
 */
import { closeSync, existsSync, linkSync, lstatSync, openSync, readSync, renameSync, rmSync, writev } from "node:fs";
import { randomBytes } from "node:crypto";
import { dirname, join } from "node:path";
import { PrunecError } from "../errors.js";
import { checkOutput, errno, kindOf, openRegular, reason, type InputRef } from "./files.js";
import { release, removeOnInterrupt } from "./interrupt.js";

/** Written in slices so a signal is handled between them, not after the whole model. */
const CHUNK = 8 << 20;

/**
 * A buffer for one use (`copy`, `compare-a`…) that lives as long as the process, reused by every
 * later call for that use. Freeing a malloc'd block of 128 KiB to 32 MiB raises glibc's mmap
 * threshold to its size, after which onnxruntime keeps the smoke run's weight copies on the heap:
 * the two 8 MiB copy buffers of a model folder's config files, freed, raised a ViT-B/16 folder
 * compile's peak by 100 MB (with the threshold pinned, MALLOC_MMAP_THRESHOLD_, it equalled a file
 * compile's).
 */
export function ioBuffer(use: string, size: number): Buffer {
  let b = held.get(use);
  if (!b || b.length < size) {
    b = Buffer.allocUnsafe(size);
    held.set(use, b);
  }
  return b;
}
const held = new Map<string, Buffer>();

export function tempPath(target: string): string {
  return join(dirname(target), `.prunec-${process.pid}-${randomBytes(4).toString("hex")}.tmp`);
}

/**
 * Test hook, not for users: PRUNEC_TEST_WRITE_DELAY_MS=N waits N ms once the temp files are
 * written, before anything is renamed into place, so tests can interrupt a write in progress.
 */
export async function testWriteDelay(): Promise<void> {
  const ms = Number(process.env["PRUNEC_TEST_WRITE_DELAY_MS"] ?? 0);
  if (ms > 0) await new Promise((r) => setTimeout(r, ms));
}

/** Buffers per writev call (Linux's IOV_MAX). */
const IOV_MAX = 1024;

/**
 * Write `parts` in order at the file's position: writev calls of up to IOV_MAX buffers and about
 * CHUNK bytes each (a compiled model is hundreds of parts, each tensor's bytes a view of the input:
 * one write per part cost a thread-pool round trip each), a short write resumed where it stopped.
 * Asynchronous, so a signal's handler runs between calls.
 */
export async function writeParts(fd: number, parts: readonly Uint8Array[]): Promise<void> {
  const queue = parts.filter((p) => p.length > 0);
  let i = 0;
  while (i < queue.length) {
    const batch: Uint8Array[] = [];
    let bytes = 0;
    for (let j = i; j < queue.length && batch.length < IOV_MAX && bytes < CHUNK; j++) {
      const p = queue[j]!;
      const take = p.subarray(0, Math.min(p.length, CHUNK - bytes));
      batch.push(take);
      bytes += take.length;
    }
    let written = await new Promise<number>((res, rej) => writev(fd, batch, null, (e, n) => (e ? rej(e) : res(n))));
    if (written <= 0) throw new Error("the system wrote nothing (a full disk?)");
    // Drop what was written: whole parts, then the front of a part written in part.
    while (written > 0) {
      const p = queue[i]!;
      if (written >= p.length) {
        written -= p.length;
        i++;
      } else {
        queue[i] = p.subarray(written);
        written = 0;
      }
    }
  }
}

/** A PrunecError as it is; any other failure is exit 2 naming `path` and the system's reason. */
export function writeError(path: string, e: unknown): PrunecError {
  return e instanceof PrunecError ? e : new PrunecError("io", `${path}: cannot write (${reason(e)})`);
}

/** The files and folders one write has made: kept together by `commit`, removed together by `rollback`. */
export class Staging {
  private readonly made: string[] = [];

  /** `path` was created by this write: removed on failure or interrupt until committed. */
  track(path: string): void {
    this.made.push(path);
    removeOnInterrupt(path);
  }

  /** `path` is gone (renamed into place): nothing to remove any more. */
  private forget(path: string): void {
    const i = this.made.lastIndexOf(path);
    if (i >= 0) this.made.splice(i, 1);
    release(path);
  }

  /** Create `tmp` exclusively, tracked first (see writeTemp). */
  private openTracked(tmp: string): number {
    this.track(tmp);
    try {
      return openSync(tmp, "wx");
    } catch (e) {
      this.forget(tmp);
      throw e;
    }
  }

  /** A new temp file beside `target` holding `parts`. */
  async writeTemp(target: string, parts: readonly Uint8Array[]): Promise<string> {
    const tmp = tempPath(target);
    // Tracked BEFORE it exists: until prunec's handlers are installed a signal's default action
    // kills the process at once, so a file created first could be left behind. Once tracked, a
    // signal waits for the event loop, and the handler removes whatever exists by then.
    const fd = this.openTracked(tmp);
    try {
      await writeParts(fd, parts);
    } finally {
      closeSync(fd);
    }
    return tmp;
  }

  /** A new temp file beside `target` holding a copy of the regular file `source` (its size when opened). */
  async copyTemp(target: string, source: string): Promise<string> {
    const { fd: src, st } = openRegular(
      source,
      (kind) => new PrunecError("io", `${source}: is ${kind}, not a regular file`),
    );
    try {
      const tmp = tempPath(target);
      const fd = this.openTracked(tmp);
      try {
        // A small file's buffer is below malloc's mmap threshold: allocated each time, harmlessly.
        const size = Number(st.size);
        const buf = size <= 64 << 10 ? Buffer.allocUnsafe(Math.max(1, size)) : ioBuffer("copy", CHUNK);
        for (let pos = 0; pos < size; ) {
          const n = readSync(src, buf, 0, Math.min(CHUNK, size - pos), pos);
          if (n === 0) throw new Error(`${source} shrank while being copied`);
          await writeParts(fd, [buf.subarray(0, n)]);
          pos += n;
        }
      } finally {
        closeSync(fd);
      }
      return tmp;
    } finally {
      closeSync(src);
    }
  }

  /** A hard link to `source` under a temp name beside `target`, or undefined when linking fails (across devices). */
  linkTemp(target: string, source: string): string | undefined {
    const tmp = tempPath(target);
    this.track(tmp);
    try {
      linkSync(source, tmp);
    } catch {
      this.forget(tmp);
      return undefined;
    }
    // The link is the file itself: it must still be the regular file that was checked.
    const st = lstatSync(tmp, { bigint: true });
    if (!st.isFile()) throw new PrunecError("io", `${source}: is ${kindOf(st)}, not a regular file`);
    return tmp;
  }

  /** Rename `tmp` over `target`, checked once more first (src/cli/files.ts checkOutput). */
  renameInto(tmp: string, target: string, inputs: readonly InputRef[]): void {
    checkOutput(target, inputs);
    renameSync(tmp, target);
    this.forget(tmp);
  }

  /**
   * Give `tmp` the name `target` without ever replacing a file there: link(2) fails on an existing
   * name, so a file that appeared since the checks is kept. `target` is then made by this write.
   */
  placeNew(tmp: string, target: string): void {
    try {
      linkSync(tmp, target);
    } catch (e) {
      if (errno(e) === "EEXIST" || existsSync(target))
        throw new Error("it appeared while prunec was writing; nothing was replaced");
      renameSync(tmp, target); // a file system without hard links
    }
    this.track(target);
    rmSync(tmp, { force: true });
    this.forget(tmp);
  }

  /** Keep everything made so far. */
  commit(): void {
    for (const p of this.made.splice(0)) release(p);
  }

  /** Remove everything made so far, newest first; a cleanup failure never hides the write's own error. */
  rollback(): void {
    for (const p of this.made.splice(0).reverse()) {
      try {
        rmSync(p, { recursive: true, force: true });
      } catch {
        // Nothing more can be done; the caller reports the original failure.
      }
      release(p);
    }
  }
}

/** Write `parts` to `target` atomically, never over a non-regular file or one of `inputs`. */
export async function writeAtomic(
  target: string,
  parts: readonly Uint8Array[],
  inputs: readonly InputRef[] = [],
): Promise<void> {
  const staging = new Staging();
  try {
    checkOutput(target, inputs);
    const tmp = await staging.writeTemp(target, parts);
    await testWriteDelay();
    staging.renameInto(tmp, target, inputs);
    staging.commit();
  } catch (e) {
    staging.rollback();
    throw writeError(target, e);
  }
}
