// Builds the dom0 disk image of the two-host deployment e2e: a Debian 13 (trixie) system with
// systemd, Xen 4.20, openssh-server and nodejs, from Debian's own packages (debootstrap minbase +
// apt-get in a chroot), plus the small boot units of test/deploy/image/. Cached under
// test/deploy/cache/ by the exact versions of the packages it installs (docs/deploy-e2e.md).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DEPLOY = path.dirname(HERE);
export const SUITE = 'trixie';
export const XEN = '4.20';
/** What the dom0 runs (apt resolves their dependencies); the .deb's own Depends are among them
 * so that `dpkg -i` needs no network on the dom0. */
export const PACKAGES = [
  'systemd-sysv',
  'udev',
  'kmod',
  'linux-image-amd64',
  'initramfs-tools',
  `xen-hypervisor-${XEN}-amd64`,
  `xen-utils-${XEN}`,
  'xenstore-utils',
  'openssh-server',
  'openssh-client',
  'iproute2',
  'nodejs',
  'rsync',
  'busybox-static',
  'procps',
];
/** Modules of the guest's initramfs: its disk and network frontends. */
const GUEST_MODULES = ['xen-blkfront', 'xen-netfront'];
/** Modules of the dom0's initramfs: its root disk (virtio_pci is built in; ext4's metadata
 * checksums want a crc32c driver, qemu64 has no SSE4.2 for crc32c-intel). */
const DOM0_INITRD_MODULES = ['virtio_blk', 'crc32c_generic', 'ext4'];
const IMAGE_SIZE = '3G';
/** Units of Debian's packages that a dom0 under test does not need (masked in the image): the
 * login prompts, timers (apt's would run apt-get at boot: Persistent=), pseudo file systems
 * nothing here mounts on, TPM/PCR measurement, first-boot and random-seed bookkeeping. udev,
 * journald, logind-free ssh, xen.service and xendomains stay. */
const MASKED_UNITS = [
  'serial-getty@hvc0.service',
  'getty@tty1.service',
  'getty.target',
  'apt-daily.timer',
  'apt-daily-upgrade.timer',
  'dpkg-db-backup.timer',
  'fstrim.timer',
  'e2scrub_all.timer',
  'e2scrub_reap.service',
  'systemd-tmpfiles-clean.timer',
  'dev-hugepages.mount',
  'dev-mqueue.mount',
  'proc-sys-fs-binfmt_misc.automount',
  'sys-fs-fuse-connections.mount',
  'sys-kernel-config.mount',
  'sys-kernel-debug.mount',
  'sys-kernel-tracing.mount',
  'systemd-ask-password-console.path',
  'systemd-ask-password-wall.path',
  'systemd-binfmt.service',
  'systemd-firstboot.service',
  'systemd-hibernate-clear.service',
  'systemd-pcrmachine.service',
  'systemd-pcrphase-sysinit.service',
  'systemd-pcrphase.service',
  'systemd-pcrextend.socket',
  'systemd-pcrlock.socket',
  'systemd-tpm2-setup-early.service',
  'systemd-tpm2-setup.service',
  'systemd-random-seed.service',
  'systemd-update-done.service',
  'systemd-journal-flush.service',
  'systemd-logind.service',
  'systemd-sysext.socket',
  'modprobe@drm.service',
  'modprobe@efi_pstore.service',
  'modprobe@fuse.service',
  'modprobe@dm_mod.service',
  'modprobe@configfs.service',
  'systemd-pstore.service',
  // Coldplug: modprobe for every emulated PCI device, 40 s of the boot emulated. Nothing here
  // needs it: the root is mounted by the initrd, deploy-setup loads the NIC and 9p modules, and
  // the events that matter (Xen backends, loop devices) come later, handled by the running udevd.
  'systemd-udev-trigger.service',
  'systemd-udev-load-credentials.service',
  'systemd-remount-fs.service',
  'systemd-modules-load.service',
  'systemd-sysctl.service',
  'systemd-user-sessions.service',
  'systemd-hostnamed.socket',
  'systemd-creds.socket',
  'run-lock.mount',
  'tmp.mount',
];

export class RootfsError extends Error {
  name = 'RootfsError';
}

const run = (cmd, args, opts = {}) =>
  execFileSync(cmd, args, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 64 << 20,
    timeout: 900_000,
    ...opts,
  });

