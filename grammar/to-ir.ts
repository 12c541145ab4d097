/** Validates raw statements and builds the IR: value ranges, token sets, criteria and arguments against the registry. */
import type { IToken } from "chevrotain";
import { clip, diagnosticAt, type Diagnostic } from "./diagnostics.js";
import {
  ACROSS,
  STAGE_OPTIONS,
  type Action,
  type Amount,
  type ArgValue,
  type ModelHint,
  type Span,
  type StageIR,
  type StageOption,
  type StagePosition,
  type StageTarget,
  type TokenSetDecl,
} from "./ir.js";
import { targetsOf, type ArgType, type CriterionInfo, type CriterionRegistry } from "./registry.js";
import { OPTION_ARGS } from "./options.js";
import type { SourceLines } from "./source.js";
import { closest } from "./suggest.js";
import type { RawArg, RawStage, RawStatement, RawTokenSet, RawValue } from "./syntax.js";

/** A statement that parsed, with its tokens' extent. */
export interface ParsedStatement {
  raw: RawStatement;
  first: IToken;
  last: IToken;
}

export interface IRParts {
  model?: ModelHint;
  tokenSets: TokenSetDecl[];
  stages: StageIR[];
}

function num(t: IToken): number {
  const n = Number(t.image);
  return n === 0 ? 0 : n; // no -0
}

/** Names listed in a hint: at most LISTED of them, so a spec declaring thousands of sets gets short messages. */
const LISTED = 10;
function list(names: ReadonlySet<string> | readonly string[]): string {
  const shown: string[] = [];
  for (const n of names) {
    if (shown.length === LISTED) break; // stop early: the rest are only counted
    shown.push(clip(n));
  }
  const total = "size" in names ? names.size : names.length;
  return total > LISTED ? `${shown.join(", ")}, … (${total} in all)` : shown.join(", ");
}

/**
 * Token sets to compare a misspelt name with. Real specs declare a handful; past this many, no
 * suggestion is made, so a fuzzed spec with thousands of sets and errors stays linear.
 */
const MAX_SET_CANDIDATES = 64;
function closestSet(word: string, sets: ReadonlySet<string>): string | undefined {
  return sets.size > MAX_SET_CANDIDATES ? undefined : closest(word, sets);
}

/** Decimal places a percentage may have: counts are exact integer ratios of it (passes/amount.ts). */
const MAX_PERCENT_DECIMALS = 6;

function tooPrecise(value: number): boolean {
  const text = String(value);
  return /e/i.test(text) || (text.split(".")[1]?.length ?? 0) > MAX_PERCENT_DECIMALS;
}

const STREAM_NEEDS_POSITION =
  "a stage on the residual stream needs a position: 'after layer L', 'in layer L' or 'after encoder'; only 'keep kv' / 'drop kv' stages may omit it (every layer)";

class Builder {
  readonly diagnostics: Diagnostic[] = [];

  constructor(
    private readonly file: string,
    private readonly lines: SourceLines,
    private readonly registry: CriterionRegistry,
  ) {}

  span(first: IToken, last: IToken = first): Span {
    return this.lines.span(first.startOffset, last.startOffset + last.image.length);
  }

  error(span: Span, message: string, suggestion?: string): void {
    this.diagnostics.push(diagnosticAt(this.file, span, message, suggestion));
  }

  build(statements: readonly ParsedStatement[]): IRParts {
    const parts: IRParts = { tokenSets: [], stages: [] };
    const setLines = new Map<string, number>(); // every declared set -> line of its first declaration
    for (const s of statements) {
      if (s.raw.kind === "tokens" && !setLines.has(s.raw.name.image))
        setLines.set(s.raw.name.image, this.span(s.raw.name).line);
    }
    const setNames: ReadonlySet<string> = new Set(setLines.keys()); // built once, not per stage
    const declared = new Set<string>();
    for (const s of statements) {
      const raw = s.raw;
      if (raw.kind === "model") {
        const span = this.span(raw.name);
        if (parts.model !== undefined)
          this.error(span, `the model hint is already given on line ${parts.model.span.line}`);
        else parts.model = { name: raw.name.image.toLowerCase(), span };
      } else if (raw.kind === "tokens") {
        const decl = this.tokenSet(raw, s, declared, setLines);
        if (decl !== undefined) parts.tokenSets.push(decl);
        declared.add(raw.name.image);
      } else {
        const stage = this.stage(raw, s, setNames);
        if (stage !== undefined) parts.stages.push(stage);
      }
    }
    return parts;
  }

