/**
 * Runs fuzz cases in child processes, each case under a time guard. A case still running after
 * `timeoutMs` is a hang: the child is killed (which stops even a synchronous loop) and a fresh one
 * takes the next case. A child that dies mid-case (V8's fatal out-of-memory abort, a signal) makes
 * that case a crash: what the CLI would end with as exit 134 or a signal. Child processes rather
 * than worker threads because a V8 fatal error ends the whole process, not just a thread.
 */
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { CaseId, CaseResult } from "./cases.js";

export interface PoolOptions {
  workers: number;
  /** Per-case time guard. */
  timeoutMs: number;
  /** Heap limit of each child (MB). */
  heapMb?: number;
  onResult?: (r: CaseResult) => void;
}

const BOOT = fileURLToPath(new URL("./child-boot.mjs", import.meta.url));
/** A child that takes longer than this to load prunec and the seeds is a harness failure. */
const START_TIMEOUT_MS = 120_000;

type Message = CaseResult | "ready";
type Event = Message | { died: string } | "timeout";

class Slot {
  private child: ChildProcess | undefined;
  private pending: ((e: Event) => void) | undefined;
  private stderr = "";

  constructor(private readonly heapMb: number) {}

  private settle(e: Event): void {
    const p = this.pending;
    this.pending = undefined;
    p?.(e);
  }

  private wait(timeoutMs: number, send?: CaseId): Promise<Event> {
    return new Promise<Event>((resolve) => {
      const timer = setTimeout(() => this.settle("timeout"), timeoutMs);
      this.pending = (e) => {
        clearTimeout(timer);
        resolve(e);
      };
      if (send) this.child!.send(send);
    });
  }

  private async start(): Promise<void> {
    this.stderr = "";
    const child = fork(BOOT, [], {
      execArgv: [`--max-old-space-size=${this.heapMb}`],
      stdio: ["ignore", "ignore", "pipe", "ipc"],
      serialization: "advanced",
    });
    this.child = child;
    // Events of a child this slot has already given up on (killed after a hang) are ignored.
    child.stderr!.on("data", (d: Buffer) => {
      if (this.child === child) this.stderr = (this.stderr + d.toString()).slice(-4000);
    });
    child.on("message", (m: Message) => this.child === child && this.settle(m));
    child.on(
      "exit",
      (code, signal) =>
        this.child === child && this.settle({ died: signal ? `signal ${signal}` : `exit code ${code}` }),
    );
    const e = await this.wait(START_TIMEOUT_MS);
    if (e !== "ready") {
      this.kill();
      throw new Error(`fuzz child did not start: ${JSON.stringify(e).slice(0, 300)}\n${this.stderr}`);
    }
  }

  private kill(): void {
    const c = this.child;
    this.child = undefined;
    if (c && c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  }

  async run(id: CaseId, timeoutMs: number): Promise<CaseResult> {
    if (!this.child) await this.start();
    const t0 = performance.now();
    const e = await this.wait(timeoutMs, id);
    const ms = performance.now() - t0;
    if (e === "timeout") {
      this.kill();
      return {
        ...id,
        outcome: "hang",
        description: "",
        detail: `still running after ${timeoutMs} ms (process killed)`,
        ms,
      };
    }
    if (e === "ready" || "died" in e) {
      // Wait for the rest of stderr (V8's fatal error text).
      await new Promise((r) => setTimeout(r, 100));
      this.kill();
      const why = e === "ready" ? "unexpected ready" : e.died;
      const fatal =
        this.stderr.match(/FATAL ERROR:[^\n]*/)?.[0] ??
        this.stderr.trim().split("\n").slice(-3).join(" | ").slice(0, 300);
      return {
        ...id,
        outcome: "crash",
        description: "",
        detail: `process died (${why})${fatal ? `: ${fatal}` : ""}`,
        ms,
      };
    }
    return e;
  }

  close(): void {
    const c = this.child;
    this.child = undefined;
    if (c) {
      c.removeAllListeners();
      c.disconnect?.();
      c.kill("SIGKILL");
    }
  }
}

/** Run every case; results come back in the order of `ids`. */
export async function runPool(ids: readonly CaseId[], o: PoolOptions): Promise<CaseResult[]> {
  const results: CaseResult[] = new Array(ids.length);
  let next = 0;
  const slots = Array.from({ length: Math.max(1, o.workers) }, () => new Slot(o.heapMb ?? 2048));
  await Promise.all(
    slots.map(async (slot) => {
      try {
        for (let i = next++; i < ids.length; i = next++) {
          const r = await slot.run(ids[i]!, o.timeoutMs);
          results[i] = r;
          o.onResult?.(r);
        }
      } finally {
        slot.close();
      }
    }),
  );
  return results;
}