/** The Debian mirror this machine's apt uses (its deb822 or one-line sources), for debootstrap. */
export function debianMirror() {
  const dir = '/etc/apt/sources.list.d';
  const texts = [];
  if (fs.existsSync(dir))
    for (const f of fs.readdirSync(dir)) texts.push(fs.readFileSync(path.join(dir, f), 'utf8'));
  if (fs.existsSync('/etc/apt/sources.list')) texts.push(fs.readFileSync('/etc/apt/sources.list', 'utf8'));
  for (const t of texts) {
    for (const stanza of t.split(/\n\s*\n/)) {
      const uri = /^URIs:\s*(\S+)/m.exec(stanza)?.[1];
      const suites = /^Suites:\s*(.*)$/m.exec(stanza)?.[1] ?? '';
      if (uri && /\b(bookworm|trixie)\b/.test(suites) && !/security/.test(suites))
        return uri.replace(/\/$/, '');
    }
    const line = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(bookworm|trixie)\s+main/m.exec(t);
    if (line) return line[1].replace(/\/$/, '');
  }
  throw new RootfsError('no Debian mirror found in /etc/apt/sources.list{,.d}');
}

/** apt-get/apt-cache options of a private trixie configuration (the machine's apt is untouched). */
function aptOptions(aptDir) {
  return [
    '-o',
    `Dir::Etc::sourcelist=${path.join(aptDir, 'sources.list')}`,
    '-o',
    `Dir::Etc::sourceparts=${path.join(aptDir, 'sources.list.d')}`,
    '-o',
    `Dir::State::lists=${path.join(aptDir, 'lists')}`,
    '-o',
    `Dir::State::status=${path.join(aptDir, 'status')}`,
    '-o',
    `Dir::Cache=${path.join(aptDir, 'cache')}`,
    '-o',
    'APT::Sandbox::User=root',
  ];
}

/** The candidate version of every package (and the kernel image linux-image-amd64 names). */
function resolveVersions(cacheDir, mirror, log) {
  const aptDir = path.join(cacheDir, 'apt');
  fs.mkdirSync(path.join(aptDir, 'lists/partial'), { recursive: true });
  fs.mkdirSync(path.join(aptDir, 'sources.list.d'), { recursive: true });
  fs.mkdirSync(path.join(aptDir, 'cache/archives/partial'), { recursive: true });
  fs.writeFileSync(
    path.join(aptDir, 'sources.list'),
    `deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror} ${SUITE} main\n`,
  );
  if (!fs.existsSync(path.join(aptDir, 'status'))) fs.writeFileSync(path.join(aptDir, 'status'), '');
  const opts = aptOptions(aptDir);
  log(`apt-get update (${SUITE}, private lists)`);
  run('apt-get', [...opts, 'update', '-qq']);
  const depends = run('apt-cache', [...opts, 'depends', 'linux-image-amd64']);
  const kernel = /Depends:\s+(linux-image-[0-9][^\s]*-amd64)/.exec(depends)?.[1];
  if (!kernel) throw new RootfsError('apt-cache depends linux-image-amd64 names no kernel image');
  const names = [...PACKAGES, kernel];
  const policy = run('apt-cache', [...opts, 'policy', ...names]);
  const versions = new Map();
  let current;
  for (const line of policy.split('\n')) {
    const head = /^(\S+):$/.exec(line);
    if (head) current = head[1];
    const cand = /^\s+Candidate:\s+(\S+)/.exec(line);
    if (cand && current && cand[1] !== '(none)') versions.set(current, cand[1]);
  }
  const missing = names.filter((n) => !versions.has(n));
  if (missing.length > 0) throw new RootfsError(`no ${SUITE} candidate for: ${missing.join(', ')}`);
  return { kernel, pins: names.map((n) => `${n}=${versions.get(n)}`) };
}

function filesHash(h, dir) {
  for (const f of fs.readdirSync(dir).sort()) {
    const p = path.join(dir, f);
    if (fs.statSync(p).isDirectory()) filesHash(h, p);
    else h.update(`${path.relative(DEPLOY, p)}\0`).update(fs.readFileSync(p));
  }
}

