// The disk methods' test world, shared by the integration tests and bench:disk: a
// qemu-storage-daemon standing in for a guest's QEMU (the block node named as xen-block names
// it, a QMP socket where libxl's would be, an NBD export through which the "guest" writes), a
// writer of random 4 KiB blocks at a steady rate (qemu-io), a remote shell that runs locally
// (test/support/fake-ssh.js), and byte-for-byte comparison. Every process started here is reaped.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { existsSync, renameSync, writeFileSync } from 'node:fs';
import { mkdir, open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defaultConfig, type DevMigrateConfig, type MirrorConfig } from '../../src/config/schema.js';
import type { Logger, OpContext } from '../../src/devices/types.js';

const here = dirname(fileURLToPath(import.meta.url));

/**
 * The remote shell stand-in: a wrapper that runs test/support/fake-ssh.js (from the sources or
 * from dist/test/bench) with this very node. Tools run with a fixed PATH
 * (/usr/sbin:/usr/bin:/sbin:/bin), where the script's `#!/usr/bin/env node` finds no node when
 * node lives in /usr/local/bin (Debian 12's set-up). One small file per node binary in the tmp
 * folder, rewritten only when it differs.
 */
export function fakeSshPath(): string {
  const script = [
    resolve(here, '../support/fake-ssh.js'),
    resolve(here, '../../../test/support/fake-ssh.js'),
  ].find((c) => existsSync(c));
  if (script === undefined) throw new Error('test/support/fake-ssh.js not found');
  const body = `#!/bin/sh\nexec '${process.execPath}' '${script}' "$@"\n`;
  const key = createHash('sha256').update(body).digest('hex').slice(0, 12);
  const wrapper = join(tmpdir(), `devmigrate-fake-ssh-${key}`);
  if (!existsSync(wrapper)) {
    writeFileSync(`${wrapper}.${process.pid}`, body, { mode: 0o755 });
    renameSync(`${wrapper}.${process.pid}`, wrapper);
  }
  return wrapper;
}

export const QEMU_TOOLS = [
  '/usr/bin/qemu-storage-daemon',
  '/usr/bin/qemu-nbd',
  '/usr/bin/qemu-img',
  '/usr/bin/qemu-io',
] as const;

/** Why the QEMU world cannot run here (missing programs), or undefined when it can. */
export function qemuWorldMissing(): string | undefined {
  const missing = QEMU_TOOLS.filter((t) => !existsSync(t));
  return missing.length > 0
    ? `missing ${missing.join(', ')} (Debian: qemu-system-common, qemu-utils; scripts/setup.sh installs them)`
    : undefined;
}

export const quietLog: Logger = {
  error: () => undefined,
  warn: () => undefined,
  info: () => undefined,
  debug: () => undefined,
};

/** A logger that keeps lines (for failure messages). */
export function memoryLog(lines: string[]): Logger {
  const put =
    (lvl: string) =>
    (m: string): void => {
      lines.push(`${lvl} ${m}`);
      if (lines.length > 500) lines.shift();
    };
  return { error: put('error'), warn: put('warn'), info: put('info'), debug: put('debug') };
}

export function opContext(
  target: string,
  log: Logger,
  signal: AbortSignal = new AbortController().signal,
  onProgress?: (done: number, total: number) => void,
): OpContext {
  return {
    job: { jobId: 'job-1', domid: 7, target, live: true, domainName: 'guest7' },
    signal,
    log,
    progress: (d, t) => onProgress?.(d, t),
  };
}

