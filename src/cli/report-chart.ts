// The picture of a job's timeline as data, shared by the terminal chart and the SVG: one row for
// the job's phases, one per device with its operations, one for xl (when `devmigrate migrate` ran
// it) and one for the guest (running / stopped), over one time axis. Pure.
import {
  figures,
  TIMELINE_PHASES,
  type JobTimeline,
  type TimelineFigures,
  type TimelinePhase,
} from '../migration/timeline.js';
import { compareDevices, type JobView } from './job-client.js';

export type SpanKind = TimelinePhase | 'xl' | 'running' | 'stopped';

export interface ChartSpan {
  kind: SpanKind;
  start: number;
  end: number;
  failed?: boolean;
  /** A moment rather than a span (xl's point of no return, the unpause). */
  label?: string;
}

export interface ChartRow {
  label: string;
  spans: ChartSpan[];
  /** Moments on the row: [time, one-letter mark, meaning]. */
  marks: [number, string, string][];
  /** A device with no operation in any phase: nothing to do. */
  idle?: boolean;
}

export interface Chart {
  title: string;
  t0: number;
  t1: number;
  /** Where the axis counts from (the job's start, also in a zoom). */
  origin: number;
  rows: ChartRow[];
  /** The window in which the guest was stopped; open windows end at t1. */
  stopped?: { start: number; end: number; open: boolean };
  figures: TimelineFigures;
}

export const PHASE_LETTER: Readonly<Record<TimelinePhase, string>> = {
  test: 't',
  'pre-suspend': 'p',
  'post-suspend': 's',
  sync: 'y',
  recover: 'r',
};

function latest(t: JobTimeline): number | undefined {
  const times: number[] = [];
  const push = (v: number | undefined): void => {
    if (v !== undefined) times.push(v);
  };
  push(t.accepted);
  push(t.end);
  push(t.suspended);
  push(t.resumed);
  for (const v of Object.values(t.toolstack)) push(v);
  for (const s of Object.values(t.phases)) {
    push(s.start);
    push(s.end);
  }
  for (const d of Object.values(t.devices)) for (const s of Object.values(d)) push(s.end ?? s.start);
  return times.length > 0 ? Math.max(...times) : undefined;
}

function earliest(t: JobTimeline): number | undefined {
  const starts = [t.accepted, ...Object.values(t.phases).map((s) => s.start)].filter(
    (v): v is number => v !== undefined,
  );
  return starts.length > 0 ? Math.min(...starts) : undefined;
}

