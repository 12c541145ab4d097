/** A fuzz child process: runs the cases the pool sends over IPC, one at a time (see pool.ts). */
import { runCase, type CaseId } from "./cases.js";
import { seedDatasets, seedModels } from "./seeds.js";

// Load the seeds before saying ready, so the first case's time guard does not count file reads.
for (const s of seedModels()) s.bytes();
for (const d of seedDatasets()) d.bytes();

process.on("message", (id: CaseId) => {
  process.send!(runCase(id));
});
process.send!("ready");
