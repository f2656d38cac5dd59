// Where the test world's native parts live: xen-mocks/ in the source tree and its build/ folder,
// and the installed Xen release's own tools (xenstored, test-xenstore) under /usr/lib/xen-4.<minor>.
// Resolved from this file so that it works from the sources (vitest) and from dist/ alike.
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Folder holding xen-mocks/Makefile; XEN_MOCKS_DIR overrides. */
export function mocksDir(): string {
  const fromEnv = process.env['XEN_MOCKS_DIR'];
  if (fromEnv) return resolve(fromEnv);
  const here = dirname(fileURLToPath(import.meta.url));
  // Sources: <repo>/xen-mocks; compiled: <repo>/dist/xen-mocks.
  for (const candidate of [here, join(here, '..', '..', 'xen-mocks')]) {
    if (existsSync(join(candidate, 'Makefile'))) return candidate;
  }
  return here;
}

/** xen-mocks/build: xsd-shim.so, libxenctrl-sim.so, libxenguest-sim.so, xs-ring-bridge, xs-tool. */
export function buildDir(): string {
  return join(mocksDir(), 'build');
}

/**
 * The Xen tools folder of the release installed here (Debian: /usr/lib/xen-4.17 on 12,
 * /usr/lib/xen-4.20 on 13): the newest /usr/lib/xen-4.<minor> holding bin/xenstored.
 * XEN_MOCKS_XEN_DIR overrides. Falls back to the 4.17 path so that errors name a real place.
 */
export function xenToolsDir(root = '/usr/lib'): string {
  const fromEnv = process.env['XEN_MOCKS_XEN_DIR'];
  if (fromEnv) return resolve(fromEnv);
  let names: string[] = [];
  try {
    names = readdirSync(root);
  } catch {
    // no /usr/lib: keep the fallback
  }
  const minors = names
    .map((n) => /^xen-4\.(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null && existsSync(join(root, m[0], 'bin', 'xenstored')))
    .map((m) => Number(m[1]))
    .sort((a, b) => b - a);
  return join(root, `xen-4.${minors[0] ?? 17}`);
}

/** "4.17", "4.20": the release whose xenstored the test world runs. */
export function xenToolsVersion(dir = xenToolsDir()): string {
  return /xen-(4\.\d+)$/.exec(dir)?.[1] ?? 'unknown';
}

export const XEN_TOOLS_DIR = xenToolsDir();
export const XENSTORED_BIN = join(XEN_TOOLS_DIR, 'bin', 'xenstored');
export const TEST_XENSTORE_BIN = join(XEN_TOOLS_DIR, 'bin', 'test-xenstore');
/** The real binary: /usr/bin/xenstore-control is Debian's wrapper, which refuses to run without Xen. */
export const XENSTORE_CONTROL_BIN = join(XEN_TOOLS_DIR, 'bin', 'xenstore-control');
