#!/usr/bin/env node
import { main } from '../lib/cli.mjs';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`phi2-bench: ${err?.stack ?? err}\n`);
    process.exitCode = 1;
  },
);
