// Engine specification on an in-memory XenStore and fake domains (UNIT level; the same
// behaviours run against the real xenstored in test/integration/engine*.test.ts): phases,
// vetoes, failures with recovery and resume, controls, permissions, busy domains, crash recovery.
import { afterEach, describe, expect, it } from 'vitest';
import { defaultConfig, type DevMigrateConfig } from '../../src/config/schema.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigrator, DeviceMigratorFactory, Logger, Phase } from '../../src/devices/types.js';
import { DeviceOpError } from '../../src/devices/types.js';
import { MigrationEngine } from '../../src/migration/engine.js';
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

interface Script {
  failIn?: Phase;
  veto?: string;
  delayMs?: number;
  calls: string[];
}
function scripted(s: Script): DeviceMigratorFactory {
  return {
    inspect: () => Promise.resolve({}),
    create: (dev): DeviceMigrator => {
      const op = (phase: Phase) => async (): Promise<void> => {
        s.calls.push(`${dev.devid}:${phase}`);
        if (s.delayMs !== undefined) await new Promise((r) => setTimeout(r, s.delayMs));
        if (s.failIn === phase) throw new DeviceOpError(`${phase} broke`);
      };
      return {
        policy: 'scripted',
        test: async () => {
          s.calls.push(`${dev.devid}:test`);
          return s.veto !== undefined ? { ok: false, reason: s.veto } : { ok: true };
        },
        preSuspend: op('preSuspend'),
        postSuspend: op('postSuspend'),
        sync: op('sync'),
        recover: async (_ctx, last) => {
          s.calls.push(`${dev.devid}:recover:${last}`);
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

async function world(script: Script, cfg: DevMigrateConfig = defaultConfig(), devs = 2) {
  const xs = new MemoryXenStore();
  const domains = new FakeDomains();
  for (const d of [5, 6]) {
    domains.add(d);
    for (let i = 0; i < devs; i++) xs.put(`/local/domain/0/backend/vbd/${d}/${51712 + i}/params`, '/x', DOM0);
  }
  const registry = new DeviceRegistry(cfg);
  registry.register('vbd', scripted(script));
  engine = new MigrationEngine({ xs, domains, config: cfg, log, registry });
  await engine.start();
  return { xs, domains };
}

function request(xs: MemoryXenStore, domid: number, fields: Record<string, string>, perms = DOM0): void {
  xs.put(`/tool/devmigrate/jobs/${domid}`, '', perms);
  xs.put(`/tool/devmigrate/jobs/${domid}/request`, '', perms);
  for (const [k, v] of Object.entries(fields))
    xs.put(`/tool/devmigrate/jobs/${domid}/request/${k}`, v, perms);
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
const J = (d: number, n: string): string => `/tool/devmigrate/jobs/${d}/${n}`;
const AUTO = { id: 'j1', target: 'host-b', mode: 'auto', suspend: 'agent', live: '1' };

describe('engine (in-memory XenStore)', () => {
  it('auto + suspend=agent: all phases, domain left suspended, devices synced', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = await world(s);
    request(xs, 5, AUTO);
    await waitFor(xs, J(5, 'state'), 'done');
    expect(xs.value('/tool/devmigrate/protocol-version')).toBe('1');
    expect(xs.value(J(5, 'devices/vbd/51712/state'))).toBe('synced');
    expect(xs.value(J(5, 'devices/vbd/51713/policy'))).toBe('scripted');
    expect(xs.value(J(5, 'suspended-by'))).toBe('agent');
    expect(domains.calls).toEqual(['suspend 5']);
    expect(s.calls.filter((c) => c.startsWith('51712'))).toEqual([
      '51712:test',
      '51712:preSuspend',
      '51712:postSuspend',
      '51712:sync',
    ]);
  });

  it('a veto at test refuses with per-device reasons and changes nothing', async () => {
    const s: Script = { calls: [], veto: 'not today' };
    const { xs, domains } = await world(s);
    request(xs, 5, AUTO);
    await waitFor(xs, J(5, 'state'), 'refused');
    expect(xs.value(J(5, 'devices/vbd/51712/state'))).toBe('refused');
    expect(xs.value(J(5, 'devices/vbd/51712/reason'))).toBe('not today');
    expect(xs.value(J(5, 'error'))).toMatch(/refused by 2 device\(s\): vbd\/51712: not today/);
    expect(domains.calls).toEqual([]);
  });

  it('a post-suspend failure recovers every device (furthest first) and resumes the domain', async () => {
    const s: Script = { calls: [], failIn: 'postSuspend' };
    const { xs, domains } = await world(s);
    request(xs, 5, AUTO);
    await waitFor(xs, J(5, 'state'), 'failed');
    expect(xs.value(J(5, 'recovered'))).toBe('1');
    expect(xs.value(J(5, 'error'))).toMatch(/post-suspend failed by 2 device\(s\)/);
    expect(xs.value(J(5, 'devices/vbd/51712/state'))).toBe('recovered');
    expect(s.calls).toContain('51712:recover:postSuspend');
    expect(domains.calls).toEqual(['suspend 5', 'resume 5']);
    expect((await domains.info(5))?.shutdown).toBe(false);
  });

  it('a guest that will not suspend: recovered, not resumed, failed with the reason', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = await world(s);
    domains.refuseSuspend.add(5);
    request(xs, 5, AUTO);
    await waitFor(xs, J(5, 'state'), 'failed');
    expect(xs.value(J(5, 'error'))).toMatch(/suspend failed: domain 5 did not acknowledge/);
    expect(s.calls).toContain('51712:recover:preSuspend');
  });

  it('steps mode obeys controls in order, refuses out-of-order ones, abort recovers and resumes', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = await world(s);
    request(xs, 5, { ...AUTO, mode: 'steps' });
    await waitFor(xs, J(5, 'state'), 'accepted');
    xs.put(J(5, 'control'), 'sync', DOM0);
    await waitFor(xs, J(5, 'control-error'), /sync is not allowed in state accepted/);
    for (const [c, st] of [
      ['test', 'tested'],
      ['pre-suspend', 'pre-suspended'],
      ['post-suspend', 'post-suspended'],
    ]) {
      xs.put(J(5, 'control'), c as string);
      await waitFor(xs, J(5, 'state'), st as string);
    }
    xs.put(J(5, 'control'), 'abort');
    await waitFor(xs, J(5, 'state'), 'aborted');
    expect(domains.calls).toEqual(['suspend 5', 'resume 5']);
    expect(xs.value(J(5, 'error'))).toBe('abort requested');
  });

  it('suspend=toolstack waits to see the suspend and starts post-suspend then', async () => {
    const s: Script = { calls: [] };
    const { xs, domains } = await world(s);
    request(xs, 5, { ...AUTO, suspend: 'toolstack' });
    await waitFor(xs, J(5, 'state'), 'suspending');
    expect(s.calls.some((c) => c.endsWith('postSuspend'))).toBe(false);
    domains.toolstackSuspend(5);
    await waitFor(xs, J(5, 'state'), 'done');
    expect(domains.calls).toEqual([]);
  });

  it('malformed field -> failed with a clear error; wrong owner -> ignored; busy domain -> refused-request', async () => {
    const s: Script = { calls: [], delayMs: 200 };
    const { xs } = await world(s);
    request(xs, 6, { ...AUTO, target: 'a;b' });
    await waitFor(xs, J(6, 'state'), 'failed');
    expect(xs.value(J(6, 'error'))).toMatch(/^request\/target: "a;b" is not a host name/);
    request(xs, 5, AUTO, [{ domid: 5, access: 'n' }]);
    await new Promise((r) => setTimeout(r, 50));
    expect(xs.value(J(5, 'state'))).toBeUndefined();
    expect(logs.some((l) => l.includes('job 5 ignored'))).toBe(true);
    request(xs, 5, AUTO);
    await waitFor(xs, J(5, 'state'), /testing|pre-suspend/);
    xs.put(J(5, 'request/id'), 'j2', DOM0);
    await waitFor(xs, J(5, 'refused-request'), /"j2" refused: domain 5 is busy with job j1/);
    await waitFor(xs, J(5, 'state'), 'done');
  });

  it('recovery table: an orphan in post-suspend (suspended by the agent) is recovered and resumed', async () => {
    const s: Script = { calls: [] };
    const xs = new MemoryXenStore();
    const domains = new FakeDomains();
    domains.add(5);
    await domains.suspend(5);
    xs.put('/local/domain/0/backend/vbd/5/51712/params', '/x', DOM0);
    request(xs, 5, AUTO);
    xs.put(J(5, 'state'), 'post-suspend');
    xs.put(J(5, 'accepted-id'), 'j1');
    xs.put(J(5, 'suspended-by'), 'agent');
    const registry = new DeviceRegistry(defaultConfig());
    registry.register('vbd', scripted(s));
    engine = new MigrationEngine({ xs, domains, config: defaultConfig(), log, registry });
    await engine.start();
    await waitFor(xs, J(5, 'state'), 'failed');
    expect(s.calls).toEqual(['51712:recover:postSuspend']);
    expect(domains.calls).toEqual(['suspend 5', 'resume 5']);
    expect(xs.value(J(5, 'error'))).toMatch(/agent restarted while the job was post-suspend/);
  });

  it('per-phase timeout: a post-suspend that outlives its phase fails the job, devices recovered, resumed', async () => {
    const cfg = defaultConfig();
    cfg.timeouts.postSuspendMs = 100;
    cfg.timeouts.killGraceMs = 50;
    const s: Script = { calls: [], delayMs: 0 };
    const { xs, domains } = await world(s, cfg);
    s.delayMs = 1000; // only the phases after test see it: post-suspend too slow
    request(xs, 5, AUTO);
    await waitFor(xs, J(5, 'state'), 'failed', 8000);
    expect(xs.value(J(5, 'error'))).toMatch(/timed out after 100 ms/);
    expect(domains.calls).toEqual(['suspend 5', 'resume 5']);
  });

  it('request deadline: exceeded -> recovered, failed with the reason', async () => {
    const s: Script = { calls: [], delayMs: 2000 };
    const { xs } = await world(s);
    request(xs, 5, { ...AUTO, deadline: '1' });
    await waitFor(xs, J(5, 'state'), /failed|aborted/, 6000);
    expect(xs.value(J(5, 'error'))).toMatch(/deadline of 1s exceeded/);
    expect(xs.value(J(5, 'recovered'))).toBe('1');
  });

  it('recovery table: testing -> forget (failed, nothing touched); done -> adopt (recover still possible)', async () => {
    const s: Script = { calls: [] };
    const xs = new MemoryXenStore();
    const domains = new FakeDomains();
    domains.add(5);
    domains.add(6);
    await domains.suspend(6);
    for (const d of [5, 6]) {
      xs.put(`/local/domain/0/backend/vbd/${d}/51712/params`, '/x', DOM0);
      request(xs, d, AUTO);
      xs.put(J(d, 'accepted-id'), 'j1');
    }
    xs.put(J(5, 'state'), 'testing');
    xs.put(J(6, 'state'), 'done');
    xs.put(J(6, 'suspended-by'), 'agent');
    const registry = new DeviceRegistry(defaultConfig());
    registry.register('vbd', scripted(s));
    engine = new MigrationEngine({ xs, domains, config: defaultConfig(), log, registry });
    await engine.start();
    await waitFor(xs, J(5, 'state'), 'failed');
    expect(xs.value(J(5, 'error'))).toMatch(
      /agent restarted while the job was testing; nothing had been changed/,
    );
    await new Promise((r) => setTimeout(r, 50));
    expect(xs.value(J(6, 'state'))).toBe('done');
    expect(engine.job(6)?.state).toBe('done');
    xs.put(J(6, 'control'), 'recover');
    await waitFor(xs, J(6, 'state'), 'aborted');
    expect(s.calls).toEqual(['51712:recover:sync']);
    expect(domains.calls).toEqual(['suspend 6', 'resume 6']);
  });
});
