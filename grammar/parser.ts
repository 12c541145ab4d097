/**
 * The chevrotain parser for one statement (the caller splits the token stream at newlines and `;`).
 *
 *   statement := 'model' NAME
 *              | 'tokens' SET '=' ( 'input' SET | 'after' SET )
 *              | position? ('during' 'decode')? action
 *   position  := 'after' ( 'layer' NUMBER | 'encoder' ) | 'in' ( 'layer' NUMBER | 'layers' NUMBER '..' NUMBER )
 *              | 'before' 'layer' NUMBER
 *   action    := ('keep'|'drop'|'merge') ('kv' | 'heads')? amount? ('of' 'each'? SET)? 'by' NAME arglist?
 *                ('with' option (',' option)*)? ('across' NAME)?
 *   option    := NAME arglist?
 *   arglist   := '(' args? ')'
 *   amount    := NUMBER ('%' | 'tokens')? | 'mass' NUMBER '%' | 'above' NUMBER
 *   args      := arg (',' arg)*
 *   arg       := (NAME ':')? value
 *   value     := NUMBER ('..' NUMBER)? | NAME
 *
 * NAME is any word, keywords included; SET is an identifier that is not a keyword (token set names:
 * `tokens SET = input SET | after SET`, `of SET`). Which positions go with `kv`, and that a stage
 * without `kv` has a position, is checked in to-ir.ts.
 */
import { EmbeddedActionsParser, type IToken } from "chevrotain";
import {
  Above,
  Across,
  After,
  Before,
  By,
  Colon,
  Identifier,
  Comma,
  DotDot,
  Encoder,
  Equals,
  In,
  Input,
  Keep,
  Drop,
  During,
  Decode,
  Kv,
  Heads,
  Layer,
  Layers,
  LParen,
  Mass,
  Merge,
  Model,
  NumberLit,
  Of,
  Each,
  PARSER_TOKENS,
  Percent,
  RParen,
  Tokens,
  With,
  Word,
} from "./lexer.js";
import { SKIP_GRAMMAR_CHECKS } from "./checks.js";
import type { RawAmount, RawArg, RawOption, RawPosition, RawStage, RawStatement, RawValue } from "./syntax.js";

export class SpecParser extends EmbeddedActionsParser {
  constructor() {
    super([...PARSER_TOKENS], { recoveryEnabled: true, maxLookahead: 2, skipValidations: SKIP_GRAMMAR_CHECKS });
    this.performSelfAnalysis();
  }

  readonly statement = this.RULE(
    "statement",
    (): RawStatement =>
      this.OR<RawStatement>([
        { ALT: () => this.SUBRULE(this.modelStatement) },
        { ALT: () => this.SUBRULE(this.tokensStatement) },
        { ALT: () => this.SUBRULE(this.stageStatement) },
      ]),
  );

  private readonly modelStatement = this.RULE("modelStatement", (): RawStatement => {
    this.CONSUME(Model);
    return { kind: "model", name: this.CONSUME(Word) };
  });

  private readonly tokensStatement = this.RULE("tokensStatement", (): RawStatement => {
    this.CONSUME(Tokens);
    const name = this.CONSUME1(Identifier);
    this.CONSUME(Equals);
    return this.OR([
      {
        ALT: () => {
          this.CONSUME(Input);
          return { kind: "tokens", name, sourceKind: "input", source: this.CONSUME2(Identifier) };
        },
      },
      {
        ALT: () => {
          this.CONSUME(After);
          return { kind: "tokens", name, sourceKind: "after", source: this.CONSUME3(Identifier) };
        },
      },
    ]);
  });

  private readonly stageStatement = this.RULE("stageStatement", (): RawStage => {
    const position = this.OPTION5(() => this.SUBRULE(this.position));
    const during = this.OPTION7(() => ({ first: this.CONSUME(During), last: this.CONSUME(Decode) }));
    const action = this.OR([
      { ALT: () => this.CONSUME(Keep) },
      { ALT: () => this.CONSUME(Drop) },
      { ALT: () => this.CONSUME(Merge) },
    ]);
    const target = this.OPTION6(() =>
      this.OR2([{ ALT: () => ({ kv: this.CONSUME(Kv) }) }, { ALT: () => ({ heads: this.CONSUME(Heads) }) }]),
    );
    const amount = this.OPTION(() => this.SUBRULE(this.amount));
    const of = this.OPTION1(() => {
      this.CONSUME(Of);
      const each = this.OPTION9(() => this.CONSUME(Each));
      return { set: this.CONSUME(Identifier), each };
    });
    this.CONSUME(By);
    const criterion = this.CONSUME1(Word);
    const args = this.OPTION2(() => this.SUBRULE(this.argList)) ?? [];
    const options: RawOption[] = [];
    this.OPTION4(() => {
      this.CONSUME(With);
      options.push(this.SUBRULE(this.withOption));
      this.MANY(() => {
        this.CONSUME(Comma);
        options.push(this.SUBRULE1(this.withOption));
      });
    });
    const across = this.OPTION8(() => ({ first: this.CONSUME(Across), last: this.CONSUME4(Word) }));
    const stage: RawStage = { kind: "stage", action, criterion, args, options };
    if (across !== undefined) stage.across = across;
    if (position !== undefined) stage.position = position;
    if (during !== undefined) stage.during = during;
    if (target?.kv !== undefined) stage.kv = target.kv;
    if (target?.heads !== undefined) stage.heads = target.heads;
    if (amount !== undefined) stage.amount = amount;
    if (of !== undefined) {
      stage.of = of.set;
      if (of.each !== undefined) stage.each = of.each;
    }
    return stage;
  });

