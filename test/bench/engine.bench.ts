// Benchmark of the migration engine on the real xenstored (harness) and simulated hypervisor:
// (a) one domain, 32 devices whose post-suspend takes 50 ms: the suspended window (suspend seen
// -> sync done) against the same devices run one after another as xend did, measured in the
// same run; (b) XenStore ops per device per job; (c) 100 concurrent jobs of 8 devices at the
// configured limits: p99 window relative to a single job, and peak RSS. Last line: JSON.
import { performance } from 'node:perf_hooks';
import { defaultConfig, type DevMigrateConfig } from '../../src/config/schema.js';
import { readKeys } from '../../src/devices/policies.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigrator, DeviceMigratorFactory, Logger, OpContext } from '../../src/devices/types.js';
import { createDomainControl } from '../../src/domains/domain-control.js';
import type { DomainControl, DomainEvent, DomainInfo } from '../../src/domains/types.js';
import { MigrationEngine } from '../../src/migration/engine.js';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { XenStore } from '../../src/xenstore/types.js';
import { buildMocks, startXenstored } from '../../xen-mocks/harness.js';
import { createSimHost, type DeviceDescription } from '../../xen-mocks/sim-host.js';
import { countXenStoreOps } from './xs-op-counter.js';

const POST_SUSPEND_MS = 50;
const BIG_DEVICES = 32;
const CONCURRENT_JOBS = Number(process.env['BENCH_JOBS'] ?? 100);
const SMALL_DEVICES = 8;
const BUDGET_MS = 50_000;

const quiet: Logger = {
  error: (m) => console.error(m),
  warn: () => undefined,
  info: () => undefined,
  debug: () => undefined,
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;
function percentile(sorted: number[], p: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] ?? Number.NaN;
}

/** A device whose only work is a fixed post-suspend (e.g. a final flush), as in the issue. */
function benchMigrator(): DeviceMigrator {
  return {
    policy: 'bench',
    test: () => Promise.resolve({ ok: true }),
    postSuspend: () => sleep(POST_SUSPEND_MS),
    sync: () => Promise.resolve(),
  };
}
// Reads what the real vbd policy reads (type, params, mode), so the op count is a disk's.
const benchFactory: DeviceMigratorFactory = {
  inspect: readKeys(['type', 'params', 'mode']),
  create: benchMigrator,
};

/** For (c): domains that suspend promptly (2 ms), so the figure is the engine's, not the guests'. */
class PromptDomains implements DomainControl {
  private readonly suspended = new Set<number>();
  info(domid: number): Promise<DomainInfo | undefined> {
    const s = this.suspended.has(domid);
    return Promise.resolve({
      domid,
      paused: false,
      shutdown: s,
      ...(s ? { shutdownReason: 'suspend' as const } : {}),
      dying: false,
      hvm: false,
    });
  }
  list(): Promise<DomainInfo[]> {
    return Promise.resolve([]);
  }
  pause(): Promise<void> {
    return Promise.resolve();
  }
  unpause(): Promise<void> {
    return Promise.resolve();
  }
  async suspend(domid: number): Promise<void> {
    await sleep(2);
    this.suspended.add(domid);
  }
  resume(domid: number): Promise<void> {
    this.suspended.delete(domid);
    return Promise.resolve();
  }
  waitForSuspended(): Promise<void> {
    return Promise.resolve();
  }
  withdrawSuspend(): Promise<'withdrawn'> {
    return Promise.resolve('withdrawn');
  }
  onEvent(_cb: (ev: DomainEvent) => void): () => void {
    return () => undefined;
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

interface Marks {
  all?: [string, number][];
  suspended?: number;
  synced?: number;
  visible?: number;
  finished?: () => void;
}

async function submit(xs: XenStore, domid: number): Promise<void> {
  // Many requesters creating job dirs at once conflict on /tool/devmigrate/jobs: retry more.
  await xs.transaction(
    async (tx) => {
      const base = `/tool/devmigrate/jobs/${domid}/request`;
      for (const [k, v] of Object.entries({
        id: `bench-${domid}`,
        target: 'host-b',
        mode: 'auto',
        suspend: 'agent',
      })) {
        await tx.write(`${base}/${k}`, v);
      }
    },
    { maxAttempts: 100, backoffMs: 1 },
  );
}

function engineFor(
  xs: XenStore,
  domains: DomainControl,
  cfg: DevMigrateConfig,
  marks: Map<number, Marks>,
): MigrationEngine {
  const registry = new DeviceRegistry(cfg);
  registry.register('vbd', benchFactory);
  return new MigrationEngine({
    xs,
    domains,
    config: cfg,
    log: quiet,
    registry,
    onMark: (domid, mark, at) => {
      const m = marks.get(domid) ?? {};
      marks.set(domid, m);
      (m.all ??= []).push([mark, at]);
      if (mark === 'suspended') m.suspended = at;
      if (mark === 'synced') m.synced = at;
      if (mark === 'done-visible') m.visible = at;
      if (mark === 'finished') m.finished?.();
    },
  });
}

function waitFinished(marks: Map<number, Marks>, domid: number, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`job ${domid} did not finish within ${ms} ms`)), ms);
    const m = marks.get(domid) ?? {};
    marks.set(domid, m);
    m.finished = () => {
      clearTimeout(t);
      resolve();
    };
  });
}