/** The chart of a job; undefined when the job has no timeline (an older agent, a new job). */
export function buildChart(job: JobView, now: number = Date.now()): Chart | undefined {
  const t = job.timeline;
  if (t === undefined) return undefined;
  const t0 = earliest(t);
  const last = latest(t);
  if (t0 === undefined || last === undefined) return undefined;
  // A running job is drawn up to now; a finished one up to its last moment.
  const final = job.state !== undefined && ['done', 'refused', 'aborted', 'failed'].includes(job.state);
  const t1 = Math.max(final ? last : Math.max(last, now), t0 + 1);
  const rows: ChartRow[] = [];

  const phaseRow: ChartRow = { label: 'phases', spans: [], marks: [] };
  for (const p of TIMELINE_PHASES) {
    const s = t.phases[p];
    if (s !== undefined) phaseRow.spans.push({ kind: p, start: s.start, end: s.end ?? t1 });
  }
  rows.push(phaseRow);

  const keys = new Set([...job.devices.map((d) => `${d.type}/${d.devid}`), ...Object.keys(t.devices)]);
  const devices = [...keys]
    .map((k) => {
      const i = k.indexOf('/');
      return { type: k.slice(0, i), devid: k.slice(i + 1), key: k };
    })
    .sort(compareDevices);
  for (const d of devices) {
    const ops = t.devices[d.key] ?? {};
    const row: ChartRow = { label: d.key, spans: [], marks: [] };
    for (const p of TIMELINE_PHASES) {
      const s = ops[p];
      if (s !== undefined)
        row.spans.push({ kind: p, start: s.start, end: s.end ?? t1, failed: s.ok === false });
    }
    if (row.spans.length === 0) row.idle = true;
    rows.push(row);
  }

  const ts = t.toolstack;
  if (ts.migrateStart !== undefined) {
    const xl: ChartRow = { label: 'xl migrate', spans: [], marks: [] };
    xl.spans.push({ kind: 'xl', start: ts.migrateStart, end: ts.migrateEnd ?? t1 });
    if (ts.pointOfNoReturn !== undefined) xl.marks.push([ts.pointOfNoReturn, '!', 'point of no return']);
    if (ts.unpaused !== undefined) xl.marks.push([ts.unpaused, 'u', 'unpaused at the destination']);
    if (ts.resumedHere !== undefined) xl.marks.push([ts.resumedHere, 'R', 'running at the source again']);
    rows.push(xl);
  }

  const f = figures(t);
  const guest: ChartRow = { label: 'guest', spans: [], marks: [] };
  let stopped: Chart['stopped'];
  if (t.suspended !== undefined) {
    const closedAt = f.downtimeMs !== undefined ? t.suspended + f.downtimeMs : undefined;
    stopped = { start: t.suspended, end: closedAt ?? t1, open: closedAt === undefined };
    guest.spans.push({ kind: 'running', start: t0, end: t.suspended });
    guest.spans.push({ kind: 'stopped', start: t.suspended, end: stopped.end });
    if (closedAt !== undefined && closedAt < t1)
      guest.spans.push({ kind: 'running', start: closedAt, end: t1 });
  } else guest.spans.push({ kind: 'running', start: t0, end: t1 });
  rows.push(guest);

  const title = [
    `${job.name ?? `domain ${job.domid}`} (id ${job.domid})`,
    job.target ? `-> ${job.target}` : '',
    job.id ? `job ${job.id}` : '',
    job.state ?? '',
  ]
    .filter(Boolean)
    .join('  ');
  const chart: Chart = { title, t0, t1, origin: t0, rows, figures: f };
  if (stopped !== undefined) chart.stopped = stopped;
  return chart;
}

/** A zoom on the stopped window when it is short against the whole job (the downtime story). */
export function zoomChart(chart: Chart, minShare = 0.25): Chart | undefined {
  const w = chart.stopped;
  if (w === undefined) return undefined;
  const whole = chart.t1 - chart.t0;
  const len = Math.max(1, w.end - w.start);
  if (len / whole >= minShare) return undefined;
  const pad = Math.max(len * 0.15, 5);
  const t0 = Math.max(chart.t0, w.start - pad);
  const t1 = Math.min(chart.t1, w.end + pad);
  const clip = (s: ChartSpan): ChartSpan | undefined =>
    s.end < t0 || s.start > t1 ? undefined : { ...s, start: Math.max(s.start, t0), end: Math.min(s.end, t1) };
  return {
    ...chart,
    title: `${chart.title}  (zoom: the guest stopped)`,
    t0,
    t1,
    rows: chart.rows.map((r) => ({
      ...r,
      spans: r.spans.map(clip).filter((s): s is ChartSpan => s !== undefined),
      marks: r.marks.filter(([at]) => at >= t0 && at <= t1),
    })),
  };
}

/** Tick times (epoch ms) from the chart's origin, every `step`, inside [t0, t1]. */
export function ticks(chart: Chart, step: number): number[] {
  const out: number[] = [];
  const first = chart.origin + Math.ceil((chart.t0 - chart.origin) / step) * step;
  for (let t = first; t <= chart.t1 + 1e-6; t += step) out.push(t);
  return out;
}

/** Tick step (ms) for at most `maxTicks` ticks over `spanMs`: 1, 2, 5 x 10^k. */
export function tickStep(spanMs: number, maxTicks: number): number {
  const raw = spanMs / Math.max(1, maxTicks);
  const pow = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-3)));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

export function tickLabel(ms: number, step: number): string {
  if (step < 1000) return `${(ms / 1000).toFixed(step < 10 ? 3 : step < 100 ? 2 : 1)} s`;
  if (step < 60_000) return `${Math.round(ms / 1000)} s`;
  return `${Math.round(ms / 60_000)} min`;
}
