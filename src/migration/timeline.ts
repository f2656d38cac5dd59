// A job's timeline as pure functions: JobRun's marks in (with wall-clock times), the XenStore
// node writes that record them out, the same nodes parsed back by a reader in another process,
// and the figures an operator asks for (total time, downtime, per-phase times, bytes copied).
// The node layout is part of the job protocol (docs/protocol.md, "Timeline"). No I/O here.

/** Phases as the timeline names them (the protocol's words, not the engine's identifiers). */
export const TIMELINE_PHASES = ['test', 'pre-suspend', 'post-suspend', 'sync', 'recover'] as const;
export type TimelinePhase = (typeof TIMELINE_PHASES)[number];

/** JobRun's phase ids (state-machine.ts Phase) and `recover`, to the protocol's words. */
const PHASE_WORD: Readonly<Record<string, TimelinePhase>> = {
  test: 'test',
  preSuspend: 'pre-suspend',
  'pre-suspend': 'pre-suspend',
  postSuspend: 'post-suspend',
  'post-suspend': 'post-suspend',
  sync: 'sync',
  recover: 'recover',
};

export function isTimelinePhase(v: string): v is TimelinePhase {
  return (TIMELINE_PHASES as readonly string[]).includes(v);
}

export interface Span {
  /** Wall-clock epoch ms. */
  start: number;
  end?: number;
}

export interface DeviceSpan extends Span {
  ok?: boolean;
  /** Progress units (bytes for a copy) the operation reported last, when it reported any. */
  bytes?: number;
}

/** What the requester (`devmigrate migrate`) records of its own steps: xl and the unpause. */
export interface ToolstackMarks {
  /** `xl migrate` started. */
  migrateStart?: number;
  /** xl's "Target has acknowledged transfer": memory is at the destination, no way back. */
  pointOfNoReturn?: number;
  /** `xl migrate` returned. */
  migrateEnd?: number;
  /** The guest was unpaused at the destination. */
  unpaused?: number;
  /** The guest runs at the source again after xl failed (xl resumed it, or the requester did). */
  resumedHere?: number;
}

export interface JobTimeline {
  accepted?: number;
  phases: Partial<Record<TimelinePhase, Span>>;
  /** The domain was seen suspended (the agent's suspend returned, or the toolstack's was seen). */
  suspended?: number;
  /** The agent resumed the domain at the source (recovery). */
  resumed?: number;
  /** The job reached done or a final state. */
  end?: number;
  /** Per device ("type/devid"), per phase. */
  devices: Record<string, Partial<Record<TimelinePhase, DeviceSpan>>>;
  toolstack: ToolstackMarks;
}

export function emptyTimeline(): JobTimeline {
  return { phases: {}, devices: {}, toolstack: {} };
}

/** A node write relative to the job directory: [path, value]. */
export type NodeWrite = readonly [string, string];

/** Names of the requester's nodes under `toolstack/` (docs/protocol.md). */
export const TOOLSTACK_NODES: Readonly<Record<keyof ToolstackMarks, string>> = {
  migrateStart: 'migrate-start',
  pointOfNoReturn: 'point-of-no-return',
  migrateEnd: 'migrate-end',
  unpaused: 'unpaused',
  resumedHere: 'resumed',
};

function spanText(s: Span): string {
  return s.end === undefined ? `${s.start}` : `${s.start} ${s.end}`;
}

function deviceSpanText(s: DeviceSpan): string {
  const parts = [String(s.start), String(s.end ?? s.start), s.ok === false ? 'failed' : 'ok'];
  if (s.bytes !== undefined) parts.push(String(s.bytes));
  return parts.join(' ');
}

/**
 * Folds JobRun's marks into a timeline and says which nodes to write for each. Marks:
 * `start:new|recover|adopt`, `phase-start:<phase>`, `phase-end:<phase>`, `suspended`, `resumed`,
 * `device-start:<type>/<devid> <phase>`, `device-end:<type>/<devid> <phase>:<ok|failed>:[bytes]`,
 * `end:<state>`; others (synced, done-visible, finished) write nothing.
 */
