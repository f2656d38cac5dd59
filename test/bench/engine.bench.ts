// Benchmark of the migration engine on the real xenstored (harness) and simulated hypervisor,
// measured as a user sees it:
// (a) one domain, 32 devices whose post-suspend takes 50 ms: the guest's window, from the instant
//     the simulated guest stops running (its SCHEDOP_shutdown(suspend)) to the hand-over (`done`
//     written), against the SAME engine running its devices one at a time (limits.maxDeviceOps=1),
//     rounds alternated in the same run, medians; and the suspend handshake (the request written
//     to control/shutdown -> the domain seen suspended);
// (b) XenStore requests per device of one job: the engine's and the domain layer's;
// (c) 100 concurrent jobs of 8 devices at the configured limits (domains that suspend at once, so
//     the figure is the engine's): p99 window relative to a single job's, and peak RSS.
// Last stdout line: JSON.
import { performance } from 'node:perf_hooks';
import { defaultConfig, type DevMigrateConfig } from '../../src/config/schema.js';
import { readKeys } from '../../src/devices/policies.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigrator, DeviceMigratorFactory, Logger } from '../../src/devices/types.js';
import { createDomainControl } from '../../src/domains/domain-control.js';
import type { DomainControl, DomainEvent, DomainInfo, SuspendOptions } from '../../src/domains/types.js';
import { MigrationEngine } from '../../src/migration/engine.js';
import type { JobRunEvent } from '../../src/migration/job-events.js';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { XenStore } from '../../src/xenstore/types.js';
import { buildMocks, startXenstored } from '../../xen-mocks/harness.js';
import { createSimHost, type DeviceDescription } from '../../xen-mocks/sim-host.js';
import { countXenStoreOps } from './xs-op-counter.js';

const POST_SUSPEND_MS = 50;
const BIG_DEVICES = 32;
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 5);
const CONCURRENT_JOBS = Number(process.env['BENCH_JOBS'] ?? 100);
const SMALL_DEVICES = 8;
const BUDGET_MS = 110_000;

const quiet: Logger = {
  error: (m) => console.error(m),
  warn: () => undefined,
  info: () => undefined,
  debug: () => undefined,
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;
function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] ?? Number.NaN;
}
const median = (v: number[]): number => percentile(v, 50);

/** A device whose only work is a fixed post-suspend (e.g. a final flush), as in the issue. */
function benchMigrator(): DeviceMigrator {
  return {
    policy: 'bench',
    test: () => Promise.resolve({ ok: true }),
    postSuspend: () => sleep(POST_SUSPEND_MS),
    sync: () => Promise.resolve(),
    recover: () => Promise.resolve(),
  };
}
// Reads what the real vbd policy reads (type, params, mode), so the op count is a disk's.
const benchFactory: DeviceMigratorFactory = {
  inspect: readKeys(['type', 'params', 'mode']),
  create: benchMigrator,
};

/**
 * For (c): domains that suspend at once (the engine's own figure, not a guest's), recording when
 * each one "stops running" as a guest would see it.
 */
class PromptDomains implements DomainControl {
  private readonly suspended = new Set<number>();
  readonly stoppedAt = new Map<number, number>();
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
  async suspend(domid: number, opts: SuspendOptions = {}): Promise<void> {
    await opts.onRequest?.('pv-control');
    await sleep(2);
    this.stoppedAt.set(domid, performance.now());
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

async function submit(xs: XenStore, domid: number, id: string): Promise<void> {
  // Many requesters creating job dirs at once conflict on /tool/devmigrate/jobs: retry more.
  await xs.transaction(
    async (tx) => {
      const base = `/tool/devmigrate/jobs/${domid}/request`;
      for (const [k, v] of Object.entries({ id, target: 'host-b', mode: 'auto', suspend: 'agent' })) {
        await tx.write(`${base}/${k}`, v);
      }
    },
    { maxAttempts: 100, backoffMs: 1 },
  );
}

/** The events of each job, by domid, and a wait for one of them. */
class Events {
  private readonly byDom = new Map<number, JobRunEvent[]>();
  private readonly waiters: { domid: number; type: string; resolve: (ev: JobRunEvent) => void }[] = [];
  on = (ev: JobRunEvent): void => {
    const list = this.byDom.get(ev.domid) ?? [];
    list.push(ev);
    this.byDom.set(ev.domid, list);
    for (const w of this.waiters.filter((x) => x.domid === ev.domid && x.type === ev.type)) {
      this.waiters.splice(this.waiters.indexOf(w), 1);
      w.resolve(ev);
    }
  };
  of(domid: number, type: string): JobRunEvent | undefined {
    return this.byDom.get(domid)?.find((e) => e.type === type);
  }
  clear(domid: number): void {
    this.byDom.delete(domid);
  }
  next(domid: number, type: string, ms: number): Promise<JobRunEvent> {
    const seen = this.of(domid, type);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`job ${domid}: no ${type} within ${ms} ms`)), ms);
      this.waiters.push({
        domid,
        type,
        resolve: (ev) => {
          clearTimeout(t);
          resolve(ev);
        },
      });
    });
  }
}

