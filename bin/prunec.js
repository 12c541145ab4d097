#!/usr/bin/env node
// The CLI is built by `npm run build` (run by `npm ci`/`npm install` through `prepare`) into one
// bundled module, dist/prunec.mjs (scripts/bundle-cli.mjs): it loads far faster than the ~700 files
// it is made of.
import { main } from "../dist/prunec.mjs";

process.exitCode = await main(process.argv.slice(2));
