// The program's version (package.json), read once: the agent announces it, `--version` prints it.
import { readFileSync } from 'node:fs';

let cached: string | undefined;

export function packageVersion(): string {
  if (cached !== undefined) return cached;
  // dist/src/version.js and src/version.ts are two and one levels below package.json.
  for (const rel of ['../../package.json', '../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === 'xen-devmigrate' && typeof pkg.version === 'string') return (cached = pkg.version);
    } catch {
      // try the next level
    }
  }
  return (cached = 'unknown');
}
