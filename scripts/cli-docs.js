#!/usr/bin/env node
// Writes the manual page and the bash completion generated from the command definitions
// (dist/src/cli/cli-docs.js; run `npm run build` first, or `npm run docs:cli` which does).
// test/unit/cli-docs.test.ts fails when the committed files are not what this writes.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { renderManPage, renderCompletion, MAN_PAGE_PATH, COMPLETION_PATH } = await import(
  join(root, 'dist/src/cli/cli-docs.js')
);
const { packageVersion } = await import(join(root, 'dist/src/version.js'));
for (const [rel, text] of [
  [MAN_PAGE_PATH, renderManPage(packageVersion())],
  [COMPLETION_PATH, renderCompletion()],
]) {
  mkdirSync(dirname(join(root, rel)), { recursive: true });
  writeFileSync(join(root, rel), text);
  console.log(`wrote ${rel}`);
}
