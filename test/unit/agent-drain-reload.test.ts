// The engine's side of the agent's SIGTERM and SIGHUP, on an in-memory XenStore and fake domains:
// drain lets jobs past the suspension finish, aborts the others with the guest running, leaves new
// requests untouched and keeps its bound; applyConfig resizes the limits for new acquisitions and
// gives new jobs the new policies while running jobs keep theirs.
import { afterEach, describe, expect, it } from 'vitest';
import { defaultConfig, type DevMigrateConfig } from '../../src/config/schema.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigrator, DeviceMigratorFactory, Logger, Phase } from '../../src/devices/types.js';
import { MigrationEngine } from '../../src/migration/engine.js';
import { Semaphore } from '../../src/migration/semaphore.js';
import { FakeDomains } from './migration-fake-domains.js';
import { MemoryXenStore } from './migration-fake-xenstore.js';

const DOM0 = [{ domid: 0, access: 'n' as const }];
const quiet: Logger = {
  error: () => undefined,
  warn: () => undefined,
  info: () => undefined,
  debug: () => undefined,
};

/** Per-phase delays (ms); every call recorded as "devid:phase"; ops honour their abort signal. */
function slowDevices(delays: Partial<Record<Phase, number>>, calls: string[]): DeviceMigratorFactory {
  return {
    inspect: () => Promise.resolve({}),
    create: (dev): DeviceMigrator => {
      const op =
        (phase: Phase) =>
        (ctx: { signal: AbortSignal }): Promise<void> => {
          calls.push(`${dev.devid}:${phase}`);
          const ms = delays[phase] ?? 0;
          return new Promise<void>((resolve, reject) => {
            const t = setTimeout(resolve, ms);
            ctx.signal.addEventListener('abort', () => {
              clearTimeout(t);
              reject(new Error(`${phase} stopped`));
            });
          });
        };
      return {
        policy: 'slow',
        test: async () => ({ ok: true }),
        preSuspend: op('preSuspend'),
        postSuspend: op('postSuspend'),
        sync: op('sync'),
        recover: async (_ctx, last) => {
          calls.push(`${dev.devid}:recover:${last}`);
        },
      };
    },
  };
}

let engine: MigrationEngine | undefined;
afterEach(async () => {
  await engine?.stop();
  engine = undefined;
});

async function world(delays: Partial<Record<Phase, number>>, cfg: DevMigrateConfig = defaultConfig()) {
  const xs = new MemoryXenStore();
  const domains = new FakeDomains();
  const calls: string[] = [];
  for (const d of [5, 6, 7]) {
    domains.add(d);
    xs.put(`/local/domain/0/backend/vbd/${d}/51712/params`, '/x', DOM0);
  }
  const registry = new DeviceRegistry(cfg);
  registry.register('vbd', slowDevices(delays, calls));
  engine = new MigrationEngine({ xs, domains, config: cfg, log: quiet, registry });
  await engine.start();
  return { xs, domains, calls, engine };
}

function request(xs: MemoryXenStore, domid: number, id: string): void {
  const base = `/tool/devmigrate/jobs/${domid}`;
  xs.put(base, '', DOM0);
  xs.put(`${base}/request`, '', DOM0);
  const fields = { id, target: 'host-b', mode: 'auto', suspend: 'agent', live: '1' };
  for (const [k, v] of Object.entries(fields)) xs.put(`${base}/request/${k}`, v, DOM0);
}

