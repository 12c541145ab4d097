// Preloaded by scripts/bench-table.ts (`node --import`): at exit, writes the process's peak resident
// set size in KiB (process.resourceUsage().maxRSS) to the file named by PRUNEC_MAX_RSS_FILE.
import { writeFileSync } from "node:fs";

const file = process.env.PRUNEC_MAX_RSS_FILE;
if (file) process.on("exit", () => writeFileSync(file, String(process.resourceUsage().maxRSS)));