export interface GuestQemu {
  qmpPath: string;
  /** The "guest's" writes go through this NBD export of the disk node. */
  nbdPath: string;
  pid: number;
  /** SIGSTOP / SIGCONT: a hung QEMU. */
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

function waitForPath(path: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((res, rej) => {
    const tick = (): void => {
      if (existsSync(path)) res();
      else if (Date.now() > deadline) rej(new Error(`${path} did not appear within ${timeoutMs} ms`));
      else setTimeout(tick, 20);
    };
    tick();
  });
}

async function reap(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

/**
 * qemu-storage-daemon as the guest's QEMU: node `<vdev>-raw` over the image (xen-block's name),
 * QMP on `qmpPath`, and the node exported (writable) on `<dir>/guest-<domid>.sock`.
 */
export async function startGuestQemu(opts: {
  dir: string;
  image: string;
  qmpPath: string;
  domid: number;
  vdev?: string;
}): Promise<GuestQemu> {
  const vdev = opts.vdev ?? 'xvda';
  const nbdPath = join(opts.dir, `guest-${opts.domid}.sock`);
  const child = spawn(
    '/usr/bin/qemu-storage-daemon',
    [
      '--blockdev',
      `driver=file,node-name=${vdev}-file,filename=${opts.image},locking=off`,
      '--blockdev',
      `driver=raw,node-name=${vdev}-raw,file=${vdev}-file`,
      '--chardev',
      `socket,id=libxl-cmd,path=${opts.qmpPath},server=on,wait=off`,
      '--monitor',
      'chardev=libxl-cmd',
      '--nbd-server',
      `addr.type=unix,addr.path=${nbdPath}`,
      '--export',
      `type=nbd,id=guest,node-name=${vdev}-raw,name=${vdev},writable=on`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-2000)));
  try {
    await Promise.race([
      Promise.all([waitForPath(opts.qmpPath, 10_000), waitForPath(nbdPath, 10_000)]),
      new Promise((_, rej) =>
        child.once('exit', (c) => rej(new Error(`qemu-storage-daemon exited ${c}: ${stderr}`))),
      ),
    ]);
  } catch (err) {
    await reap(child);
    throw err;
  }
  const pid = child.pid ?? -1;
  return {
    qmpPath: opts.qmpPath,
    nbdPath,
    pid,
    pause: () => process.kill(pid, 'SIGSTOP'),
    resume: () => process.kill(pid, 'SIGCONT'),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) process.kill(pid, 'SIGCONT');
      await reap(child);
    },
  };
}

export interface Writer {
  /** Writes completed so far (qemu-io's "wrote" lines). */
  readonly done: number;
  /** Stops sending, waits until every write sent has completed; resolves with the count. */
  stop(): Promise<number>;
}

/**
 * The guest at work: random 4 KiB blocks with random patterns at `perSecond` writes a second,
 * through qemu-io over an NBD connection (the same path a guest's writes take in QEMU).
 */
export function startWriter(nbdUri: string, sizeBytes: number, perSecond: number): Writer {
  const child = spawn('/usr/bin/qemu-io', ['-f', 'raw', nbdUri], { stdio: ['pipe', 'pipe', 'pipe'] });
  let done = 0;
  let sent = 0;
  let err = '';
  child.stdout.on('data', (c: Buffer) => {
    done += (c.toString().match(/wrote 4096\/4096 bytes/g) ?? []).length;
  });
  child.stderr.on('data', (c: Buffer) => (err = (err + c.toString()).slice(-1000)));
  // qemu-io gone early (its NBD connection failed): the writes it missed are reported by stop().
  child.stdin.on('error', (e) => (err = `${err}\nstdin: ${e.message}`.slice(-1000)));
  const blocks = Math.floor(sizeBytes / 4096);
  const period = 1000 / perSecond;
  const started = Date.now();
  let stopped = false;
  const tick = (): void => {
    if (stopped) return;
    // Catch up to the steady rate (timers drift under load); at most 50 writes per tick.
    const due = Math.min(Math.floor((Date.now() - started) / period) + 1 - sent, 50);
    let cmds = '';
    for (let k = 0; k < due; k += 1) {
      cmds += `write -P 0x${randomInt(256).toString(16)} ${randomInt(blocks) * 4096} 4k\n`;
      sent += 1;
    }
    if (cmds !== '') child.stdin.write(cmds);
    timer = setTimeout(tick, Math.max(1, period));
  };
  let timer = setTimeout(tick, 0);
  const exited = new Promise<number | null>((r) => child.once('close', (c) => r(c)));
  return {
    get done() {
      return done;
    },
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      child.stdin.end();
      const code = await Promise.race([
        exited,
        new Promise<'hung'>((r) => setTimeout(() => r('hung'), 30_000)),
      ]);
      if (code === 'hung') {
        child.kill('SIGKILL');
        throw new Error('qemu-io did not finish its writes within 30 s');
      }
      if (done !== sent)
        throw new Error(`writer: ${sent} writes sent, ${done} completed (exit ${code}): ${err}`);
      return done;
    },
  };
}

/**
 * The guest of a blkback disk at work: random 4 KiB blocks written straight into the image file
 * (what blkback's loop device does) at `perSecond` writes a second.
 */
