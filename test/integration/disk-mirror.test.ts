// Specification of the mirror method against the real QEMU tools: a qemu-storage-daemon stands
// in for the guest's QEMU (QMP, the xen-block node name, the guest's writes through NBD),
// qemu-nbd serves the target on the "destination" reached through a remote shell that runs
// locally (test/support/fake-ssh.js: ssh's behaviour, -L forward included). The disk is found
// and decided through the real registry and disk policy.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { DevMigrateConfig, MirrorConfig } from '../../src/config/schema.js';
import { findBlockJob, findBlockNode } from '../../src/devices/mirror-plan.js';
import { QmpClient } from '../../src/devices/qmp-client.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigrator, DeviceRef, Logger } from '../../src/devices/types.js';
import {
  allocatedBytes,
  configWith,
  filesEqual,
  makeImage,
  memoryLog,
  mirrorConfigFor,
  nbdUri,
  opContext,
  pidsMentioning,
  qemuNbdPids,
  qemuWorldMissing,
  reapMentioning,
  signalAll,
  startGuestQemu,
  startWriter,
  TEST_UUID,
  type GuestQemu,
} from '../bench/disk-world.js';

const missing = qemuWorldMissing();
// CI installs the QEMU tools (scripts/setup.sh): there a missing one is a failure, never a skip.
if (missing !== undefined && process.env['CI'] === 'true')
  throw new Error(`disk-mirror tests cannot run in CI: ${missing}`);
if (missing !== undefined) console.log(`disk-mirror tests skipped: ${missing}`);

const MiB = 1024 * 1024;
const DOMID = 7;

