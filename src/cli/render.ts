// Human output of the CLI: a job with its per-device results and, once it has a timeline, the
// summary an operator asks for first (outcome, total time, downtime, per-phase times, bytes).
import { figures, TIMELINE_PHASES } from '../migration/timeline.js';
import { formatBytes, formatClock, formatDuration } from './format.js';
import type { JobView } from './job-client.js';

const MARK: Record<string, string> = {
  ok: 'ok',
  done: 'ok',
  refused: 'REFUSED',
  failed: 'FAILED',
  'recover-failed': 'RECOVER-FAILED',
  recovered: 'recovered',
};

export function deviceLines(job: JobView): string[] {
  const width = Math.max(8, ...job.devices.map((d) => `${d.type}/${d.devid}`.length));
  return job.devices.map((d) => {
    const name = `${d.type}/${d.devid}`.padEnd(width);
    const st = (MARK[d.state] ?? d.state).padEnd(10);
    return `  ${name}  ${st}${d.reason ? `  ${d.reason}` : ''}`;
  });
}

/** What the job's end means for the guest, in words (the state alone says it to a script). */
export function outcomeText(job: JobView): string {
  const t = job.timeline;
  const where = job.target ?? 'the destination';
  switch (job.state) {
    case 'done':
      if (t?.toolstack.unpaused !== undefined) return `migrated: the guest runs on ${where}`;
      if (job.source === 'gone') return `devices synced; the toolstack moved the guest to ${where}`;
      return 'devices synced; the guest is left suspended for the toolstack';
    case 'refused':
      return 'nothing was changed';
    case 'aborted':
      return job.recovered === '0' ? 'recovery incomplete (recovered=0): see the error' : 'devices recovered';
    case 'failed':
      return job.recovered === '0' ? 'recovery incomplete (recovered=0): see the error' : 'devices recovered';
    default:
      return job.state === undefined ? 'not taken by the agent yet' : `running (${job.state})`;
  }
}

/** The figures of a job with a timeline; empty when nothing was recorded (an older agent). */
export function figureLines(job: JobView): string[] {
  const t = job.timeline;
  if (t === undefined || (t.accepted === undefined && t.end === undefined)) return [];
  const f = figures(t);
  const lines: string[] = [];
  const total = f.totalMs !== undefined ? `total ${formatDuration(f.totalMs)}` : 'total: still running';
  let down = '';
  if (t.suspended !== undefined) {
    const devs =
      f.devicesDowntimeMs !== undefined && job.state === 'done'
        ? `; devices ready after ${formatDuration(f.devicesDowntimeMs)}`
        : '';
    if (f.downtimeMs !== undefined) {
      const how = f.downtimeEnd === 'unpaused' ? 'unpaused at the destination' : 'running here again';
      down = `downtime ${formatDuration(f.downtimeMs)} (stopped ${formatClock(t.suspended)}, ${how}${devs})`;
    } else {
      down =
        job.state === 'done'
          ? `downtime: open, the guest stopped ${formatClock(t.suspended)} and waits for the toolstack${devs}`
          : `downtime: open, the guest stopped ${formatClock(t.suspended)}; the toolstack that suspended it resumes it`;
    }
  } else if (job.state !== undefined && job.state !== 'refused') {
    down = 'downtime 0 (the guest was never stopped)';
  }
  lines.push(`  ${[total, down].filter(Boolean).join('; ')}`);
  const phases = TIMELINE_PHASES.filter((p) => f.phaseMs[p] !== undefined).map((p) => {
    const b = f.phaseBytes[p];
    return `${p} ${formatDuration(f.phaseMs[p] ?? 0)}${b !== undefined && b > 0 ? ` (${formatBytes(b)})` : ''}`;
  });
  if (phases.length > 0) lines.push(`  phases: ${phases.join(', ')}`);
  if (f.bytes > 0) lines.push(`  copied: ${formatBytes(f.bytes)}`);
  if (f.failedOps.length > 0)
    lines.push(`  operations not completed (failed or stopped): ${f.failedOps.join(', ')}`);
  return lines;
}

