// Focused specifications of the engine defects the fault model found in its second
// 1,000,000-schedule run (seeds 1,000,001..2,000,000; the seeds themselves are regressions in
// migration-fault-seeds.test.ts), on the simulated host in real time.
import { afterEach, describe, expect, it } from 'vitest';
import type { DevMigrateConfig } from '../../src/config/schema.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigrator, DeviceMigratorFactory, ToolTracking } from '../../src/devices/types.js';
import { TOOL_TOKEN_ENV } from '../../src/migration/tool-processes.js';
import { AUTO, fastConfig, sleep, stopWorld, until } from '../sim/spec-helpers.js';
import { DOM0_ONLY, SimWorld } from '../sim/world.js';

function registryWith(f: DeviceMigratorFactory): (c: DevMigrateConfig) => DeviceRegistry {
  return (c) => {
    const r = new DeviceRegistry(c);
    r.register('vbd', f);
    return r;
  };
}

let world: SimWorld | undefined;
afterEach(async () => {
  await stopWorld(world);
  world = undefined;
});

describe('seed 1212228: a late end of an earlier tool does not unrecord the running recover tool', () => {
  it("sync's tool reports its end after recover's tool recorded itself: the record still names recover's tool", async () => {
    const w = (world = new SimWorld());
    await w.addDomain(5);
    const RECORD = '/tool/devmigrate/holding/5/tools/vbd/51712';
    let syncTool: ToolTracking | undefined;
    let recoverToken: string | undefined;
    let seenWhileRecoverRuns: string | undefined = 'not looked';
    const factory: DeviceMigratorFactory = {
      inspect: () => Promise.resolve({}),
      create: (): DeviceMigrator => ({
        policy: 'tooled',
        test: () => Promise.resolve({ ok: true }),
        preSuspend: () => Promise.resolve(),
        postSuspend: () => Promise.resolve(),
        // The sync tool never answers: the phase times out and its op is abandoned.
        sync: async (ctx) => {
          syncTool = await ctx.toolProcess?.();
          await new Promise(() => undefined);
        },
        recover: async (ctx) => {
          const t = await ctx.toolProcess?.();
          recoverToken = t?.env[TOOL_TOKEN_ENV];
          // The abandoned sync op finally sees its tool end, after recover's tool was recorded.
          syncTool?.ended();
          await sleep(200);
          seenWhileRecoverRuns = w.store.value(RECORD);
          t?.ended();
        },
      }),
    };
    const cfg = fastConfig(100);
    cfg.timeouts.syncMs = 300;
    await w.startAgent(cfg, registryWith(factory));
    w.request(5, AUTO);
    await until('job final', () => /^(failed|aborted)$/.test(w.job(5, 'state') ?? ''), 10_000);
    expect(recoverToken).toBeDefined();
    // A crash now would leave the recover tool running: the next agent must find its record.
    expect(seenWhileRecoverRuns).toMatch(new RegExp(`^${(recoverToken ?? '').replace(/\./g, '\\.')}:`));
    await until('record removed at the end', () => w.store.value(RECORD) === undefined, 2000);
  });
});

describe("seed 1614641: a held domain is judged after this agent's own pending writes", () => {
  it('the directory is removed while the end of its job is still being written: no second recovery, failed stays failed', async () => {
    const w = (world = new SimWorld());
    await w.addDomain(5);
    const factory: DeviceMigratorFactory = {
      inspect: () => Promise.resolve({}),
      create: (): DeviceMigrator => ({
        policy: 'failing',
        test: () => Promise.resolve({ ok: true }),
        preSuspend: () => Promise.reject(new Error('pre-suspend broke')),
        recover: () => Promise.resolve(),
      }),
    };
    const states: string[] = [];
    w.store.onWrite = (rec) => {
      if (rec.path === '/tool/devmigrate/jobs/5/state' && rec.op === 'write') states.push(rec.value ?? '');
    };
    // The job's end (state=failed, recovered=1, the holding record removed: one transaction) is
    // answered late by a busy xenstored.
    let slowed = false;
    w.store.faults = (conn, op, path) => {
      if (
        !slowed &&
        conn.name === 'agent-1' &&
        op === 'write' &&
        path === '/tool/devmigrate/jobs/5/recovered'
      ) {
        slowed = true;
        return { kind: 'delay', ms: 1500 };
      }
      return { kind: 'ok' };
    };
    let ended = false;
    await w.startAgent(fastConfig(100), registryWith(factory), {
      onJobEvent: (ev) => {
        if (ev.type === 'state' && ev.to === 'failed') ended = true;
      },
    });
    w.request(5, AUTO);
    await until('the run ended (in memory)', () => ended);
    expect(w.store.value('/tool/devmigrate/holding/5')).toBeDefined(); // its removal is still pending
    // The requester removes the directory (the run is let go), then makes and removes it again:
    // the second removal finds no run of ours, and the holding record still there.
    w.store.remove('/tool/devmigrate/jobs/5');
    await sleep(100);
    w.store.put('/tool/devmigrate/jobs/5', '');
    await sleep(100);
    w.store.remove('/tool/devmigrate/jobs/5');
    await until('the end landed', () => w.store.value('/tool/devmigrate/holding/5') === undefined, 5000);
    await sleep(500);
    expect(states.slice(states.indexOf('failed'))).toEqual(['failed']);
    expect(w.job(5, 'state')).toBe('failed');
  });
});

describe('seeds 1878504 and 1188951: pieces of a removed job directory brought back by late writes of a crashed agent', () => {
  it('no request, no state, only nodes the agent writes, no holding record: the next agent removes them', async () => {
    const w = (world = new SimWorld());
    await w.addDomain(5);
    await w.addDomain(6);
    // What the crashed agent left: the requester removed jobs/5 while its job was testing, and the
    // agent's device update, timeline note and progress, sent before it saw the removal, made the
    // directory again; it died before writing the job's nodes whole.
    w.store.put('/tool/devmigrate/jobs/5/devices/vbd/51712/state', 'tested', DOM0_ONLY);
    w.store.put('/tool/devmigrate/jobs/5/timeline/test', '1 2', DOM0_ONLY);
    w.store.put('/tool/devmigrate/jobs/5/progress', '1/1', DOM0_ONLY);
    w.control(5, 'recover'); // a requester's control into it changes nothing
    // A requester's own directory with no request yet is not the agent's to touch.
    w.store.put('/tool/devmigrate/jobs/6', '', DOM0_ONLY);
    const factory: DeviceMigratorFactory = {
      inspect: () => Promise.resolve({}),
      create: (): DeviceMigrator => ({ policy: 'none' }),
    };
    await w.startAgent(fastConfig(100), registryWith(factory));
    await until('the pieces are gone', () => !w.store.nodes.has('/tool/devmigrate/jobs/5'), 3000);
    await sleep(200);
    expect(w.store.nodes.has('/tool/devmigrate/jobs/6')).toBe(true);
    // The domain's next request is served as usual.
    w.request(5, AUTO);
    await until('done', () => w.job(5, 'state') === 'done', 5000);
  });
});
