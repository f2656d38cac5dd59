// Engine hardening on an in-memory XenStore and fake domains: the agent's own state nodes are
// trusted for a crash recovery only when dom0's alone; a domain layer that never answers (suspend,
// resume) cannot hang a job; an abort racing a suspend never leaves the guest suspended; a
// burst of 200 jobs stays inside the job and device-operation limits.
import { afterEach, describe, expect, it } from 'vitest';
import { defaultConfig, type DevMigrateConfig } from '../../src/config/schema.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigrator, DeviceMigratorFactory, Logger, Phase } from '../../src/devices/types.js';
import { DeviceOpError } from '../../src/devices/types.js';
import { MigrationEngine } from '../../src/migration/engine.js';
import { JobWriter } from '../../src/migration/job-writer.js';
import { XenStoreError } from '../../src/xenstore/errors.js';
import { FakeDomains } from './migration-fake-domains.js';
import { MemoryXenStore } from './migration-fake-xenstore.js';

const DOM0 = [{ domid: 0, access: 'n' as const }];
const logs: string[] = [];
const log: Logger = {
  error: (m) => logs.push(`E ${m}`),
  warn: (m) => logs.push(`W ${m}`),
  info: (m) => logs.push(`I ${m}`),
  debug: () => undefined,
};
const J = (d: number, n: string): string => `/tool/devmigrate/jobs/${d}/${n}`;
const AUTO = { id: 'j1', target: 'host-b', mode: 'auto', suspend: 'agent', live: '1' };

