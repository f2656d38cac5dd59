// The job timeline as a specification: marks fold into protocol nodes, a reader in another
// process parses the same nodes back, the figures (total, downtime, phases, bytes) follow from
// them, and the engine records a real job's timeline in XenStore with wall-clock times.
import { afterEach, describe, expect, it } from 'vitest';
import { defaultConfig } from '../../src/config/schema.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigratorFactory, Logger } from '../../src/devices/types.js';
import { DeviceOpError } from '../../src/devices/types.js';
import { MigrationEngine } from '../../src/migration/engine.js';
import { figures, parseTimeline, TimelineRecorder, type NodeWrite } from '../../src/migration/timeline.js';
import { timelineHook, type JobEndReport } from '../../src/migration/timeline-recorder.js';
import { FakeDomains } from './migration-fake-domains.js';
import { MemoryXenStore } from './migration-fake-xenstore.js';

const T0 = 1_764_400_000_000;

function fold(marks: [string, number][]): { rec: TimelineRecorder; writes: NodeWrite[] } {
  const rec = new TimelineRecorder();
  const writes: NodeWrite[] = [];
  for (const [m, at] of marks) writes.push(...rec.apply(m, T0 + at));
  return { rec, writes };
}

/** The nodes as a reader would list them after the writes (last write of a path wins). */
function asNodes(writes: NodeWrite[]): Parameters<typeof parseTimeline>[0] {
  const timeline: Record<string, string> = {};
  const devices: Record<string, Record<string, string>> = {};
  for (const [path, value] of writes) {
    const dev = /^devices\/([^/]+\/[^/]+)\/timeline\/(.+)$/.exec(path);
    if (dev) (devices[dev[1] ?? ''] ??= {})[dev[2] ?? ''] = value;
    else if (path.startsWith('timeline/')) timeline[path.slice('timeline/'.length)] = value;
  }
  return { timeline, devices, toolstack: {} };
}

const MIGRATION: [string, number][] = [
  ['start:new', 0],
  ['phase-start:test', 10],
  ['device-start:vbd/51712 test', 11],
  ['device-end:vbd/51712 test:ok:', 20],
  ['phase-end:test', 21],
  ['phase-start:preSuspend', 22],
  ['device-start:vbd/51712 pre-suspend', 23],
  ['device-end:vbd/51712 pre-suspend:ok:419430400', 5023],
  ['phase-end:preSuspend', 5024],
  ['suspended', 5100],
  ['phase-start:postSuspend', 5101],
  ['device-start:vif/0 post-suspend', 5102],
  ['device-end:vif/0 post-suspend:ok:', 5150],
  ['phase-end:postSuspend', 5151],
  ['phase-start:sync', 5152],
  ['device-start:vbd/51712 sync', 5153],
  ['device-end:vbd/51712 sync:ok:419430400', 5400],
  ['phase-end:sync', 5401],
  ['synced', 5401],
  ['end:done', 5430],
  ['finished', 5431],
];

