// Where the test world's native parts live: xen-mocks/ in the source tree and its build/ folder.
// Resolved from this file so that it works from the sources (vitest) and from dist/ alike.
import { existsSync } from 'node:fs';
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

export const XENSTORED_BIN = '/usr/lib/xen-4.17/bin/xenstored';
export const TEST_XENSTORE_BIN = '/usr/lib/xen-4.17/bin/test-xenstore';
/** The real binary: /usr/bin/xenstore-control is Debian's wrapper, which refuses to run without Xen. */
export const XENSTORE_CONTROL_BIN = '/usr/lib/xen-4.17/bin/xenstore-control';
