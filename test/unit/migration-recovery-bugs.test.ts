// The six recovery bugs of issue 10, each as a specification on the simulated host (simulated
// store and hypervisor, guest kernels, the agent's real domain layer): the domain is never left
// suspended or paused by us, recovered=1 is true when written, a job key names only its own
// job, and no tool of a crashed predecessor still runs when a device is recovered.
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { DevMigrateConfig } from '../../src/config/schema.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { DeviceMigrator, DeviceMigratorFactory, Phase } from '../../src/devices/types.js';
import { DeviceOpError } from '../../src/devices/types.js';
import { AUTO, fastConfig, sleep, stopWorld, until } from '../sim/spec-helpers.js';
import { DOM0_ONLY, SimWorld, jobNode } from '../sim/world.js';

const STEPS = { ...AUTO, mode: 'steps' };

interface Script {
  /** Called when a device op starts (phase name or "recover:<phase>"). */
  on?: (domid: number, op: string) => void | Promise<void>;
  failIn?: Phase;
  delayMs?: Partial<Record<Phase, number>>;
  calls: string[];
}
function scripted(s: Script): DeviceMigratorFactory {
  return {
    inspect: () => Promise.resolve({}),
    create: (dev): DeviceMigrator => {
      const op = (phase: Phase) => async (): Promise<void> => {
        s.calls.push(`${dev.domid}:${phase}`);
        await s.on?.(dev.domid, phase);
        const d = s.delayMs?.[phase];
        if (d !== undefined) await sleep(d);
        if (s.failIn === phase) throw new DeviceOpError(`${phase} broke`);
      };
      return {
        policy: 'scripted',
        test: () => Promise.resolve({ ok: true }),
        preSuspend: op('preSuspend'),
        postSuspend: op('postSuspend'),
        sync: op('sync'),
        recover: async (_ctx, last) => {
          s.calls.push(`${dev.domid}:recover:${last}`);
          await s.on?.(dev.domid, `recover:${last}`);
        },
      };
    },
  };
}
function registryOf(s: Script): (c: DevMigrateConfig) => DeviceRegistry {
  return (c) => {
    const r = new DeviceRegistry(c);
    r.register('vbd', scripted(s));
    return r;
  };
}

const FINAL = /^(refused|aborted|failed)$/;
/** A process that exists and is not a zombie (nobody may reap orphans on this machine). */
function running(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
}

let world: SimWorld | undefined;
afterEach(async () => {
  await stopWorld(world);
  world = undefined;
});

describe('bug 1: a failing domains.info() is not "the domain is gone"', () => {
  it('post-suspend fails and one info() rejects: the domain is still resumed, recovered=1 is true', async () => {
    const w = (world = new SimWorld());
    await w.addDomain(5);
    let armed = false;
    const s: Script = {
      calls: [],
      failIn: 'postSuspend',
      on: (_d, op) => {
        if (op === 'postSuspend') armed = true;
      },
    };
    w.hv.faults = (caller, call) => {
      if (armed && caller.startsWith('agent') && call === 'info') {
        armed = false;
        return { kind: 'error', errno: 'EFAULT' };
      }
      return { kind: 'ok' };
    };
    await w.startAgent(fastConfig(200), registryOf(s));
    w.request(5, AUTO);
    await until('job final', () => FINAL.test(w.job(5, 'state') ?? ''));
    expect(w.job(5, 'state')).toBe('failed');
    expect(w.hv.info(5)).toMatchObject({ shutdown: false, paused: false });
    expect(w.job(5, 'recovered')).toBe('1');
  });

  it('info() keeps failing: recovered=0 with why, never a claim that the domain runs', async () => {
    const w = (world = new SimWorld());
    await w.addDomain(5);
    let broken = false;
    const s: Script = {
      calls: [],
      failIn: 'postSuspend',
      on: (_d, op) => {
        if (op === 'postSuspend') broken = true;
      },
    };
    w.hv.faults = (caller, call) =>
      broken && caller.startsWith('agent') && call === 'info'
        ? { kind: 'error', errno: 'EFAULT' }
        : { kind: 'ok' };
    await w.startAgent(fastConfig(200), registryOf(s));
    w.request(5, AUTO);
    await until('job final', () => FINAL.test(w.job(5, 'state') ?? ''), 10_000);
    expect(w.job(5, 'state')).toBe('failed');
    expect(w.job(5, 'recovered')).toBe('0');
    expect(w.job(5, 'error')).toMatch(/cannot tell whether domain 5 is suspended.*EFAULT/);
  });
});

