/**
 * Imported first by the bench scripts that load onnxruntime-node themselves: its telemetry off,
 * as the CLI does for its own sessions (src/cli/runtime.ts says why). A side-effect module, so it
 * runs before onnxruntime-node's import below it is evaluated.
 */
process.env["ORT_DISABLE_TELEMETRY"] ??= "1";
