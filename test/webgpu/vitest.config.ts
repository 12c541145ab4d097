import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

// `npm run test:webgpu`: the browser suite only (test/webgpu/*.webgpu.ts; the default config's
// test/**/*.test.ts never matches them). One file at a time in one fork: there is one Chromium,
// and SwiftShader already uses every core. Timeouts are generous: on SwiftShader a session takes
// seconds to create and its first run compiles every shader.
export default defineConfig({
  test: {
    root: fileURLToPath(new URL("../..", import.meta.url)),
    include: ["test/webgpu/**/*.webgpu.ts"],
    exclude: ["**/node_modules/**", "scratch/**"],
    environment: "node",
    pool: "forks",
    maxWorkers: 1,
    fileParallelism: false,
    testTimeout: 300_000,
    hookTimeout: 300_000,
    teardownTimeout: 60_000,
  },
});
