// Builds the boot images of one e2e host from its release's unpacked Debian packages: the Xen
// binary, the dom0 kernel, a dom0 initramfs (busybox, Xen userspace, bash and friends, every
// library their ELF NEEDED entries name, resolved in THAT release's packages, never the
// machine's, the kernel modules dom0 needs with their dependencies) and a tiny PVH guest initramfs.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const E2E = path.dirname(HERE);
const REPO = path.resolve(E2E, '../..');

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

/** Programs from the release's packages copied into dom0: the hotplug scripts are bash and want
 * util-linux flock and losetup (busybox has no flock; its losetup -a prints another format) and
 * coreutils stat; the agent's disk copy runs rsync. */
const PROGRAMS = ['bash', 'flock', 'losetup', 'stat', 'rsync'];
/** Where the packages put programs (Debian 12 still has /bin and /sbin, 13 is merged into /usr). */
const PROGRAM_DIRS = ['usr/bin', 'bin', 'usr/sbin', 'sbin'];
/** Library folders searched in the unpacked packages, as the dynamic loader's defaults on Debian. */
const LIB_DIRS = ['usr/lib/x86_64-linux-gnu', 'lib/x86_64-linux-gnu', 'usr/lib64', 'lib64', 'usr/lib', 'lib'];
/** Programs from the unpacked packages for the mirror check: the device model libxl starts for a
 * qdisk, and the destination's export tools (their libraries come through the ELF walk). */
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
 * A path inside root, with symlinks resolved inside root too (absolute targets are root-relative).
 * The unpacked packages have no usrmerge links: /lib64/x is also looked for as /usr/lib64/x.
 */
