/**
 * The playground (issue 18): `npm run playground` builds the page into .playground/ and serves it
 * on http://127.0.0.1:8080/ (PORT=… or --port N to change; --build-only to just build).
 *
 * The build: esbuild bundles playground/app.ts with prunec's own compiler (the library core has no
 * Node imports: test/architecture.test.ts), onnxruntime-web's WebGPU bundle and its .wasm are copied
 * beside it (the page's import map points at them), and so are the digits model and its sample set.
 * Nothing is fetched from anywhere else: the page works offline.
 */
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createRequire } from "node:module";
import { dirname, extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** onnxruntime-web's files the page loads: the WebGPU ESM bundle and the WASM it instantiates. */
const ORT_FILES = [
  "ort.webgpu.bundle.min.mjs",
  "ort-wasm-simd-threaded.asyncify.wasm",
  "ort-wasm-simd-threaded.asyncify.mjs",
];

export async function buildPlayground(out: string): Promise<void> {
  rmSync(out, { recursive: true, force: true });
  mkdirSync(join(out, "ort"), { recursive: true });
  mkdirSync(join(out, "models"), { recursive: true });
  await build({
    entryPoints: [join(ROOT, "playground", "app.ts")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    outfile: join(out, "app.js"),
    external: ["onnxruntime-web/webgpu"],
    minify: true,
    legalComments: "none",
    logLevel: "warning",
  });
  for (const f of ["index.html", "style.css"]) copyFileSync(join(ROOT, "playground", f), join(out, f));
  const ort = dirname(createRequire(import.meta.url).resolve("onnxruntime-web"));
  for (const f of ORT_FILES) copyFileSync(join(ort, f), join(out, "ort", f));
  copyFileSync(join(ROOT, "examples", "digits", "model.onnx"), join(out, "models", "digits.onnx"));
  copyFileSync(join(ROOT, "examples", "digits", "sample.prds"), join(out, "models", "digits-sample.prds"));
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".wasm": "application/wasm",
};

/** A static server for `dir` on 127.0.0.1 (a secure context, which WebGPU requires); port 0: any free one. */
export async function servePlayground(dir: string, port = 0): Promise<{ url: string; server: Server }> {
  const root = resolve(dir);
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://127.0.0.1").pathname);
    const file = normalize(join(root, path === "/" ? "index.html" : path));
    if ((req.method !== "GET" && req.method !== "HEAD") || !file.startsWith(root + sep)) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = readFileSync(file);
      res.writeHead(200, {
        "content-type": TYPES[extname(file)] ?? "application/octet-stream",
        "cache-control": "no-store",
      });
      res.end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  await new Promise<void>((ok, fail) => {
    server.once("error", fail);
    server.listen(port, "127.0.0.1", () => ok());
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, server };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const out = join(ROOT, ".playground");
  await buildPlayground(out);
  if (args.includes("--build-only")) {
    console.log(`built ${out}`);
  } else {
    const at = args.indexOf("--port");
    const port = Number(at >= 0 ? args[at + 1] : (process.env["PORT"] ?? 8080));
    const { url } = await servePlayground(out, port);
    console.log(`prunec playground: ${url} (Ctrl-C to stop)`);
  }
}
