/**
 * The optional peer dependencies, imported on first use by the commands that need them.
 *
 * Every such import goes through `importPeer`. The bundled CLI runs as a `vm.Script` (bin/prunec.js),
 * so that V8's code cache can skip compiling it at each start. A script's own `import()` cannot
 * resolve a package there: Node 20 forgets the script's location for functions restored from the
 * cache. bin/prunec.js therefore hands in, through `setPeerImport`, an import that resolves from
 * the package. The library (dist/src) keeps the default, a plain `import()` from this module.
 */
type Peers = {
  "onnxruntime-node": typeof import("onnxruntime-node");
  "onnxruntime-web": typeof import("onnxruntime-web");
  sharp: typeof import("sharp");
  vega: typeof import("vega");
  "vega-lite": typeof import("vega-lite");
};

export type PeerImport = (specifier: string) => Promise<unknown>;

let importer: PeerImport = (specifier) => import(specifier);

/** Used by bin/prunec.js before it runs the bundled CLI. */
export function setPeerImport(f: PeerImport): void {
  importer = f;
}

export function importPeer<K extends keyof Peers>(name: K): Promise<Peers[K]> {
  return importer(name) as Promise<Peers[K]>;
}