describe('timeline recorder (pure)', () => {
  it('writes one node per phase (start, then start and end), per device operation and per moment', () => {
    const { writes } = fold(MIGRATION);
    const last = new Map(writes);
    expect(last.get('timeline/accepted')).toBe(String(T0));
    expect(last.get('timeline/pre-suspend')).toBe(`${T0 + 22} ${T0 + 5024}`);
    expect(last.get('timeline/suspended')).toBe(String(T0 + 5100));
    expect(last.get('timeline/end')).toBe(String(T0 + 5430));
    expect(last.get('devices/vbd/51712/timeline/pre-suspend')).toBe(`${T0 + 23} ${T0 + 5023} ok 419430400`);
    expect(last.get('devices/vif/0/timeline/post-suspend')).toBe(`${T0 + 5102} ${T0 + 5150} ok`);
    // The phase's start is written as soon as it starts (a reader sees a running phase).
    expect(writes).toContainEqual(['timeline/sync', String(T0 + 5152)]);
    // Marks without a node: synced, finished; device starts are kept until the end.
    expect(writes.some(([p]) => p.includes('synced') || p.includes('finished'))).toBe(false);
    expect(writes.filter(([p]) => p.startsWith('devices/'))).toHaveLength(4);
  });

  it('a reader parses the nodes back into the same timeline', () => {
    const { rec, writes } = fold(MIGRATION);
    expect(parseTimeline(asNodes(writes))).toEqual(rec.timeline);
  });

  it('ignores malformed node values instead of guessing', () => {
    const t = parseTimeline({
      timeline: { accepted: 'yesterday', suspended: '-5', test: '12 x', sync: `${T0 + 9} ${T0}` },
      toolstack: { unpaused: '1e9' },
      devices: { 'vbd/1': { sync: 'a b ok' } },
    });
    expect(t.accepted).toBeUndefined();
    expect(t.suspended).toBeUndefined();
    expect(t.phases.test).toEqual({ start: 12 });
    expect(t.phases.sync).toEqual({ start: T0 + 9 }); // an end before the start is not an end
    expect(t.toolstack.unpaused).toBeUndefined();
    expect(t.devices['vbd/1']).toBeUndefined();
  });

  it('figures: per-phase times, bytes per device counted once, and the downtime left open for the toolstack', () => {
    const { rec } = fold(MIGRATION);
    const f = figures(rec.timeline);
    expect(f.totalMs).toBe(5430);
    expect(f.phaseMs).toEqual({ test: 11, 'pre-suspend': 5002, 'post-suspend': 50, sync: 249 });
    expect(f.bytes).toBe(419430400);
    expect(f.phaseBytes['pre-suspend']).toBe(419430400);
    // done: the guest stays stopped until the toolstack unpauses it at the destination.
    expect(f.downtimeEnd).toBe('open');
    expect(f.downtimeMs).toBeUndefined();
    expect(f.devicesDowntimeMs).toBe(330);
    // With the requester's unpause recorded, the downtime is closed and the total runs to it.
    const t = { ...rec.timeline, toolstack: { unpaused: T0 + 6100 } };
    expect(figures(t)).toMatchObject({ downtimeMs: 1000, downtimeEnd: 'unpaused', totalMs: 6100 });
  });

  it('figures: a recovery that resumed the guest closes the downtime at the resume and lists failures', () => {
    const { rec } = fold([
      ['start:new', 0],
      ['suspended', 100],
      ['phase-start:sync', 101],
      ['device-start:vif/0 sync', 101],
      ['device-end:vif/0 sync:failed:', 300],
      ['phase-end:sync', 300],
      ['phase-start:recover', 301],
      ['device-start:vif/0 recover', 302],
      ['device-end:vif/0 recover:ok:', 350],
      ['resumed', 420],
      ['phase-end:recover', 421],
      ['end:failed', 425],
    ]);
    expect(rec.outcome).toBe('failed');
    expect(figures(rec.timeline)).toMatchObject({
      downtimeMs: 320,
      downtimeEnd: 'resumed',
      failedOps: ['vif/0 sync'],
      phaseMs: { sync: 199, recover: 120 },
    });
  });

  it('the hook names the job and the domain, converts times to epoch ms and reports each end', () => {
    const notes: [string, string][] = [];
    const ends: JobEndReport[] = [];
    const forwarded: string[] = [];
    const hook = timelineHook({
      domid: 5,
      jobId: 'j-1',
      name: 'web01',
      writer: { note: (rel, v) => notes.push([rel, v]) },
      forward: (_d, m) => forwarded.push(m),
      onEnd: (r) => ends.push(r),
      toEpoch: (ms) => T0 + ms,
    });
    for (const [m, at] of MIGRATION) hook(5, m, at);
    expect(notes[0]).toEqual(['name', 'web01']);
    expect(forwarded).toEqual(MIGRATION.map(([m]) => m));
    expect(ends).toHaveLength(1);
    expect(ends[0]).toMatchObject({ domid: 5, jobId: 'j-1', name: 'web01', outcome: 'done' });
    expect(ends[0]?.figures.devicesDowntimeMs).toBe(330);
  });
});

