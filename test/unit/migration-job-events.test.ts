// A running job tells what happens through typed events (no field to poll), and the timing marks
// of onMark (benchmarks, the job timeline) are derived from them: the order and content of both,
// for a migrated job and for one that fails after the suspend and is resumed.
import { afterEach, describe, expect, it } from 'vitest';
import { defaultConfig, type DevMigrateConfig } from '../../src/config/schema.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigratorFactory } from '../../src/devices/types.js';
import { DeviceOpError } from '../../src/devices/types.js';
import type { JobRunEvent } from '../../src/migration/job-events.js';
import { markOf } from '../../src/migration/job-events.js';
import { SimWorld } from '../sim/world.js';

const AUTO = { id: 'e1', target: 'host-b', mode: 'auto', suspend: 'agent' };

function disk(failPostSuspend: boolean): DeviceMigratorFactory {
  return {
    inspect: () => Promise.resolve({}),
    create: () => ({
      policy: 'events',
      test: () => Promise.resolve({ ok: true }),
      preSuspend: (ctx) => {
        ctx.progress(4096, 8192);
        return Promise.resolve();
      },
      postSuspend: () => (failPostSuspend ? Promise.reject(new DeviceOpError('no')) : Promise.resolve()),
      sync: () => Promise.resolve(),
      recover: () => Promise.resolve(),
    }),
  };
}

let world: SimWorld | undefined;
afterEach(async () => {
  await world?.agent?.engine.stop();
  for (const g of world?.guests.values() ?? []) g.stop();
  world = undefined;
});

async function run(failPostSuspend: boolean): Promise<{ events: JobRunEvent[]; marks: string[] }> {
  const w = (world = new SimWorld());
  await w.addDomain(5);
  const events: JobRunEvent[] = [];
  const marks: string[] = [];
  const cfg: DevMigrateConfig = defaultConfig();
  await w.startAgent(
    cfg,
    (c) => {
      const r = new DeviceRegistry(c);
      r.register('vbd', disk(failPostSuspend));
      return r;
    },
    { onJobEvent: (ev) => events.push(ev), onMark: (_d, m) => marks.push(m) },
  );
  w.request(5, AUTO);
  const end = Date.now() + 5000;
  while (!events.some((e) => e.type === 'finished') && !events.some((e) => e.type === 'done-visible')) {
    if (Date.now() > end) throw new Error('the job did not end');
    await new Promise((r) => setTimeout(r, 5));
  }
  return { events, marks };
}

describe('job events', () => {
  it('a migrated job: run start, states, phases, device ops with their bytes, the suspend, done', async () => {
    const { events, marks } = await run(false);
    expect(events.every((e) => e.domid === 5 && typeof e.atMs === 'number')).toBe(true);
    const states = events.filter((e) => e.type === 'state').map((e) => (e.type === 'state' ? e.to : ''));
    expect(states).toEqual([
      'testing',
      'tested',
      'pre-suspend',
      'pre-suspended',
      'suspending',
      'post-suspend',
      'post-suspended',
      'syncing',
      'done',
    ]);
    const types = events.map((e) => e.type);
    expect(types[0]).toBe('run-start');
    expect(types.indexOf('suspend-requested')).toBeLessThan(types.indexOf('suspended'));
    expect(types.indexOf('synced')).toBeLessThan(types.indexOf('done-visible'));
    expect(events.find((e) => e.type === 'device-op-end' && e.op === 'preSuspend')).toMatchObject({
      device: 'vbd/51712',
      ok: true,
      bytes: 4096,
    });
    // The marks of onMark, as before (suspended, synced, done-visible, phase-start/end:<phase>)
    // plus the timeline's (start, device-start/end with outcome and bytes, end).
    expect(marks).toEqual([
      'start:new',
      'phase-start:test',
      'device-start:vbd/51712 test',
      'device-end:vbd/51712 test:ok:',
      'phase-end:test',
      'phase-start:preSuspend',
      'device-start:vbd/51712 pre-suspend',
      'device-end:vbd/51712 pre-suspend:ok:4096',
      'phase-end:preSuspend',
      'suspended',
      'phase-start:postSuspend',
      'device-start:vbd/51712 post-suspend',
      'device-end:vbd/51712 post-suspend:ok:',
      'phase-end:postSuspend',
      'phase-start:sync',
      'device-start:vbd/51712 sync',
      'device-end:vbd/51712 sync:ok:',
      'phase-end:sync',
      'synced',
      'end:done',
      'done-visible',
    ]);
    expect(marks).toEqual(events.flatMap((e) => markOf(e) ?? []));
  });

  it('a post-suspend failure: the recovery as a phase, the resume, the end, the run finished', async () => {
    const { events, marks } = await run(true);
    const at = (m: string): number => marks.indexOf(m);
    expect(at('device-end:vbd/51712 post-suspend:failed:')).toBeGreaterThan(at('suspended'));
    expect(at('phase-start:recover')).toBeGreaterThan(at('phase-end:postSuspend'));
    expect(at('device-end:vbd/51712 recover:ok:')).toBeGreaterThan(at('phase-start:recover'));
    expect(at('resumed')).toBeGreaterThan(at('phase-end:recover'));
    expect(at('end:failed')).toBeGreaterThan(at('resumed'));
    expect(marks.at(-1)).toBe('finished');
    expect(events.find((e) => e.type === 'device-op-end' && e.op === 'postSuspend')).toMatchObject({
      ok: false,
      reason: 'no',
    });
  });
});