export class TimelineRecorder {
  readonly timeline: JobTimeline = emptyTimeline();
  /** The state of the last end mark (done, refused, aborted, failed). */
  outcome: string | undefined;

  apply(mark: string, at: number): NodeWrite[] {
    const t = this.timeline;
    const colon = mark.indexOf(':');
    const kind = colon < 0 ? mark : mark.slice(0, colon);
    const arg = colon < 0 ? '' : mark.slice(colon + 1);
    switch (kind) {
      case 'start':
        if (arg !== 'new') return [];
        t.accepted = at;
        return [['timeline/accepted', String(at)]];
      case 'phase-start':
      case 'phase-end': {
        const phase = PHASE_WORD[arg];
        if (phase === undefined) return [];
        const span: Span =
          kind === 'phase-start' ? { start: at } : { start: t.phases[phase]?.start ?? at, end: at };
        t.phases[phase] = span;
        return [[`timeline/${phase}`, spanText(span)]];
      }
      case 'suspended':
        t.suspended = at;
        return [['timeline/suspended', String(at)]];
      case 'resumed':
        t.resumed = at;
        return [['timeline/resumed', String(at)]];
      case 'end':
        t.end = at;
        this.outcome = arg;
        return [['timeline/end', String(at)]];
      case 'device-start':
      case 'device-end':
        return this.device(kind, arg, at);
      default:
        return [];
    }
  }

  private device(kind: string, arg: string, at: number): NodeWrite[] {
    // "<type>/<devid> <phase>" then, for the end, ":<ok|failed>:<bytes>".
    const [what = '', result, bytesText] = arg.split(':');
    const m = /^([a-z][a-z0-9_-]{0,31})\/([0-9A-Za-z_.-]{1,64}) (\S+)$/.exec(what);
    const phase = m === null ? undefined : PHASE_WORD[m[3] ?? ''];
    if (m === null || phase === undefined) return [];
    const key = `${m[1]}/${m[2]}`;
    const dev = (this.timeline.devices[key] ??= {});
    if (kind === 'device-start') {
      dev[phase] = { start: at };
      return [];
    }
    const span: DeviceSpan = { start: dev[phase]?.start ?? at, end: at, ok: result !== 'failed' };
    if (bytesText !== undefined && /^[0-9]{1,16}$/.test(bytesText)) span.bytes = Number(bytesText);
    dev[phase] = span;
    return [[`devices/${key}/timeline/${phase}`, deviceSpanText(span)]];
  }
}

const EPOCH_MS = /^[0-9]{1,15}$/;

function epoch(v: string | undefined): number | undefined {
  return v !== undefined && EPOCH_MS.test(v) ? Number(v) : undefined;
}

function parseSpan(v: string | undefined): Span | undefined {
  if (v === undefined) return undefined;
  const [a, b] = v.trim().split(/\s+/);
  const start = epoch(a);
  if (start === undefined) return undefined;
  const end = epoch(b);
  return end === undefined || end < start ? { start } : { start, end };
}

function parseDeviceSpan(v: string | undefined): DeviceSpan | undefined {
  if (v === undefined) return undefined;
  const [a, b, r, n] = v.trim().split(/\s+/);
  const span = parseSpan(`${a ?? ''} ${b ?? ''}`);
  if (span === undefined) return undefined;
  const out: DeviceSpan = { ...span, ok: r !== 'failed' };
  const bytes = epoch(n);
  if (bytes !== undefined) out.bytes = bytes;
  return out;
}

/** The nodes a reader found: `timeline/*` and `toolstack/*` of the job, and each device's `timeline/*`. */
export interface TimelineNodes {
  timeline: Readonly<Record<string, string>>;
  toolstack: Readonly<Record<string, string>>;
  devices: Readonly<Record<string, Readonly<Record<string, string>>>>;
}

