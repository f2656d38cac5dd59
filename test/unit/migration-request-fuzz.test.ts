// Random request trees into the engine (simulated store, real domain layer): odd keys, missing,
// unknown, nested or garbage fields and values, guest-writable permissions, garbage controls.
// The engine never crashes; each trusted tree gets a clear `failed` (or runs, when it happens to
// be valid), an untrusted one is ignored, and a real job among them goes on to `done`. Counts are
// printed (FUZZ_SCALE multiplies).
import { afterEach, describe, expect, it } from 'vitest';
import { defaultConfig } from '../../src/config/schema.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { Perm } from '../../src/xenstore/types.js';
import { seededRandom } from '../sim/virtual-clock.js';
import { DOM0_ONLY, SimWorld } from '../sim/world.js';

const SCALE = Number(process.env['FUZZ_SCALE'] ?? 1);
const J = '/tool/devmigrate/jobs';
const FIELDS = ['id', 'target', 'mode', 'suspend', 'live', 'deadline'];
const VALUES = [
  '',
  ' ',
  'auto',
  'steps',
  'agent',
  'toolstack',
  '0',
  '1',
  '30',
  'host-b',
  '::1',
  '1.2.3.4',
  'a;b',
  '$(reboot)',
  '-rf',
  'é',
  '\u0000x',
  'x'.repeat(300),
  '999999',
  'j-1',
];
const KEYS = [
  '0',
  '05',
  '007',
  '5x',
  'abc',
  '32752',
  '99999',
  '123456',
  '7',
  '8',
  '9',
  '-1',
  '1e3',
  'x'.repeat(60),
];

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)] as T;
}

let world: SimWorld | undefined;
afterEach(async () => {
  await world?.agent?.engine.stop();
  for (const g of world?.guests.values() ?? []) g.stop();
  world = undefined;
});

describe('request fuzz', () => {
  it('random request trees: never a crash, each trusted one answered, a real job goes on', async () => {
    const r = seededRandom(77);
    const counts = { trees: 0, failed: 0, running: 0, ignored: 0, other: 0, realJobsDone: 0 };
    for (let batch = 0; batch < 30 * SCALE; batch++) {
      const w = (world = new SimWorld());
      for (const d of [7, 8, 9])
        await w.addDomain(d, { mode: 'normal' }, { 'vif/0': { mac: '00:16:3e:00:00:09' } });
      await w.startAgent(defaultConfig(), (c) => new DeviceRegistry(c));
      const trees: { key: string; trusted: boolean }[] = [];
      for (let t = 0; t < 20; t++) {
        const key = pick(r, KEYS);
        if (trees.some((x) => x.key === key) || key === '9') continue;
        const guest = r() < 0.15;
        const perms: Perm[] = guest
          ? [
              { domid: 0, access: 'n' },
              { domid: 7, access: pick(r, ['w', 'b'] as const) },
            ]
          : DOM0_ONLY;
        const base = `${J}/${key}`;
        w.store.put(base, '', perms);
        w.store.put(`${base}/request`, '', perms);
        for (const f of FIELDS) if (r() < 0.8) w.store.put(`${base}/request/${f}`, pick(r, VALUES), perms);
        if (r() < 0.2)
          w.store.put(`${base}/request/${pick(r, ['colour', 'ID', 'id/x', 'mode/extra'])}`, 'x', perms);
        if (r() < 0.2) w.store.put(`${base}/control`, pick(r, [...VALUES, 'test', 'abort', 'sync']), perms);
        trees.push({ key, trusted: !guest });
        counts.trees += 1;
      }
      // The real job, among them.
      w.request(9, { id: 'real', target: 'host-b', mode: 'auto', suspend: 'agent' });
      const end = Date.now() + 10_000;
      const settled = (): boolean =>
        w.job(9, 'state') === 'done' &&
        trees.every((t) => !t.trusted || /^(failed|refused|aborted|done)$/.test(w.job(t.key, 'state') ?? ''));
      while (!settled() && Date.now() < end) await new Promise((res) => setTimeout(res, 10));
      expect(w.job(9, 'state'), 'the real job').toBe('done');
      counts.realJobsDone += 1;
      for (const t of trees) {
        const s = w.job(t.key, 'state');
        if (!t.trusted) {
          // Nothing from it is obeyed; the agent writes a failed line only when the directory is dom0's.
          counts.ignored += 1;
          continue;
        }
        expect(s, `job ${t.key}: ${w.job(t.key, 'error') ?? ''}`).toMatch(/^(failed|refused|aborted|done)$/);
        if (s === 'failed') {
          counts.failed += 1;
          expect(w.job(t.key, 'error')?.length ?? 0).toBeGreaterThan(5);
        } else if (s === 'done') counts.running += 1;
        else counts.other += 1;
      }
      await w.agent?.engine.stop();
      for (const g of w.guests.values()) g.stop();
      world = undefined;
    }
    console.log(`request fuzz: ${JSON.stringify(counts)}`);
    expect(counts.failed).toBeGreaterThan(20 * SCALE);
  }, 120_000);
});
