// Fetches the Debian packages of one e2e host (its Xen, tools, kernel, busybox, the userspace
// programs and every library they need, all from THAT release) with apt-get download through a
// private apt configuration per release (the machine's own apt sources and lists stay untouched,
// so a Debian 12 or 13 machine fetches both hosts alike), and unpacks them with dpkg -x into
// test/e2e/cache/<host>/, keyed by the exact package versions.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** The e2e hosts: a Debian release and the Xen it ships. */
export const HOSTS = {
  debian12: { suite: 'bookworm', xen: '4.17', label: 'Debian 12' },
  debian13: { suite: 'trixie', xen: '4.20', label: 'Debian 13' },
};

/** The packages a host needs (see docs/e2e.md); the kernel and the libraries are resolved at run time. */
export function hostPackages(xen) {
  return [
    `xen-hypervisor-${xen}-amd64`,
    `xen-utils-${xen}`,
    'xen-utils-common',
    'xenstore-utils',
    `libxenmisc${xen}`,
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
    // Programs the hotplug scripts and the checks need beyond busybox (docs/e2e.md), taken from
    // the host's own release so that they match its libraries.
    'bash',
    'util-linux',
    'mount',
    'coreutils',
    'rsync',
    // The mirror check (dom0/checks/disk-mirror.sh): QEMU serving a qdisk (libxl starts
    // /usr/libexec/xen-qemu-system-i386), qemu-nbd and qemu-img for the destination export.
    'qemu-system-xen',
    'qemu-utils',
    // Its keymaps: QEMU reads one even for libxl's `-vnc none`.
    'qemu-system-data',
    // node (a generic Linux build) needs these besides libc.
    'libstdc++6',
    'libgcc-s1',
    // Libraries of the (pseudo-)essential set that depending packages do not declare (libext2fs,
    // which Xen's fsimage plugins use, links libcom_err).
    'libcom-err2',
  ];
}

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

/** The Debian mirror this machine's apt uses (first main-archive URI), as fresh-debian.sh finds it. */
export function machineMirror(etc = '/etc/apt') {
  const uris = [];
  const partsDir = path.join(etc, 'sources.list.d');
  if (fs.existsSync(partsDir)) {
    for (const f of fs.readdirSync(partsDir).sort()) {
      if (!f.endsWith('.sources')) continue;
      for (const m of fs.readFileSync(path.join(partsDir, f), 'utf8').matchAll(/^URIs:\s*(.+)$/gm))
        uris.push(...m[1].trim().split(/\s+/));
    }
  }
  const list = path.join(etc, 'sources.list');
  if (fs.existsSync(list)) {
    for (const m of fs.readFileSync(list, 'utf8').matchAll(/^deb\s+(?:\[[^\]]*\]\s+)?(\S+)/gm))
      uris.push(m[1]);
  }
  const mirror = uris.find((u) => /^https?:\/\//.test(u) && !/security/.test(u));
  if (!mirror) throw new PackageError(`no Debian mirror found in ${etc}/sources.list{,.d/*.sources}`);
  return mirror.replace(/\/+$/, '');
}

const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
/** Package lists older than this are refreshed before resolving versions. */
const LISTS_MAX_AGE_MS = 6 * 3600 * 1000;

/**
 * apt-get/apt-cache on one release through a private configuration: its own sources file, lists,
 * cache, and an empty dpkg status (so that the machine's installed versions never become the
 * candidates of the other release).
 */
export class ReleaseApt {
  constructor(dir, suite, mirror) {
    this.dir = dir;
    this.suite = suite;
    fs.mkdirSync(path.join(dir, 'lists/partial'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'cache/archives/partial'), { recursive: true });
    if (!fs.existsSync(KEYRING)) throw new PackageError(`${KEYRING} missing: install debian-archive-keyring`);
    fs.writeFileSync(path.join(dir, 'sources.list'), `deb [signed-by=${KEYRING}] ${mirror} ${suite} main\n`);
    fs.writeFileSync(path.join(dir, 'status'), '');
    this.opts = [
      '-o',
      `Dir::Etc::sourcelist=${path.join(dir, 'sources.list')}`,
      '-o',
      'Dir::Etc::sourceparts=/nonexistent',
      '-o',
      `Dir::State::lists=${path.join(dir, 'lists')}`,
      '-o',
      `Dir::Cache=${path.join(dir, 'cache')}`,
      '-o',
      `Dir::State::status=${path.join(dir, 'status')}`,
      '-o',
      'APT::Sandbox::User=root',
    ];
  }

  cache(args) {
    return run('apt-cache', [...this.opts, ...args]);
  }

  get(args, opts = {}) {
    return run('apt-get', ['-q', ...this.opts, ...args], opts);
  }

  /** Time since our last successful update (apt keeps the mirror's mtimes on the list files). */
  listsAgeMs() {
    const stamp = path.join(this.dir, 'updated');
    const lists = path.join(this.dir, 'lists');
    if (!fs.existsSync(stamp) || !fs.readdirSync(lists).some((f) => f.endsWith('_Packages'))) return Infinity;
    return Date.now() - fs.statSync(stamp).mtimeMs;
  }

  update(log) {
    log(`apt-get update (${this.suite}, private lists in ${path.relative(process.cwd(), this.dir)})`);
    try {
      this.get(['update']);
    } catch (err) {
      throw new PackageError(
        `apt-get update for ${this.suite} failed: ${(err.stderr || err.message).trim()}`,
      );
    }
  }

  ensureLists(log) {
    if (this.listsAgeMs() > LISTS_MAX_AGE_MS) this.update(log);
  }
}