  private tokenSet(
    raw: RawTokenSet,
    s: ParsedStatement,
    declaredBefore: ReadonlySet<string>,
    setLines: ReadonlyMap<string, number>,
  ): TokenSetDecl | undefined {
    const name = raw.name.image;
    const nameSpan = this.span(raw.name);
    let ok = true;
    if (declaredBefore.has(name)) {
      this.error(nameSpan, `token set '${clip(name)}' is already declared on line ${setLines.get(name) ?? "?"}`);
      ok = false;
    }
    const sourceSpan = this.span(raw.source);
    const ref = raw.source.image;
    if (raw.sourceKind === "after") {
      if (ref === name) {
        this.error(sourceSpan, `token set '${clip(name)}' cannot be defined after itself`);
        ok = false;
      } else if (!declaredBefore.has(ref)) {
        const later = setLines.get(ref);
        if (later !== undefined) {
          this.error(sourceSpan, `token set '${clip(ref)}' is used before its declaration on line ${later}`);
        } else {
          const suggestion = closestSet(ref, declaredBefore);
          const hint =
            suggestion === undefined && declaredBefore.size > 0 ? ` (declared so far: ${list(declaredBefore)})` : "";
          this.error(sourceSpan, `unknown token set '${clip(ref)}'${hint}`, suggestion);
        }
        ok = false;
      }
    }
    if (!ok) return undefined;
    return {
      name,
      nameSpan,
      source: raw.sourceKind === "input" ? { kind: "input", input: ref } : { kind: "after", set: ref },
      sourceSpan,
      span: this.span(s.first, s.last),
    };
  }

  /** Criteria for a stage target (`kv`, `heads`), in registry order (looked up once per file). */
  private byTarget = new Map<StageTarget, string[]>();
  private criteriaFor(target: StageTarget): string[] {
    let names = this.byTarget.get(target);
    if (!names) {
      names = this.registry.names().filter((n) => {
        const info = this.registry.get(n);
        return info !== undefined && targetsOf(info).includes(target);
      });
      this.byTarget.set(target, names);
    }
    return names;
  }

  /** A layer number token as an integer, or an error at it. */
  private layerNumber(t: IToken): number | undefined {
    const layer = num(t);
    if (Number.isSafeInteger(layer)) return layer;
    this.error(this.span(t), `layer must be an integer, got ${clip(t.image)}`);
    return undefined;
  }

