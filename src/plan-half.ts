/**
 * Criteria that drop only from the less important half of the prunable tokens (`dropsAtMostHalf`:
 * redundancy, Zero-TPrune's S-stage): the plan proves, before anything is emitted, that the stage's
 * amount never reaches the important half, since the score would then drop its tokens as well.
 */
import type { Amount } from "../grammar/ir.js";
import { keepCountStatic } from "../passes/amount.js";
import { mergedRows, type KindFacts, type Refusal } from "../passes/kinds/kind.js";

/** Why the stage's amount could drop more than ⌊Np/2⌋ of its Np prunable tokens, or undefined. */
export function halfRefusal(f: KindFacts, amount: Amount, drop: boolean): Refusal | undefined {
  const rule = f.criterion.dropsAtMostHalf;
  if (!rule) return undefined;
  const name = f.criterion.name;
  if (f.groups || f.fold || mergedRows(f))
    return {
      why: `${name} ${rule}, which ranks single tokens, and this stage keeps whole ${f.groups?.unit ?? "merge group"}s`,
      at: "criterion",
    };
  if (f.perExample)
    return {
      why: `${f.perExample.what}, and ${name} ${rule}: it may drop at most half of the prunable tokens, which needs one count known before the run`,
      at: "amount",
    };
  if (typeof f.tokensIn !== "number") {
    // drop P% with P < 50 drops round-half-up(P%·Np) ≤ ⌊Np/2⌋ for every Np; keep P% with P ≥ 50 keeps ≥ ⌈Np/2⌉.
    if (amount.kind === "percent" && (drop ? amount.value < 50 : amount.value >= 50)) return undefined;
    return {
      why: `${name} ${rule}: it may drop at most half of the prunable tokens, and this model's token count (${String(f.tokensIn)}) is known only at run time; write 'drop P%' with P below 50 or 'keep P%' with P at least 50, which hold for every count`,
      at: "amount",
    };
  }
  const np = f.tokensIn - f.prefix;
  const share = (value: number) => (amount.kind === "count" ? value : keepCountStatic(value, np));
  const dropped = drop ? share(amount.value) : np - share(amount.value);
  // A stage keeping no token at all is refused by the count's own check, with its own message.
  if (dropped <= Math.floor(np / 2) || dropped >= np) return undefined;
  return {
    why: `${name} ${rule}: it may drop at most ${Math.floor(np / 2)} of the ${np} prunable tokens after layer ${f.layer}, and this stage would drop ${dropped}`,
    at: "amount",
  };
}