/** The linux-image-<version>-amd64 that linux-image-amd64 currently depends on. */
function kernelPackage(apt) {
  const m = /Depends:\s+(linux-image-[0-9][^\s]*-amd64)/.exec(apt.cache(['depends', 'linux-image-amd64']));
  return m ? m[1] : undefined;
}

/** Candidate version of each package, from the private lists. */
function candidateVersions(apt, names) {
  const versions = new Map();
  let current;
  for (const line of apt.cache(['policy', ...names]).split('\n')) {
    const head = /^(\S+):$/.exec(line);
    if (head) current = head[1];
    const cand = /^\s+Candidate:\s+(\S+)/.exec(line);
    if (cand && current && cand[1] !== '(none)') versions.set(current, cand[1]);
  }
  return versions;
}

/**
 * The run-time library packages (lib*, zlib*; not -dev) that the given packages depend on, recursively
 * through library packages only: what the staged programs can load, without python, perl or
 * systemd that the tool packages also pull in for scripts the e2e never runs.
 */
function libraryClosure(apt, names) {
  const all = new Set(names);
  let frontier = [...names];
  while (frontier.length > 0) {
    const out = apt.cache([
      'depends',
      '--no-recommends',
      '--no-suggests',
      '--no-conflicts',
      '--no-breaks',
      '--no-replaces',
      '--no-enhances',
      ...frontier,
    ]);
    const next = [];
    for (const line of out.split('\n')) {
      // "  Depends: libc6", "  PreDepends: libzstd1", " |Depends: liba"; providers of a virtual
      // package are indented further, and virtual names are "<...>".
      const m = /^\s+\|?(?:Pre)?Depends:\s+([a-z0-9][a-z0-9.+-]+)(?::any)?\s*$/.exec(line);
      if (!m) continue;
      const dep = m[1];
      if (!/^(lib|zlib)/.test(dep) || dep.endsWith('-dev') || all.has(dep)) continue;
      all.add(dep);
      next.push(dep);
    }
    frontier = next;
  }
  return [...all].filter((n) => !names.includes(n)).sort();
}

function resolve(apt, host, log) {
  apt.ensureLists(log);
  let kernel = kernelPackage(apt);
  if (!kernel) {
    apt.update(log);
    kernel = kernelPackage(apt);
  }
  if (!kernel) throw new PackageError(`${host.suite}: linux-image-amd64 names no linux-image-*-amd64`);
  const base = [...hostPackages(host.xen), kernel];
  const names = [...base, ...libraryClosure(apt, hostPackages(host.xen))];
  const versions = candidateVersions(apt, names);
  const missing = base.filter((n) => !versions.has(n));
  if (missing.length > 0)
    throw new PackageError(`${host.suite}: apt knows no candidate for: ${missing.join(', ')}`);
  const known = names.filter((n) => versions.has(n));
  return { kernel, pins: known.map((n) => `${n}=${versions.get(n)}`) };
}

/**
 * Makes sure every package of the host is downloaded and unpacked. Returns the unpacked root, the
 * kernel package name and a key that changes whenever any package version changes.
 */
export function fetchPackages(cacheDir, host, log) {
  fs.mkdirSync(cacheDir, { recursive: true });
  const apt = new ReleaseApt(path.join(cacheDir, 'apt'), host.suite, machineMirror());
  try {
    return fetchOnce(cacheDir, apt, host, log);
  } catch (err) {
    if (!(err instanceof DownloadError)) throw err;
    // Stale lists: refresh once, resolve the versions again and retry.
    log(`${err.message.trim().split('\n').pop()}: apt-get update and retry`);
    apt.update(log);
    return fetchOnce(cacheDir, apt, host, log);
  }
}

function fetchOnce(cacheDir, apt, host, log) {
  const current = path.join(cacheDir, 'packages-current.json');
  let resolved;
  try {
    resolved = resolve(apt, host, log);
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
    log(`packages cached (${key}, ${resolved.pins.length} packages)`);
    return result;
  }
  const debDir = path.join(cacheDir, 'debs');
  fs.mkdirSync(debDir, { recursive: true });
  const have = new Set(fs.readdirSync(debDir));
  // apt-get download names files <name>_<version with ':' as %3a>_<arch>.deb (arch all for some)
  const wanted = resolved.pins.map((pin) => {
    const [name, version] = pin.split('=');
    const base = `${name}_${version.replace(/:/g, '%3a')}_`;
    return { pin, base };
  });
  const fileOf = (w, files) => files.find((f) => f.startsWith(w.base) && f.endsWith('.deb'));
  const toGet = wanted.filter((w) => !fileOf(w, [...have])).map((w) => w.pin);
  if (toGet.length > 0) {
    log(`apt-get download ${toGet.length} packages (${host.suite})`);
    try {
      apt.get(['download', ...toGet], { cwd: debDir });
    } catch (err) {
      throw new DownloadError(`apt-get download failed: ${err.stderr || err.message}`);
    }
  }
  const files = fs.readdirSync(debDir);
  fs.rmSync(root, { recursive: true, force: true });
  fs.mkdirSync(root, { recursive: true });
  const keep = new Set();
  for (const w of wanted) {
    const f = fileOf(w, files);
    if (!f) throw new PackageError(`missing after download: ${w.pin}`);
    keep.add(f);
    run('dpkg', ['-x', path.join(debDir, f), root]);
  }
  fs.writeFileSync(path.join(root, '.complete'), resolved.pins.join('\n') + '\n');
  fs.writeFileSync(current, JSON.stringify(result, null, 2));
  // Old roots and debs of other versions are dead weight.
  for (const f of files) if (!keep.has(f)) fs.rmSync(path.join(debDir, f));
  for (const d of fs.readdirSync(cacheDir)) {
    if (d.startsWith('root-') && d !== `root-${key}`) fs.rmSync(path.join(cacheDir, d), { recursive: true });
  }
  return result;
}
