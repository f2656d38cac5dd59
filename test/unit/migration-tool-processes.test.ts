// Stopping what a crashed agent's device tool left running, on REAL process trees: found by the
// token in their environment and by the recorded process group (guarded by the leader's start time
// and the boot id), signalled SIGTERM then SIGKILL, and waited for; never anything else. And the
// systemd unit: a crashed agent's cgroup is killed before the next one starts.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import {
  formatToolProcess,
  judgeGroup,
  parseStat,
  parseToolProcess,
  procTable,
  stopTool,
  TOOL_TOKEN_ENV,
  type ProcessInfo,
  type ToolProcessRecord,
} from '../../src/migration/tool-processes.js';

const BOOT = procTable.bootId();
const spawned: ChildProcess[] = [];
afterEach(() => {
  for (const c of spawned.splice(0)) {
    try {
      if (c.pid !== undefined) process.kill(-c.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
});

/** A tool as runTool starts it: its own process group, the token in its environment. */
function tool(script: string, token: string): ChildProcess {
  const c = spawn('/bin/sh', ['-c', script], {
    detached: true,
    stdio: 'ignore',
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', [TOOL_TOKEN_ENV]: token },
  });
  spawned.push(c);
  return c;
}
const live = (pid: number): boolean => {
  const p = procTable.info(pid);
  return p !== undefined && !p.zombie;
};
async function until(pred: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}
/** The pids of the group (leader and children) once the script has started its children. */
async function groupOf(c: ChildProcess, members: number): Promise<number[]> {
  await until(() => procTable.members(c.pid ?? -1).length >= members);
  return procTable.members(c.pid ?? -1).map((p) => p.pid);
}

describe('tool-process records', () => {
  it('round-trip with and without the process group; anything else does not parse', () => {
    const r: ToolProcessRecord = { token: 'a1.b2.c3', bootId: BOOT };
    expect(parseToolProcess(formatToolProcess(r))).toEqual(r);
    const full = { ...r, pgid: 4242, startTicks: '123456' };
    expect(parseToolProcess(formatToolProcess(full))).toEqual(full);
    for (const bad of [
      '',
      '4242',
      'a1.b2.c3:notaboot',
      `x y.z:${BOOT}`,
      `a1.b2.c3:${BOOT}:0:1`,
      `a1.b2.c3:${BOOT}:12:1.5`,
    ])
      expect(parseToolProcess(bad), bad).toBeUndefined();
  });

  it('/proc/<pid>/stat fields are read after the command, whatever it holds', () => {
    const stat = '4242 (we ird) ) name) S 1 4240 4240 0 -1 4194304 1 2 3 4 5 6 7 8 20 0 1 0 987654 100 2';
    expect(parseStat(4242, stat)).toEqual({ pid: 4242, pgrp: 4240, startTicks: '987654', zombie: false });
  });

  it('judges a recorded group: another boot, a reused leader pid, the leader, or its children', () => {
    const rec = { pgid: 100, startTicks: '5000', bootId: BOOT };
    const p = (pid: number, start: string, pgrp = 100, zombie = false): ProcessInfo => ({
      pid,
      pgrp,
      startTicks: start,
      zombie,
    });
    expect(judgeGroup(rec, 'another-boot', p(100, '5000'), [p(100, '5000')])).toBe('stale');
    expect(judgeGroup(rec, BOOT, p(100, '9999'), [p(100, '9999')])).toBe('stale');
    expect(judgeGroup(rec, BOOT, p(100, '5000'), [p(100, '5000')])).toBe('ours');
    expect(judgeGroup(rec, BOOT, undefined, [p(101, '5100')])).toBe('ours');
    expect(judgeGroup(rec, BOOT, p(100, '5000', 100, true), [p(101, '4000')])).toBe('gone');
    expect(judgeGroup(rec, BOOT, undefined, [])).toBe('gone');
  });
});

describe('stopping a previous agent tool (real processes)', () => {
  it('the whole group, leader and children, by its record: SIGTERM, then gone', async () => {
    const c = tool('sleep 60 & sleep 60 & wait', 't1.a.1');
    const pids = await groupOf(c, 3);
    const leader = procTable.info(c.pid ?? -1) as ProcessInfo;
    const rec = { token: 't1.a.1', bootId: BOOT, pgid: leader.pid, startTicks: leader.startTicks };
    expect(await stopTool(rec, procTable, 500)).toBe('stopped');
    for (const pid of pids) expect(live(pid), `pid ${pid}`).toBe(false);
  });

  it('a record made before the tool ran (no process group yet): found by its token', async () => {
    const c = tool('sleep 60 & sleep 60 & wait', 't2.a.1');
    const pids = await groupOf(c, 3);
    expect(await stopTool({ token: 't2.a.1', bootId: BOOT }, procTable, 500)).toBe('stopped');
    for (const pid of pids) expect(live(pid)).toBe(false);
  });

  it('a child that left the group (setsid) is found by its token too', async () => {
    const c = tool('setsid sleep 60 & echo; sleep 60', 't3.a.1');
    await until(() => procTable.withToken('t3.a.1').length >= 3);
    const all = procTable.withToken('t3.a.1').map((p) => p.pid);
    expect(new Set(procTable.withToken('t3.a.1').map((p) => p.pgrp)).size).toBeGreaterThan(1);
    const leader = procTable.info(c.pid ?? -1) as ProcessInfo;
    const rec = { token: 't3.a.1', bootId: BOOT, pgid: leader.pid, startTicks: leader.startTicks };
    expect(await stopTool(rec, procTable, 500)).toBe('stopped');
    for (const pid of all) expect(live(pid)).toBe(false);
  });

  it('a tool that ignores SIGTERM gets SIGKILL after the grace', async () => {
    const c = tool("trap '' TERM; sleep 60 & wait; sleep 60", 't4.a.1');
    const pids = await groupOf(c, 2);
    const leader = procTable.info(c.pid ?? -1) as ProcessInfo;
    const rec = { token: 't4.a.1', bootId: BOOT, pgid: leader.pid, startTicks: leader.startTicks };
    const t0 = Date.now();
    expect(await stopTool(rec, procTable, 300)).toBe('stopped');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    for (const pid of pids) expect(live(pid)).toBe(false);
  });

  it('never signals what the record does not name: another boot, a reused pid, another token', async () => {
    const c = tool('sleep 60', 't5.a.1');
    await groupOf(c, 1);
    const leader = procTable.info(c.pid ?? -1) as ProcessInfo;
    const other = { token: 'zz.zz.zz', bootId: BOOT };
    expect(await stopTool({ ...other, bootId: '00000000-0000-4000-8000-000000000000' }, procTable, 100)).toBe(
      'stale',
    );
    expect(await stopTool({ ...other, pgid: leader.pid, startTicks: '1' }, procTable, 100)).toBe('gone');
    expect(await stopTool(other, procTable, 100)).toBe('gone');
    expect(live(leader.pid)).toBe(true);
  });
});

describe('under systemd, a crashed agent leaves no tool behind', () => {
  it("the unit's KillMode kills the whole control group with SIGKILL once the agent's main process is gone", () => {
    const unit = readFileSync(new URL('../../systemd/xen-devmigrate.service', import.meta.url), 'utf8');
    const setting = (k: string): string | undefined =>
      [...unit.matchAll(new RegExp(`^${k}=(.*)$`, 'gm'))].map((m) => m[1]?.trim()).at(-1);
    // mixed: SIGTERM to the main process only (the agent drains and stops its own tools), the
    // final SIGKILL to every process left in the cgroup; after a crash systemd goes straight to
    // that SIGKILL (nothing to SIGTERM). control-group would do it too; process/none would not.
    expect(['mixed', 'control-group', undefined]).toContain(setting('KillMode'));
    expect(setting('SendSIGKILL') ?? 'yes').not.toBe('no');
    // The unit may not move the tools out of its cgroup.
    expect(setting('Delegate')).toBeUndefined();
  });
});
