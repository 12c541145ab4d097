import { availableParallelism } from "node:os";
import { defineConfig, type ViteUserConfig } from "vitest/config";

// CI runs on a 2-core machine. Test files run in child processes ("forks": the safe pool for
// native addons such as onnxruntime-node), at most one per core and never more than 4, since each
// onnxruntime session also uses threads of its own.
const workers = Math.max(1, Math.min(availableParallelism(), 4));

/** What every suite shares (the default one here, the slow one in vitest.slow.config.ts). */
export const shared: NonNullable<ViteUserConfig["test"]> = {
  environment: "node",
  pool: "forks",
  maxWorkers: workers,
  testTimeout: 60_000,
  hookTimeout: 60_000,
  // Records every compile's output hash when PRUNEC_RECORD_COMPILES is set (refactor checks).
  setupFiles: ["test/support/record-compiles.ts"],
  // The tests' own onnxruntime-node sessions record no telemetry either (the CLI turns it off for
  // its sessions itself: src/cli/runtime.ts, tested in test/cli.test.ts).
  env: { ORT_DISABLE_TELEMETRY: process.env["ORT_DISABLE_TELEMETRY"] ?? "1" },
};

export default defineConfig({
  test: {
    ...shared,
    include: ["test/**/*.test.ts"], // helpers' own tests too: test/helpers/*.test.ts
    // Slow suites (*.slow.test.ts) run as their own CI step: `npm run test:slow` (vitest.slow.config.ts).
    exclude: ["**/node_modules/**", "scratch/**", "test/**/*.slow.test.ts"],
  },
});