export async function startFileWriter(path: string, sizeBytes: number, perSecond: number): Promise<Writer> {
  const fh = await open(path, 'r+');
  const blocks = Math.floor(sizeBytes / 4096);
  const period = 1000 / perSecond;
  const started = Date.now();
  let sent = 0;
  let done = 0;
  let stopped = false;
  let inflight: Promise<unknown> = Promise.resolve();
  const tick = (): void => {
    if (stopped) return;
    const due = Math.min(Math.floor((Date.now() - started) / period) + 1 - sent, 50);
    for (let k = 0; k < due; k += 1) {
      const buf = Buffer.alloc(4096, randomInt(256));
      sent += 1;
      inflight = inflight
        .then(() => fh.write(buf, 0, 4096, randomInt(blocks) * 4096))
        .then(() => (done += 1));
    }
    timer = setTimeout(tick, Math.max(1, period));
  };
  let timer = setTimeout(tick, 0);
  return {
    get done() {
      return done;
    },
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await inflight;
      await fh.close();
      return done;
    },
  };
}

export function nbdUri(socketPath: string, exportName = 'xvda'): string {
  return `nbd+unix:///${exportName}?socket=${socketPath}`;
}

/** A raw image of `size` bytes: `dataBytes` of random data spread in 1 MiB runs, the rest holes. */
export async function makeImage(path: string, size: number, dataBytes = size): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const fh = await open(path, 'w');
  try {
    await fh.truncate(size);
    const MiB = 1024 * 1024;
    const runs = Math.floor(dataBytes / MiB);
    const stride = Math.max(1, Math.floor(size / MiB / Math.max(1, runs)));
    const buf = Buffer.alloc(MiB);
    for (let r = 0; r < runs; r += 1) {
      randomBytes(MiB).copy(buf);
      await fh.write(buf, 0, MiB, r * stride * MiB);
    }
  } finally {
    await fh.close();
  }
}

/** Byte-for-byte comparison (cmp -s: 0 same, 1 differ). */
export function filesEqual(a: string, b: string): boolean {
  const r = spawnSync('/usr/bin/cmp', ['-s', a, b]);
  if (r.status !== 0 && r.status !== 1) throw new Error(`cmp ${a} ${b}: ${r.stderr?.toString() ?? r.status}`);
  return r.status === 0;
}

export function allocatedBytes(path: string): number {
  const r = spawnSync('/usr/bin/stat', ['-c', '%b %B', path]);
  const [blocks, unit] = r.stdout.toString().trim().split(' ').map(Number);
  return (blocks ?? 0) * (unit ?? 512);
}

/** Pids of processes whose command line mentions `needle` (our unique test folder). */
export function pidsMentioning(needle: string): number[] {
  const r = spawnSync('/usr/bin/pgrep', ['-f', needle]);
  return r.stdout
    .toString()
    .split('\n')
    .filter((l) => /^[0-9]+$/.test(l))
    .map(Number)
    .filter((p) => p !== process.pid);
}

/** Pids of the qemu-nbd processes serving a socket under `needle`. */
export function qemuNbdPids(needle: string): number[] {
  return pidsMentioning(`^/usr/bin/qemu-nbd .*${needle}`);
}

/** Sends a signal to each pid, ignoring those already gone. */
export function signalAll(pids: readonly number[], sig: NodeJS.Signals): void {
  for (const p of pids) {
    try {
      process.kill(p, sig);
    } catch {
      // Gone already.
    }
  }
}

/** Kills (by pid) every process still mentioning our folder: the safety net after a test. */
export async function reapMentioning(needle: string): Promise<number[]> {
  const pids = pidsMentioning(needle);
  for (const p of pids) {
    try {
      process.kill(p, 'SIGCONT');
      process.kill(p, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
  if (pids.length > 0) await new Promise((r) => setTimeout(r, 100));
  return pids;
}

export const TEST_UUID = '6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b';

/** disks.mirror for a world under `dir`: destination = `<dir>/dest` + path, all local. */
export function mirrorConfigFor(dir: string, over: Partial<MirrorConfig> = {}): MirrorConfig {
  return {
    rsh: [fakeSshPath()],
    remoteRoot: join(dir, 'dest'),
    qmpPath: join(dir, 'qmp-libxl-%d'),
    qmpLockDir: join(dir, 'lib'),
    runDir: join(dir, 'run'),
    remoteRunDir: join(dir, 'rrun'),
    qemuNbd: '/usr/bin/qemu-nbd',
    qemuImg: '/usr/bin/qemu-img',
    copyMode: 'write-blocking',
    targetCache: 'none',
    reuseExisting: false,
    // Also bounds the remote shell's commands: the stand-in is a node process per command, and a
    // loaded 2-core machine took over 5 s to start one. Tests of the bound set their own.
    qmpTimeoutMs: 30_000,
    bandwidthBytesPerSec: 0,
    ...over,
  };
}

export function configWith(fn: (c: DevMigrateConfig) => void): DevMigrateConfig {
  const c = defaultConfig();
  fn(c);
  return c;
}
