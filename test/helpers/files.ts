/** Finding test inputs on disk. */
import { readdirSync } from "node:fs";
import { join } from "node:path";

/** Every .onnx file below `dir`, sorted. */
export function findOnnx(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...findOnnx(p));
    else if (e.isFile() && e.name.endsWith(".onnx")) out.push(p);
  }
  return out.sort();
}
