/**
 * Imported first by the bench scripts that load onnxruntime-node themselves: its telemetry off,
 * as the CLI does for its own sessions. A side-effect module, so it runs before onnxruntime-node's
 * import below it is evaluated.
 */
import { ortTelemetryOff } from "../src/cli/runtime.js";

ortTelemetryOff();