function realInRoot(root, rel, depth = 0) {
  rel = rel.replace(/^\/+/, '');
  const merged = /^(lib|lib64|bin|sbin)\//.test(rel)
    ? `usr/${rel}`
    : rel.replace(/^usr\/(lib|lib64|bin|sbin)\//, '$1/');
  let p;
  let st;
  for (const cand of [rel, merged]) {
    try {
      st = fs.lstatSync(path.join(root, cand));
      p = path.join(root, cand);
      rel = cand;
      break;
    } catch {
      // try the other spelling
    }
  }
  if (p === undefined) return undefined;
  if (!st.isSymbolicLink()) return p;
  if (depth > 16) throw new ImageError(`symlink loop at ${p}`);
  const target = fs.readlinkSync(p);
  const next = target.startsWith('/') ? target.slice(1) : path.join(path.dirname(rel), target);
  return realInRoot(root, next, depth + 1);
}

/** NEEDED sonames, RUNPATH/RPATH entries and the interpreter of an ELF file (readelf, binutils). */
export function elfDeps(file) {
  let out;
  try {
    out = execFileSync('readelf', ['-d', '-l', '-W', file], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    throw new ImageError(`readelf ${file}: ${(err.stderr || err.message).trim()}`);
  }
  const needed = [...out.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
  const runpath = [
    ...out.matchAll(/\((?:RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): \[([^\]]+)\]/g),
  ].flatMap((m) => m[1].split(':'));
  const interp = /Requesting program interpreter: ([^\]]+)\]/.exec(out)?.[1];
  return { needed, runpath, interp };
}

/**
 * Copies into the stage every shared library the given ELF files need (transitively), each
 * resolved in the unpacked release root (RUNPATH first, then the loader's default folders), at
 * usr/lib/x86_64-linux-gnu/<soname>; plus the dynamic loader. A soname the release's packages
 * lack is an ImageError naming it and who needs it. `elves`: [{ file, origin }] where origin is
 * the file's folder relative to the root ($ORIGIN).
 */
export function copyLibrariesFrom(root, stage, elves) {
  const libDir = path.join(stage, 'usr/lib/x86_64-linux-gnu');
  const done = new Set();
  const queue = [...elves];
  let copied = 0;
  while (queue.length > 0) {
    const { file, origin } = queue.shift();
    const { needed, runpath, interp } = elfDeps(file);
    if (interp && !done.has(interp)) {
      done.add(interp);
      const src = realInRoot(root, interp.replace(/^\//, ''));
      if (!src) throw new ImageError(`${file}: interpreter ${interp} not in the packages`);
      copyReal(src, path.join(stage, interp.replace(/^\/(lib|lib64)\//, 'usr/$1/').replace(/^\//, '')));
      copied++;
    }
    const dirs = [
      ...runpath.map((r) => r.replace(/\$ORIGIN|\$\{ORIGIN\}/g, `/${origin}`).replace(/^\//, '')),
      ...LIB_DIRS,
    ];
    for (const soname of needed) {
      if (done.has(soname)) continue;
      done.add(soname);
      let src;
      let found;
      for (const d of dirs) {
        src = realInRoot(root, path.join(d, soname));
        if (src) {
          found = d;
          break;
        }
      }
      if (!src)
        throw new ImageError(
          `${soname} (needed by ${path.basename(file)}) is in none of the release's packages`,
        );
      // A library in a private folder (RUNPATH) keeps its place; the others join the multiarch folder.
      const dst = LIB_DIRS.includes(found) ? path.join(libDir, soname) : path.join(stage, found, soname);
      if (!fs.existsSync(dst)) {
        copyReal(src, dst);
        copied++;
      }
      queue.push({ file: src, origin: found });
    }
  }
  return copied;
}

/** Where a program of the release's packages is, relative to root (undefined: not there). */
function findProgram(root, name) {
  return PROGRAM_DIRS.map((d) => path.join(d, name)).find((rel) => realInRoot(root, rel) !== undefined);
}

const MODULE_RE = /\.ko(\.xz)?$/;

/** All .ko / .ko.xz files of the kernel (Debian 13 compresses them), by normalised module name. */
function moduleIndex(modRoot) {
  const index = new Map();
  for (const f of walkFiles(path.join(modRoot, 'kernel'))) {
    if (MODULE_RE.test(f)) index.set(path.basename(f).replace(MODULE_RE, '').replace(/-/g, '_'), f);
  }
  return index;
}

/** A module's bytes, uncompressed (busybox insmod takes plain .ko files). */
function moduleBytes(file) {
  if (!file.endsWith('.xz')) return fs.readFileSync(file);
  return execFileSync('xz', ['-dc', file], { maxBuffer: 64 * 1048576 });
}

function moduleDepends(file) {
  const buf = moduleBytes(file);
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
  // Debian 12 ships /lib/modules, 13 /usr/lib/modules.
  const modRoot = [path.join(root, 'usr/lib/modules', kver), path.join(root, 'lib/modules', kver)].find((d) =>
    fs.existsSync(d),
  );
  if (!modRoot) throw new ImageError(`no modules of kernel ${kver} in the packages`);
  const order = resolveModules(modRoot, wanted).map((rel) => {
    const plain = rel.replace(/\.xz$/, '');
    const dst = path.join(stage, 'usr/lib/modules', kver, plain);
    fs.mkdirSync(path.dirname(dst), { recursive: true });
    fs.writeFileSync(dst, moduleBytes(path.join(modRoot, rel)));
    return plain;
  });
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
  const busybox = realInRoot(root, findProgram(root, 'busybox') ?? 'bin/busybox');
  if (!busybox) throw new ImageError('busybox not in the packages');
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

function buildDom0(root, xen, kver, stage, out, nodeBinary) {
  stageBase(root, stage);
  const xenDir = `usr/lib/xen-${xen}`;
  // The Xen userspace, as packaged; Debian's /usr/sbin wrappers are replaced by direct links.
  copyTree(path.join(root, xenDir), path.join(stage, xenDir));
  copyTree(path.join(root, 'etc/xen'), path.join(stage, 'etc/xen'));
  for (const f of fs.readdirSync(path.join(root, 'usr/bin'))) {
    if (f.startsWith('xenstore')) copyTree(path.join(root, 'usr/bin', f), path.join(stage, 'usr/bin', f));
  }
  // Every Xen library, also those nothing NEEDs but the agent dlopens (libxenctrl, libxenguest).
  const xenLibs = path.join(root, 'usr/lib/x86_64-linux-gnu');
  for (const f of fs.readdirSync(xenLibs)) {
    if (/^lib(xen|xl)/.test(f))
      copyTree(path.join(xenLibs, f), path.join(stage, 'usr/lib/x86_64-linux-gnu', f));
  }
  const xenBin = path.join(stage, xenDir, 'bin');
  for (const f of fs.readdirSync(xenBin)) {
    const dst = path.join(stage, 'usr/sbin', f);
    if (fs.existsSync(dst)) fs.rmSync(dst);
    fs.symlinkSync(`/${xenDir}/bin/${f}`, dst);
  }
  for (const name of PROGRAMS) {
    const rel = findProgram(root, name);
    if (!rel) throw new ImageError(`${name} not in the packages`);
    const dst = path.join(stage, 'usr', rel.replace(/^usr\//, ''));
    if (fs.existsSync(dst) || fs.lstatSync(path.dirname(dst)).isSymbolicLink())
      fs.rmSync(dst, { force: true });
    copyReal(realInRoot(root, rel), dst);
  }
  for (const p of PACKAGE_PROGRAMS) copyReal(realInRoot(root, p), path.join(stage, p));
  // QEMU loads its keymap even for `-vnc none` (libxl's default): "could not read keymap file".
  const keymaps = path.join(root, 'usr/share/qemu/keymaps');
  if (!fs.existsSync(keymaps))
    throw new ImageError('usr/share/qemu/keymaps not in the packages (qemu-system-data)');
  fs.cpSync(keymaps, path.join(stage, 'usr/share/qemu/keymaps'), { recursive: true, dereference: true });
  // Every ELF staged so far, and node (it comes through the share; its libraries must be here).
  const elves = walkFiles(stage)
    .filter((f) => isElf(f) && !f.endsWith('.ko'))
    .map((f) => ({ file: f, origin: path.dirname(path.relative(stage, f)) }));
  elves.push({ file: nodeBinary, origin: 'usr/bin' });
  // koffi's native addon, loaded by node from the share's node_modules.
  const addon = path.join(REPO, 'node_modules/@koromix/koffi-linux-x64/linux_x64/koffi.node');
  if (fs.existsSync(addon)) elves.push({ file: addon, origin: 'usr/lib' });
  const libs = copyLibrariesFrom(root, stage, elves);
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
  copyReal(path.join(E2E, 'guest/disk-writer.sh'), path.join(stage, 'disk-writer.sh'));
  fs.chmodSync(path.join(stage, 'init'), 0o755);
  packCpio(stage, out);
}

/** Hash of everything an image depends on: package versions, builder sources, node. */
function imageKey(pkgKey, nodeBinary) {
  const h = createHash('sha256').update(pkgKey);
  for (const f of ['lib/initramfs.js', 'dom0/init.sh', 'guest/init.sh', 'guest/disk-writer.sh'])
    h.update(fs.readFileSync(path.join(E2E, f)));
  const st = fs.statSync(nodeBinary);
  h.update(`${fs.realpathSync(nodeBinary)}:${st.size}:${st.mtimeMs}`);
  return h.digest('hex').slice(0, 16);
}

/** Builds (or reuses) one host's images under cacheDir/images; returns their folder and what went in. */
export function buildImages(cacheDir, host, pkgs, nodeBinary, log) {
  const key = imageKey(pkgs.key, nodeBinary);
  const dir = path.join(cacheDir, 'images', key);
  const kver = pkgs.kernel.replace(/^linux-image-/, '');
  if (fs.existsSync(path.join(dir, '.complete'))) {
    log(`images cached (${key})`);
    return { dir, key, kver, cached: true };
  }
  fs.rmSync(path.join(cacheDir, 'images'), { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  sh(`gunzip -c "${path.join(pkgs.root, `boot/xen-${host.xen}-amd64.gz`)}" > "${path.join(dir, 'xen')}"`);
  fs.copyFileSync(path.join(pkgs.root, `boot/vmlinuz-${kver}`), path.join(dir, 'vmlinuz'));
  const stage = path.join(cacheDir, 'stage');
  fs.rmSync(stage, { recursive: true, force: true });
  const d = buildDom0(
    pkgs.root,
    host.xen,
    kver,
    path.join(stage, 'dom0'),
    path.join(dir, 'dom0.cpio.gz'),
    nodeBinary,
  );
  buildGuest(pkgs.root, kver, path.join(stage, 'guest'), path.join(dir, 'guest.cpio.gz'));
  fs.rmSync(stage, { recursive: true, force: true });
  // node travels through the share (95 MB would slow the initramfs down); keep a copy next to
  // the images so that the share holds exactly the binary whose libraries were staged.
  fs.copyFileSync(nodeBinary, path.join(dir, 'node'));
  fs.chmodSync(path.join(dir, 'node'), 0o755);
  fs.writeFileSync(path.join(dir, '.complete'), `${kver}\n`);
  const size = (f) => `${(fs.statSync(path.join(dir, f)).size / 1048576).toFixed(1)} MB`;
  log(
    `built images ${key}: dom0 ${size('dom0.cpio.gz')} (${d.libs} libraries, ${d.mods} modules), guest ${size('guest.cpio.gz')}`,
  );
  return { dir, key, kver, cached: false };
}
