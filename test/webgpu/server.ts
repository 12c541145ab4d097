/**
 * A tiny static HTTP server for the WebGPU suite, bound to 127.0.0.1 on an ephemeral port.
 *
 * It serves three things and nothing else (GET/HEAD only, everything else 404/405):
 *   /                 → test/webgpu/page.html
 *   /page.js          → test/webgpu/page.js
 *   /ort/<file>       → node_modules/onnxruntime-web/dist/<file> (the ORT bundle and its .wasm)
 *   /blob/<name>      → bytes the suite registered with `put` (models, input tensors)
 *
 * `http://127.0.0.1` is a secure context, which `navigator.gpu` requires. The page never needs
 * anything else; the browser context additionally aborts any request to another origin.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { readFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { createRequire } from "node:module";
import { dirname, extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));

/** onnxruntime-web's dist folder (its "require" export is dist/ort.node.min.js). */
export function ortDistDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve("onnxruntime-web"));
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".wasm": "application/wasm", // needed for WebAssembly.instantiateStreaming
  ".json": "application/json",
  ".map": "application/json",
};

export interface TestServer {
  /** Origin with a trailing slash, e.g. http://127.0.0.1:40123/ */
  url: string;
  /** Register bytes under /blob/<name>; returns the path to fetch them from. */
  put(name: string, bytes: Uint8Array): string;
  /** Every request path served or refused, in order (for the report and debugging). */
  requests: { path: string; status: number }[];
  close(): Promise<void>;
}

export async function startServer(): Promise<TestServer> {
  const ortDir = ortDistDir();
  const blobs = new Map<string, Uint8Array>();
  const requests: { path: string; status: number }[] = [];

  const send = (res: ServerResponse, status: number, body: Uint8Array | string, type = "text/plain; charset=utf-8") => {
    res.writeHead(status, {
      "content-type": type,
      "cache-control": "no-store",
      "content-length": Buffer.byteLength(body),
    });
    res.end(body);
  };

  /** A file strictly inside `root`, or undefined (no `..` escapes). */
  const inside = (root: string, rel: string): string | undefined => {
    const p = normalize(join(root, rel));
    return p.startsWith(root + sep) ? p : undefined;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<number> => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://127.0.0.1").pathname);
    if (req.method !== "GET" && req.method !== "HEAD") {
      send(res, 405, "method not allowed");
      return 405;
    }
    let file: string | undefined;
    if (path === "/" || path === "/index.html") file = join(HERE, "page.html");
    else if (path === "/page.js") file = join(HERE, "page.js");
    else if (path.startsWith("/ort/")) file = inside(ortDir, path.slice("/ort/".length));
    else if (path.startsWith("/blob/")) {
      const bytes = blobs.get(path.slice("/blob/".length));
      if (!bytes) {
        send(res, 404, "no such blob");
        return 404;
      }
      send(res, 200, bytes, "application/octet-stream");
      return 200;
    }
    if (!file) {
      send(res, 404, "not found");
      return 404;
    }
    try {
      const body = await readFile(file);
      send(res, 200, body, TYPES[extname(file)] ?? "application/octet-stream");
      return 200;
    } catch {
      send(res, 404, "not found");
      return 404;
    }
  };

  const server = createServer((req, res) => {
    handle(req, res).then(
      (status) => requests.push({ path: req.url ?? "", status }),
      (err: unknown) => {
        requests.push({ path: req.url ?? "", status: 500 });
        if (!res.headersSent) send(res, 500, String(err));
        else res.destroy();
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}/`,
    put(name, bytes) {
      if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`blob name '${name}' must be [A-Za-z0-9._-]+`);
      blobs.set(name, bytes);
      return `/blob/${name}`;
    },
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