describe('timeline recorded by the engine (in-memory XenStore)', () => {
  const DOM0 = [{ domid: 0, access: 'n' as const }];
  const logs: string[] = [];
  const log: Logger = {
    error: (m) => logs.push(`E ${m}`),
    warn: (m) => logs.push(`W ${m}`),
    info: (m) => logs.push(`I ${m}`),
    debug: () => undefined,
  };
  let engine: MigrationEngine | undefined;
  afterEach(async () => {
    await engine?.stop();
    engine = undefined;
    logs.length = 0;
  });

  function factory(failSync: boolean): DeviceMigratorFactory {
    return {
      inspect: () => Promise.resolve({}),
      create: () => ({
        policy: 'scripted',
        test: () => Promise.resolve({ ok: true }),
        preSuspend: async (ctx) => {
          ctx.progress(1024, 4096);
          await new Promise((r) => setTimeout(r, 20));
          ctx.progress(4096, 4096);
        },
        sync: async () => {
          await new Promise((r) => setTimeout(r, 10));
          if (failSync) throw new DeviceOpError('sync broke');
        },
        recover: () => Promise.resolve(),
      }),
    };
  }

  async function world(failSync = false) {
    const xs = new MemoryXenStore();
    const domains = new FakeDomains();
    domains.add(5);
    xs.put('/local/domain/5/name', 'web01', DOM0);
    xs.put('/local/domain/0/backend/vbd/5/51712/params', '/x', DOM0);
    const cfg = defaultConfig();
    const registry = new DeviceRegistry(cfg);
    registry.register('vbd', factory(failSync));
    const ends: JobEndReport[] = [];
    engine = new MigrationEngine({ xs, domains, config: cfg, log, registry, onJobEnd: (r) => ends.push(r) });
    await engine.start();
    return { xs, domains, ends };
  }

  function request(xs: MemoryXenStore, fields: Record<string, string>): void {
    xs.put('/tool/devmigrate/jobs/5', '', DOM0);
    xs.put('/tool/devmigrate/jobs/5/request', '', DOM0);
    for (const [k, v] of Object.entries(fields)) xs.put(`/tool/devmigrate/jobs/5/request/${k}`, v, DOM0);
  }

  async function until(pred: () => boolean, ms = 3000): Promise<void> {
    const end = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > end) throw new Error('condition not met in time');
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  function nodesOf(xs: MemoryXenStore): Parameters<typeof parseTimeline>[0] {
    const J = '/tool/devmigrate/jobs/5';
    const read = (dir: string): Record<string, string> => {
      const out: Record<string, string> = {};
      for (const [path, n] of xs.nodes) {
        const rest = path.startsWith(`${dir}/`) ? path.slice(dir.length + 1) : '';
        if (rest !== '' && !rest.includes('/')) out[rest] = n.value;
      }
      return out;
    };
    return {
      timeline: read(`${J}/timeline`),
      toolstack: {},
      devices: { 'vbd/51712': read(`${J}/devices/vbd/51712/timeline`) },
    };
  }

  it('an auto job leaves its name, its moments in order and each device operation, written with done', async () => {
    const before = Date.now();
    const { xs, ends } = await world();
    request(xs, { id: 'j1', target: 'host-b', mode: 'auto', suspend: 'agent' });
    await until(() => xs.value('/tool/devmigrate/jobs/5/state') === 'done');
    // Written in the batch that wrote `done`: a reader that sees done sees the whole timeline.
    expect(xs.value('/tool/devmigrate/jobs/5/timeline/end')).toBeDefined();
    expect(xs.value('/tool/devmigrate/jobs/5/name')).toBe('web01');
    const t = parseTimeline(nodesOf(xs));
    const order = [
      t.accepted,
      t.phases.test?.start,
      t.phases.test?.end,
      t.phases['pre-suspend']?.start,
      t.phases['pre-suspend']?.end,
      t.suspended,
      t.phases['post-suspend']?.start,
      t.phases.sync?.end,
      t.end,
    ];
    expect(order.every((v) => v !== undefined)).toBe(true);
    expect([...(order as number[])].sort((a, b) => a - b)).toEqual(order);
    expect(t.accepted ?? 0).toBeGreaterThanOrEqual(before - 5); // wall clock, not performance.now()
    expect(t.devices['vbd/51712']?.['pre-suspend']).toMatchObject({ ok: true, bytes: 4096 });
    expect(Object.keys(t.devices['vbd/51712'] ?? {})).toEqual(['test', 'pre-suspend', 'sync']);
    expect(ends.map((e) => e.outcome)).toEqual(['done']);
    expect(ends[0]?.name).toBe('web01');
  });

  it('a failed sync records the failed operation, the recovery and the resume', async () => {
    const { xs, domains, ends } = await world(true);
    request(xs, { id: 'j2', target: 'host-b', mode: 'auto', suspend: 'agent' });
    await until(() => xs.value('/tool/devmigrate/jobs/5/state') === 'failed');
    const t = parseTimeline(nodesOf(xs));
    expect(t.devices['vbd/51712']?.sync?.ok).toBe(false);
    expect(t.devices['vbd/51712']?.recover?.ok).toBe(true);
    expect(t.resumed).toBeDefined();
    expect(domains.calls).toContain('resume 5');
    expect(figures(t)).toMatchObject({ downtimeEnd: 'resumed', failedOps: ['vbd/51712 sync'] });
    expect(ends.map((e) => e.outcome)).toEqual(['failed']);
  });

  it('a check (test, then the requester aborts) ends aborted without a warning', async () => {
    const { xs } = await world();
    request(xs, { id: 'chk', target: 'host-b', mode: 'steps', suspend: 'agent' });
    await until(() => xs.value('/tool/devmigrate/jobs/5/state') === 'accepted');
    xs.put('/tool/devmigrate/jobs/5/control', 'test', DOM0);
    await until(() => xs.value('/tool/devmigrate/jobs/5/state') === 'tested');
    xs.put('/tool/devmigrate/jobs/5/control', 'abort', DOM0);
    await until(() => xs.value('/tool/devmigrate/jobs/5/state') === 'aborted');
    expect(logs.filter((l) => l.startsWith('W ') || l.startsWith('E '))).toEqual([]);
    expect(logs.some((l) => /tested -> aborted/.test(l))).toBe(true);
  });
});