async function waitFor(xs: MemoryXenStore, path: string, want: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (xs.value(path) !== want) {
    if (Date.now() > end) throw new Error(`${path} = ${xs.value(path) ?? '(absent)'}, wanted ${want}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
const J = (d: number, n: string): string => `/tool/devmigrate/jobs/${d}/${n}`;
const running = (domains: FakeDomains, d: number): boolean => {
  const i = domains.doms.get(d);
  return i !== undefined && !i.shutdown && !i.paused;
};

describe('engine drain (SIGTERM)', () => {
  it('a job in syncing finishes done within the bound; the domain stays suspended for the toolstack', async () => {
    const { xs, domains, calls, engine: e } = await world({ sync: 400 });
    request(xs, 5, 'sync-1');
    await waitFor(xs, J(5, 'state'), 'syncing');
    const t0 = Date.now();
    const r = await e.drain(5000);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(r).toMatchObject({ completed: 1, aborted: 0, left: 0 });
    expect(xs.value(J(5, 'state'))).toBe('done');
    expect(xs.value(J(5, 'devices/vbd/51712/state'))).toBe('synced');
    expect(calls.some((c) => c.includes('recover'))).toBe(false);
    expect(domains.calls).toEqual(['suspend 5']);
  });

  it('a job in pre-suspend is aborted at once: devices recovered, the guest never suspended', async () => {
    const { xs, domains, calls, engine: e } = await world({ preSuspend: 10_000 });
    request(xs, 6, 'pre-1');
    await waitFor(xs, J(6, 'state'), 'pre-suspend');
    const t0 = Date.now();
    const r = await e.drain(20_000);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(r).toMatchObject({ completed: 0, aborted: 1, left: 0 });
    expect(xs.value(J(6, 'state'))).toBe('aborted');
    expect(xs.value(J(6, 'recovered'))).toBe('1');
    expect(xs.value(J(6, 'error'))).toMatch(/agent stopping/);
    expect(calls).toContain('51712:recover:preSuspend');
    expect(domains.calls).toEqual([]);
    expect(running(domains, 6)).toBe(true);
  });

  it('a job past the suspension that outlives the bound is aborted and the domain resumed', async () => {
    const { xs, domains, engine: e } = await world({ sync: 60_000 });
    request(xs, 7, 'long-1');
    await waitFor(xs, J(7, 'state'), 'syncing');
    const t0 = Date.now();
    const r = await e.drain(900);
    const took = Date.now() - t0;
    // Finish window 600 ms (900 minus a 300 ms recovery reserve), then abort and recover.
    expect(took).toBeGreaterThanOrEqual(550);
    expect(took).toBeLessThan(1200);
    expect(r).toMatchObject({ completed: 0, aborted: 1, left: 0 });
    expect(xs.value(J(7, 'state'))).toBe('aborted');
    expect(xs.value(J(7, 'error'))).toMatch(
      /recovery reserve of the drain bound of 900 ms reached after 0\.\d s/,
    );
    expect(domains.calls).toEqual(['suspend 7', 'resume 7']);
    expect(running(domains, 7)).toBe(true);
  });

  it('takes no new job once stopAccepting was called: the request stays untouched', async () => {
    const { xs, engine: e } = await world({ sync: 300 });
    request(xs, 5, 'sync-2');
    await waitFor(xs, J(5, 'state'), 'syncing');
    e.stopAccepting();
    request(xs, 6, 'late-1');
    await new Promise((r) => setTimeout(r, 100));
    expect(xs.value(J(6, 'state'))).toBeUndefined();
    await e.drain(5000);
    expect(xs.value(J(5, 'state'))).toBe('done');
    // Nothing of the agent's was written: the next agent finds a plain request and starts it.
    expect(xs.value(J(6, 'state'))).toBeUndefined();
    expect(xs.value(J(6, 'accepted-id'))).toBeUndefined();
    expect(xs.value(J(6, 'request/id'))).toBe('late-1');
  });
});

describe('engine applyConfig (SIGHUP)', () => {
  it('resizes the semaphores for future acquisitions; held slots are kept', async () => {
    const s = new Semaphore(1);
    const first = await s.acquire();
    let second: (() => void) | undefined;
    void s.acquire().then((r) => (second = r));
    await new Promise((r) => setImmediate(r));
    expect(second).toBeUndefined();
    s.resize(2);
    await new Promise((r) => setImmediate(r));
    expect(second).toBeDefined();
    expect(s.active).toBe(2);
    s.resize(1);
    // Shrunk below what is held: no new grant until enough are released.
    let third: (() => void) | undefined;
    void s.acquire().then((r) => (third = r));
    first();
    await new Promise((r) => setImmediate(r));
    expect(third).toBeUndefined();
    second?.();
    await new Promise((r) => setImmediate(r));
    expect(third).toBeDefined();
    expect(() => s.resize(0)).toThrow(RangeError);
  });

  it('new limits apply to the engine at once; a running job keeps the timeouts it started with', async () => {
    const cfg = defaultConfig();
    const { xs, engine: e } = await world({ preSuspend: 300, sync: 300 }, cfg);
    request(xs, 5, 'old-cfg');
    await waitFor(xs, J(5, 'state'), 'pre-suspend');
    const next = defaultConfig();
    next.limits = { maxJobs: 2, maxDeviceOps: 10, reservedCriticalOps: 3 };
    // The job's sync phase starts after the reload: with these it would time out and fail.
    next.timeouts.syncMs = 50;
    next.timeouts.deviceMs = 50;
    e.applyConfig(next);
    expect(e.jobSlots.limit).toBe(2);
    expect(e.deviceSlots.limit).toBe(10);
    expect(e.deviceSlots.reserved).toBe(3);
    await waitFor(xs, J(5, 'state'), 'done');
  });

  it('new jobs get the new device policies and timeouts', async () => {
    const cfg = defaultConfig();
    const xs = new MemoryXenStore();
    const domains = new FakeDomains();
    domains.add(5);
    domains.add(6);
    // A vtpm: refused without a tool; a reload that configures one lets the next job use it.
    for (const d of [5, 6]) xs.put(`/local/domain/0/backend/vtpm/${d}/0/uuid`, 'x', DOM0);
    engine = new MigrationEngine({ xs, domains, config: cfg, log: quiet });
    await engine.start();
    request(xs, 5, 'before');
    await waitFor(xs, J(5, 'state'), 'refused');
    expect(xs.value(J(5, 'devices/vtpm/0/policy'))).toBe('refuse');
    const next = defaultConfig();
    next.devices = {
      vtpm: {
        tool: { path: '/bin/true', contract: 'external-device-migrate', timeoutMs: 5000, passSubtype: false },
      },
    };
    engine.applyConfig(next);
    request(xs, 6, 'after');
    await waitFor(xs, J(6, 'devices/vtpm/0/policy'), 'external:/bin/true');
  });
});