  private stage(raw: RawStage, s: ParsedStatement, sets: ReadonlySet<string>): StageIR | undefined {
    const before = this.diagnostics.length;
    const action = raw.action.image.toLowerCase() as Action;
    const actionSpan = this.span(raw.action);
    const target: StageTarget = raw.kv !== undefined ? "kv" : raw.heads !== undefined ? "heads" : "stream";
    const kvSpan = raw.kv === undefined ? undefined : this.span(raw.kv);
    const headsSpan = raw.heads === undefined ? undefined : this.span(raw.heads);
    const criterionName = raw.criterion.image.toLowerCase();
    const info = this.registry.get(criterionName);
    // A stream stage naming a criterion that scores only the KV cache: the fix is 'keep kv', which
    // also makes a missing position or 'in layers' right, so those are not reported besides.
    const meantKv = target === "stream" && info !== undefined && !targetsOf(info).includes("stream");
    if (meantKv) {
      this.error(
        actionSpan,
        `criterion '${info.name}' scores the KV cache, not the residual stream: write '${action === "drop" ? "drop" : "keep"} kv'`,
        action === "merge" ? undefined : `${action} kv`,
      );
    }

    // Position.
    const p = raw.position;
    let position: StagePosition = { kind: "all-layers" };
    let layerSpan: Span | undefined;
    let positionSpan = actionSpan;
    if (p !== undefined) {
      const last = p.kind === "after-encoder" ? p.last : p.kind === "in-layers" ? p.to : p.layer;
      positionSpan = this.span(p.first, last);
    }
    if (target === "heads" && p?.kind !== "after-layer") {
      // Heads leave every layer after the stage, as tokens do: one position, after a layer.
      this.error(
        p === undefined ? actionSpan : positionSpan,
        `a '${action} heads' stage prunes the heads of every layer after it: write 'after layer L'`,
      );
    }
    if (p === undefined) {
      if (target === "stream" && !meantKv) this.error(actionSpan, STREAM_NEEDS_POSITION);
    } else if (target === "kv" && p.kind === "after-layer") {
      this.error(
        positionSpan,
        "a KV-cache stage acts on a layer's own cache: write 'in layer L' (or 'in layers A..B', or no position for every layer)",
        `in layer ${clip(p.layer.image)}`,
      );
    } else if (target === "kv" && (p.kind === "after-encoder" || p.kind === "before-layer")) {
      const where = p.kind === "after-encoder" ? "after encoder" : "before layer 0";
      this.error(
        positionSpan,
        `'${where}' has no KV cache: write 'in layer L', 'in layers A..B', or no position for every layer`,
      );
    } else if (p.kind === "after-encoder") {
      position = { kind: "after-encoder" };
    } else if (p.kind === "in-layers") {
      layerSpan = this.span(p.from, p.to);
      if (target === "stream" && !meantKv) {
        this.error(
          positionSpan,
          "'in layers A..B' is for KV-cache stages ('keep kv' / 'drop kv'); a stage on the residual stream acts once: 'after layer L' or 'in layer L'",
        );
      } else {
        const from = this.layerNumber(p.from);
        const to = this.layerNumber(p.to);
        if (from !== undefined && to !== undefined) {
          // Mixed signs (`0..-1`) are resolved against the model's layer count later.
          if (from < 0 === to < 0 && from > to) {
            this.error(
              layerSpan,
              `a layer range A..B needs A <= B, got ${clip(p.from.image)}..${clip(p.to.image)}`,
              `${to}..${from}`,
            );
          }
          position = { kind: "in-layers", from, to };
        }
      }
    } else {
      layerSpan = this.span(p.layer);
      const layer = this.layerNumber(p.layer);
      if (layer !== undefined && p.kind === "before-layer") {
        if (layer !== 0) {
          const fix = layer > 0 ? `after layer ${layer - 1}` : undefined;
          this.error(layerSpan, `'before layer' takes only 0 (the input embeddings), got ${clip(p.layer.image)}`, fix);
        }
        position = { kind: "before-layer-0" };
      } else if (layer !== undefined && p.kind !== "before-layer") {
        position = { kind: p.kind, layer };
      }
    }
    const duringSpan = raw.during ? this.span(raw.during.first, raw.during.last) : undefined;
    if (duringSpan && target !== "kv" && !meantKv)
      this.error(
        duringSpan,
        target === "heads"
          ? "'during decode' is for KV-cache stages ('keep kv' / 'drop kv'): a 'keep heads' stage prunes heads once, for the layers after it"
          : "'during decode' is for KV-cache stages ('keep kv' / 'drop kv'): a stage on the residual stream acts on the prompt's tokens once",
      );
    if (target === "kv" && action === "merge") {
      this.error(
        this.span(raw.action, raw.kv),
        "'merge kv' is not supported: a KV-cache stage keeps or drops entries ('keep kv' / 'drop kv')",
      );
    }
    if (target === "heads" && action === "merge") {
      this.error(
        this.span(raw.action, raw.heads),
        "'merge heads' is not supported: a head stage keeps or drops heads ('keep heads' / 'drop heads')",
      );
    }

    // Amount.
    let amount: Amount | undefined;
    let amountSpan: Span | undefined;
    const a = raw.amount;
    if (a !== undefined) {
      const numberSpan = this.span(a.number);
      const value = num(a.number);
      amountSpan = this.span(
        a.kind === "mass" || a.kind === "above" ? a.first : a.number,
        a.kind === "above" ? a.number : a.last,
      );
      if (target === "heads" && (a.kind === "mass" || a.kind === "above")) {
        this.error(
          amountSpan,
          `'${a.kind}' amounts are not supported for heads: write '${action} heads P%' or '${action} heads K'`,
        );
      } else if (target === "heads" && a.kind === "count" && a.last !== a.number) {
        this.error(
          amountSpan,
          `a head stage counts heads, not tokens: write '${action} heads ${clip(a.number.image)}'`,
        );
      } else if (target === "kv" && (a.kind === "mass" || a.kind === "above")) {
        this.error(
          amountSpan,
          `'${a.kind}' amounts are not supported for the KV cache: write '${action} kv P%' or '${action} kv K tokens'`,
        );
      } else if (a.kind === "percent" && !(value > 0 && value <= 100)) {
        this.error(numberSpan, `amount must be in (0, 100]%, got ${clip(a.number.image)}%`);
      } else if ((a.kind === "percent" || a.kind === "mass") && tooPrecise(value)) {
        // Counts are computed in integers from the percentage as written (passes/amount.ts).
        this.error(
          numberSpan,
          `a percentage has at most ${MAX_PERCENT_DECIMALS} decimal places, got ${clip(a.number.image)}%`,
        );
      } else if (a.kind === "count" && !(Number.isSafeInteger(value) && value > 0)) {
        this.error(
          numberSpan,
          `${target === "heads" ? "head" : "token"} count must be a positive integer, got ${clip(a.number.image)}`,
        );
      } else if (a.kind === "mass" && !(value > 0 && value <= 100)) {
        this.error(numberSpan, `mass must be in (0, 100]%, got ${clip(a.number.image)}%`);
      } else if (a.kind === "above" && !Number.isFinite(value)) {
        this.error(numberSpan, `threshold must be a finite number, got ${clip(a.number.image)}`);
      }
      amount = { kind: a.kind, value };
    }

    // Token set.
    let of: string | undefined;
    let ofSpan: Span | undefined;
    let ofEach = false;
    if (raw.of !== undefined && target === "heads") {
      this.error(this.span(raw.of), "'of SET' restricts tokens; a head stage ranks every head of the layer");
    } else if (raw.of !== undefined) {
      of = raw.of.image;
      ofSpan = this.span(raw.of);
      if (raw.each !== undefined) ofEach = true;
      if (sets.size > 0 && !sets.has(of)) {
        const suggestion = closestSet(of, sets);
        const hint = suggestion === undefined ? ` (declared: ${list(sets)})` : "";
        this.error(ofSpan, `unknown token set '${clip(of)}'${hint}`, suggestion);
      }
    }

    // Criterion (a stream stage naming a KV-only criterion was reported above).
    const criterionSpan = this.span(raw.criterion);
    let args: Record<string, ArgValue> = {};
    let argSpans: Record<string, Span> = {};
    if (info === undefined) {
      const suggestion =
        (target === "kv" ? closest(criterionName, this.criteriaFor("kv")) : undefined) ??
        closest(criterionName, this.registry.names());
      this.error(criterionSpan, `unknown criterion '${clip(raw.criterion.image)}'`, suggestion);
    } else {
      if (target === "heads" && !targetsOf(info).includes("heads")) {
        const heads = this.criteriaFor("heads");
        this.error(
          criterionSpan,
          `criterion '${info.name}' does not rank attention heads (head criteria: ${heads.length > 0 ? list(heads) : "none registered"})`,
        );
      }
      if (target === "kv" && !targetsOf(info).includes("kv")) {
        const kv = this.criteriaFor("kv");
        this.error(
          criterionSpan,
          `criterion '${info.name}' does not score the KV cache (${kv.length > 0 ? `KV-cache criteria: ${list(kv)}` : "no KV-cache criterion is registered"})`,
        );
      }
      ({ args, argSpans } = this.args(info, raw.args));
    }

    // Options: for stream stages only.
    const options: StageOption[] = [];
    const optionSpans: Span[] = [];
    const firstOption = raw.options[0]?.name;
    const lastOption = raw.options.at(-1)?.name;
    if (target !== "stream" && firstOption !== undefined && lastOption !== undefined) {
      this.error(
        this.span(firstOption, lastOption),
        `options apply to stream stages: a '${action} ${target}' stage takes no 'with' options`,
      );
    }
    const optionArgs: Partial<Record<StageOption, Record<string, ArgValue>>> = {};
    const optionArgSpans: Partial<Record<StageOption, Record<string, Span>>> = {};
    for (const { name: t, args: rawArgs } of target !== "stream" ? [] : raw.options) {
      const name = t.image.toLowerCase();
      const span = this.span(t);
      const known = STAGE_OPTIONS.find((o) => o === name);
      if (known === undefined) {
        const suggestion = closest(name, STAGE_OPTIONS);
        this.error(
          span,
          `unknown option '${clip(t.image)}'${suggestion === undefined ? ` (options: ${list(STAGE_OPTIONS)})` : ""}`,
          suggestion,
        );
      } else if (options.includes(known)) {
        this.error(span, `option '${known}' is given twice`);
      } else {
        options.push(known);
        optionSpans.push(span);
        if (rawArgs !== undefined) {
          const bound = this.args({ name: known, args: OPTION_ARGS[known] }, rawArgs, "option");
          if (Object.keys(bound.args).length > 0) {
            optionArgs[known] = bound.args;
            optionArgSpans[known] = bound.argSpans;
          }
        }
      }
    }

    // `across frames`: state carried from call to call, for stream stages only.
    let acrossSpan: Span | undefined;
    let across: (typeof ACROSS)[number] | undefined;
    if (raw.across !== undefined) {
      acrossSpan = this.span(raw.across.first, raw.across.last);
      const word = raw.across.last.image.toLowerCase();
      across = ACROSS.find((w) => w === word);
      if (across === undefined) {
        this.error(
          this.span(raw.across.last),
          `'across' takes 'frames' (state carried from one call of the model to the next), got '${clip(raw.across.last.image)}'`,
          "frames",
        );
      } else if (target !== "stream") {
        this.error(
          acrossSpan,
          `'across frames' is for stages on the residual stream: a '${action} ${target}' stage carries nothing from one frame to the next`,
        );
      }
    }

    if (this.diagnostics.length > before) return undefined;
    const stage: StageIR = {
      position,
      positionSpan,
      target,
      action,
      actionSpan,
      criterion: { name: criterionName, args, span: criterionSpan, argSpans },
      options,
      optionSpans,
      span: this.span(s.first, s.last),
    };
    if (Object.keys(optionArgs).length > 0) {
      stage.optionArgs = optionArgs;
      stage.optionArgSpans = optionArgSpans;
    }
    if (kvSpan !== undefined) stage.kvSpan = kvSpan;
    if (headsSpan !== undefined) stage.headsSpan = headsSpan;
    if (duringSpan !== undefined) {
      stage.during = "decode";
      stage.duringSpan = duringSpan;
    }
    if (layerSpan !== undefined) stage.layerSpan = layerSpan;
    if (amount !== undefined) stage.amount = amount;
    if (amountSpan !== undefined) stage.amountSpan = amountSpan;
    if (of !== undefined) stage.of = of;
    if (ofSpan !== undefined) stage.ofSpan = ofSpan;
    if (ofEach) stage.ofEach = true;
    if (across !== undefined && acrossSpan !== undefined) {
      stage.across = across;
      stage.acrossSpan = acrossSpan;
    }
    return stage;
  }

