// Device tool processes (external tools, rsync) recorded in the job's device node
// (`tool-process` = "<pgid>:<start ticks>:<boot id>"), so that an agent restarted after a crash
// can stop a tool its predecessor left running before it calls the same tool with -recover. Under
// systemd the unit's cgroup is killed with a crashed agent (KillMode=mixed); outside it, this is
// what stops a vTPM tool from pushing state to the destination after the source resumed.
import { readdirSync, readFileSync } from 'node:fs';

export interface ToolProcessRecord {
  /** The tool's process group (it leads it: spawned detached). */
  pgid: number;
  /** /proc/<pgid>/stat starttime (clock ticks since boot): a pid reused later has another. */
  startTicks: string;
  /** /proc/sys/kernel/random/boot_id: a record from before a reboot names nothing. */
  bootId: string;
}

const RECORD = /^([1-9][0-9]{0,9}):([0-9]{1,20}):([0-9a-f-]{36})$/;

export function formatToolProcess(r: ToolProcessRecord): string {
  return `${r.pgid}:${r.startTicks}:${r.bootId}`;
}

export function parseToolProcess(value: string | undefined): ToolProcessRecord | undefined {
  const m = value === undefined ? null : RECORD.exec(value);
  if (m === null) return undefined;
  return { pgid: Number(m[1]), startTicks: m[2] ?? '', bootId: m[3] ?? '' };
}

export interface ProcessInfo {
  pid: number;
  /** Process group. */
  pgrp: number;
  startTicks: string;
  /** A zombie runs nothing (and nobody may reap an orphan on some hosts). */
  zombie: boolean;
}

/** What the agent needs of the host's process table (tests and the fault model supply their own). */
export interface ProcessTable {
  bootId(): string;
  /** undefined when the process does not exist. */
  info(pid: number): ProcessInfo | undefined;
  /** Every live (non-zombie) process of the group. */
  members(pgid: number): ProcessInfo[];
  /** Signals the whole group; false when it has no process left. */
  signalGroup(pgid: number, signal: NodeJS.Signals): boolean;
}

/** Fields of /proc/<pid>/stat after the command (which may hold spaces and parentheses). */
export function parseStat(pid: number, stat: string): ProcessInfo | undefined {
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] = state (field 3), rest[2] = pgrp (field 5), rest[19] = starttime (field 22).
  const state = rest[0];
  const pgrp = Number(rest[2]);
  const start = rest[19];
  if (state === undefined || !Number.isInteger(pgrp) || start === undefined) return undefined;
  return { pid, pgrp, startTicks: start, zombie: state === 'Z' || state === 'X' };
}

/** The real process table, through /proc. */
export const procTable: ProcessTable = {
  bootId: (() => {
    let cached: string | undefined;
    return () => (cached ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
  })(),
  info(pid) {
    try {
      return parseStat(pid, readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return undefined;
    }
  },
  members(pgid) {
    const out: ProcessInfo[] = [];
    for (const name of readdirSync('/proc')) {
      if (!/^[0-9]+$/.test(name)) continue;
      const p = this.info(Number(name));
      if (p !== undefined && p.pgrp === pgid && !p.zombie) out.push(p);
    }
    return out;
  },
  signalGroup(pgid, signal) {
    try {
      process.kill(-pgid, signal);
      return true;
    } catch {
      return false;
    }
  },
};

/** The record of a process this agent just spawned (the tool leads its own group). */
export function recordOf(pid: number, table: ProcessTable): ToolProcessRecord | undefined {
  const p = table.info(pid);
  if (p === undefined) return undefined;
  return { pgid: pid, startTicks: p.startTicks, bootId: table.bootId() };
}

export type GroupVerdict =
  /** Nothing of it runs. */
  | 'gone'
  /** The id now names something else (another boot, or the leader's pid reused): leave it alone. */
  | 'stale'
  /** Still the recorded tool's group: stop it. */
  | 'ours';

/**
 * Pure: is the recorded group still the tool's? The leader alive must have the recorded start
 * time. With the leader gone, its members stay in the group (a group id is not given out again
 * while the group has members), so members started after the recorded leader are its children.
 */
export function judgeGroup(
  rec: ToolProcessRecord,
  bootId: string,
  leader: ProcessInfo | undefined,
  members: readonly ProcessInfo[],
): GroupVerdict {
  if (rec.bootId !== bootId) return 'stale';
  if (leader !== undefined && !leader.zombie) {
    if (leader.startTicks !== rec.startTicks) return 'stale';
    return leader.pgrp === rec.pgid ? 'ours' : members.length > 0 ? 'ours' : 'gone';
  }
  const kids = members.filter((m) => BigInt(m.startTicks) >= BigInt(rec.startTicks));
  return kids.length > 0 ? 'ours' : 'gone';
}

export type StopOutcome = 'gone' | 'stale' | 'stopped' | 'still-running';

/**
 * Stops a recorded tool group: SIGTERM, then SIGKILL after graceMs, and waits (bounded, twice
 * graceMs in all) until none of it runs. Never signals a group that is not the recorded one.
 */
export async function stopToolGroup(
  rec: ToolProcessRecord,
  table: ProcessTable,
  graceMs: number,
): Promise<StopOutcome> {
  const verdict = (): GroupVerdict =>
    judgeGroup(rec, table.bootId(), table.info(rec.pgid), table.members(rec.pgid));
  const first = verdict();
  if (first !== 'ours') return first;
  for (const [signal, waitMs] of [
    ['SIGTERM', graceMs],
    ['SIGKILL', graceMs],
  ] as const) {
    table.signalGroup(rec.pgid, signal);
    const end = Date.now() + waitMs;
    while (Date.now() < end) {
      await new Promise((r) => setTimeout(r, Math.min(50, Math.max(1, end - Date.now()))));
      if (verdict() !== 'ours') return 'stopped';
    }
  }
  return verdict() === 'ours' ? 'still-running' : 'stopped';
}
