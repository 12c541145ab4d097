/**
 * The code map's invariants (docs/architecture.md, "Architecture invariants"), checked over the
 * import graph of the source tree: every `import … from "X"`, `export … from "X"` and `import("X")`
 * of every .ts file under src/, grammar/ and passes/, resolved to the file it names.
 *
 * A scanner rather than dependency-cruiser: dependency-cruiser resolves TypeScript's `.js`
 * specifiers to `.ts` files through the TypeScript compiler API, which TypeScript 7 (this repo's
 * compiler) no longer ships. The scanner reads type-only imports too, which a bundler's graph
 * (esbuild's metafile) drops.
 */
import { describe, expect, it } from "vitest";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { REPO_ROOT } from "./helpers/shared.js";

const ROOTS = ["src", "grammar", "passes"];
const IMPORT =
  /(?:^|\n)\s*(?:import|export)\b[^"'`;]*?\bfrom\s*["']([^"']+)["']|\bimport\s*\(\s*["']([^"']+)["']\s*\)|(?:^|\n)\s*import\s*["']([^"']+)["']/g;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === "gen" ? [] : sources(path);
    return name.endsWith(".ts") && !name.endsWith(".d.ts") ? [path] : [];
  });
}

/** file (repo-relative) → the repo-relative files or bare module names it imports. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of ROOTS.flatMap((r) => sources(join(REPO_ROOT, r)))) {
    const text = readFileSync(file, "utf8");
    const targets: string[] = [];
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2] ?? m[3]!;
      targets.push(
        spec.startsWith(".") ? relative(REPO_ROOT, resolve(dirname(file), spec)).replace(/\.js$/, ".ts") : spec,
      );
    }
    graph.set(relative(REPO_ROOT, file), targets);
  }
  return graph;
}

const graph = importGraph();

/**
 * file → what it imports statically and for its values: what loading it loads. Type-only imports
 * load nothing, and `import("X")` loads X on first use.
 */
function loadGraph(): Map<string, string[]> {
  const STATIC =
    /(?:^|\n)\s*(?:import|export)\s+(?!type\b)[^"'`;]*?\bfrom\s*["']([^"']+)["']|(?:^|\n)\s*import\s*["']([^"']+)["']/g;
  const loads = new Map<string, string[]>();
  for (const file of ROOTS.flatMap((r) => sources(join(REPO_ROOT, r)))) {
    const targets = [...readFileSync(file, "utf8").matchAll(STATIC)].map((m) => {
      const spec = m[1] ?? m[2]!;
      return spec.startsWith(".") ? relative(REPO_ROOT, resolve(dirname(file), spec)).replace(/\.js$/, ".ts") : spec;
    });
    loads.set(relative(REPO_ROOT, file), targets);
  }
  return loads;
}
const under = (prefix: string) => (f: string) => f.startsWith(prefix);

/** Every import from a file matching `from` to a target matching `to`, as "file → target". */
function edges(from: (f: string) => boolean, to: (t: string) => boolean): string[] {
  return [...graph].flatMap(([f, ts]) => (from(f) ? ts.filter(to).map((t) => `${f} → ${t}`) : []));
}

describe("architecture invariants (docs/architecture.md)", () => {
  it("the scanner sees the tree: every relative import names an existing file", () => {
    expect(graph.size).toBeGreaterThan(80);
    const missing = [...graph].flatMap(([f, ts]) =>
      ts.filter((t) => t.endsWith(".ts") && !graph.has(t) && !t.startsWith("src/onnx/gen/")).map((t) => `${f} → ${t}`),
    );
    expect(missing).toEqual([]);
  });

  it("grammar/ imports nothing from src/ or passes/ (the language front end stands alone)", () => {
    expect(edges(under("grammar/"), (t) => t.startsWith("src/") || t.startsWith("passes/"))).toEqual([]);
  });

  it("analysis, IR and ONNX I/O never import passes/, the planner, compile or the CLI", () => {
    const core = (f: string) => f.startsWith("src/analysis/") || f.startsWith("src/ir/") || f.startsWith("src/onnx/");
    expect(
      edges(
        core,
        (t) =>
          t.startsWith("passes/") ||
          /^src\/(plan|plan-merge|plan-types|compile|check|inspect)\.ts$/.test(t) ||
          t.startsWith("src/cli/"),
      ),
    ).toEqual([]);
  });

  it("only the registry imports criterion modules: passes, the planner and compile reach criteria through it", () => {
    const outsideCriteria = (f: string) => !f.startsWith("passes/criteria/") && f !== "passes/registry.ts";
    expect(edges(outsideCriteria, under("passes/criteria/"))).toEqual([]);
  });

  it("the planner owns the plan type: src/plan-types.ts defines StagePlan, and passes import it from there", () => {
    const text = (f: string) => readFileSync(join(REPO_ROOT, f), "utf8");
    const definers = [...graph.keys()].filter((f) => /export interface StagePlan\b/.test(text(f)));
    expect(definers).toEqual(["src/plan-types.ts"]);
  });

  it("passes/ reads no optional analysis fact through a non-null assertion", () => {
    // `fact!` right after an identifier or property access (`l.core!.anchor`, `l.heads!,`), never `!=`/`!==`:
    // passes narrow these facts (a criterion's prepare, a planner check, an explicit refusal) instead.
    const FACTS = [
      "core",
      "heads",
      "kvHeads",
      "headSize",
      "residual",
      "qk",
      "pv",
      "probs",
      "key",
      "tokens",
      "tokenAxis",
      "batchAxis",
      "hidden",
      "encoderOutput",
      "merge",
      "outputNorm",
      "probsLayout",
      "scale",
    ];
    const ASSERTED = new RegExp(`\\b(?:${FACTS.join("|")})!(?=[.\\[\\]),;:?}\\s]|$)`);
    const files = sources(join(REPO_ROOT, "passes"));
    expect(files.length).toBeGreaterThan(20);
    const hits = files.flatMap((file) =>
      readFileSync(file, "utf8")
        .split("\n")
        .flatMap((line, i) => (ASSERTED.test(line) ? [`${relative(REPO_ROOT, file)}:${i + 1}: ${line.trim()}`] : [])),
    );
    expect(hits, `non-null assertions on optional analysis facts:\n${hits.join("\n")}`).toEqual([]);
  });

  it("the CLI loads no package a compile does not need: runtimes, image codecs, charts and progress bars are imported on first use", () => {
    const loads = loadGraph();
    const reached = new Set<string>();
    const work = ["src/cli/main.ts"];
    while (work.length) {
      const f = work.pop()!;
      if (reached.has(f)) continue;
      reached.add(f);
      work.push(...(loads.get(f) ?? []));
    }
    expect(reached.size).toBeGreaterThan(80); // the scan follows the compiler's own modules
    const unneeded = ["onnxruntime-node", "onnxruntime-web", "sharp", "pngjs", "cli-progress", "vega", "vega-lite"];
    expect([...reached].filter((t) => unneeded.includes(t))).toEqual([]);
  });

  it("the library core imports nothing Node-only (only the CLI owns files, processes and exit codes)", () => {
    const library = (f: string) => !f.startsWith("src/cli/");
    expect(
      edges(
        library,
        (t) => t.startsWith("node:") || ["fs", "path", "os", "child_process", "worker_threads"].includes(t),
      ),
    ).toEqual([]);
  });
});
