/** Tables and crash classes for fuzz results (shared by the test and scripts/fuzz-campaign.ts). */
import type { Outcome } from "./cases.js";

export interface Row {
  attack: string;
  outcome: Outcome;
}

const OUTCOMES: Outcome[] = ["clean", "ok", "crash", "hang"];

/** `| attack | cases | clean error | ok | crash | hang |`, one row per attack, then totals. */
export function table(results: readonly Row[], order?: readonly string[]): string {
  const rows = new Map<string, Record<Outcome, number>>();
  for (const a of order ?? []) rows.set(a, { clean: 0, ok: 0, crash: 0, hang: 0 });
  for (const r of results) {
    let row = rows.get(r.attack);
    if (!row) rows.set(r.attack, (row = { clean: 0, ok: 0, crash: 0, hang: 0 }));
    row[r.outcome]++;
  }
  const lines = ["| attack | cases | clean error | ok | crash | hang |", "|---|---:|---:|---:|---:|---:|"];
  const total: Record<Outcome, number> = { clean: 0, ok: 0, crash: 0, hang: 0 };
  const families = new Map<string, Record<Outcome, number>>();
  const line = (name: string, c: Record<Outcome, number>) =>
    `| ${name} | ${OUTCOMES.reduce((s, o) => s + c[o], 0)} | ${c.clean} | ${c.ok} | ${c.crash} | ${c.hang} |`;
  for (const [attack, c] of rows) {
    if (OUTCOMES.every((o) => c[o] === 0)) continue;
    lines.push(line(attack, c));
    const fam = attack.split(":")[0]!;
    const f = families.get(fam) ?? { clean: 0, ok: 0, crash: 0, hang: 0 };
    for (const o of OUTCOMES) {
      f[o] += c[o];
      total[o] += c[o];
    }
    families.set(fam, f);
  }
  for (const [fam, c] of families) lines.push(line(`**${fam} (all)**`, c));
  lines.push(line("**total**", total));
  return lines.join("\n");
}

/**
 * A crash's class: its message with names, numbers and quoted text blanked, plus the first stack
 * frame inside prunec (src/, grammar/, passes/). Cases of one class are one bug, almost always.
 */
export function crashClass(detail: string, stack: string | undefined): string {
  const message = detail
    .replace(/'[^']*'/g, "'…'")
    .replace(/"[^"]*"/g, '"…"')
    .replace(/\d+(\.\d+)?(e[+-]?\d+)?/gi, "N")
    .slice(0, 160);
  const frames = (stack ?? "")
    .split("\n")
    .filter((l) => /\b(src|grammar|passes)\//.test(l))
    .map((l) =>
      l
        .trim()
        .replace(/^at /, "")
        .replace(/:\d+:\d+(\)?)$/, "$1"),
    );
  // Helpers every pass calls (tensor and node builders) say little: name their caller too.
  const helper = (f: string) => /\((src\/onnx\/tensor|passes\/builder)\.ts\)/.test(f);
  const caller = helper(frames[0] ?? "") ? frames.find((f) => !helper(f)) : undefined;
  const frame = frames[0] === undefined ? undefined : caller ? `${frames[0]} ← ${caller}` : frames[0];
  return frame ? `${message} @ ${frame}` : message;
}

export function groupBy<T>(items: readonly T[], key: (t: T) => string): Map<string, T[]> {
  const m = new Map<string, T[]>();
  for (const t of items) {
    const k = key(t);
    const list = m.get(k);
    if (list) list.push(t);
    else m.set(k, [t]);
  }
  return m;
}
