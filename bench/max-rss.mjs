// Preloaded by scripts/bench-table.ts (`node --import`): at exit, writes the process's peak resident
// set size in KiB to the file named by PRUNEC_MAX_RSS_FILE. Linux's VmHWM (/proc/self/status), the
// peak of this program's own memory: getrusage's maxRSS (process.resourceUsage()) carries over the
// peak of the process it was forked from, so a child of a large bench reported the bench's peak.
import { readFileSync, writeFileSync } from "node:fs";

const file = process.env.PRUNEC_MAX_RSS_FILE;
if (file)
  process.on("exit", () => {
    const hwm = /^VmHWM:\s*(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"));
    writeFileSync(file, hwm ? hwm[1] : String(process.resourceUsage().maxRSS));
  });
