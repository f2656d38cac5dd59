// Benchmark: the suspended part of each disk method (what the guest's downtime pays for its
// disk), for images of 64 MiB, 512 MiB and 2 GiB that a "guest" rewrites in random 4 KiB blocks
// at a steady rate while it runs. rsync: the final pass (post-suspend + sync); mirror: ending
// the READY job, removing the NBD node, the export's exit (post-suspend + sync). Both through the
// real product code (registry, disk policy, method), to a destination reached by a remote shell
// that runs locally; every target verified byte for byte. The reference is the other method, in
// the same run. Last stdout line: one JSON object.
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigrator, DeviceRef } from '../../src/devices/types.js';
import {
  configWith,
  fakeSshPath,
  filesEqual,
  makeImage,
  memoryLog,
  mirrorConfigFor,
  nbdUri,
  opContext,
  qemuWorldMissing,
  reapMentioning,
  startFileWriter,
  startGuestQemu,
  startWriter,
  TEST_UUID,
  type Writer,
} from './disk-world.js';

const MiB = 1024 * 1024;
const ALL_SIZES: [string, number][] = [
  ['64m', 64 * MiB],
  ['512m', 512 * MiB],
  ['2g', 2048 * MiB],
];
/** BENCH_DISK_SIZES=64m,2g: a subset (to look at one size; the targets need 64m and 2g). */
const SIZES = process.env['BENCH_DISK_SIZES']
  ? ALL_SIZES.filter(([l]) => (process.env['BENCH_DISK_SIZES'] ?? '').split(',').includes(l))
  : ALL_SIZES;
const REPS = Number(process.env['BENCH_DISK_REPS'] ?? 3);
/** Guest writes per second while it runs (4 KiB each). */
const WRITE_RATE = Number(process.env['BENCH_DISK_WRITES'] ?? 200);
/** How long the guest keeps writing after the bulk copy (mirror READY / rsync bulk pass done). */
const SETTLE_MS = 1000;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2;
};
const r1 = (x: number): number => Math.round(x * 10) / 10;

interface Run {
  finalMs: number;
  bulkMs: number;
  writes: number;
  note?: string;
}

function device(type: 'vbd' | 'qdisk', image: string): DeviceRef {
  return {
    domid: 7,
    backendDomid: 0,
    type,
    devid: '51712',
    backendPath: `/local/domain/0/backend/${type}/7/51712`,
    backend: { type, params: type === 'qdisk' ? `aio:${image}` : image, mode: 'w', dev: 'xvda' },
    domainUuid: TEST_UUID,
  };
}

/**
 * Writes back every dirty page of the machine before a migration starts. The bench itself leaves
 * gigabytes dirty (the image just made, the previous rep's target, the one it removed): the
 * kernel writes them back 30 s later (vm.dirty_expire_centisecs), and a flush timed in the
 * suspended part then queues behind them: a cost that grew with the image's size and that no
 * dom0 running a guest has. Both methods start from the same quiet state; what each method
 * writes itself during its run stays in its own figures.
 */
function quiesce(): void {
  const r = spawnSync('/usr/bin/sync', [], { timeout: 300_000 });
  if (r.status !== 0) throw new Error(`sync failed: ${r.error?.message ?? `exit ${r.status}`}`);
}

/** One migration of the disk's data: test, bulk (guest writing), settle, suspend, final part timed. */
async function migrateOnce(m: DeviceMigrator, writer: Writer, lines: string[]): Promise<Run> {
  quiesce();
  const ctx = opContext('localhost', memoryLog(lines));
  let t;
  let bulkMs = 0;
  let writes = 0;
  try {
    t = await m.test?.(ctx);
    if (t?.ok !== true) throw new Error(`test refused: ${JSON.stringify(t)}`);
    const b0 = performance.now();
    await m.preSuspend?.(ctx);
    bulkMs = performance.now() - b0;
    await new Promise((r) => setTimeout(r, SETTLE_MS));
  } finally {
    // The guest is suspended: its last writes have completed.
    writes = await writer.stop();
  }
  const f0 = performance.now();
  await m.postSuspend?.(ctx);
  await m.sync?.(ctx);
  const finalMs = performance.now() - f0;
  return { finalMs, bulkMs, writes, note: t.note };
}