/** Polls fn every 100 ms until it returns a value; throws after ms. */
async function until<T>(ms: number, fn: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
let dir: string;
let image: string;
let dest: string;
let guest: GuestQemu;
let lines: string[];
let log: Logger;

function config(over: Partial<MirrorConfig> = {}, deviceMs = 20_000): DevMigrateConfig {
  return configWith((c) => {
    c.disks.mirror = mirrorConfigFor(dir, over);
    Object.assign(c.timeouts, {
      deviceMs,
      preSuspendMs: 60_000,
      postSuspendMs: 30_000,
      syncMs: 30_000,
      killGraceMs: 300,
    });
  });
}

function qdisk(cfg: DevMigrateConfig): DeviceMigrator {
  const ref: DeviceRef = {
    domid: DOMID,
    backendDomid: 0,
    type: 'qdisk',
    devid: '51712',
    backendPath: `/local/domain/0/backend/qdisk/${DOMID}/51712`,
    backend: { type: 'qdisk', params: `aio:${image}`, mode: 'w', dev: 'xvda' },
    domainUuid: TEST_UUID,
  };
  return new DeviceRegistry(cfg).factoryFor('qdisk').create(ref);
}

async function qmp<T>(fn: (q: QmpClient) => Promise<T>): Promise<T> {
  const q = await QmpClient.connect(guest.qmpPath, { timeoutMs: 5000 });
  try {
    return await fn(q);
  } finally {
    await q.close();
  }
}

/** What the mirror leaves on the source QEMU: our job and our NBD node, if any. */
async function sourceLeftovers(): Promise<string[]> {
  return qmp(async (q) => {
    const out: string[] = [];
    if (findBlockJob(await q.execute('query-block-jobs', undefined, 5000), 'devmigrate-51712') !== undefined)
      out.push('job');
    if (
      findBlockNode(await q.execute('query-named-block-nodes', { flat: true }, 5000), 'devmigrate-nbd-51712')
    )
      out.push('node');
    return out;
  });
}

/** What the mirror may leave on the "destination": image, sockets, pid file, qemu-nbd. */
function destinationLeftovers(): string[] {
  const out: string[] = [];
  if (existsSync(dest)) out.push(`image ${dest}`);
  for (const f of [
    `rrun/nbd-${DOMID}-51712.sock`,
    `rrun/nbd-${DOMID}-51712.pid`,
    `run/nbd-${DOMID}-51712.sock`,
  ]) {
    if (existsSync(join(dir, f))) out.push(f);
  }
  if (pidsMentioning(join(dir, 'rrun')).length > 0) out.push('a process serving or forwarding it');
  return out;
}

describe.skipIf(missing !== undefined)(
  'mirror of a QEMU-served disk, real qemu-storage-daemon and qemu-nbd',
  // Each test runs real QEMU processes and whole mirrors: on a loaded 2-core machine one took
  // over 30 s (the suite's default bound). The bounds under test are asserted inside the tests.
  { timeout: 120_000 },
  () => {
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'devmigrate-mirror-'));
    });
    afterAll(async () => {
      if (dir === undefined) return;
      const stray = await reapMentioning(dir);
      await rm(dir, { recursive: true, force: true });
      expect(stray, 'processes left behind by the tests').toEqual([]);
    });
    beforeEach(async () => {
      lines = [];
      log = memoryLog(lines);
      image = join(dir, 'images', 'guest7.img');
      dest = join(dir, 'dest', image);
      await rm(join(dir, 'dest'), { recursive: true, force: true });
      await mkdir(join(dir, 'lib'), { recursive: true });
      await makeImage(image, 64 * MiB, 16 * MiB);
      guest = await startGuestQemu({ dir, image, qmpPath: join(dir, `qmp-libxl-${DOMID}`), domid: DOMID });
    });
    afterEach(async () => {
      await guest?.stop();
      // Anything of ours still running here is a leak the test itself must catch; reap it anyway.
      await reapMentioning(join(dir, 'rrun'));
    });

    it('mirrors while the guest writes, ends in sync, and the target equals the source byte for byte', async () => {
      // 32 MiB/s: the bulk copy takes about 2 s, so ending it early could not pass unseen.
      const m = qdisk(config({ bandwidthBytesPerSec: 32 * MiB }));
      const writer = startWriter(nbdUri(guest.nbdPath), 64 * MiB, 300);
      const progress: number[] = [];
      const ctx = opContext('localhost', log, undefined, (d) => progress.push(d));
      const t = await m.test?.(ctx);
      expect(t, lines.join('\n')).toMatchObject({
        ok: true,
        note: expect.stringContaining('mirror 67108864 bytes'),
      });
      expect(m.policy).toBe('copy:mirror');
      const began = Date.now();
      let writes: number;
      try {
        await m.preSuspend?.(ctx);
        // The guest goes on writing while the job is ready: write-blocking keeps the target in step.
        await new Promise((r) => setTimeout(r, 300));
      } finally {
        writes = await writer.stop(); // the guest is suspended: its writes have all completed
      }
      const bulkMs = Date.now() - began;
      expect(writes).toBeGreaterThan(100);
      await m.postSuspend?.(ctx);
      await m.sync?.(ctx);
      expect(filesEqual(image, dest), lines.join('\n')).toBe(true);
      expect(bulkMs).toBeGreaterThan(1000);
      expect(progress.at(-1)).toBe(64 * MiB);
      // Thin stays thin: the target holds what the source holds, plus at most one dirty-bitmap
      // granule (64 KiB) per guest write that landed in a hole during the bulk copy. (Not also
      // "under 64 MiB": a guest that writes long enough, as in a loaded run, fills the image, and
      // the target then held 64 MiB + 8 KiB of extent blocks, within this bound.)
      expect(allocatedBytes(dest)).toBeLessThanOrEqual(allocatedBytes(image) + writes * 64 * 1024);
      expect(await sourceLeftovers()).toEqual([]);
      expect(destinationLeftovers()).toEqual([`image ${dest}`]);
    });

    it('test refuses a destination path that exists, unless reuse is configured', async () => {
      await makeImage(dest, 64 * MiB, 0);
      const refused = await qdisk(config()).test?.(opContext('localhost', log));
      expect(refused).toMatchObject({ ok: false, reason: expect.stringContaining('already exists') });
      expect(refused).toMatchObject({ reason: expect.stringContaining('disks.mirror.reuseExisting') });
      const m = qdisk(config({ reuseExisting: true }));
      const ctx = opContext('localhost', log);
      expect(await m.test?.(ctx)).toMatchObject({
        ok: true,
        note: expect.stringContaining('will be overwritten'),
      });
      await m.preSuspend?.(ctx);
      await m.postSuspend?.(ctx);
      await m.sync?.(ctx);
      expect(filesEqual(image, dest)).toBe(true);
      // A reused image is not ours to remove: recover after the end leaves it.
      await m.recover?.(ctx, 'sync');
      expect(existsSync(dest)).toBe(true);
    });

    it('test refuses a disk whose block node is not the one xen-block would have made', async () => {
      const ctx = opContext('localhost', log);
      const wrongNode = new DeviceRegistry(config()).factoryFor('qdisk').create({
        domid: DOMID,
        backendDomid: 0,
        type: 'qdisk',
        devid: '51728',
        backendPath: '/x',
        backend: { type: 'qdisk', params: `aio:${image}`, mode: 'w', dev: 'xvdb' },
        domainUuid: TEST_UUID,
      });
      expect(await wrongNode.test?.(ctx)).toMatchObject({
        ok: false,
        reason: expect.stringContaining('has no block node xvdb-raw'),
      });
    });

    it('recover mid-mirror (before READY) leaves nothing on the destination nor the source', async () => {
      // 2 MiB/s for 64 MiB: the job still copies, for half a minute, when it is aborted.
      const m = qdisk(config({ bandwidthBytesPerSec: 2 * MiB }));
      const ac = new AbortController();
      const progress: number[] = [];
      const ctx = opContext('localhost', log, ac.signal, (d) => progress.push(d));
      expect(await m.test?.(ctx)).toMatchObject({ ok: true });
      const pre = m.preSuspend?.(ctx);
      // Until the job copies and has reported progress (the export's start through the remote
      // shell took seconds on a loaded machine: a fixed wait raced it).
      const job = await until(30_000, async () => {
        const j = await qmp(async (q) =>
          findBlockJob(await q.execute('query-block-jobs', undefined, 5000), 'devmigrate-51712'),
        );
        return j !== undefined && progress.length > 0 ? j : undefined;
      });
      expect(job).toMatchObject({ status: 'running', ready: false });
      expect(existsSync(dest)).toBe(true);
      ac.abort(new Error('job aborted'));
      await expect(pre).rejects.toThrow(/aborted/);
      expect(progress.length).toBeGreaterThan(0);
      expect(progress.at(-1)).toBeLessThan(64 * MiB);
      const began = Date.now();
      await m.recover?.(opContext('localhost', log), 'preSuspend');
      expect(Date.now() - began).toBeLessThan(15_000);
      expect(await sourceLeftovers()).toEqual([]);
      expect(destinationLeftovers(), lines.join('\n')).toEqual([]);
    });

    it('recover after READY, and after the job was ended, removes the target image and everything else', async () => {
      for (const lastPhase of ['preSuspend', 'postSuspend'] as const) {
        const m = qdisk(config());
        const ctx = opContext('localhost', log);
        expect(await m.test?.(ctx)).toMatchObject({ ok: true });
        await m.preSuspend?.(ctx);
        expect(existsSync(dest)).toBe(true);
        if (lastPhase === 'postSuspend') await m.postSuspend?.(ctx);
        await m.recover?.(ctx, lastPhase);
        expect(await sourceLeftovers(), lastPhase).toEqual([]);
        expect(destinationLeftovers(), `${lastPhase}\n${lines.join('\n')}`).toEqual([]);
      }
    });

    it('a fresh migrator (agent restarted) removes the job and node left on the source by name', async () => {
      const m = qdisk(config());
      const ctx = opContext('localhost', log);
      await m.test?.(ctx);
      await m.preSuspend?.(ctx);
      expect(await sourceLeftovers()).toEqual(['job', 'node']);
      // The new agent knows nothing but the device: recover from names alone.
      await qdisk(config()).recover?.(ctx, 'preSuspend');
      expect(await sourceLeftovers()).toEqual([]);
      // qemu-nbd saw its client leave and ended by itself; the old instance cleans the rest.
      await m.recover?.(ctx, 'preSuspend');
      expect(destinationLeftovers()).toEqual([]);
    });

    it('a destination filesystem without O_DIRECT: the target is served through the page cache, with a warning', async () => {
      // qemu-nbd as it fails on ramfs, or tmpfs before Linux 6.6 (its message, measured on ramfs).
      const nbd = join(dir, 'qemu-nbd-no-direct');
      await writeFile(
        nbd,
        [
          '#!/bin/sh',
          'for a in "$@"; do last=$a; done',
          'for a in "$@"; do',
          `  [ "$a" = --cache=none ] && echo "qemu-nbd: Failed to blk_new_open '$last': Could not open '$last': filesystem does not support O_DIRECT" >&2 && exit 1`,
          'done',
          'exec /usr/bin/qemu-nbd "$@"',
          '',
        ].join('\n'),
        { mode: 0o755 },
      );
      const m = qdisk(config({ qemuNbd: nbd }));
      const ctx = opContext('localhost', log);
      expect(await m.test?.(ctx)).toMatchObject({ ok: true });
      await m.preSuspend?.(ctx);
      await m.postSuspend?.(ctx);
      await m.sync?.(ctx);
      expect(filesEqual(image, dest), lines.join('\n')).toBe(true);
      expect(lines.filter((l) => /refuses O_DIRECT .*--cache=writeback/.test(l))).toHaveLength(1);
      expect(lines.some((l) => l.includes('--cache=writeback') && l.startsWith('warn'))).toBe(true);
      expect(await sourceLeftovers()).toEqual([]);
      expect(destinationLeftovers()).toEqual([`image ${dest}`]);
    });

    it('a hung guest QEMU is bounded: test and post-suspend fail within their QMP bound', async () => {
      const cfg = config();
      const m = qdisk(cfg);
      const ctx = opContext('localhost', log);
      expect(await m.test?.(ctx)).toMatchObject({ ok: true });
      await m.preSuspend?.(ctx);
      // The bound under test from here on (the migrator reads its config live): the remote
      // shell's commands above ran under the generous one, which a loaded machine needs.
      if (cfg.disks.mirror === undefined) throw new Error('no disks.mirror');
      cfg.disks.mirror.qmpTimeoutMs = 800;
      guest.pause();
      try {
        let began = Date.now();
        expect(await qdisk(config({ qmpTimeoutMs: 800 })).test?.(ctx)).toMatchObject({
          ok: false,
          reason: expect.stringContaining('no answer within 800 ms'),
        });
        expect(Date.now() - began).toBeLessThan(3000);
        began = Date.now();
        await expect(m.postSuspend?.(ctx)).rejects.toThrow(/800 ms/);
        expect(Date.now() - began).toBeLessThan(3000);
      } finally {
        guest.resume();
      }
      await m.recover?.(ctx, 'postSuspend');
      expect(await sourceLeftovers()).toEqual([]);
      expect(destinationLeftovers()).toEqual([]);
    });

    it('a hung destination export is bounded: the job end and the sync give up at the device timeout', async () => {
      const m = qdisk(config({}, 2000));
      const ac = new AbortController();
      const ctx = opContext('localhost', log, ac.signal);
      expect(await m.test?.(ctx)).toMatchObject({ ok: true });
      await m.preSuspend?.(ctx);
      const nbd = qemuNbdPids(join(dir, 'rrun'));
      expect(nbd.length).toBe(1);
      signalAll(nbd, 'SIGSTOP');
      try {
        const began = Date.now();
        // The engine aborts the op at its timeout; here the test plays the engine.
        const timer = setTimeout(() => ac.abort(new Error('timed out')), 2000);
        await expect(m.postSuspend?.(ctx)).rejects.toThrow();
        clearTimeout(timer);
        expect(Date.now() - began).toBeLessThan(8000);
      } finally {
        signalAll(nbd, 'SIGCONT');
      }
      await m.recover?.(opContext('localhost', log), 'postSuspend');
      expect(await sourceLeftovers()).toEqual([]);
      expect(destinationLeftovers(), lines.join('\n')).toEqual([]);
    });

    it('the byte-for-byte check catches a broken completion: a job ended before READY leaves a different target', async () => {
      // A deliberately wrong sequence, through QMP directly: soft-cancel the job while it still copies.
      const big = join(dir, 'images', 'big.img');
      await guest.stop();
      await makeImage(big, 256 * MiB, 256 * MiB);
      guest = await startGuestQemu({
        dir,
        image: big,
        qmpPath: join(dir, `qmp-libxl-${DOMID}`),
        domid: DOMID,
      });
      const target = join(dir, 'broken-target.img');
      await makeImage(target, 256 * MiB, 0);
      const { spawn } = await import('node:child_process');
      const sock = join(dir, 'broken.sock');
      const nbd = spawn('/usr/bin/qemu-nbd', ['--socket', sock, '--format=raw', target], { stdio: 'ignore' });
      try {
        while (!existsSync(sock)) await new Promise((r) => setTimeout(r, 20));
        const endedEarly = await qmp(async (q) => {
          await q.execute(
            'blockdev-add',
            { driver: 'nbd', 'node-name': 'broken', server: { type: 'unix', path: sock } },
            5000,
          );
          await q.execute(
            'blockdev-mirror',
            { 'job-id': 'broken', device: 'xvda-raw', target: 'broken', sync: 'full', speed: 32 * MiB },
            5000,
          );
          await new Promise((r) => setTimeout(r, 300));
          const before = findBlockJob(await q.execute('query-block-jobs', undefined, 5000), 'broken');
          await q.execute('block-job-cancel', { device: 'broken' }, 5000);
          await q.waitForEvent((e) => e.event.startsWith('BLOCK_JOB_'), 10_000, 'job end');
          await q.execute('blockdev-del', { 'node-name': 'broken' }, 5000);
          return before;
        });
        expect(endedEarly?.ready).toBe(false);
        await new Promise<void>((r) => (nbd.exitCode !== null ? r() : nbd.once('exit', () => r())));
        expect(filesEqual(big, target)).toBe(false);
      } finally {
        nbd.kill('SIGKILL');
        await rm(big, { force: true });
        await rm(target, { force: true });
      }
      expect((await stat(image)).size).toBe(64 * MiB);
    });
  },
);
