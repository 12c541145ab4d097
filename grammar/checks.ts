/**
 * Whether chevrotain validates the grammar when the lexer and parser are built. The bundled CLI
 * (scripts/bundle-cli.mjs) defines `__PRUNEC_BUNDLED__` and skips the checks, which cost a third
 * of a small compile (issue 19); tests, the library and the playground run from source and keep
 * them, so a grammar mistake still fails there first, as chevrotain's docs advise.
 */
declare const __PRUNEC_BUNDLED__: boolean | undefined;

export const SKIP_GRAMMAR_CHECKS: boolean = typeof __PRUNEC_BUNDLED__ !== "undefined" && __PRUNEC_BUNDLED__ === true;
