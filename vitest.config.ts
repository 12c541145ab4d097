import { availableParallelism } from "node:os";
import { defineConfig } from "vitest/config";

// CI runs on a 2-core machine. Test files run in child processes ("forks": the safe pool for
// native addons such as onnxruntime-node), at most one per core and never more than 4, since each
// onnxruntime session also uses threads of its own.
const workers = Math.max(1, Math.min(availableParallelism(), 4));

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"], // helpers' own tests too: test/helpers/*.test.ts
    environment: "node",
    pool: "forks",
    maxWorkers: workers,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    exclude: ["**/node_modules/**", "scratch/**"],
    // Records every compile's output hash when PRUNEC_RECORD_COMPILES is set (refactor checks).
    setupFiles: ["test/support/record-compiles.ts"],
  },
});