  private readonly withOption = this.RULE("withOption", (): RawOption => {
    const name = this.CONSUME(Word);
    const args = this.OPTION(() => this.SUBRULE(this.argList));
    return args === undefined ? { name } : { name, args };
  });

  private readonly argList = this.RULE("argList", (): RawArg[] => {
    const args: RawArg[] = [];
    this.CONSUME(LParen);
    this.OPTION(() => {
      args.push(this.SUBRULE(this.arg));
      this.MANY(() => {
        this.CONSUME(Comma);
        args.push(this.SUBRULE1(this.arg));
      });
    });
    this.CONSUME(RParen);
    return args;
  });

  private readonly position = this.RULE(
    "position",
    (): RawPosition =>
      this.OR([
        {
          ALT: () => {
            const first = this.CONSUME(After);
            return this.OR1([
              {
                ALT: () => {
                  this.CONSUME(Layer);
                  return { kind: "after-layer", first, layer: this.CONSUME(NumberLit) };
                },
              },
              { ALT: () => ({ kind: "after-encoder", first, last: this.CONSUME(Encoder) }) },
            ]);
          },
        },
        {
          ALT: () => {
            const first = this.CONSUME(In);
            return this.OR2([
              {
                ALT: () => {
                  this.CONSUME1(Layer);
                  return { kind: "in-layer", first, layer: this.CONSUME1(NumberLit) };
                },
              },
              {
                ALT: () => {
                  this.CONSUME(Layers);
                  const from = this.CONSUME3(NumberLit);
                  this.CONSUME(DotDot);
                  return { kind: "in-layers", first, from, to: this.CONSUME4(NumberLit) };
                },
              },
            ]);
          },
        },
        {
          ALT: () => {
            const first = this.CONSUME(Before);
            this.CONSUME2(Layer);
            return { kind: "before-layer", first, layer: this.CONSUME2(NumberLit) };
          },
        },
      ]),
  );

  private readonly amount = this.RULE(
    "amount",
    (): RawAmount =>
      this.OR([
        {
          ALT: () => {
            const number = this.CONSUME(NumberLit);
            return this.OR1([
              { ALT: () => ({ kind: "percent", number, last: this.CONSUME(Percent) }) },
              { ALT: () => ({ kind: "count", number, last: this.CONSUME(Tokens) }) },
              { ALT: () => ({ kind: "count", number, last: number }) },
            ]);
          },
        },
        {
          ALT: () => {
            const first = this.CONSUME(Mass);
            const number = this.CONSUME1(NumberLit);
            return { kind: "mass", first, number, last: this.CONSUME1(Percent) };
          },
        },
        {
          ALT: () => {
            const first = this.CONSUME(Above);
            return { kind: "above", first, number: this.CONSUME2(NumberLit) };
          },
        },
      ]),
  );

  private readonly arg = this.RULE(
    "arg",
    (): RawArg =>
      this.OR([
        {
          ALT: () => {
            const name = this.CONSUME(Word);
            this.CONSUME(Colon);
            const { value, first, last } = this.SUBRULE(this.value);
            return { name, value, first, last };
          },
        },
        { ALT: () => this.SUBRULE1(this.value) },
      ]),
  );

  private readonly value = this.RULE("value", (): { value: RawValue; first: IToken; last: IToken } =>
    this.OR([
      {
        ALT: () => {
          const lo = this.CONSUME(NumberLit);
          const hi = this.OPTION(() => {
            this.CONSUME(DotDot);
            return this.CONSUME1(NumberLit);
          });
          return hi === undefined
            ? { value: { kind: "number", token: lo }, first: lo, last: lo }
            : { value: { kind: "range", lo, hi }, first: lo, last: hi };
        },
      },
      {
        ALT: () => {
          const token = this.CONSUME(Word);
          return { value: { kind: "identifier", token }, first: token, last: token };
        },
      },
    ]),
  );
}
