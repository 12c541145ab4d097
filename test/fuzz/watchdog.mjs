// A worker thread that watches the main thread: after workerData.ms it pauses it through the
// inspector, writes its JavaScript stack to stderr (synchronously: the main thread is busy) and
// kills the process. Used by `scripts/fuzz-campaign.ts --repro` to show where a hang spins.
import { writeSync } from "node:fs";
import { Session } from "node:inspector";
import { parentPort, workerData } from "node:worker_threads";

setInterval(() => {}, 1000); // an inspector request alone does not keep this thread alive
const session = new Session();
session.connectToMainThread();
const urls = new Map();
session.on("Debugger.scriptParsed", (m) => urls.set(m.params.scriptId, m.params.url));
const post = (method, params) => new Promise((resolve, reject) => session.post(method, params, (e, r) => (e ? reject(e) : resolve(r))));
const root = workerData.root ?? "";
const die = (text) => {
  writeSync(2, text);
  process.kill(process.pid, "SIGKILL");
};
session.on("Debugger.paused", (m) => {
  const all = m.params.callFrames.map((f) => `  at ${f.functionName || "<anonymous>"} (${(urls.get(f.location.scriptId) || f.url || "?").replace("file://", "").replace(root, "")})`);
  const frames = all.length > 40 ? [...all.slice(0, 12), `  ... ${all.length - 27} more frames ...`, ...all.slice(-15)] : all;
  die(`WATCHDOG: still running after ${workerData.ms} ms; main thread stack (${all.length} frames, innermost first):\n${frames.join("\n")}\n`);
});
await post("Debugger.enable");
parentPort.postMessage("ready");
setTimeout(() => {
  post("Debugger.pause").catch(() => {});
  // Inside one long builtin call (e.g. filling a huge array) the pause never comes.
  setTimeout(() => die(`WATCHDOG: still running after ${workerData.ms} ms; no JavaScript stack (the main thread did not pause: inside a builtin or native call)\n`), 5000);
}, workerData.ms);
