// Device tool processes (external tools, rsync) recorded in the job's device node
// (`tool-process`) BEFORE they run, so that an agent restarted after a crash can stop a tool its
// predecessor left running before it calls the same tool with -recover. The record is a unique
// token the tool carries in its environment (DEVMIGRATE_TOOL_TOKEN, inherited by its children)
// and the boot id, then, once spawned, its process group and start time (a reused pid has
// another). Under systemd the unit's cgroup is killed with a crashed agent (KillMode=mixed);
// outside it, this is what stops a vTPM tool from pushing state after the source resumed.
import { readdirSync, readFileSync } from 'node:fs';

/** The environment variable that marks a tool's processes. */
export const TOOL_TOKEN_ENV = 'DEVMIGRATE_TOOL_TOKEN';

export interface ToolProcessRecord {
  /** Unique per tool call: `<agent pid>.<time>.<n>`. */
  token: string;
  /** /proc/sys/kernel/random/boot_id: a record from before a reboot names nothing. */
  bootId: string;
  /** The tool's process group (it leads it: spawned detached), once spawned. */
  pgid?: number;
  /** /proc/<pgid>/stat starttime (clock ticks since boot), once spawned. */
  startTicks?: string;
}

const TOKEN = /^[0-9a-z]{1,12}\.[0-9a-z]{1,12}\.[0-9a-z]{1,12}$/;
const RECORD = /^([0-9a-z.]{5,40}):([0-9a-f-]{36})(?::([1-9][0-9]{0,9}):([0-9]{1,20}))?$/;

let counter = 0;
/** A token no other tool call of any agent on this boot carries. */
export function newToolToken(): string {
  counter += 1;
  return `${process.pid.toString(36)}.${Date.now().toString(36)}.${counter.toString(36)}`;
}

export function formatToolProcess(r: ToolProcessRecord): string {
  const base = `${r.token}:${r.bootId}`;
  return r.pgid !== undefined && r.startTicks !== undefined ? `${base}:${r.pgid}:${r.startTicks}` : base;
}

export function parseToolProcess(value: string | undefined): ToolProcessRecord | undefined {
  const m = value === undefined ? null : RECORD.exec(value);
  if (m === null || !TOKEN.test(m[1] ?? '')) return undefined;
  const rec: ToolProcessRecord = { token: m[1] ?? '', bootId: m[2] ?? '' };
  if (m[3] !== undefined && m[4] !== undefined) {
    rec.pgid = Number(m[3]);
    rec.startTicks = m[4];
  }
  return rec;
}

export interface ProcessInfo {
  pid: number;
  /** Process group. */
  pgrp: number;
  startTicks: string;
  /** A zombie runs nothing (and nobody may reap an orphan on some hosts). */
  zombie: boolean;
}

/** What the agent needs of the host's process table (the fault model supplies its own). */
export interface ProcessTable {
  bootId(): string;
  /** undefined when the process does not exist. */
  info(pid: number): ProcessInfo | undefined;
  /** Every live (non-zombie) process of the group. */
  members(pgid: number): ProcessInfo[];
  /** Every live process carrying the token in its environment. */
  withToken(token: string): ProcessInfo[];
  /** Signals a whole group (negative pid) or one process; false when there was none. */
  signal(pid: number, signal: NodeJS.Signals, group: boolean): boolean;
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

function pids(): number[] {
  return readdirSync('/proc')
    .filter((n) => /^[0-9]+$/.test(n))
    .map(Number);
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
    return pids().flatMap((pid) => {
      const p = this.info(pid);
      return p !== undefined && p.pgrp === pgid && !p.zombie ? [p] : [];
    });
  },
  withToken(token) {
    const needle = `\0${TOOL_TOKEN_ENV}=${token}\0`;
    return pids().flatMap((pid) => {
      try {
        if (!`\0${readFileSync(`/proc/${pid}/environ`, 'latin1')}`.includes(needle)) return [];
      } catch {
        return [];
      }
      const p = this.info(pid);
      return p !== undefined && !p.zombie ? [p] : [];
    });
  },
  signal(pid, signal, group) {
    try {
      process.kill(group ? -pid : pid, signal);
      return true;
    } catch {
      return false;
    }
  },
};

export type GroupVerdict =
  /** Nothing of it runs. */
  | 'gone'
  /** The id now names something else (another boot, or the leader's pid reused): leave it alone. */
  | 'stale'
  /** Still the recorded tool's group: stop it. */
  | 'ours';

/**
 * Pure: is the recorded group still the tool's? A live leader must have the recorded start time.
 * With the leader gone, its members stay in the group (a group id is not given out again while
 * the group has members), so members started after the recorded leader are its children.
 */
export function judgeGroup(
  rec: Required<Pick<ToolProcessRecord, 'pgid' | 'startTicks'>> & Pick<ToolProcessRecord, 'bootId'>,
  bootId: string,
  leader: ProcessInfo | undefined,
  members: readonly ProcessInfo[],
): GroupVerdict {
  if (rec.bootId !== bootId) return 'stale';
  if (leader !== undefined && !leader.zombie) {
    if (leader.startTicks !== rec.startTicks) return 'stale';
    return leader.pgrp === rec.pgid || members.length > 0 ? 'ours' : 'gone';
  }
  const kids = members.filter((m) => BigInt(m.startTicks) >= BigInt(rec.startTicks));
  return kids.length > 0 ? 'ours' : 'gone';
}

export type StopOutcome = 'gone' | 'stale' | 'stopped' | 'still-running';

/**
 * Stops what is left of a recorded tool: the processes carrying its token (each one), and its
 * process group if it is still the recorded one. SIGTERM, SIGKILL after graceMs, and a bounded
 * wait (twice graceMs in all) until nothing of it runs. Signals nothing that is not the tool's.
 */
export async function stopTool(
  rec: ToolProcessRecord,
  table: ProcessTable,
  graceMs: number,
): Promise<StopOutcome> {
  if (rec.bootId !== table.bootId()) return 'stale';
  const left = (): { pids: number[]; group?: number } => {
    const out: { pids: number[]; group?: number } = { pids: table.withToken(rec.token).map((p) => p.pid) };
    if (rec.pgid !== undefined && rec.startTicks !== undefined) {
      const v = judgeGroup(
        { pgid: rec.pgid, startTicks: rec.startTicks, bootId: rec.bootId },
        table.bootId(),
        table.info(rec.pgid),
        table.members(rec.pgid),
      );
      if (v === 'ours') out.group = rec.pgid;
    }
    return out;
  };
  const any = (l: { pids: number[]; group?: number }): boolean => l.pids.length > 0 || l.group !== undefined;
  let now = left();
  if (!any(now)) return 'gone';
  for (const [signal, waitMs] of [
    ['SIGTERM', graceMs],
    ['SIGKILL', graceMs],
  ] as const) {
    if (now.group !== undefined) table.signal(now.group, signal, true);
    for (const pid of now.pids) table.signal(pid, signal, false);
    const end = Date.now() + waitMs;
    while (Date.now() < end) {
      await new Promise((r) => setTimeout(r, Math.min(50, Math.max(1, end - Date.now()))));
      now = left();
      if (!any(now)) return 'stopped';
    }
  }
  return any(left()) ? 'still-running' : 'stopped';
}