/** Parses what another process wrote; malformed values are skipped, never guessed. */
export function parseTimeline(nodes: TimelineNodes): JobTimeline {
  const t = emptyTimeline();
  const n = nodes.timeline;
  const set = <K extends 'accepted' | 'suspended' | 'resumed' | 'end'>(k: K): void => {
    const v = epoch(n[k]);
    if (v !== undefined) t[k] = v;
  };
  set('accepted');
  set('suspended');
  set('resumed');
  set('end');
  for (const p of TIMELINE_PHASES) {
    const s = parseSpan(n[p]);
    if (s !== undefined) t.phases[p] = s;
  }
  for (const [k, name] of Object.entries(TOOLSTACK_NODES) as [keyof ToolstackMarks, string][]) {
    const v = epoch(nodes.toolstack[name]);
    if (v !== undefined) t.toolstack[k] = v;
  }
  for (const [key, phases] of Object.entries(nodes.devices)) {
    const dev: Partial<Record<TimelinePhase, DeviceSpan>> = {};
    for (const p of TIMELINE_PHASES) {
      const s = parseDeviceSpan(phases[p]);
      if (s !== undefined) dev[p] = s;
    }
    if (Object.keys(dev).length > 0) t.devices[key] = dev;
  }
  return t;
}

/** How the downtime window ended, from what is known; open: not (yet) known to have ended. */
export type DowntimeEnd = 'unpaused' | 'resumed' | 'open';

export interface TimelineFigures {
  /** accepted .. end (or .. unpaused at the destination when the requester recorded it). */
  totalMs?: number;
  /** suspended .. resumed here or unpaused at the destination; undefined while open. */
  downtimeMs?: number;
  downtimeEnd?: DowntimeEnd;
  /** suspended .. the job's end (done: the devices' share of the downtime). */
  devicesDowntimeMs?: number;
  phaseMs: Partial<Record<TimelinePhase, number>>;
  /** Per phase, the bytes its device operations reported. */
  phaseBytes: Partial<Record<TimelinePhase, number>>;
  /** Bytes copied: per device its largest reported figure (a copy's passes cover the same image), summed. */
  bytes: number;
  /** "type/devid phase" of every failed device operation. */
  failedOps: string[];
}

export function figures(t: JobTimeline): TimelineFigures {
  const out: TimelineFigures = { phaseMs: {}, phaseBytes: {}, bytes: 0, failedOps: [] };
  const last = t.toolstack.unpaused ?? t.end;
  if (t.accepted !== undefined && last !== undefined && last >= t.accepted) out.totalMs = last - t.accepted;
  if (t.suspended !== undefined) {
    const from = t.suspended;
    // A done job's guest stays stopped until the toolstack unpauses it at the destination; only
    // a resume here (recovery) or that unpause, when the requester recorded it, closes the window.
    const closers: [DowntimeEnd, number | undefined][] = [
      ['resumed', t.resumed],
      ['resumed', t.toolstack.resumedHere],
      ['unpaused', t.toolstack.unpaused],
    ];
    const found = closers
      .filter((e): e is [DowntimeEnd, number] => e[1] !== undefined && e[1] >= from)
      .sort((a, b) => a[1] - b[1])[0];
    if (found !== undefined) {
      out.downtimeMs = found[1] - from;
      out.downtimeEnd = found[0];
    } else out.downtimeEnd = 'open';
    if (t.end !== undefined && t.end >= from) out.devicesDowntimeMs = t.end - from;
  }
  for (const p of TIMELINE_PHASES) {
    const s = t.phases[p];
    if (s?.end !== undefined) out.phaseMs[p] = s.end - s.start;
  }
  for (const [key, phases] of Object.entries(t.devices)) {
    let most = 0;
    for (const p of TIMELINE_PHASES) {
      const s = phases[p];
      if (s === undefined) continue;
      if (s.ok === false) out.failedOps.push(`${key} ${p}`);
      if (s.bytes !== undefined) {
        out.phaseBytes[p] = (out.phaseBytes[p] ?? 0) + s.bytes;
        most = Math.max(most, s.bytes);
      }
    }
    out.bytes += most;
  }
  return out;
}