export function jobSummary(job: JobView): string[] {
  const head = [
    `domain ${job.name ?? '?'} (id ${job.domid})`,
    `job ${job.id ?? '?'}`,
    job.target ? `-> ${job.target}` : '',
    job.mode ? `mode ${job.mode}` : '',
  ]
    .filter(Boolean)
    .join(', ');
  const final = job.state !== undefined && ['done', 'refused', 'aborted', 'failed'].includes(job.state);
  const lines = [
    head,
    final
      ? `  outcome: ${job.state} (${outcomeText(job)})`
      : `  state: ${job.state ?? '(not taken by the agent yet)'}${job.progress ? `  progress ${job.progress}` : ''}`,
  ];
  if (job.error) lines.push(`  error: ${job.error}`);
  if (job.controlError) lines.push(`  control refused: ${job.controlError}`);
  lines.push(...figureLines(job));
  if (job.devices.length > 0) {
    lines.push('  devices:');
    lines.push(...deviceLines(job).map((l) => `  ${l}`));
  }
  return lines;
}

/** One line per job for `status` without a domain. */
export function jobLine(job: JobView): string {
  const f = job.timeline !== undefined ? figures(job.timeline) : undefined;
  const bits = [
    `${job.name ?? '?'} (id ${job.domid})`,
    job.state ?? 'new',
    job.target ? `-> ${job.target}` : '',
    f?.totalMs !== undefined ? `total ${formatDuration(f.totalMs)}` : '',
    f?.downtimeMs !== undefined ? `downtime ${formatDuration(f.downtimeMs)}` : '',
    job.timeline?.end !== undefined ? `ended ${new Date(job.timeline.end).toISOString()}` : '',
  ];
  return bits.filter(Boolean).join('  ');
}

/**
 * The timeline as a table in a fixed order (the same rows for the same story, whatever the
 * timing): each moment's offset from the request and each phase's length. `devmigrate report`
 * draws the same as a chart.
 */
export function timelineTable(job: JobView): string[] {
  const t = job.timeline;
  if (t === undefined || t.accepted === undefined) return [];
  const t0 = t.accepted;
  const f = figures(t);
  const rows: [string, number | undefined, string][] = [];
  const at = (label: string, v: number | undefined, extra = ''): void => {
    if (v !== undefined) rows.push([label, v, extra]);
  };
  const phase = (p: (typeof TIMELINE_PHASES)[number]): void => {
    const s = t.phases[p];
    if (s === undefined) return;
    const b = f.phaseBytes[p];
    const len = s.end !== undefined ? formatDuration(s.end - s.start) : 'running';
    at(p, s.start, `${len}${b !== undefined && b > 0 ? `  ${formatBytes(b)}` : ''}`);
  };
  phase('test');
  phase('pre-suspend');
  const ts = t.toolstack;
  if (ts.migrateStart !== undefined)
    at(
      'xl migrate',
      ts.migrateStart,
      ts.migrateEnd !== undefined ? formatDuration(ts.migrateEnd - ts.migrateStart) : 'running',
    );
  at('guest stopped', t.suspended);
  phase('post-suspend');
  phase('sync');
  at('xl: point of no return', ts.pointOfNoReturn);
  phase('recover');
  at(
    'guest resumed here',
    t.resumed,
    f.downtimeEnd === 'resumed' && f.downtimeMs !== undefined
      ? `downtime ${formatDuration(f.downtimeMs)}`
      : '',
  );
  at(`job ${job.state ?? 'end'}`, t.end);
  at(
    'unpaused at the destination',
    ts.unpaused,
    f.downtimeEnd === 'unpaused' && f.downtimeMs !== undefined
      ? `downtime ${formatDuration(f.downtimeMs)}`
      : '',
  );
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([label, v, extra]) =>
    `  ${label.padEnd(w)}  +${formatDuration((v ?? t0) - t0).padEnd(9)}${extra !== '' ? ` ${extra}` : ''}`.trimEnd(),
  );
}
