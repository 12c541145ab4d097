/** src/table.ts: tables and prose fitted to a terminal's width. */
import { describe, expect, it } from "vitest";
import { middleEllipsis, renderTable, wrapLine } from "../src/table.js";

describe("fitting text to a width", () => {
  it("cuts in the middle, keeping the start and the end", () => {
    expect(middleEllipsis("past_key_values.0.value", 12)).toBe("past_k…value");
    expect(middleEllipsis("short", 12)).toBe("short");
    expect(middleEllipsis("abc", 1)).toBe("…");
  });

  it("a table without a width is aligned as before; with one, it fits: the list wraps, then cells are cut", () => {
    const header = ["layer", "attention", "criteria"];
    const rows = [["0", "matmul-softmax", "cls-attn, global-attn, norm, random"]];
    expect(renderTable(header, rows, { indent: "  ", rule: true })).toEqual([
      "  layer  attention       criteria",
      "  -----  --------------  -----------------------------------",
      "  0      matmul-softmax  cls-attn, global-attn, norm, random",
    ]);
    expect(renderTable(header, rows, { indent: "  ", width: 50, wrap: 2 })).toEqual([
      "  layer  attention       criteria",
      "  0      matmul-softmax  cls-attn, global-attn,",
      "                         norm, random",
    ]);
    expect(renderTable(header, rows, { indent: "  ", width: 40, wrap: 2, stack: "criteria" })).toEqual([
      "  layer  attention",
      "  0      matmul-softmax",
      "      criteria: cls-attn, global-attn,",
      "                norm, random",
    ]);
    const cut = renderTable(["name", "shape"], [["a_very_long_tensor_name_here", "[1, 2]"]], { width: 20 });
    expect(cut).toEqual(["name          shape", "a_very…_here  [1, 2]"]);
    for (const l of cut) expect(l.length).toBeLessThanOrEqual(20);
  });

  it("prose wraps at spaces under its label, a name and its [shape] together", () => {
    expect(wrapLine("  inputs:  ids [batch, seq], mask [batch, total_seq]", 36)).toEqual([
      "  inputs:  ids [batch, seq],",
      "           mask [batch, total_seq]",
    ]);
    expect(wrapLine("short line", 80)).toEqual(["short line"]);
    expect(wrapLine("unlimited", undefined)).toEqual(["unlimited"]);
  });
});