describe('bug 2: steps mode, past the suspension, never waits for a job slot', () => {
  it('maxJobs=1: the suspended job keeps its slot; its sync runs at once while another job waits', async () => {
    const w = (world = new SimWorld());
    await w.addDomain(5);
    await w.addDomain(6);
    const cfg = fastConfig(200);
    cfg.limits.maxJobs = 1;
    cfg.timeouts.syncMs = 200;
    const s: Script = { calls: [], delayMs: { preSuspend: 1500 } };
    const order: string[] = [];
    await w.startAgent(cfg, registryOf(s), {
      onJobEvent: (ev) => {
        if (ev.type === 'state') order.push(`${ev.domid}:${ev.to}`);
      },
    });
    w.request(5, { ...STEPS, id: 'a' });
    await until('accepted', () => w.job(5, 'state') === 'accepted');
    for (const [c, st] of [
      ['test', 'tested'],
      ['pre-suspend', 'pre-suspended'],
      ['post-suspend', 'post-suspended'],
    ] as const) {
      w.control(5, c);
      await until(st, () => w.job(5, 'state') === st, 5000);
    }
    // Domain 5 is suspended now. Another job arrives and wants the one slot.
    w.request(6, { ...AUTO, id: 'b' });
    await sleep(100);
    w.control(5, 'sync');
    await until('job 5 ends', () => /done|failed|aborted/.test(w.job(5, 'state') ?? ''), 5000);
    expect(w.job(5, 'state')).toBe('done');
    await until('job 6 done', () => w.job(6, 'state') === 'done', 8000);
    // The waiting job started only after the suspended one had finished its sync.
    expect(order.indexOf('6:testing')).toBeGreaterThan(order.indexOf('5:done'));
  });
});

describe('bug 3: an agent restarted in "suspending" withdraws the leftover request and watches', () => {
  /** What the crashed agent left: the job in `state`, its request in control/shutdown (or acked). */
  function leftBehind(w: SimWorld, state: string, suspendRequest: string): void {
    w.request(5, AUTO);
    w.store.put(jobNode(5, 'state'), state, DOM0_ONLY);
    w.store.put(jobNode(5, 'accepted-id'), 'j1', DOM0_ONLY);
    w.store.put(jobNode(5, 'accepted-mode'), 'auto', DOM0_ONLY);
    w.store.put(jobNode(5, 'suspended-by'), 'agent', DOM0_ONLY);
    w.store.put(jobNode(5, 'suspend-request'), suspendRequest, DOM0_ONLY);
  }

  it('a request the guest has not acked yet is withdrawn: the guest never suspends', async () => {
    const w = (world = new SimWorld());
    const g = await w.addDomain(5, { mode: 'slow-ack', ackDelayMs: 1500 });
    w.store.put('/local/domain/5/control/shutdown', 'suspend');
    leftBehind(w, 'suspending', `requested:${Date.now()}`);
    const s: Script = { calls: [] };
    await w.startAgent(fastConfig(200), registryOf(s));
    await until('job final', () => FINAL.test(w.job(5, 'state') ?? ''));
    await sleep(1700); // past the guest's slow ack
    expect(g.stats.acks).toBe(0);
    expect(w.hv.info(5)).toMatchObject({ shutdown: false, paused: false });
    expect(w.job(5, 'state')).toBe('failed');
    expect(w.job(5, 'recovered')).toBe('1');
    expect(s.calls).toEqual(['5:recover:preSuspend']);
  });

  it('a guest that had acked and suspends after the restart is resumed by the new agent', async () => {
    const w = (world = new SimWorld());
    const g = await w.addDomain(5, { mode: 'late-suspend', suspendDelayMs: 600 });
    w.store.put('/local/domain/5/control/shutdown', 'suspend');
    await until('guest acked', () => g.stats.acks === 1);
    leftBehind(w, 'suspending', `requested:${Date.now()}`);
    await w.startAgent(fastConfig(200), registryOf({ calls: [] }));
    await until('job final', () => FINAL.test(w.job(5, 'state') ?? ''), 5000);
    await sleep(300);
    expect(g.stats.suspends).toBe(1);
    expect(w.hv.info(5)).toMatchObject({ shutdown: false, paused: false });
    expect(w.hv.domains.get(5)?.resumes).toBe(1);
    expect(w.job(5, 'recovered')).toBe('1');
  });

  it('an agent that crashed while watching for a late suspend: the next one watches on and resumes', async () => {
    const w = (world = new SimWorld());
    const g = await w.addDomain(5, { mode: 'late-suspend', suspendDelayMs: 600 });
    w.store.put('/local/domain/5/control/shutdown', 'suspend');
    await until('guest acked', () => g.stats.acks === 1);
    leftBehind(w, 'recovering', `acked:${Date.now()}`);
    await w.startAgent(fastConfig(200), registryOf({ calls: [] }));
    await until('job final', () => FINAL.test(w.job(5, 'state') ?? ''), 5000);
    await sleep(300);
    expect(w.hv.info(5)).toMatchObject({ shutdown: false, paused: false });
    expect(w.hv.domains.get(5)?.resumes).toBe(1);
  });
});