  /** Binds positional and named arguments to the declared ones and checks their types. */
  /** Binds a criterion's or an option's written arguments to its declared ones (`owner` names it in messages). */
  private args(
    info: Pick<CriterionInfo, "name" | "args">,
    raws: readonly RawArg[],
    owner: "criterion" | "option" = "criterion",
  ): { args: Record<string, ArgValue>; argSpans: Record<string, Span> } {
    const declared = Object.keys(info.args);
    const byLower = new Map(declared.map((n) => [n.toLowerCase(), n] as const));
    const bound = new Map<string, { value: ArgValue; span: Span }>();
    let sawNamed = false;
    let positional = 0;
    for (const raw of raws) {
      const valueSpan = this.span(raw.first, raw.last);
      let name: string | undefined;
      if (raw.name === undefined) {
        if (sawNamed) {
          this.error(valueSpan, "a positional argument cannot follow a named one; write 'name: value'");
          continue;
        }
        name = declared[positional++];
        if (name === undefined) {
          const takes =
            declared.length === 0
              ? "takes no arguments"
              : `takes at most ${declared.length} argument${declared.length === 1 ? "" : "s"} (${list(declared)})`;
          this.error(valueSpan, `${owner} '${info.name}' ${takes}`);
          continue;
        }
      } else {
        sawNamed = true;
        const written = raw.name.image;
        name = byLower.get(written.toLowerCase());
        if (name === undefined) {
          const suggestion = closest(written, declared);
          const hint =
            suggestion !== undefined
              ? ""
              : declared.length === 0
                ? ` ('${info.name}' takes no arguments)`
                : ` (it takes: ${list(declared)})`;
          this.error(
            this.span(raw.name),
            `unknown argument '${clip(written)}' for ${owner} '${info.name}'${hint}`,
            suggestion,
          );
          continue;
        }
      }
      if (bound.has(name)) {
        this.error(raw.name === undefined ? valueSpan : this.span(raw.name), `argument '${name}' is given twice`);
        continue;
      }
      const arg = info.args[name]!;
      const value = this.argValue(raw.value, arg.type, name, info.name, valueSpan);
      if (value !== undefined) bound.set(name, { value, span: valueSpan });
    }
    const args: Record<string, ArgValue> = {};
    const argSpans: Record<string, Span> = {};
    for (const name of declared) {
      const b = bound.get(name);
      if (b !== undefined) {
        args[name] = b.value;
        argSpans[name] = b.span;
      }
    }
    return { args, argSpans };
  }