async function main(): Promise<void> {
  const deadline = setTimeout(() => {
    console.error(`bench exceeded ${BUDGET_MS} ms`);
    process.exit(2);
  }, BUDGET_MS);
  let peakRss = 0;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 10);
  await buildMocks();
  const h = await startXenstored();
  process.env.XEN_SIM_STATE = h.stateDir;
  const cleanup: (() => Promise<unknown>)[] = [() => h.stop()];
  try {
    // ---- (a) + (b): one domain with 32 disks, real suspend of a simulated guest ----
    const disks: DeviceDescription[] = Array.from({ length: BIG_DEVICES }, (_, i) => ({
      type: 'vbd',
      vdev: `xvd${String.fromCharCode(97 + Math.floor(i / 26)).repeat(i >= 26 ? 1 : 0)}${String.fromCharCode(97 + (i % 26))}`,
      params: `/srv/shared/bench-${i}.img`,
      format: 'file',
      mode: 'w',
    }));
    const host = await createSimHost(h, {
      guests: [{ domid: 1, name: 'bench', uuid: '00000000-0000-4000-8000-00000000be01', devices: disks }],
    });
    cleanup.unshift(() => host.close());
    await host.guest(1).boot({ mode: 'normal' });
    const agentXs = await connectXenStore({ path: h.socketPath, timeoutMs: 10_000 });
    const domXs = await connectXenStore({ path: h.socketPath, timeoutMs: 10_000 });
    const reqXs = await connectXenStore({ path: h.socketPath, timeoutMs: 10_000 });
    cleanup.unshift(() => Promise.all([agentXs.close(), domXs.close(), reqXs.close()]));
    const counter = countXenStoreOps(agentXs);
    const dc = createDomainControl({
      xenstore: domXs,
      libxenctrlPath: h.env['DEVMIGRATE_LIBXENCTRL'],
      libxenguestPath: h.env['DEVMIGRATE_LIBXENGUEST'],
      ackTimeoutMs: 5000,
      suspendTimeoutMs: 5000,
    });
    cleanup.unshift(() => dc.close());
    const cfg = defaultConfig();
    if (process.env['BENCH_MAX_JOBS'] !== undefined)
      cfg.limits.maxJobs = Number(process.env['BENCH_MAX_JOBS']);
    const marks = new Map<number, Marks>();
    const engine = engineFor(counter.xs, dc, cfg, marks);
    await engine.start();
    await sleep(50); // initial scan done
    counter.reset();
    const done1 = waitFinished(marks, 1, 20_000);
    await submit(reqXs, 1);
    // auto + done: the run ends its active part at done; wait for the synced mark.
    const t0 = performance.now();
    while (marks.get(1)?.visible === undefined && performance.now() - t0 < 20_000) await sleep(5);
    await sleep(20); // let the last coalesced writes land before counting
    const ops = counter.count();
    const byOp = new Map<string, number>();
    for (const o of counter.log) byOp.set(o, (byOp.get(o) ?? 0) + 1);
    const m1 = marks.get(1);
    if (m1?.suspended === undefined || m1.synced === undefined) throw new Error('job 1 did not reach done');
    const windowMs = m1.synced - m1.suspended;
    const visibleMs = (m1.visible ?? Number.NaN) - m1.suspended;
    const base = m1.suspended;
    console.log(
      `(a) marks: ${(m1.all ?? [])
        .filter(([, t]) => t >= base)
        .map(([k, t]) => `${k}+${round(t - base)}`)
        .join(' ')}`,
    );
    await engine.stop();
    void done1.catch(() => undefined);

    // xend's way: the same devices' post-suspend and sync one after another.
    const ctx: OpContext = {
      job: { jobId: 'serial', domid: 1, target: 'host-b', live: true },
      signal: new AbortController().signal,
      log: quiet,
      progress: () => undefined,
    };
    const serialDevs = Array.from({ length: BIG_DEVICES }, benchMigrator);
    const s0 = performance.now();
    for (const d of serialDevs) {
      await d.postSuspend?.(ctx);
      await d.sync?.(ctx);
    }
    const serialMs = performance.now() - s0;
    console.log(
      `(a) 32 devices x ${POST_SUSPEND_MS} ms post-suspend: window ${round(windowMs)} ms (state=done visible at ${round(visibleMs)} ms), serial ${round(serialMs)} ms, ratio ${round(serialMs / windowMs)}`,
    );
    console.log(
      `(b) XenStore ops for the job: ${ops} = ${round(ops / BIG_DEVICES, 2)} per device; by op: ${JSON.stringify(Object.fromEntries(byOp))}`,
    );

    // ---- (c): 100 concurrent jobs of 8 devices, prompt domains, default limits ----
    const fleet = Array.from({ length: CONCURRENT_JOBS }, (_, i) => 100 + i);
    await agentXs.transaction(async (tx) => {
      for (const d of [99, ...fleet]) {
        for (let i = 0; i < SMALL_DEVICES; i++) {
          const b = `/local/domain/0/backend/vbd/${d}/${51712 + 16 * i}`;
          await tx.write(`${b}/type`, 'file');
          await tx.write(`${b}/params`, `/srv/shared/${d}-${i}.img`);
          await tx.write(`${b}/mode`, 'w');
        }
      }
    });
    const marks2 = new Map<number, Marks>();
    const engine2 = engineFor(agentXs, new PromptDomains(), cfg, marks2);
    await engine2.start();
    await sleep(50);
    const singleRuns: number[] = [];
    for (let r = 0; r < 3; r++) {
      const d = 99;
      await reqXs.transaction(async (tx) => tx.rm(`/tool/devmigrate/jobs/${d}`).catch(() => undefined));
      marks2.delete(d);
      await sleep(20);
      const fin = waitFinished(marks2, d, 10_000);
      await submit(reqXs, d);
      const w0 = performance.now();
      while (marks2.get(d)?.synced === undefined && performance.now() - w0 < 10_000) await sleep(2);
      const m = marks2.get(d);
      if (m?.suspended !== undefined && m.synced !== undefined) singleRuns.push(m.synced - m.suspended);
      // done jobs hold their domain: removing the dir releases it (the requester's cleanup).
      await reqXs.rm(`/tool/devmigrate/jobs/${d}`);
      await fin.catch(() => undefined);
    }
    singleRuns.sort((a, b) => a - b);
    const single = percentile(singleRuns, 50);
    const c0 = performance.now();
    await Promise.all(fleet.map((d) => submit(reqXs, d)));
    while (fleet.some((d) => marks2.get(d)?.synced === undefined) && performance.now() - c0 < 30_000)
      await sleep(10);
    const windows = fleet
      .map((d) => marks2.get(d))
      .filter(
        (m): m is Marks & { suspended: number; synced: number } =>
          m?.suspended !== undefined && m.synced !== undefined,
      )
      .map((m) => m.synced - m.suspended)
      .sort((a, b) => a - b);
    const totalMs = performance.now() - c0;
    if (windows.length !== fleet.length)
      throw new Error(`only ${windows.length}/${fleet.length} concurrent jobs finished`);
    const p99 = percentile(windows, 99);
    await engine2.stop();
    clearInterval(sampler);
    peakRss = Math.max(peakRss, process.memoryUsage().rss, process.resourceUsage().maxRSS * 1024);
    console.log(
      `(c) ${CONCURRENT_JOBS} jobs x ${SMALL_DEVICES} devices (maxJobs ${cfg.limits.maxJobs}, maxDeviceOps ${cfg.limits.maxDeviceOps}): ` +
        `single window ${round(single)} ms, concurrent p50 ${round(percentile(windows, 50))} ms, p99 ${round(p99)} ms, all done in ${round(totalMs)} ms; peak RSS ${round(peakRss / 2 ** 20)} MB`,
    );
    console.log(
      JSON.stringify({
        window_ms: round(windowMs),
        window_done_visible_ms: round(visibleMs),
        serial_window_ms: round(serialMs),
        serial_over_window: round(serialMs / windowMs),
        xs_ops_per_device: round(ops / BIG_DEVICES, 2),
        concurrent_single_window_ms: round(single),
        concurrent_p99_window_ms: round(p99),
        concurrent_p99_window_ratio: round(p99 / single, 2),
        peak_rss_mb: round(peakRss / 2 ** 20),
      }),
    );
  } finally {
    clearInterval(sampler);
    for (const c of cleanup) await c().catch(() => undefined);
    clearTimeout(deadline);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