function engineFor(
  xs: XenStore,
  domains: DomainControl,
  cfg: DevMigrateConfig,
  events: Events,
): MigrationEngine {
  const registry = new DeviceRegistry(cfg);
  registry.register('vbd', benchFactory);
  return new MigrationEngine({ xs, domains, config: cfg, log: quiet, registry, onJobEvent: events.on });
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
    // ---- (a) + (b): one domain with 32 disks, a real suspend handshake of a simulated guest ----
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
    let guestStopped: number | undefined;
    await host.guest(1).boot({ mode: 'normal', onSuspend: (at) => (guestStopped = at) });
    const agentXs = await connectXenStore({ path: h.socketPath, timeoutMs: 10_000 });
    const domXs = await connectXenStore({ path: h.socketPath, timeoutMs: 10_000 });
    const reqXs = await connectXenStore({ path: h.socketPath, timeoutMs: 10_000 });
    cleanup.unshift(() => Promise.all([agentXs.close(), domXs.close(), reqXs.close()]));
    const counter = countXenStoreOps(agentXs);
    const domCounter = countXenStoreOps(domXs);
    // The suspend request as the domain layer writes it: the start of the handshake.
    let requestAt: number | undefined;
    const domXsTimed = new Proxy(domCounter.xs, {
      get(obj, prop, recv) {
        const v: unknown = Reflect.get(obj, prop, recv);
        if (prop !== 'write' || typeof v !== 'function') return v;
        return (path: string, value: string) => {
          if (path === '/local/domain/1/control/shutdown' && value === 'suspend')
            requestAt = performance.now();
          return (v as (p: string, val: string) => Promise<void>).call(obj, path, value);
        };
      },
    });
    const dc = createDomainControl({
      xenstore: domXsTimed,
      libxenctrlPath: h.env['DEVMIGRATE_LIBXENCTRL'],
      libxenguestPath: h.env['DEVMIGRATE_LIBXENGUEST'],
      ackTimeoutMs: 5000,
      suspendTimeoutMs: 5000,
    });
    cleanup.unshift(() => dc.close());
    const parallelCfg = defaultConfig();
    if (process.env['BENCH_MAX_JOBS'] !== undefined)
      parallelCfg.limits.maxJobs = Number(process.env['BENCH_MAX_JOBS']);
    // The reference: the same engine, devices one at a time (xend ran device migrations in turn).
    const serialCfg = structuredClone(parallelCfg);
    serialCfg.limits = { ...serialCfg.limits, maxDeviceOps: 1, reservedCriticalOps: 0 };

    /** One job on domain 1 to done; the guest's window, the handshake, the ops. Then recovered. */
    const oneJob = async (
      cfg: DevMigrateConfig,
      n: number,
    ): Promise<{ window: number; handshake: number; ops: number; byOp: Map<string, number> }> => {
      const events = new Events();
      const engine = engineFor(counter.xs, dc, cfg, events);
      await engine.start();
      await sleep(30); // initial scan done
      counter.reset();
      domCounter.reset();
      guestStopped = undefined;
      requestAt = undefined;
      await submit(reqXs, 1, `bench-${n}`);
      const done = await events.next(1, 'done-visible', 20_000);
      const seen = await events.next(1, 'suspended', 1000);
      await sleep(20); // let the last coalesced writes land before counting
      const ops = counter.count() + domCounter.count();
      const byOp = new Map<string, number>();
      for (const o of [...counter.log, ...domCounter.log.map((x) => `domains:${x}`)])
        byOp.set(o, (byOp.get(o) ?? 0) + 1);
      if (guestStopped === undefined || requestAt === undefined) throw new Error('the guest did not suspend');
      const res = { window: done.atMs - guestStopped, handshake: seen.atMs - requestAt, ops, byOp };
      // The toolstack's migration "failed": recover, so that the next round starts from a running guest.
      await reqXs.write('/tool/devmigrate/jobs/1/control', 'recover');
      await events.next(1, 'finished', 20_000);
      await reqXs.rm('/tool/devmigrate/jobs/1');
      await engine.stop();
      return res;
    };
    const par: Awaited<ReturnType<typeof oneJob>>[] = [];
    const ser: Awaited<ReturnType<typeof oneJob>>[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      par.push(await oneJob(parallelCfg, 2 * r));
      ser.push(await oneJob(serialCfg, 2 * r + 1));
    }
    const windowMs = median(par.map((x) => x.window));
    const serialMs = median(ser.map((x) => x.window));
    const handshakeMs = median([...par, ...ser].map((x) => x.handshake));
    const ops = median(par.map((x) => x.ops));
    console.log(
      `(a) 32 devices x ${POST_SUSPEND_MS} ms post-suspend, the guest's window (its suspend -> done), ${ROUNDS} rounds each, alternated:`,
    );
    console.log(
      `    all devices at once: median ${round(windowMs)} ms (${par.map((x) => round(x.window)).join(', ')})`,
    );
    console.log(
      `    one at a time (maxDeviceOps=1): median ${round(serialMs)} ms (${ser.map((x) => round(x.window)).join(', ')}); ratio ${round(serialMs / windowMs)}`,
    );
    console.log(
      `    suspend handshake (request written -> domain seen suspended): median ${round(handshakeMs)} ms`,
    );
    console.log(
      `(b) XenStore requests for the job (engine + domain layer): median ${ops} = ${round(ops / BIG_DEVICES, 2)} per device; by op (one round): ${JSON.stringify(Object.fromEntries(par[0]?.byOp ?? []))}`,
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
    const prompt = new PromptDomains();
    const events2 = new Events();
    const engine2 = engineFor(agentXs, prompt, parallelCfg, events2);
    await engine2.start();
    await sleep(50);
    const windowOf = async (d: number): Promise<number> => {
      const done = await events2.next(d, 'done-visible', 30_000);
      const stopped = prompt.stoppedAt.get(d);
      if (stopped === undefined) throw new Error(`job ${d}: the domain never stopped`);
      return done.atMs - stopped;
    };
    const singleRuns: number[] = [];
    for (let r = 0; r < 3; r++) {
      events2.clear(99);
      await submit(reqXs, 99, `single-${r}`);
      singleRuns.push(await windowOf(99));
      // done jobs hold their domain: removing the dir releases it (the requester's cleanup).
      await reqXs.rm('/tool/devmigrate/jobs/99');
      await sleep(20);
      await prompt.resume(99);
    }
    const single = median(singleRuns);
    const c0 = performance.now();
    await Promise.all(fleet.map((d) => submit(reqXs, d, `fleet-${d}`)));
    const windows = await Promise.all(fleet.map(windowOf));
    const totalMs = performance.now() - c0;
    const p99 = percentile(windows, 99);
    await engine2.stop();
    clearInterval(sampler);
    peakRss = Math.max(peakRss, process.memoryUsage().rss, process.resourceUsage().maxRSS * 1024);
    console.log(
      `(c) ${CONCURRENT_JOBS} jobs x ${SMALL_DEVICES} devices (maxJobs ${parallelCfg.limits.maxJobs}, maxDeviceOps ${parallelCfg.limits.maxDeviceOps}), the domain's window (stopped -> done): ` +
        `single job median ${round(single)} ms, concurrent p50 ${round(percentile(windows, 50))} ms, p99 ${round(p99)} ms (ratio ${round(p99 / single, 2)}), all done in ${round(totalMs)} ms; peak RSS ${round(peakRss / 2 ** 20)} MB`,
    );
    console.log(
      JSON.stringify({
        window_ms: round(windowMs),
        serial_window_ms: round(serialMs),
        serial_over_window: round(serialMs / windowMs),
        handshake_ms: round(handshakeMs),
        xs_ops_per_device: round(ops / BIG_DEVICES, 2),
        concurrent_single_window_ms: round(single),
        concurrent_p99_window_ms: round(p99),
        concurrent_p99_window_ratio: round(p99 / single, 2),
        peak_rss_mb: round(peakRss / 2 ** 20),
        rounds: ROUNDS,
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
