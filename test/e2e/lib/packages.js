// Fetches the Debian packages of the e2e host (Xen 4.17, its tools, a Linux kernel, busybox) with
// apt-get download and unpacks them with dpkg -x into test/e2e/cache/, keyed by the exact package
// versions so that a second run reuses them and a Debian update is picked up by itself.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** The packages the e2e host needs (see docs/e2e.md); the kernel is resolved at run time. */
export const PACKAGES = [
  'xen-hypervisor-4.17-amd64',
  'xen-utils-4.17',
  'xen-utils-common',
  'xenstore-utils',
  'libxenmisc4.17',
  'libxengnttab1',
  'libxenevtchn1',
  'libxencall1',
  'libxenforeignmemory1',
  'libxendevicemodel1',
  'libxentoolcore1',
  'libxentoollog1',
  'libxenhypfs1',
  'libxenstore4',
  'libyajl2',
  'busybox-static',
  // The mirror check (dom0/checks/disk-mirror.sh): QEMU serving a qdisk (libxl starts
  // /usr/libexec/xen-qemu-system-i386), qemu-nbd and qemu-img for the destination export.
  'qemu-system-xen',
  'qemu-utils',
];

export class PackageError extends Error {
  name = 'PackageError';
}

/** apt-get download failed: maybe stale lists naming versions the mirror dropped. */
class DownloadError extends PackageError {
  name = 'DownloadError';
}

function run(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}

/** The linux-image-6.1.0-*-amd64 that linux-image-amd64 currently depends on. */
function kernelPackage() {
  const out = run('apt-cache', ['depends', 'linux-image-amd64']);
  const m = /Depends:\s+(linux-image-[0-9][^\s]*-amd64)/.exec(out);
  return m ? m[1] : undefined;
}

/** Candidate version of each package, from apt's lists (no network). */
function candidateVersions(names) {
  const out = run('apt-cache', ['policy', ...names]);
  const versions = new Map();
  let current;
  for (const line of out.split('\n')) {
    const head = /^(\S+):$/.exec(line);
    if (head) current = head[1];
    const cand = /^\s+Candidate:\s+(\S+)/.exec(line);
    if (cand && current && cand[1] !== '(none)') versions.set(current, cand[1]);
  }
  return versions;
}

function resolve(log) {
  let kernel = kernelPackage();
  if (!kernel) {
    // A fresh CI machine may have no apt lists yet.
    log('apt lists incomplete: running apt-get update');
    run('apt-get', ['update', '-qq'], { stdio: ['ignore', 'ignore', 'pipe'] });
    kernel = kernelPackage();
  }
  if (!kernel) throw new PackageError('apt-cache depends linux-image-amd64 names no linux-image-*-amd64');
  const names = [...PACKAGES, kernel];
  const versions = candidateVersions(names);
  const missing = names.filter((n) => !versions.has(n));
  if (missing.length > 0) throw new PackageError(`apt knows no candidate for: ${missing.join(', ')}`);
  return { kernel, pins: names.map((n) => `${n}=${versions.get(n)}`) };
}

/**
 * Makes sure every package is downloaded and unpacked. Returns the unpacked root, the kernel
 * package name and a key that changes whenever any package version changes.
 */
export function fetchPackages(cacheDir, log) {
  try {
    return fetchOnce(cacheDir, log);
  } catch (err) {
    if (!(err instanceof DownloadError)) throw err;
    // Stale lists: refresh once, resolve the versions again and retry.
    log(`${err.message.trim().split('\n').pop()}: apt-get update and retry`);
    run('apt-get', ['update', '-qq'], { stdio: ['ignore', 'ignore', 'pipe'] });
    return fetchOnce(cacheDir, log);
  }
}

function fetchOnce(cacheDir, log) {
  fs.mkdirSync(cacheDir, { recursive: true });
  const current = path.join(cacheDir, 'packages-current.json');
  let resolved;
  try {
    resolved = resolve(log);
  } catch (err) {
    // Offline: fall back to the last complete set, if any.
    if (fs.existsSync(current)) {
      const prev = JSON.parse(fs.readFileSync(current, 'utf8'));
      if (fs.existsSync(path.join(prev.root, '.complete'))) {
        log(`apt unavailable (${err.message}); reusing cached packages ${prev.key}`);
        return prev;
      }
    }
    throw err;
  }
  const key = createHash('sha256').update(resolved.pins.join('\n')).digest('hex').slice(0, 16);
  const root = path.join(cacheDir, `root-${key}`);
  const result = { key, root, kernel: resolved.kernel, pins: resolved.pins };
  if (fs.existsSync(path.join(root, '.complete'))) {
    log(`packages cached (${key})`);
    return result;
  }
  const debDir = path.join(cacheDir, 'debs');
  fs.mkdirSync(debDir, { recursive: true });
  const have = new Set(fs.readdirSync(debDir));
  // apt-get download names files <name>_<version with ':' as %3a>_<arch>.deb
  const wanted = resolved.pins.map((pin) => {
    const [name, version] = pin.split('=');
    return { pin, file: `${name}_${version.replace(/:/g, '%3a')}_amd64.deb` };
  });
  const toGet = wanted.filter((w) => !have.has(w.file)).map((w) => w.pin);
  if (toGet.length > 0) {
    log(`apt-get download ${toGet.length} packages`);
    try {
      run('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', ...toGet], { cwd: debDir });
    } catch (err) {
      throw new DownloadError(`apt-get download failed: ${err.stderr || err.message}`);
    }
  }
  fs.rmSync(root, { recursive: true, force: true });
  fs.mkdirSync(root, { recursive: true });
  for (const w of wanted) {
    const deb = path.join(debDir, w.file);
    if (!fs.existsSync(deb)) throw new PackageError(`missing after download: ${w.file}`);
    run('dpkg', ['-x', deb, root]);
  }
  fs.writeFileSync(path.join(root, '.complete'), resolved.pins.join('\n') + '\n');
  fs.writeFileSync(current, JSON.stringify(result, null, 2));
  // Old roots and debs of other versions are dead weight.
  const keep = new Set(wanted.map((w) => w.file));
  for (const f of fs.readdirSync(debDir)) if (!keep.has(f)) fs.rmSync(path.join(debDir, f));
  for (const d of fs.readdirSync(cacheDir)) {
    if (d.startsWith('root-') && d !== `root-${key}`) fs.rmSync(path.join(cacheDir, d), { recursive: true });
  }
  return result;
}
