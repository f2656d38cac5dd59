// Specification of the agent's log lines: journald priority prefixes without timestamps under
// systemd, human lines with time elsewhere, JSON on request, job context on every job line
// (the engine passes it as metadata: no parsing of message text).
import { describe, it, expect } from 'vitest';
import { createLogger, jobLogger, LineCapture, resolveFormat, setLevel } from '../../src/agent/logger.js';
import { engineLogger } from '../../src/agent/engine-adapter.js';
import { defaultConfig } from '../../src/config/schema.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import { MigrationEngine } from '../../src/migration/engine.js';
import { FakeDomains } from './migration-fake-domains.js';
import { MemoryXenStore } from './migration-fake-xenstore.js';

async function flush(): Promise<void> {
  await new Promise((r) => setImmediate(r));
}

describe('log format selection', () => {
  it('uses the journal format when systemd started us (INVOCATION_ID or JOURNAL_STREAM)', () => {
    expect(resolveFormat('auto', { INVOCATION_ID: 'abc' })).toBe('journal');
    expect(resolveFormat('auto', { JOURNAL_STREAM: '8:1234' })).toBe('journal');
    expect(resolveFormat('auto', {})).toBe('human');
    expect(resolveFormat('json', { INVOCATION_ID: 'abc' })).toBe('json');
  });
});

describe('journal lines', () => {
  it('carry the syslog priority prefix per level and no timestamp', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', level: 'debug', stream: cap });
    log.error('boom');
    log.warn('careful');
    log.info('hello');
    log.debug('detail');
    await flush();
    expect(cap.lines).toEqual(['<3>boom', '<4>careful', '<6>hello', '<7>detail']);
  });

  it('repeat the prefix on every line of a multi-line message', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', stream: cap });
    log.warn('first\nsecond');
    await flush();
    expect(cap.lines).toEqual(['<4>first', '<4>second']);
  });
});

describe('job context', () => {
  it('puts domid, job, phase and device first on every line of a job logger', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', stream: cap });
    const job = jobLogger(log, { domid: 5, job: 'j-1' });
    const dev = jobLogger(job, { phase: 'pre-suspend', device: 'vbd/51712' });
    dev.info('copy started', { bytes: 10 });
    job.info('accepted');
    await flush();
    expect(cap.lines).toEqual([
      '<6>copy started domid=5 job=j-1 phase=pre-suspend device=vbd/51712 bytes=10',
      '<6>accepted domid=5 job=j-1',
    ]);
  });

  it('quotes values with spaces so a line stays one record', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', stream: cap });
    log.warn('refused', { domid: 3, reason: 'no tool configured' });
    await flush();
    expect(cap.lines[0]).toBe('<4>refused domid=3 reason="no tool configured"');
  });
});

describe('human and JSON lines', () => {
  it('human lines start with an ISO time and the level', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'human', stream: cap });
    jobLogger(log, { domid: 7 }).info('hi');
    await flush();
    expect(cap.lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info {3}hi domid=7$/);
  });

  it('JSON lines parse and keep the context as fields', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'json', stream: cap });
    jobLogger(log, { domid: 7, job: 'x', phase: 'sync', device: 'vif/0' }).warn('slow', { ms: 12 });
    await flush();
    const rec = JSON.parse(cap.lines[0] ?? '') as Record<string, unknown>;
    expect(rec).toMatchObject({
      level: 'warn',
      msg: 'slow',
      domid: 7,
      job: 'x',
      phase: 'sync',
      device: 'vif/0',
      ms: 12,
    });
    expect(typeof rec['time']).toBe('string');
  });
});

describe('levels', () => {
  it('drops lines below the configured level and follows a runtime change', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', level: 'warn', stream: cap });
    const child = jobLogger(log, { domid: 1 });
    child.info('hidden');
    child.warn('shown');
    setLevel(log, 'debug');
    child.debug('now shown');
    await flush();
    expect(cap.lines).toEqual(['<4>shown domid=1', '<7>now shown domid=1']);
  });
});

