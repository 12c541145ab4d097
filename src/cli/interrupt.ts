/**
 * Cleanup on SIGINT, SIGTERM and SIGHUP: the files and folders a write has made but not committed
 * (temp files, weight files placed for a model not yet renamed into place) are removed, then the
 * process exits with 128 + the signal's number (130, 143, 129), as a shell reports a killed job.
 *
 * The handlers are installed with the first tracked path and stay installed: a signal that arrives
 * during a synchronous step is only delivered at the next turn of the event loop, and removing the
 * handlers before then would lose it (the process would go on as if never interrupted).
 */
import { rmSync } from "node:fs";
import { constants } from "node:os";

const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
type CleanupSignal = (typeof SIGNALS)[number];

/** In the order they were made: removed newest first (a file before the folder it is in). */
const pending: string[] = [];
let installed = false;

function onSignal(signal: CleanupSignal): void {
  for (const path of [...pending].reverse()) {
    try {
      rmSync(path, { recursive: true, force: true });
    } catch {
      // Best effort: the process is going away either way.
    }
  }
  process.exit(128 + constants.signals[signal]);
}

/** Remove `path` (a file or a folder prunec created) if the process is interrupted before `release`. */
export function removeOnInterrupt(path: string): void {
  if (!installed) {
    for (const s of SIGNALS) process.on(s, onSignal);
    installed = true;
  }
  pending.push(path);
}

/** `path` is committed (or already gone): an interrupt leaves it alone. */
export function release(path: string): void {
  const i = pending.lastIndexOf(path);
  if (i >= 0) pending.splice(i, 1);
}