describe('bug 4: never unpause what the agent did not pause', () => {
  it('a domain paused by an administrator: the suspend fails, recovery leaves it paused', async () => {
    const w = (world = new SimWorld());
    await w.addDomain(5);
    const s: Script = { calls: [], on: (d, op) => (op === 'preSuspend' ? w.hv.adminPause(d) : undefined) };
    await w.startAgent(fastConfig(200), registryOf(s));
    w.request(5, AUTO);
    await until('job final', () => FINAL.test(w.job(5, 'state') ?? ''));
    expect(w.job(5, 'state')).toBe('failed');
    expect(w.job(5, 'error')).toMatch(/suspend failed/);
    expect(w.hv.domains.get(5)?.pauseCount).toBe(1);
    expect(w.hv.calls.filter((c) => c.caller.startsWith('agent'))).toEqual([]);
  });

  it('paused by an administrator while suspended: resumed, and still paused', async () => {
    const w = (world = new SimWorld());
    await w.addDomain(5);
    const s: Script = {
      calls: [],
      failIn: 'postSuspend',
      on: (d, op) => (op === 'postSuspend' ? w.hv.adminPause(d) : undefined),
    };
    await w.startAgent(fastConfig(200), registryOf(s));
    w.request(5, AUTO);
    await until('job final', () => FINAL.test(w.job(5, 'state') ?? ''));
    expect(w.hv.domains.get(5)).toMatchObject({ shutdown: false, pauseCount: 1, resumes: 1 });
    expect(w.hv.calls.filter((c) => c.caller.startsWith('agent')).map((c) => c.call)).toEqual(['resume']);
  });
});

