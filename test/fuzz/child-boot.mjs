// The fuzz child process starts here: register tsx (so the TypeScript sources load without a build
// and without vitest's loader), then load test/fuzz/child.ts.
import { register } from "tsx/esm/api";

register();
await import(new URL("./child.ts", import.meta.url).href);
