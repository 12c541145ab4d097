import { defineConfig } from "vitest/config";
import { shared } from "./vitest.config.js";

// The slow suites (*.slow.test.ts), run by `npm run test:slow` as a CI step of their own, so that
// the default suite (`npm test`) stays near ten minutes on 2 cores; a failure fails CI all the same.
export default defineConfig({
  test: { ...shared, include: ["test/**/*.slow.test.ts"], exclude: ["**/node_modules/**"] },
});