describe("the engine's job lines (--log-format json)", () => {
  it('carry domid, job and phase as fields on every line of a job, and device on device lines', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'json', level: 'debug', stream: cap });
    const xs = new MemoryXenStore();
    const domains = new FakeDomains();
    const dom0 = [{ domid: 0, access: 'n' as const }];
    domains.add(9);
    xs.put('/local/domain/0/backend/vbd/9/51712/params', '/x', dom0);
    const cfg = defaultConfig();
    const registry = new DeviceRegistry(cfg);
    registry.register('vbd', {
      inspect: () => Promise.resolve({}),
      create: () => ({
        policy: 'talkative',
        test: async (ctx) => {
          ctx.log.info('checking the image');
          return { ok: true };
        },
        preSuspend: async (ctx) => ctx.log.info('bulk copy'),
      }),
    });
    const engine = new MigrationEngine({ xs, domains, config: cfg, log: engineLogger(log), registry });
    await engine.start();
    try {
      const base = '/tool/devmigrate/jobs/9';
      xs.put(base, '', dom0);
      const req = { id: 'log-1', target: 'host-b', mode: 'auto', suspend: 'agent', live: '1' };
      for (const [k, v] of Object.entries(req)) xs.put(`${base}/request/${k}`, v, dom0);
      const end = Date.now() + 3000;
      while (xs.value(`${base}/state`) !== 'done' && Date.now() < end)
        await new Promise((r) => setTimeout(r, 5));
      expect(xs.value(`${base}/state`)).toBe('done');
    } finally {
      await engine.stop();
    }
    await flush();
    const recs = cap.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const jobLines = recs.filter((r) => r['domid'] === 9);
    // Every state change of the job is a line, and each names the job in fields, not only in text.
    const transitions = jobLines.filter((r) => String(r['msg']).includes(' -> '));
    expect(transitions.map((r) => r['phase'])).toEqual(
      expect.arrayContaining(['accepted', 'testing', 'pre-suspend', 'post-suspend', 'syncing']),
    );
    for (const r of jobLines) expect(r).toMatchObject({ domid: 9, job: 'log-1' });
    expect(recs.find((r) => r['msg'] === 'checking the image')).toMatchObject({
      domid: 9,
      job: 'log-1',
      phase: 'testing',
      device: 'vbd/51712',
    });
    expect(recs.find((r) => r['msg'] === 'bulk copy')).toMatchObject({
      phase: 'pre-suspend',
      device: 'vbd/51712',
    });
  });
});

describe("the engine's job outcomes (--log-format journal)", () => {
  it('log failed at error (<3>), refused and aborted after a change at warning (<4>), done and an abort before any change at info (<6>)', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', level: 'debug', stream: cap });
    const xs = new MemoryXenStore();
    const domains = new FakeDomains();
    const dom0 = [{ domid: 0, access: 'n' as const }];
    const cfg = defaultConfig();
    const registry = new DeviceRegistry(cfg);
    // Domain 21 refuses at test, 22 fails its pre-suspend, 23 is aborted before anything changed
    // (what `devmigrate check` does), 25 is aborted after its pre-suspend, 24 migrates.
    registry.register('vbd', {
      inspect: () => Promise.resolve({}),
      create: () => ({
        policy: 'scripted',
        test: (ctx) =>
          Promise.resolve(ctx.job.domid === 21 ? { ok: false, reason: 'no target' } : { ok: true }),
        preSuspend: (ctx) =>
          ctx.job.domid === 22 ? Promise.reject(new Error('copy broke')) : Promise.resolve(),
      }),
    });
    for (const d of [21, 22, 23, 24, 25]) {
      domains.add(d);
      xs.put(`/local/domain/0/backend/vbd/${d}/51712/params`, '/x', dom0);
    }
    const engine = new MigrationEngine({ xs, domains, config: cfg, log: engineLogger(log), registry });
    await engine.start();
    const base = (d: number): string => `/tool/devmigrate/jobs/${d}`;
    const waitFor = async (d: number, state: string): Promise<void> => {
      const end = Date.now() + 3000;
      while (xs.value(`${base(d)}/state`) !== state && Date.now() < end)
        await new Promise((r) => setTimeout(r, 5));
      expect(xs.value(`${base(d)}/state`)).toBe(state);
    };
    try {
      for (const d of [21, 22, 23, 24, 25]) {
        xs.put(base(d), '', dom0);
        const mode = d === 23 || d === 25 ? 'steps' : 'auto';
        const req = { id: `out-${d}`, target: 'host-b', mode, suspend: 'agent', live: '1' };
        for (const [k, v] of Object.entries(req)) xs.put(`${base(d)}/request/${k}`, v, dom0);
      }
      await waitFor(23, 'accepted');
      xs.put(`${base(23)}/control`, 'abort', dom0);
      await waitFor(25, 'accepted');
      xs.put(`${base(25)}/control`, 'test', dom0);
      await waitFor(25, 'tested');
      xs.put(`${base(25)}/control`, 'pre-suspend', dom0);
      await waitFor(25, 'pre-suspended');
      xs.put(`${base(25)}/control`, 'abort', dom0);
      await waitFor(25, 'aborted');
      await waitFor(21, 'refused');
      await waitFor(22, 'failed');
      await waitFor(23, 'aborted');
      await waitFor(24, 'done');
    } finally {
      await engine.stop();
    }
    await flush();
    const outcome = (d: number, state: string): string | undefined =>
      cap.lines.find((l) => l.includes(`job ${d} (out-${d}): `) && l.includes(`-> ${state}`));
    expect(outcome(21, 'refused')).toMatch(/^<4>/);
    expect(outcome(22, 'failed')).toMatch(/^<3>/);
    expect(outcome(22, 'failed')).toContain('copy broke');
    expect(outcome(23, 'aborted')).toMatch(/^<6>/);
    expect(outcome(25, 'aborted')).toMatch(/^<4>/);
    expect(outcome(24, 'done')).toMatch(/^<6>/);
  });
});