  private argValue(v: RawValue, type: ArgType, name: string, criterion: string, span: Span): ArgValue | undefined {
    const got = v.kind === "range" ? `${clip(v.lo.image)}..${clip(v.hi.image)}` : clip(v.token.image);
    const wrong = (what: string): undefined => {
      this.error(
        span,
        `argument '${name}' of '${criterion}' must be ${what}, got ${v.kind === "identifier" ? `'${got}'` : got}`,
      );
      return undefined;
    };
    switch (type) {
      case "number":
        if (v.kind !== "number" || !Number.isFinite(num(v.token))) return wrong("a number");
        return num(v.token);
      case "integer":
        if (v.kind !== "number" || !Number.isSafeInteger(num(v.token))) return wrong("an integer");
        return num(v.token);
      case "range": {
        if (v.kind !== "range") return wrong("a range like 8..10");
        const lo = num(v.lo);
        const hi = num(v.hi);
        if (!Number.isFinite(lo) || !Number.isFinite(hi)) return wrong("a range of finite numbers");
        if (lo > hi) return wrong("a range lo..hi with lo <= hi");
        return [lo, hi];
      }
      case "identifier":
        if (v.kind !== "identifier") return wrong("a name");
        return v.token.image;
    }
  }
}

/** Validates parsed statements; problems go to the returned diagnostics. */
export function toIR(
  statements: readonly ParsedStatement[],
  file: string,
  lines: SourceLines,
  registry: CriterionRegistry,
): { parts: IRParts; diagnostics: Diagnostic[] } {
  const b = new Builder(file, lines, registry);
  const parts = b.build(statements);
  return { parts, diagnostics: b.diagnostics };
}
