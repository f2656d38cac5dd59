// SIGTERM on the built agent (a child process) over a simulated host: a job in syncing finishes
// done, a job in pre-suspend is aborted with the guest running, a request written while the agent
// drains stays untouched for the next agent, a job in suspending whose guest never acks has its
// handshake cancelled (not waited for), and the process exits 0 within its drain bound.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSim, type RunningSim } from '../../xen-mocks/sim-kit.js';
import { writeRequest, newJobId } from '../../src/cli/job-client.js';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { XenStore } from '../../src/xenstore/types.js';
import type { HostDescription } from '../../xen-mocks/sim-host.js';
import {
  agentLogPath,
  domainRunning,
  jobState,
  sharedDiskGuest,
  spawnAgent,
  waitAgentReady,
  waitJobState,
  waitWatched,
  writeAgentConfig,
  type AgentProcess,
} from './agent-world.js';

const FINAL = ['done', 'refused', 'aborted', 'failed'];
const DRAIN_S = 10;

function guest(domid: number, name: string): HostDescription['guests'][number] {
  return sharedDiskGuest(domid, name, '01');
}

describe('agent SIGTERM drain (process, simulated host)', () => {
  let dir: string;
  let sim: RunningSim;
  let xs: XenStore;
  let cfgPath: string;
  let runs = 0;
  const agents: AgentProcess[] = [];

  const startAgent = async (): Promise<AgentProcess> => {
    const a = spawnAgent({
      env: { ...process.env, ...sim.env },
      configPath: cfgPath,
      logFile: agentLogPath(dir, ++runs),
      logFormat: 'json',
      extraArgs: ['--drain-timeout', String(DRAIN_S)],
    });
    agents.push(a);
    await waitAgentReady(xs, a.pid);
    return a;
  };
  const state = (domid: number): Promise<string | undefined> => jobState(xs, domid);
  const waitState = (domid: number, pred: (s: string | undefined) => boolean, ms: number, what: string) =>
    waitJobState(xs, domid, pred, ms, what);
  const running = (domid: number): Promise<boolean> => domainRunning(sim.harness, domid);
  /** SIGTERM, and the exit code and time to exit (SIGKILL after 30 s: a failure, not a hang). */
  const term = async (a: AgentProcess): Promise<{ code: number | null; ms: number }> => {
    const t0 = Date.now();
    const r = await a.stop('SIGTERM', 30_000);
    return { code: r.code, ms: Date.now() - t0 };
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agent-drain-'));
    // The vif tool: the sync step (3) of "drainsync" takes 2 s, the pre-suspend step (1) of
    // "drainpre" 20 s (longer than the drain bound: only an abort ends it); the rest, recover
    // included, 0.1 s.
    const tool = join(dir, 'tool.sh');
    await writeFile(
      tool,
      [
        '#!/bin/sh',
        'step=""; dom=""; rec=""',
        'while [ $# -gt 0 ]; do',
        '  case "$1" in -step) step=$2; shift;; -domname) dom=$2; shift;; -recover) rec=1;; esac; shift',
        'done',
        'case "$dom:$step:$rec" in',
        '  drainsync:3:) sleep 2;;',
        '  drainpre:1:) sleep 20;;',
        '  *) sleep 0.1;;',
        'esac',
        'echo "step $step done"',
        'exit 0',
        '',
      ].join('\n'),
    );
    cfgPath = await writeAgentConfig(dir, tool, {
      toolTimeoutMs: 30_000,
      // libxl's handshake waits: longer than the drain bound, so only a cancel ends them in time.
      timeouts: { suspendAckMs: 60_000, suspendMs: 60_000 },
    });
    const guests = [
      guest(31, 'drainsync'),
      guest(32, 'drainpre'),
      guest(33, 'drainlate'),
      { ...guest(34, 'draincancel'), simMode: 'never-ack' as const },
    ];
    sim = await startSim({ dir: join(dir, 'xenstored'), desc: { guests } });
    xs = await connectXenStore({ path: sim.harness.socketPath, timeoutMs: 10_000 });
  }, 60_000);

  afterAll(async () => {
    for (const a of agents) await a.stop('SIGKILL', 5000).catch(() => undefined);
    await xs?.close().catch(() => undefined);
    await Promise.race([sim?.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 10_000))]);
    await rm(dir, { recursive: true, force: true });
  }, 30_000);

  it('a job in syncing ends done; a request written while draining is left untouched; exit 0 in the bound', async () => {
    const agent = await startAgent();
    const id31 = newJobId();
    await writeRequest(xs, 31, { id: id31, target: 'host-b', mode: 'auto', suspend: 'agent' });
    await waitState(31, (s) => s === 'syncing' || FINAL.includes(s ?? ''), 20_000, 'syncing');
    expect(await state(31)).toBe('syncing');
    const exiting = term(agent);
    await waitWatched(
      xs,
      '/tool/devmigrate/agent/state',
      async () => (await xs.tryRead('/tool/devmigrate/agent/state')) === 'draining',
      5000,
      'draining',
    );
    const lateId = newJobId();
    await writeRequest(xs, 33, { id: lateId, target: 'host-b', mode: 'auto', suspend: 'agent' });
    const { code, ms } = await exiting;
    console.log(`SIGTERM in syncing: exit ${code} after ${ms} ms (bound ${DRAIN_S} s)`);
    expect(code).toBe(0);
    expect(ms).toBeLessThan(DRAIN_S * 1000);
    expect(await state(31)).toBe('done');
    expect(await xs.tryRead('/tool/devmigrate/jobs/31/devices/vif/0/state')).toBe('synced');
    // Left for the next agent: no state, no accepted-id, the request as written.
    expect(await state(33)).toBeUndefined();
    expect(await xs.tryRead('/tool/devmigrate/jobs/33/accepted-id')).toBeUndefined();
    expect(await xs.tryRead('/tool/devmigrate/jobs/33/request/id')).toBe(lateId);
    expect(await xs.tryRead('/tool/devmigrate/agent/state')).toBe('stopped');
    // --log-format json: the job's lines carry domid, job and phase as fields, device lines the device.
    const recs = (await readFile(agentLogPath(dir, runs), 'utf8'))
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const job31 = recs.filter((r) => r['domid'] === 31);
    expect(job31.length).toBeGreaterThan(4);
    for (const r of job31) expect(r['job']).toBe(id31);
    expect(job31.map((r) => r['phase'])).toEqual(
      expect.arrayContaining(['testing', 'pre-suspend', 'syncing']),
    );
    expect(job31.find((r) => r['msg'] === '[' + join(dir, 'tool.sh') + '] step 3 done')).toMatchObject({
      phase: 'syncing',
      device: 'vif/0',
    });
    await sim.harness.destroyDomain(31);
    // The next agent takes the request it was left.
    const next = await startAgent();
    await waitState(33, (s) => FINAL.includes(s ?? ''), 20_000, 'late job final');
    expect(await state(33)).toBe('done');
    await sim.harness.destroyDomain(33);
    expect((await term(next)).code).toBe(0);
  }, 90_000);

  it('a job in pre-suspend is aborted at once: devices recovered, the guest running, exit 0', async () => {
    const agent = await startAgent();
    await writeRequest(xs, 32, { id: newJobId(), target: 'host-b', mode: 'auto', suspend: 'agent' });
    await waitState(32, (s) => s === 'pre-suspend' || FINAL.includes(s ?? ''), 20_000, 'pre-suspend');
    expect(await state(32)).toBe('pre-suspend');
    const { code, ms } = await term(agent);
    console.log(`SIGTERM in pre-suspend: exit ${code} after ${ms} ms (bound ${DRAIN_S} s)`);
    expect(code).toBe(0);
    // Not held for the bound: aborting a job before the suspension needs no waiting.
    expect(ms).toBeLessThan(5000);
    expect(await state(32)).toBe('aborted');
    expect(await xs.tryRead('/tool/devmigrate/jobs/32/recovered')).toBe('1');
    expect(await xs.tryRead('/tool/devmigrate/jobs/32/suspended-by')).toBeUndefined();
    expect(await running(32)).toBe(true);
  }, 60_000);

  it('a job in suspending (guest never acks): handshake cancelled, recovered, guest running, exit 0 fast', async () => {
    const agent = await startAgent();
    await writeRequest(xs, 34, { id: newJobId(), target: 'host-b', mode: 'auto', suspend: 'agent' });
    await waitWatched(
      xs,
      '/local/domain/34/control/shutdown',
      async () => (await xs.tryRead('/local/domain/34/control/shutdown')) === 'suspend',
      20_000,
      'the suspend request',
    );
    expect(await state(34)).toBe('suspending');
    const { code, ms } = await term(agent);
    console.log(`SIGTERM in suspending (never-ack guest): exit ${code} after ${ms} ms (bound ${DRAIN_S} s)`);
    expect(code).toBe(0);
    // The 2 s cancel grace and the recovery; not the 60 s ack wait, and well within the bound.
    expect(ms).toBeLessThan(6000);
    expect(await state(34)).toBe('aborted');
    expect(await xs.tryRead('/tool/devmigrate/jobs/34/recovered')).toBe('1');
    expect(await xs.tryRead('/tool/devmigrate/jobs/34/suspended-by')).toBe('agent');
    expect(await xs.tryRead('/local/domain/34/control/shutdown')).toBe('');
    expect(await running(34)).toBe(true);
    // Domain-control lines carry the domain as a field.
    const recs = (await readFile(agentLogPath(dir, runs), 'utf8'))
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const dom = recs.filter((r) => r['component'] === 'domains');
    expect(dom.length).toBeGreaterThan(0);
    for (const r of dom) expect(r['domid']).toBe(34);
    expect(dom.map((r) => String(r['msg']))).toEqual(
      expect.arrayContaining([expect.stringContaining('suspend aborted while waiting for the ack')]),
    );
  }, 60_000);
});