describe('bug 5: a job key with leading zeros is not a domain id', () => {
  it('jobs/05 is answered in jobs/05; removing it does not touch domain 5s job', async () => {
    const w = (world = new SimWorld());
    await w.addDomain(5);
    const s: Script = { calls: [], delayMs: { preSuspend: 300 } };
    await w.startAgent(fastConfig(200), registryOf(s));
    w.request(5, AUTO);
    await until('job 5 running', () => w.job(5, 'state') === 'pre-suspend');
    w.request('05', { ...AUTO, id: 'stray' });
    await until('stray answered', () => w.job('05', 'state') !== undefined);
    expect(w.job('05', 'state')).toBe('failed');
    expect(w.job('05', 'error')).toBe('request/domid: job key "05" is not a decimal domain id');
    w.store.remove('/tool/devmigrate/jobs/05');
    await until(
      'job 5 done',
      () => w.job(5, 'state') !== 'pre-suspend' && w.job(5, 'state') !== 'suspending',
    );
    await until('job 5 done', () => /done|failed|aborted/.test(w.job(5, 'state') ?? ''));
    expect(w.job(5, 'state')).toBe('done');
    expect(w.job(5, 'error')).toBeUndefined();
    const stray = w.store.log.filter(
      (r) => r.conn.startsWith('agent') && r.path.startsWith('/tool/devmigrate/jobs/5/'),
    );
    expect(
      stray.filter((r) => r.value?.includes('stray') === true || r.value?.includes('"05"') === true),
    ).toEqual([]);
  });
});

describe("bug 6: no predecessor's tool still runs for a device being recovered", () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir === undefined) return;
    // Whatever the test left running: the tool's process group.
    for (const f of ['pids']) {
      const p = join(dir, f);
      if (!existsSync(p)) continue;
      for (const pid of (await readFile(p, 'utf8')).split(/\s+/).filter((x) => x !== '')) {
        try {
          process.kill(-Number(pid), 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('the agent crashes while its tool runs in post-suspend: the next agent kills the tool group first', async () => {
    dir = await mkdtemp(join(tmpdir(), 'bug6-'));
    const tool = join(dir, 'tool.sh');
    // Post-suspend (step 2): a child and the tool itself keep running (a vTPM push in progress).
    // -recover: says whether any of them still runs.
    await writeFile(
      tool,
      `#!/bin/sh
D=${dir}
step=; rec=
while [ $# -gt 0 ]; do case "$1" in -step) step=$2; shift 2;; -recover) rec=1; shift;; *) shift;; esac; done
if [ -n "$rec" ]; then
  alive=gone
  for p in $(cat $D/pids 2>/dev/null); do
    s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null)
    [ -n "$s" ] && [ "$s" != Z ] && alive=alive
  done
  echo "recover step=$step predecessor-$alive" >> $D/log
  exit 0
fi
echo "step=$step" >> $D/log
if [ "$step" = 2 ]; then
  sleep 30 &
  echo "$$ $!" > $D/pids.tmp && mv $D/pids.tmp $D/pids
  sleep 30
fi
exit 0
`,
    );
    await chmod(tool, 0o755);
    const w = (world = new SimWorld());
    await w.addDomain(5, { mode: 'normal' }, { 'vif/0': { mac: '00:16:3e:00:00:05' } });
    const cfg = fastConfig(200);
    cfg.devices.vif = {
      tool: { path: tool, contract: 'external-device-migrate', timeoutMs: 60_000, passSubtype: false },
    };
    cfg.timeouts.postSuspendMs = 60_000;
    cfg.timeouts.deviceMs = 60_000;
    const reg = (c: DevMigrateConfig): DeviceRegistry => new DeviceRegistry(c);
    await w.startAgent(cfg, reg);
    w.request(5, AUTO);
    await until('tool running in post-suspend', () => existsSync(join(dir ?? '', 'pids')), 10_000);
    await sleep(100); // the record of the tool's process group reaches the store
    w.crashAgent();
    await w.startAgent(cfg, reg);
    await until('job final', () => FINAL.test(w.job(5, 'state') ?? ''), 15_000);
    const log = await readFile(join(dir, 'log'), 'utf8');
    const why = `log: ${log}; job: ${w.job(5, 'state')} ${w.job(5, 'error')}`;
    expect(
      log.split('\n').find((l) => l.startsWith('recover')),
      why,
    ).toBe('recover step=2 predecessor-gone');
    expect(w.job(5, 'recovered'), why).toBe('1');
    const [leader, child] = (await readFile(join(dir, 'pids'), 'utf8')).trim().split(' ').map(Number);
    for (const pid of [leader, child]) expect(running(pid ?? 0)).toBe(false);
  });
});