async function main(): Promise<void> {
  const missing = qemuWorldMissing();
  if (missing !== undefined) throw new Error(`bench:disk needs the QEMU tools: ${missing}`);
  const dir = await mkdtemp(join(tmpdir(), 'devmigrate-bench-disk-'));
  const result: Record<string, number | string | boolean> = {
    reps: REPS,
    guest_writes_per_s: WRITE_RATE,
    remote_shell: 'test/support/fake-ssh.js (local)',
  };
  const lines: string[] = [];
  try {
    await mkdir(join(dir, 'lib'), { recursive: true });
    for (const [label, size] of SIZES) {
      const image = join(dir, 'images', `g-${label}.img`);
      const dest = join(dir, 'dest', image);
      await makeImage(image, size, size);
      // rsync, blkback-style: the guest writes into the file.
      const rsyncRuns: Run[] = [];
      for (let rep = 0; rep < REPS; rep += 1) {
        await rm(join(dir, 'dest'), { recursive: true, force: true });
        const cfg = configWith((c) => {
          c.disks.copy = {
            method: 'rsync',
            rsync: '/usr/bin/rsync',
            rsh: [fakeSshPath()],
            remoteRoot: join(dir, 'dest'),
            extraArgs: [],
            reuseExisting: false,
            sparse: true,
          };
        });
        const m = new DeviceRegistry(cfg).factoryFor('vbd').create(device('vbd', image));
        const run = await migrateOnce(m, await startFileWriter(image, size, WRITE_RATE), lines);
        if (!filesEqual(image, dest)) throw new Error(`rsync ${label}: the target differs from the source`);
        rsyncRuns.push(run);
        console.log(
          `  rsync  ${label.padStart(4)} rep ${rep + 1}: final ${r1(run.finalMs)} ms (bulk ${r1(run.bulkMs)} ms, ${run.writes} guest writes) verified`,
        );
      }
      // mirror, qdisk-style: the guest writes through its QEMU (qemu-storage-daemon).
      const mirrorRuns: Run[] = [];
      for (let rep = 0; rep < REPS; rep += 1) {
        await rm(join(dir, 'dest'), { recursive: true, force: true });
        const guest = await startGuestQemu({ dir, image, qmpPath: join(dir, 'qmp-libxl-7'), domid: 7 });
        try {
          const cfg = configWith((c) => (c.disks.mirror = mirrorConfigFor(dir, { qmpTimeoutMs: 30_000 })));
          const m = new DeviceRegistry(cfg).factoryFor('qdisk').create(device('qdisk', image));
          const run = await migrateOnce(m, startWriter(nbdUri(guest.nbdPath), size, WRITE_RATE), lines);
          if (!filesEqual(image, dest))
            throw new Error(`mirror ${label}: the target differs from the source`);
          mirrorRuns.push(run);
          console.log(
            `  mirror ${label.padStart(4)} rep ${rep + 1}: final ${r1(run.finalMs)} ms (bulk to READY ${r1(run.bulkMs)} ms, ${run.writes} guest writes) verified`,
          );
          // Where the final part went (the method's own debug marks), and the flush before it.
          for (const re of [
            /flushed before the suspend in .*/,
            /ended \(ms since post-suspend began: .*\)/,
          ]) {
            const hit = [...lines].reverse().find((l) => re.test(l));
            if (hit !== undefined) console.log(`      ${re.exec(hit)?.[0] ?? ''}`);
          }
        } finally {
          await guest.stop();
        }
      }
      const rs = median(rsyncRuns.map((r) => r.finalMs));
      const mi = median(mirrorRuns.map((r) => r.finalMs));
      const estimate = /at least ([0-9.]+) s/.exec(rsyncRuns[0]?.note ?? '')?.[1];
      result[`rsync_final_ms_${label}`] = r1(rs);
      result[`mirror_final_ms_${label}`] = r1(mi);
      result[`rsync_bulk_ms_${label}`] = r1(median(rsyncRuns.map((r) => r.bulkMs)));
      result[`mirror_bulk_ms_${label}`] = r1(median(mirrorRuns.map((r) => r.bulkMs)));
      if (estimate !== undefined) result[`rsync_estimate_ms_${label}`] = r1(Number(estimate) * 1000);
      result[`ratio_rsync_to_mirror_${label}`] = r1(rs / mi);
      console.log(
        `${label}: final part, median of ${REPS}: rsync ${r1(rs)} ms, mirror ${r1(mi)} ms (rsync / mirror ${r1(rs / mi)})${estimate !== undefined ? `; check's estimate for rsync ${estimate} s` : ''}`,
      );
      await rm(image, { force: true });
      await rm(join(dir, 'dest'), { recursive: true, force: true });
    }
    const m64 = Number(result['mirror_final_ms_64m']);
    const m2g = Number(result['mirror_final_ms_2g']);
    const r2g = Number(result['rsync_final_ms_2g']);
    result['target_mirror_flat'] = m2g <= 1.5 * m64 + 20;
    result['target_rsync_10x'] = r2g >= 10 * m2g;
    console.log(
      `targets: mirror 2 GiB <= 1.5 x 64 MiB + 20 ms: ${r1(m2g)} <= ${r1(1.5 * m64 + 20)} ${result['target_mirror_flat'] ? 'met' : 'MISSED'}; rsync 2 GiB >= 10 x mirror 2 GiB: ${r1(r2g)} >= ${r1(10 * m2g)} ${result['target_rsync_10x'] ? 'met' : 'MISSED'}`,
    );
    console.log(JSON.stringify(result));
  } catch (err) {
    console.error(lines.slice(-40).join('\n'));
    throw err;
  } finally {
    const stray = await reapMentioning(dir);
    if (stray.length > 0) console.error(`reaped ${stray.length} stray process(es): ${stray.join(' ')}`);
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
