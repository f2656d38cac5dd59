// Builds the boot images of the e2e host from the unpacked Debian packages: the Xen binary, the
// dom0 kernel, a dom0 initramfs (busybox, Xen userspace, bash, the libraries an ldd walk finds,
// the kernel modules dom0 needs with their dependencies) and a tiny PVH guest initramfs.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const E2E = path.dirname(HERE);

/** Modules dom0 loads (in this order, after their dependencies). */
export const DOM0_MODULES = [
  'xen-privcmd',
  'xenfs',
  'xen-evtchn',
  'xen-gntdev',
  'xen-gntalloc',
  'xen-blkback',
  'xen-netback',
  'virtio_pci',
  '9pnet_virtio',
  '9p',
  'loop',
  'bridge',
];
/** Modules the guest loads so that its disk and network frontends connect. */
export const GUEST_MODULES = ['xen-blkfront', 'xen-netfront'];

/** Host programs copied into dom0: the hotplug scripts are bash and want util-linux flock and
 * losetup (busybox has no flock; its losetup -a prints another format) and coreutils stat. */
const HOST_PROGRAMS = ['/bin/bash', '/usr/bin/flock', '/usr/sbin/losetup', '/usr/bin/stat', '/usr/bin/rsync'];
/** Programs from the unpacked packages for the mirror check: the device model libxl starts for a
 * qdisk, and the destination's export tools (their libraries come through the ldd walk). */
const PACKAGE_PROGRAMS = ['usr/libexec/xen-qemu-system-i386', 'usr/bin/qemu-nbd', 'usr/bin/qemu-img'];

export class ImageError extends Error {
  name = 'ImageError';
}

function sh(script, opts = {}) {
  return execFileSync('bash', ['-c', script], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    ...opts,
  });
}

function isElf(file) {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(4);
    return fs.readSync(fd, b, 0, 4, 0) === 4 && b.toString('latin1') === '\x7fELF';
  } finally {
    fs.closeSync(fd);
  }
}

function walkFiles(dir, out = []) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walkFiles(p, out);
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/** Copies src to dst (creating parents), following symlinks so that dst is a real file. */
function copyReal(src, dst) {
  fs.mkdirSync(path.dirname(dst), { recursive: true });
  fs.copyFileSync(fs.realpathSync(src), dst);
  fs.chmodSync(dst, fs.statSync(src).mode & 0o7777);
}

/**
 * ldd walk: every shared library the given ELF files need, resolved first against the staged
 * tree's own library folder (the Debian Xen libraries), then the host's (Debian 12 too).
 * Libraries outside the stage are copied in at the path ldd reports.
 */