interface Script {
  failIn?: Phase;
  /** This operation never settles (it ignores its signal, as a wedged tool would). */
  hangIn?: Phase | 'recover';
  delayMs?: number;
  calls: string[];
}
const never = (): Promise<never> => new Promise<never>(() => undefined);
function scripted(s: Script): DeviceMigratorFactory {
  return {
    inspect: () => Promise.resolve({}),
    create: (dev): DeviceMigrator => {
      const op = (phase: Phase) => async (): Promise<void> => {
        s.calls.push(`${dev.domid}/${dev.devid}:${phase}`);
        if (s.hangIn === phase) await never();
        if (s.delayMs !== undefined) await new Promise((r) => setTimeout(r, s.delayMs));
        if (s.failIn === phase) throw new DeviceOpError(`${phase} broke`);
      };
      return {
        policy: 'scripted',
        test: () => (s.hangIn === 'test' ? never() : Promise.resolve({ ok: true })),
        preSuspend: op('preSuspend'),
        postSuspend: op('postSuspend'),
        sync: op('sync'),
        recover: (_ctx, last) => {
          s.calls.push(`${dev.domid}/${dev.devid}:recover:${last}`);
          return s.hangIn === 'recover' ? never() : Promise.resolve();
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

function host(domids: number[], devs = 1): { xs: MemoryXenStore; domains: FakeDomains } {
  const xs = new MemoryXenStore();
  const domains = new FakeDomains();
  for (const d of domids) {
    domains.add(d);
    for (let i = 0; i < devs; i++) xs.put(`/local/domain/0/backend/vbd/${d}/${51712 + i}/params`, '/x', DOM0);
  }
  return { xs, domains };
}
async function start(
  xs: MemoryXenStore,
  domains: FakeDomains,
  s: Script,
  cfg: DevMigrateConfig = defaultConfig(),
): Promise<MigrationEngine> {
  const registry = new DeviceRegistry(cfg);
  registry.register('vbd', scripted(s));
  engine = new MigrationEngine({ xs, domains, config: cfg, log, registry });
  await engine.start();
  return engine;
}
function request(xs: MemoryXenStore, domid: number, fields: Record<string, string>): void {
  xs.put(J(domid, '').slice(0, -1), '', DOM0);
  xs.put(J(domid, 'request'), '', DOM0);
  for (const [k, v] of Object.entries(fields)) xs.put(J(domid, `request/${k}`), v, DOM0);
}
async function waitFor(xs: MemoryXenStore, path: string, want: string | RegExp, ms = 3000): Promise<string> {
  const end = Date.now() + ms;
  for (;;) {
    const v = xs.value(path);
    if (v !== undefined && (typeof want === 'string' ? v === want : want.test(v))) return v;
    if (Date.now() > end) throw new Error(`${path} = ${v ?? '(absent)'}, wanted ${String(want)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * What an agent that died mid-job leaves: domain 5 suspended by it, its AUTO request, and the job's
 * state (with the given permissions), accepted-id and suspended-by nodes. The agent is not started.
 */
async function crashedMidJob(
  state: string,
  statePerms: Parameters<MemoryXenStore['put']>[2],
): Promise<{ xs: MemoryXenStore; domains: FakeDomains }> {
  const { xs, domains } = host([5]);
  await domains.suspend(5);
  request(xs, 5, AUTO);
  xs.put(J(5, 'state'), state, statePerms);
  xs.put(J(5, 'accepted-id'), 'j1', DOM0);
  xs.put(J(5, 'suspended-by'), 'agent', DOM0);
  return { xs, domains };
}

describe('trust of the agent-written nodes in a crash recovery', () => {
  it('a state node another domain may write decides nothing: no recovery, no resume, logged', async () => {
    const s: Script = { calls: [] };
    // A forged "post-suspend + suspended-by=agent" would make the agent resume a domain it never suspended.
    const { xs, domains } = await crashedMidJob('post-suspend', [
      { domid: 0, access: 'n' },
      { domid: 5, access: 'w' },
    ]);
    await start(xs, domains, s);
    const end = Date.now() + 2000;
    while (
      !logs.some((l) => l.startsWith('W job 5 ignored: /tool/devmigrate/jobs/5/state')) &&
      Date.now() < end
    )
      await new Promise((r) => setTimeout(r, 5));
    expect(
      logs.some((l) => l.includes('job 5 ignored: /tool/devmigrate/jobs/5/state has permissions n0,w5')),
    ).toBe(true);
    await new Promise((r) => setTimeout(r, 50));
    expect(s.calls).toEqual([]);
    expect(domains.calls).toEqual(['suspend 5']);
    expect(xs.value(J(5, 'state'))).toBe('post-suspend');
  });

  it('trusted state nodes but an untrusted request: still recovered and resumed (never left suspended)', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = await crashedMidJob('syncing', DOM0);
    xs.put(J(5, 'request/target'), 'evil-host', [
      { domid: 0, access: 'n' },
      { domid: 5, access: 'b' },
    ]);
    await start(xs, domains, s);
    await waitFor(xs, J(5, 'state'), 'failed');
    expect(s.calls).toEqual(['5/51712:recover:sync']);
    expect(domains.calls).toEqual(['suspend 5', 'resume 5']);
    expect(xs.value(J(5, 'error'))).toMatch(/agent restarted while the job was syncing/);
    expect(xs.value(J(5, 'recovered'))).toBe('1');
  });

  it('a job dir another domain may write gets nothing written, only the log; other jobs go on', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = host([5, 6]);
    xs.put(J(5, '').slice(0, -1), '', [
      { domid: 0, access: 'n' },
      { domid: 5, access: 'w' },
    ]);
    for (const [k, v] of Object.entries(AUTO)) xs.put(J(5, `request/${k}`), v, DOM0);
    request(xs, 6, AUTO);
    await start(xs, domains, s);
    await waitFor(xs, J(6, 'state'), 'done');
    expect(
      logs.some((l) => l.startsWith('W job 5 ignored: /tool/devmigrate/jobs/5 has permissions n0,w5')),
    ).toBe(true);
    expect(xs.value(J(5, 'state'))).toBeUndefined();
    expect(xs.value(J(5, 'error'))).toBeUndefined();
  });
});

describe('a domain layer that does not answer cannot hang a job or leave the guest suspended', () => {
  function fastCfg(): DevMigrateConfig {
    const cfg = defaultConfig();
    Object.assign(cfg.timeouts, { suspendAckMs: 50, suspendMs: 50, recoverMs: 300, killGraceMs: 50 });
    return cfg;
  }

  /** A guest that acks but never suspends, and an abort while suspending: the job left recovering (300 ms on). */
  async function abortedAfterAck(s: Script): Promise<{ xs: MemoryXenStore; domains: FakeDomains }> {
    const { xs, domains } = host([5]);
    domains.ackThenWait.add(5);
    const cfg = fastCfg();
    cfg.timeouts.suspendMs = 5000; // the watch's bound, from the cancel
    await start(xs, domains, s, cfg);
    request(xs, 5, AUTO);
    await waitFor(xs, J(5, 'state'), 'suspending');
    xs.put(J(5, 'control'), 'abort', DOM0);
    await waitFor(xs, J(5, 'state'), 'recovering');
    await new Promise((r) => setTimeout(r, 300));
    return { xs, domains };
  }

  it('a suspend call that never settles: bounded, devices recovered, failed with the reason', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = host([5]);
    domains.hangSuspend = true;
    await start(xs, domains, s, fastCfg());
    const t0 = Date.now();
    request(xs, 5, AUTO);
    await waitFor(xs, J(5, 'state'), 'failed', 5000);
    expect(Date.now() - t0).toBeLessThan(4000);
    expect(xs.value(J(5, 'error'))).toMatch(/^suspend failed: suspend timed out after 1100 ms/);
    expect(s.calls).toContain('5/51712:recover:preSuspend');
    expect(xs.value(J(5, 'recovered'))).toBe('1');
  });

  it('an abort while the suspend is in flight: the late suspend is awaited, then the domain resumed', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = host([5]);
    domains.suspendDelayMs = 400; // lands after ack+suspend timeouts (100 ms)
    await start(xs, domains, s, fastCfg());
    request(xs, 5, { ...AUTO, mode: 'steps' });
    await waitFor(xs, J(5, 'state'), 'accepted');
    for (const [c, st] of [
      ['test', 'tested'],
      ['pre-suspend', 'pre-suspended'],
    ]) {
      xs.put(J(5, 'control'), c as string, DOM0);
      await waitFor(xs, J(5, 'state'), st as string);
    }
    xs.put(J(5, 'control'), 'post-suspend', DOM0);
    await waitFor(xs, J(5, 'state'), 'suspending');
    xs.put(J(5, 'control'), 'abort', DOM0);
    await waitFor(xs, J(5, 'state'), 'aborted', 5000);
    await new Promise((r) => setTimeout(r, 500));
    expect((await domains.info(5))?.shutdown).toBe(false);
    expect(domains.calls).toEqual(['suspend 5', 'resume 5']);
    expect(xs.value(J(5, 'recovered'))).toBe('1');
  });

  it('a cancelled suspend the guest had acked: recovering while watching; the domain destroyed then -> failed, no resume', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = await abortedAfterAck(s);
    expect(xs.value(J(5, 'state'))).toBe('recovering');
    expect(s.calls).toContain('5/51712:recover:preSuspend');
    const t0 = Date.now();
    domains.destroy(5);
    await waitFor(xs, J(5, 'state'), 'failed', 2000);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(xs.value(J(5, 'error'))).toBe('domain 5 was destroyed; devices recovered');
    expect(xs.value(J(5, 'recovered'))).toBe('1');
    expect(domains.calls).toEqual(['suspend 5']);
  });

  it('a cancelled suspend the guest had acked, then suspended late: resumed by the watch', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = await abortedAfterAck(s);
    // No domain event here (the fake emits none for a suspend): the watch's own check finds it.
    domains.toolstackSuspend(5);
    await waitFor(xs, J(5, 'state'), 'aborted', 3000);
    expect(domains.calls).toEqual(['suspend 5', 'resume 5']);
    expect((await domains.info(5))?.shutdown).toBe(false);
    expect(xs.value(J(5, 'error'))).toBe('abort requested');
    expect(xs.value(J(5, 'recovered'))).toBe('1');
  });

  it('a resume that never settles: bounded by the recovery timeout, failed with recovered=0', async () => {
    const s: Script = { calls: [], failIn: 'postSuspend' };
    const { xs, domains } = host([5]);
    domains.hangResume = true;
    await start(xs, domains, s, fastCfg());
    request(xs, 5, AUTO);
    // Five resumes, each bounded by recoverMs (300 ms), a growing pause between them.
    await waitFor(xs, J(5, 'state'), 'failed', 8000);
    expect(xs.value(J(5, 'recovered'))).toBe('0');
    expect(xs.value(J(5, 'error'))).toMatch(/resume failed: resume timed out after 300 ms/);
    expect(domains.calls.filter((c) => c === 'resume 5')).toHaveLength(5);
  });
});

describe('every timeout has a recovery, and the domain is never left suspended by the agent', () => {
  interface TimeoutCase {
    name: string;
    script: Omit<Script, 'calls'>;
    cfg: (c: DevMigrateConfig) => void;
    fields?: Record<string, string>;
    /** steps mode: controls to write, each awaited to its rest state. */
    steps?: [string, string][];
    end: string;
    error: RegExp;
    recovered: '1' | '0';
    domainCalls: string[];
    deviceCalls?: string[];
  }
  const T: TimeoutCase[] = [
    {
      name: 'timeouts.testMs (a test that never answers): refused, nothing changed',
      script: { hangIn: 'test' },
      cfg: (c) => (c.timeouts.testMs = 100),
      end: 'refused',
      error: /^refused by 1 device\(s\): vbd\/51712: phase test timed out after 100 ms$/,
      recovered: '1',
      domainCalls: [],
    },
    {
      name: 'timeouts.preSuspendMs: recovered, never suspended',
      script: { hangIn: 'preSuspend' },
      cfg: (c) => (c.timeouts.preSuspendMs = 100),
      end: 'failed',
      error: /^pre-suspend failed by 1 device\(s\): vbd\/51712: phase pre-suspend timed out after 100 ms$/,
      recovered: '1',
      domainCalls: [],
      deviceCalls: ['5/51712:recover:preSuspend'],
    },
    {
      name: 'devices.<type>.timeoutMs (shorter than its phase): that device fails, the job recovers',
      script: { hangIn: 'preSuspend' },
      cfg: (c) => (c.devices.vbd = { timeoutMs: 80 }),
      end: 'failed',
      error: /vbd\/51712: vbd\/51712 pre-suspend timed out after 80 ms$/,
      recovered: '1',
      domainCalls: [],
    },
    {
      name: 'timeouts.syncMs: recovered and resumed',
      script: { hangIn: 'sync' },
      cfg: (c) => (c.timeouts.syncMs = 100),
      end: 'failed',
      error: /phase sync timed out after 100 ms$/,
      recovered: '1',
      domainCalls: ['suspend 5', 'resume 5'],
      deviceCalls: ['5/51712:recover:sync'],
    },
    {
      name: 'timeouts.recoverMs (a recover that never answers): failed, recovered=0, still resumed',
      script: { failIn: 'postSuspend', hangIn: 'recover' },
      cfg: (c) => (c.timeouts.recoverMs = 150),
      end: 'failed',
      error: /recover failed for vbd\/51712: .*timed out after 150 ms/,
      recovered: '0',
      domainCalls: ['suspend 5', 'resume 5'],
    },
    {
      name: 'timeouts.toolstackSuspendMs: the toolstack never suspends: recovered, not resumed by us',
      script: {},
      cfg: (c) => (c.timeouts.toolstackSuspendMs = 100),
      fields: { ...AUTO, suspend: 'toolstack' },
      end: 'failed',
      error: /^suspend failed: domain 5 not suspended within 100 ms$/,
      recovered: '1',
      domainCalls: [],
      deviceCalls: ['5/51712:recover:preSuspend'],
    },
    {
      name: 'timeouts.stepIdleMs in post-suspended (guest suspended): recovered and resumed',
      script: {},
      cfg: (c) => (c.timeouts.stepIdleMs = 150),
      fields: { ...AUTO, mode: 'steps' },
      steps: [
        ['test', 'tested'],
        ['pre-suspend', 'pre-suspended'],
        ['post-suspend', 'post-suspended'],
      ],
      end: 'failed',
      error: /^no control within 150 ms in state post-suspended$/,
      recovered: '1',
      domainCalls: ['suspend 5', 'resume 5'],
      deviceCalls: ['5/51712:recover:postSuspend'],
    },
  ];
  it.each(T.map((t) => [t.name, t]))('%s', async (_n, t) => {
    const s: Script = { ...t.script, calls: [] };
    const cfg = defaultConfig();
    cfg.timeouts.killGraceMs = 50;
    t.cfg(cfg);
    const { xs, domains } = host([5]);
    await start(xs, domains, s, cfg);
    request(xs, 5, t.fields ?? AUTO);
    for (const [c, st] of t.steps ?? []) {
      await waitFor(xs, J(5, 'state'), st === 'tested' ? /accepted|tested/ : /./);
      xs.put(J(5, 'control'), c, DOM0);
      await waitFor(xs, J(5, 'state'), st);
    }
    await waitFor(xs, J(5, 'state'), t.end, 5000);
    expect(xs.value(J(5, 'error'))).toMatch(t.error);
    expect(xs.value(J(5, 'recovered'))).toBe(t.recovered);
    expect(domains.calls).toEqual(t.domainCalls);
    for (const c of t.deviceCalls ?? []) expect(s.calls).toContain(c);
    const d = await domains.info(5);
    expect(d?.shutdown === true || d?.paused === true).toBe(false);
  });
});

describe('limits', () => {
  it('a burst of 200 jobs: at most maxJobs run, at most maxDeviceOps device ops, all finish, memory bounded', async () => {
    const domids = Array.from({ length: 200 }, (_, i) => 100 + i);
    const cfg = defaultConfig();
    cfg.limits = { maxJobs: 6, maxDeviceOps: 16, reservedCriticalOps: 4 };
    const s: Script = { calls: [], delayMs: 2 };
    const { xs, domains } = host(domids, 4);
    const e = await start(xs, domains, s, cfg);
    global.gc?.();
    const heapBefore = process.memoryUsage().heapUsed;
    for (const d of domids) request(xs, d, { ...AUTO, id: `b${d}` });
    for (const d of domids) await waitFor(xs, J(d, 'state'), 'done', 30_000);
    expect(e.jobSlots.peak).toBeLessThanOrEqual(6);
    expect(e.jobSlots.peak).toBeGreaterThan(1);
    expect(e.deviceSlots.peak).toBeLessThanOrEqual(16);
    expect(e.jobSlots.active).toBe(0);
    expect(e.deviceSlots.active).toBe(0);
    expect(s.calls.filter((c) => c.endsWith(':sync'))).toHaveLength(800);
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(64 * 1024 * 1024);
  }, 40_000);
});

describe('job writer', () => {
  it('a transient write failure is retried: the state reaches XenStore (no request left unanswered)', async () => {
    const xs = new MemoryXenStore();
    let failures = 2;
    const flaky = Object.create(xs) as MemoryXenStore;
    flaky.transaction = <T>(fn: (tx: MemoryXenStore) => Promise<T>): Promise<T> => {
      if (failures > 0) {
        failures -= 1;
        return Promise.reject(new XenStoreError('EAGAIN', 'transaction'));
      }
      return xs.transaction(fn as never) as Promise<T>;
    };
    const w = new JobWriter(flaky, 5, log);
    w.device('vbd', '51712', { state: 'failed', reason: 'x' });
    await w.persist({ state: 'failed', error: 'domain 5 does not exist', recovered: '1' });
    expect(failures).toBe(0);
    expect(xs.value(J(5, 'state'))).toBe('failed');
    expect(xs.value(J(5, 'error'))).toBe('domain 5 does not exist');
    expect(xs.value(J(5, 'devices/vbd/51712/state'))).toBe('failed');
    expect(logs.some((l) => l.startsWith('W job 5: 1 write(s) failed (transaction: EAGAIN'))).toBe(true);
  });
});

describe('engine examination', () => {
  it('a request read that fails (XenStore error) is looked at again: the job still runs', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = host([5]);
    const realTx = xs.transaction.bind(xs);
    await start(xs, domains, s);
    let failures = 1;
    xs.transaction = <T>(fn: (tx: MemoryXenStore) => Promise<T>): Promise<T> => {
      if (failures > 0) {
        failures -= 1;
        return Promise.reject(new XenStoreError('EIO', 'transaction'));
      }
      return realTx(fn as never) as Promise<T>;
    };
    request(xs, 5, AUTO);
    await waitFor(xs, J(5, 'state'), 'done');
    expect(failures).toBe(0);
    expect(logs.some((l) => l.startsWith('E job 5:') && l.includes('EIO'))).toBe(true);
  });
});