/** Key of the image: package versions, this builder, the baked files, the guest's init. */
function imageKey(pins) {
  const h = createHash('sha256').update(pins.join('\n'));
  h.update(fs.readFileSync(fileURLToPath(import.meta.url)));
  filesHash(h, path.join(DEPLOY, 'image'));
  filesHash(h, path.join(DEPLOY, 'initrd'));
  for (const f of ['guest/init.sh', '../e2e/guest/disk-writer.sh'])
    h.update(fs.readFileSync(path.join(DEPLOY, f)));
  return h.digest('hex').slice(0, 16);
}

/** Runs a script as root in a private mount namespace: its mounts vanish with it. */
function inNamespace(script, log, what) {
  const t0 = Date.now();
  try {
    run('unshare', ['--mount', '--propagation', 'private', 'sh', '-ec', script]);
  } catch (err) {
    throw new RootfsError(
      `${what} failed: ${(err.stderr || err.stdout || err.message).trim().split('\n').slice(-15).join('\n')}`,
    );
  }
  log(`${what}: ${((Date.now() - t0) / 1000).toFixed(0)} s`);
}

function buildTree(tree, mirror, pins, log) {
  fs.rmSync(tree, { recursive: true, force: true });
  fs.mkdirSync(tree, { recursive: true });
  inNamespace(
    `debootstrap --variant=minbase ${SUITE} '${tree}' '${mirror}' >'${tree}.debootstrap.log' 2>&1 || { tail -n 20 '${tree}.debootstrap.log' >&2; exit 1; }`,
    log,
    'debootstrap --variant=minbase',
  );
  // Services must not start inside the chroot; the policy goes once the packages are in.
  fs.writeFileSync(path.join(tree, 'usr/sbin/policy-rc.d'), '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  fs.copyFileSync('/etc/resolv.conf', path.join(tree, 'etc/resolv.conf'));
  inNamespace(
    [
      `mount -t proc proc '${tree}/proc'`,
      `mount -t sysfs sys '${tree}/sys'`,
      `mount --bind /dev '${tree}/dev'`,
      `DEBIAN_FRONTEND=noninteractive chroot '${tree}' apt-get install -y -q --no-install-recommends ${pins.join(' ')} >'${tree}.apt.log' 2>&1 || { tail -n 30 '${tree}.apt.log' >&2; exit 1; }`,
      `chroot '${tree}' apt-get clean`,
    ].join('\n'),
    log,
    'apt-get install in the chroot',
  );
  inNamespace(
    [
      // What systemd would otherwise do on the first boot (ConditionNeedsUpdate): done here once.
      `chroot '${tree}' ldconfig`,
      `chroot '${tree}' journalctl --update-catalog`,
      `touch '${tree}/etc/.updated' '${tree}/var/.updated'`,
    ].join('\n'),
    log,
    'first-boot work in the chroot',
  );
  fs.rmSync(path.join(tree, 'usr/sbin/policy-rc.d'));
}

/** The test image's own files (image/), host-key removal, fstab, the units enabled. */
function customise(tree) {
  const img = path.join(DEPLOY, 'image');
  for (const f of fs.readdirSync(img)) {
    const dst = f.endsWith('.service') ? `etc/systemd/system/${f}` : `usr/local/sbin/${f}`;
    fs.copyFileSync(path.join(img, f), path.join(tree, dst));
    fs.chmodSync(path.join(tree, dst), f.endsWith('.service') ? 0o644 : 0o755);
  }
  for (const [unit, target] of [
    ['deploy-setup.service', 'sysinit.target'],
    ['deploy-ready.service', 'multi-user.target'],
  ]) {
    const wants = path.join(tree, `etc/systemd/system/${target}.wants`);
    fs.mkdirSync(wants, { recursive: true });
    fs.symlinkSync(`/etc/systemd/system/${unit}`, path.join(wants, unit));
  }
  // No login prompt on the Xen console (the harness reads it), and none of what a dom0 under test
  // does not use: every unit started costs a fork and exec or more, seconds emulated.
  for (const unit of MASKED_UNITS) {
    const link = path.join(tree, 'etc/systemd/system', unit);
    fs.rmSync(link, { force: true });
    fs.symlinkSync('/dev/null', link);
  }
  for (const t of ['timers.target.wants', 'getty.target.wants'])
    fs.rmSync(path.join(tree, 'etc/systemd/system', t), { recursive: true, force: true });
  // Host keys are made per run (deploy-setup installs them).
  for (const f of fs.readdirSync(path.join(tree, 'etc/ssh')))
    if (f.startsWith('ssh_host_')) fs.rmSync(path.join(tree, 'etc/ssh', f));
  // The initrd mounts the root (rw, noatime); an fstab line for it would make systemd wait for
  // dev-vda.device, which only udev's coldplug (masked) would announce.
  fs.writeFileSync(
    path.join(tree, 'etc/fstab'),
    '# / is mounted by the initrd (test/deploy/initrd/init.sh)\n',
  );
  fs.writeFileSync(path.join(tree, 'etc/hostname'), 'deploy-dom0\n');
  fs.rmSync(path.join(tree, 'etc/resolv.conf'), { force: true });
  fs.writeFileSync(path.join(tree, 'etc/machine-id'), '');
}

function packCpio(stage, out) {
  run('bash', [
    '-c',
    `cd '${stage}' && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1 > '${out}'`,
  ]);
}

/** The named modules and their dependencies, dependencies first, as paths (.ko) under the
 * kernel's module folder; modinfo of the tree's own kmod reads them. Built-in ones are skipped. */
function moduleOrder(tree, kver, names) {
  const order = [];
  const seen = new Set();
  const visit = (name) => {
    if (seen.has(name)) return;
    seen.add(name);
    const info = (field) => run('chroot', [tree, 'modinfo', '-k', kver, '-F', field, name]).trim();
    const file = run('chroot', [tree, 'modinfo', '-k', kver, '-n', name]).trim();
    if (file === '(builtin)' || file === '') return;
    for (const dep of info('depends').split(',').filter(Boolean)) visit(dep);
    order.push(path.relative(`/lib/modules/${kver}`, file.replace(/^\/usr/, '')).replace(/\.xz$/, ''));
  };
  for (const m of names) visit(m);
  return order;
}

/** A fresh initramfs stage: busybox (every applet linked) from the tree, and the named modules
 * (with their dependencies) decompressed, listed in load order in etc/e2e/modules. */
function stageBusybox(tree, kver, stage, modules) {
  fs.rmSync(stage, { recursive: true, force: true });
  for (const d of ['usr/bin', 'usr/sbin', 'proc', 'sys', 'dev', 'etc/e2e', 'tmp', 'root'])
    fs.mkdirSync(path.join(stage, d), { recursive: true });
  for (const [l, t] of [
    ['bin', 'usr/bin'],
    ['sbin', 'usr/sbin'],
    ['lib', 'usr/lib'],
  ])
    fs.symlinkSync(t, path.join(stage, l));
  fs.copyFileSync(path.join(tree, 'usr/bin/busybox'), path.join(stage, 'usr/bin/busybox'));
  fs.chmodSync(path.join(stage, 'usr/bin/busybox'), 0o755);
  for (const a of run(path.join(stage, 'usr/bin/busybox'), ['--list']).split('\n').filter(Boolean))
    if (a !== 'busybox') fs.symlinkSync('busybox', path.join(stage, 'usr/bin', a));
  const order = moduleOrder(tree, kver, modules);
  for (const rel of order) {
    const dst = path.join(stage, 'usr/lib/modules', kver, rel);
    fs.mkdirSync(path.dirname(dst), { recursive: true });
    // Debian 13 ships .ko.xz; busybox's insmod wants them plain.
    fs.writeFileSync(
      dst,
      run('xz', ['-dc', path.join(tree, 'usr/lib/modules', kver, `${rel}.xz`)], { encoding: 'buffer' }),
    );
  }
  fs.writeFileSync(
    path.join(stage, 'etc/e2e/modules'),
    order.map((r) => `/lib/modules/${kver}/${r}`).join('\n') + '\n',
  );
}

/** The PVH guest's initramfs: busybox, its frontends, the init that writes its disk and clock. */
function buildGuest(tree, kver, out) {
  const stage = `${out}.stage`;
  stageBusybox(tree, kver, stage, GUEST_MODULES);
  fs.copyFileSync(path.join(DEPLOY, 'guest/init.sh'), path.join(stage, 'init'));
  fs.copyFileSync(path.join(DEPLOY, '../e2e/guest/disk-writer.sh'), path.join(stage, 'disk-writer.sh'));
  fs.chmodSync(path.join(stage, 'init'), 0o755);
  fs.chmodSync(path.join(stage, 'disk-writer.sh'), 0o755);
  packCpio(stage, out);
  fs.rmSync(stage, { recursive: true, force: true });
}

/** The dom0's initramfs: busybox, the root disk's modules and image/initrd-init, which mounts
 * /dev/vda and hands over to systemd. Replaces initramfs-tools' (udev, its scripts, 12 MB),
 * whose work took tens of seconds emulated (docs/deploy-e2e.md, Figures). */
function buildDom0Initrd(tree, kver, out) {
  const stage = `${out}.stage`;
  stageBusybox(tree, kver, stage, DOM0_INITRD_MODULES);
  fs.copyFileSync(path.join(DEPLOY, 'initrd/init.sh'), path.join(stage, 'init'));
  fs.chmodSync(path.join(stage, 'init'), 0o755);
  packCpio(stage, out);
  fs.rmSync(stage, { recursive: true, force: true });
}

/**
 * Makes sure the image exists: { dir, key, pins } with dir holding base.img (raw ext4 root),
 * xen, vmlinuz, initrd.img (dom0's, buildDom0Initrd) and guest.cpio.gz.
 */
export function buildRootfs(cacheDirIn, log) {
  const cacheDir = path.resolve(cacheDirIn);
  fs.mkdirSync(cacheDir, { recursive: true });
  const current = path.join(cacheDir, 'rootfs-current.json');
  const mirror = debianMirror();
  let resolved;
  try {
    resolved = resolveVersions(cacheDir, mirror, log);
  } catch (err) {
    // Offline: the last complete image, if any.
    if (fs.existsSync(current)) {
      const prev = JSON.parse(fs.readFileSync(current, 'utf8'));
      if (fs.existsSync(path.join(prev.dir, '.complete'))) {
        log(`apt unavailable (${err.message.split('\n')[0]}); reusing image ${prev.key}`);
        return prev;
      }
    }
    throw err;
  }
  const key = imageKey(resolved.pins);
  const dir = path.join(cacheDir, `image-${key}`);
  const result = { dir, key, pins: resolved.pins, kernel: resolved.kernel };
  if (fs.existsSync(path.join(dir, '.complete'))) {
    log(`dom0 image cached (${key})`);
    return result;
  }
  for (const d of fs.readdirSync(cacheDir))
    if (d.startsWith('image-')) fs.rmSync(path.join(cacheDir, d), { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const tree = path.join(cacheDir, 'tree');
  buildTree(tree, mirror, resolved.pins, log);
  customise(tree);
  const kver = fs
    .readdirSync(path.join(tree, 'boot'))
    .find((f) => f.startsWith('vmlinuz-'))
    ?.slice('vmlinuz-'.length);
  if (!kver) throw new RootfsError('no kernel in the tree /boot');
  run('bash', ['-c', `gunzip -c '${tree}/boot/xen-${XEN}-amd64.gz' > '${dir}/xen'`]);
  fs.copyFileSync(path.join(tree, `boot/vmlinuz-${kver}`), path.join(dir, 'vmlinuz'));
  buildDom0Initrd(tree, kver, path.join(dir, 'initrd.img'));
  buildGuest(tree, kver, path.join(dir, 'guest.cpio.gz'));
  // initramfs-tools' own initrd (the kernel package made it): unused, 40 MB less to write.
  for (const f of fs.readdirSync(path.join(tree, 'boot')))
    if (f.startsWith('initrd.img')) fs.rmSync(path.join(tree, 'boot', f));
  const t0 = Date.now();
  run('mke2fs', [
    '-q',
    '-t',
    'ext4',
    '-L',
    'deploy-root',
    '-d',
    tree,
    path.join(dir, 'base.img'),
    IMAGE_SIZE,
  ]);
  log(`mke2fs -d: ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  fs.rmSync(tree, { recursive: true, force: true });
  for (const f of fs.readdirSync(cacheDir))
    if (f.startsWith('tree.')) fs.rmSync(path.join(cacheDir, f), { force: true });
  fs.writeFileSync(path.join(dir, '.complete'), resolved.pins.join('\n') + '\n');
  fs.writeFileSync(current, JSON.stringify(result, null, 2));
  return result;
}