function copyLibraries(stage, elves) {
  const libDir = path.join(stage, 'usr/lib/x86_64-linux-gnu');
  const needed = new Set();
  for (const elf of elves) {
    let out;
    try {
      out = execFileSync('ldd', [elf], {
        encoding: 'utf8',
        env: { ...process.env, LD_LIBRARY_PATH: libDir },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch {
      continue; // static binary ("not a dynamic executable")
    }
    for (const line of out.split('\n')) {
      if (/not found/.test(line)) throw new ImageError(`ldd ${elf}: ${line.trim()}`);
      const m = /(?:=>\s*)?(\/[^\s]+)\s+\(0x/.exec(line);
      if (m && !m[1].startsWith(stage)) needed.add(m[1]);
    }
  }
  for (const lib of needed) {
    // usrmerge on the host: /lib/... is /usr/lib/...; the stage uses the same symlinks.
    const rel = lib.replace(/^\/(lib|lib64)\//, 'usr/$1/').replace(/^\//, '');
    const dst = path.join(stage, rel);
    if (!fs.existsSync(dst)) copyReal(lib, dst);
  }
  return needed.size;
}

/** All .ko files of the kernel, by normalised module name (dashes as underscores). */
function moduleIndex(modRoot) {
  const index = new Map();
  for (const f of walkFiles(path.join(modRoot, 'kernel'))) {
    if (f.endsWith('.ko')) index.set(path.basename(f, '.ko').replace(/-/g, '_'), f);
  }
  return index;
}

function moduleDepends(file) {
  const buf = fs.readFileSync(file);
  const at = buf.indexOf('\0depends=');
  if (at < 0) return [];
  const start = at + '\0depends='.length;
  const end = buf.indexOf(0, start);
  const list = buf.toString('latin1', start, end);
  return list === '' ? [] : list.split(',');
}

/** The modules and their dependencies, dependencies first; built-in modules are skipped. */
export function resolveModules(modRoot, wanted) {
  const index = moduleIndex(modRoot);
  const builtin = new Set(
    fs
      .readFileSync(path.join(modRoot, 'modules.builtin'), 'utf8')
      .split('\n')
      .map((l) => path.basename(l, '.ko').replace(/-/g, '_')),
  );
  const order = [];
  const seen = new Set();
  const visit = (name, chain) => {
    const key = name.replace(/-/g, '_');
    if (seen.has(key)) return;
    seen.add(key);
    const file = index.get(key);
    if (!file) {
      if (builtin.has(key)) return;
      throw new ImageError(`kernel module ${name} not found (needed by ${chain.join(' <- ') || 'e2e'})`);
    }
    for (const dep of moduleDepends(file)) visit(dep, [name, ...chain]);
    order.push(path.relative(modRoot, file));
  };
  for (const w of wanted) visit(w, []);
  return order;
}

function stageModules(root, kver, stage, wanted) {
  const modRoot = path.join(root, 'lib/modules', kver);
  const order = resolveModules(modRoot, wanted);
  for (const rel of order) copyReal(path.join(modRoot, rel), path.join(stage, 'usr/lib/modules', kver, rel));
  fs.mkdirSync(path.join(stage, 'etc/e2e'), { recursive: true });
  fs.writeFileSync(
    path.join(stage, 'etc/e2e/modules'),
    order.map((r) => `/lib/modules/${kver}/${r}`).join('\n') + '\n',
  );
  return order.length;
}

/** usrmerge layout plus busybox applets that do not shadow a real program. */
function stageBase(root, stage) {
  for (const d of [
    'usr/bin',
    'usr/sbin',
    'usr/lib',
    'usr/lib64',
    'proc',
    'sys',
    'dev',
    'run',
    'tmp',
    'mnt',
    'var',
    'etc',
    'root',
  ]) {
    fs.mkdirSync(path.join(stage, d), { recursive: true });
  }
  for (const [l, t] of [
    ['bin', 'usr/bin'],
    ['sbin', 'usr/sbin'],
    ['lib', 'usr/lib'],
    ['lib64', 'usr/lib64'],
  ]) {
    fs.symlinkSync(t, path.join(stage, l));
  }
  const busybox = path.join(root, 'bin/busybox');
  copyReal(busybox, path.join(stage, 'usr/bin/busybox'));
  const applets = execFileSync(busybox, ['--list-full'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  for (const a of applets) {
    const rel = a.replace(/^(bin|sbin)\//, 'usr/$1/');
    const dst = path.join(stage, rel);
    if (fs.existsSync(dst) || rel === 'usr/bin/busybox') continue;
    fs.mkdirSync(path.dirname(dst), { recursive: true });
    fs.symlinkSync('/usr/bin/busybox', dst);
  }
  fs.writeFileSync(path.join(stage, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  fs.writeFileSync(path.join(stage, 'etc/group'), 'root:x:0:\n');
}

function copyTree(src, dst) {
  if (fs.existsSync(src)) fs.cpSync(src, dst, { recursive: true, verbatimSymlinks: true });
}

function packCpio(stage, out) {
  // newc, owned by root, gzip -1: the kernel unpacks it under emulation, size matters less than time.
  sh(
    `cd "${stage}" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1 > "${out}.tmp" && mv "${out}.tmp" "${out}"`,
  );
}

function buildDom0(root, kver, stage, out, nodeBinary) {
  stageBase(root, stage);
  // The Xen userspace, as packaged; Debian's /usr/sbin wrappers are replaced by direct links.
  copyTree(path.join(root, 'usr/lib/xen-4.17'), path.join(stage, 'usr/lib/xen-4.17'));
  copyTree(path.join(root, 'usr/lib/x86_64-linux-gnu'), path.join(stage, 'usr/lib/x86_64-linux-gnu'));
  copyTree(path.join(root, 'etc/xen'), path.join(stage, 'etc/xen'));
  for (const f of fs.readdirSync(path.join(root, 'usr/bin'))) {
    if (f.startsWith('xenstore')) copyTree(path.join(root, 'usr/bin', f), path.join(stage, 'usr/bin', f));
  }
  const xenBin = path.join(stage, 'usr/lib/xen-4.17/bin');
  for (const f of fs.readdirSync(xenBin)) {
    const dst = path.join(stage, 'usr/sbin', f);
    if (fs.existsSync(dst)) fs.rmSync(dst);
    fs.symlinkSync(`/usr/lib/xen-4.17/bin/${f}`, dst);
  }
  for (const p of HOST_PROGRAMS) {
    const dst = path.join(stage, 'usr', p.replace(/^\/usr/, ''));
    if (fs.existsSync(dst)) fs.rmSync(dst);
    copyReal(p, dst);
  }
  for (const p of PACKAGE_PROGRAMS) copyReal(path.join(root, p), path.join(stage, p));
  const elves = walkFiles(stage).filter((f) => isElf(f) && !f.endsWith('.ko'));
  // node itself comes through the 9p share; its libraries must be in the initramfs.
  const libs = copyLibraries(stage, [...elves, nodeBinary]);
  const mods = stageModules(root, kver, stage, DOM0_MODULES);
  copyReal(path.join(E2E, 'dom0/init.sh'), path.join(stage, 'init'));
  fs.chmodSync(path.join(stage, 'init'), 0o755);
  packCpio(stage, out);
  return { libs, mods };
}

function buildGuest(root, kver, stage, out) {
  stageBase(root, stage);
  stageModules(root, kver, stage, GUEST_MODULES);
  copyReal(path.join(E2E, 'guest/init.sh'), path.join(stage, 'init'));
  fs.chmodSync(path.join(stage, 'init'), 0o755);
  packCpio(stage, out);
}

/** Hash of everything an image depends on: package versions, builder sources, node, bash. */
function imageKey(pkgKey, nodeBinary) {
  const h = createHash('sha256').update(pkgKey);
  for (const f of ['lib/initramfs.js', 'dom0/init.sh', 'guest/init.sh'])
    h.update(fs.readFileSync(path.join(E2E, f)));
  for (const p of [nodeBinary, ...HOST_PROGRAMS]) {
    const st = fs.statSync(p);
    h.update(`${fs.realpathSync(p)}:${st.size}:${st.mtimeMs}`);
  }
  return h.digest('hex').slice(0, 16);
}

/** Builds (or reuses) the images; returns their folder and what went in. */
export function buildImages(cacheDir, pkgs, nodeBinary, log) {
  const key = imageKey(pkgs.key, nodeBinary);
  const dir = path.join(cacheDir, 'images', key);
  const kver = pkgs.kernel.replace(/^linux-image-/, '');
  if (fs.existsSync(path.join(dir, '.complete'))) {
    log(`images cached (${key})`);
    return { dir, key, kver, cached: true };
  }
  fs.rmSync(path.join(cacheDir, 'images'), { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  sh(`gunzip -c "${path.join(pkgs.root, 'boot/xen-4.17-amd64.gz')}" > "${path.join(dir, 'xen')}"`);
  fs.copyFileSync(path.join(pkgs.root, `boot/vmlinuz-${kver}`), path.join(dir, 'vmlinuz'));
  const stage = path.join(cacheDir, 'stage');
  fs.rmSync(stage, { recursive: true, force: true });
  const d = buildDom0(pkgs.root, kver, path.join(stage, 'dom0'), path.join(dir, 'dom0.cpio.gz'), nodeBinary);
  buildGuest(pkgs.root, kver, path.join(stage, 'guest'), path.join(dir, 'guest.cpio.gz'));
  fs.rmSync(stage, { recursive: true, force: true });
  // node travels through the share (95 MB would slow the initramfs down); keep a copy next to
  // the images so that the share holds exactly the binary whose libraries were staged.
  fs.copyFileSync(nodeBinary, path.join(dir, 'node'));
  fs.chmodSync(path.join(dir, 'node'), 0o755);
  fs.writeFileSync(path.join(dir, '.complete'), `${kver}\n`);
  const size = (f) => `${(fs.statSync(path.join(dir, f)).size / 1048576).toFixed(1)} MB`;
  log(
    `built images ${key}: dom0 ${size('dom0.cpio.gz')} (${d.libs} host libs, ${d.mods} modules), guest ${size('guest.cpio.gz')}`,
  );
  return { dir, key, kver, cached: false };
}
