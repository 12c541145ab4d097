/**
 * Locating the optional `../shared` folder (models, reference data) that sits beside the clone.
 *
 * Suites that need it must say so when it is missing, so a skip is visible and never a silent pass:
 *
 *   describeShared("vit-ti16 pruning", () => { ... });
 *   // → when ../shared is absent: skipped, titled "vit-ti16 pruning (needs ../shared: missing)"
 *
 * or, by hand: `describe.skipIf(!hasShared)(sharedTitle("..."), ...)`.
 */
import { existsSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, it } from "vitest";

function findRepoRoot(start: string): string {
  let dir = start;
  for (;;) {
    if (existsSync(join(dir, "package.json"))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`no package.json above ${start}`);
    dir = up;
  }
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** The repository root: the nearest folder above this file that holds a package.json. */
export const REPO_ROOT: string = findRepoRoot(dirname(fileURLToPath(import.meta.url)));

/** Absolute path of `../shared` relative to the repository root (it may not exist). */
export const SHARED_DIR: string = resolve(REPO_ROOT, "..", "shared");

/** True when `../shared/models` exists. */
export const hasShared: boolean = isDir(join(SHARED_DIR, "models"));

/** Absolute path of `rel` inside `../shared/models`, e.g. `sharedModel("synthetic/vit-ti16-cls-randinit/model.onnx")`. */
export function sharedModel(rel: string): string {
  return join(SHARED_DIR, "models", rel);
}

/** Absolute path of `rel` inside `../shared` itself. */
export function sharedPath(rel: string): string {
  return join(SHARED_DIR, rel);
}

/** True when `../shared/models/<rel>` exists. */
export function hasSharedModel(rel: string): boolean {
  return existsSync(sharedModel(rel));
}

/** `title` as is when ../shared is present, else with " (needs ../shared: missing)" appended. */
export function sharedTitle(title: string): string {
  return hasShared ? title : `${title} (needs ../shared: missing)`;
}

/** `describe` that is skipped, with a title saying why, when ../shared is missing. */
export function describeShared(title: string, fn: () => void): void {
  describe.skipIf(!hasShared)(sharedTitle(title), fn);
}

/** `it` that is skipped, with a title saying why, when ../shared is missing. */
export function itShared(title: string, fn: () => unknown | Promise<unknown>, timeout?: number): void {
  it.skipIf(!hasShared)(sharedTitle(title), fn, timeout);
}
