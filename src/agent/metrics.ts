// The agent's metrics for Prometheus, as a textfile for node_exporter's textfile collector: jobs
// by outcome, the downtime and phase durations as histograms, device failures by type and phase,
// XenStore reconnects, and whether the agent is up. A pure registry renders the exposition format
// (text 0.0.4); the file is written whole, atomically (a temp file in the same folder, renamed).
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { JobEndReport } from '../migration/timeline-recorder.js';
import { TIMELINE_PHASES } from '../migration/timeline.js';

/** Seconds: from a hiccup to a slow disk's final pass. */
export const DOWNTIME_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300] as const;
/** Seconds: phases range from milliseconds (test) to an hour (a bulk copy). */
export const PHASE_BUCKETS = [0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600] as const;

class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(readonly buckets: readonly number[]) {
    this.counts = buckets.map(() => 0);
  }
  observe(v: number): void {
    this.sum += v;
    this.count += 1;
    this.buckets.forEach((b, i) => {
      if (v <= b) this.counts[i] = (this.counts[i] ?? 0) + 1;
    });
  }
}

function num(v: number): string {
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(12)));
}

function labels(l: Record<string, string>): string {
  const parts = Object.entries(l).map(
    ([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`,
  );
  return parts.length > 0 ? `{${parts.join(',')}}` : '';
}

export const OUTCOMES = ['done', 'refused', 'aborted', 'failed'] as const;

export class AgentMetrics {
  up = 0;
  private startTime = 0;
  private version = 'unknown';
  private readonly jobs = new Map<string, number>(OUTCOMES.map((o) => [o, 0]));
  private readonly downtime = new Histogram(DOWNTIME_BUCKETS);
  private readonly phases = new Map(TIMELINE_PHASES.map((p) => [p, new Histogram(PHASE_BUCKETS)]));
  private readonly deviceFailures = new Map<string, number>();
  private reconnects = 0;
  private running = 0;

  started(version: string, atMs: number): void {
    this.up = 1;
    this.version = version;
    this.startTime = atMs / 1000;
  }

  stopped(): void {
    this.up = 0;
  }

  reconnected(): void {
    this.reconnects += 1;
  }

  setRunning(n: number): void {
    this.running = n;
  }

  /** One job's end: its outcome, its downtime (the agent's share), its phases, its failed device operations. */
  jobEnded(r: JobEndReport): void {
    this.jobs.set(r.outcome, (this.jobs.get(r.outcome) ?? 0) + 1);
    const t = r.timeline;
    if (t.suspended !== undefined) {
      const closed = r.figures.downtimeMs ?? r.figures.devicesDowntimeMs;
      if (closed !== undefined) this.downtime.observe(closed / 1000);
    }
    for (const p of TIMELINE_PHASES) {
      const ms = r.figures.phaseMs[p];
      if (ms !== undefined) this.phases.get(p)?.observe(ms / 1000);
    }
    for (const op of r.figures.failedOps) {
      // "type/devid phase": failures are counted by device type and phase, not per device.
      const [dev = '', phase = ''] = op.split(' ');
      const key = `${dev.split('/')[0] ?? ''}\u0000${phase}`;
      this.deviceFailures.set(key, (this.deviceFailures.get(key) ?? 0) + 1);
    }
  }

  /** The exposition text (Prometheus text format 0.0.4). */
  render(): string {
    const o: string[] = [];
    const head = (name: string, type: string, help: string): void => {
      o.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    };
    head('devmigrate_agent_up', 'gauge', '1 while the devmigrate agent runs; 0 written when it stops.');
    o.push(`devmigrate_agent_up ${this.up}`);
    head('devmigrate_agent_info', 'gauge', 'The agent version, as a label.');
    o.push(`devmigrate_agent_info${labels({ version: this.version })} 1`);
    head('devmigrate_agent_start_time_seconds', 'gauge', 'When the agent started (Unix time).');
    o.push(`devmigrate_agent_start_time_seconds ${num(this.startTime)}`);
    head('devmigrate_jobs_running', 'gauge', 'Jobs not yet at a final state when the file was written.');
    o.push(`devmigrate_jobs_running ${this.running}`);
    head(
      'devmigrate_jobs_total',
      'counter',
      'Jobs ended, by outcome (a done job sent back with control=recover ends again).',
    );
    for (const [k, v] of this.jobs) o.push(`devmigrate_jobs_total${labels({ outcome: k })} ${v}`);
    const histogram = (
      name: string,
      help: string,
      h: Histogram,
      l: Record<string, string>,
      first: boolean,
    ): void => {
      if (first) head(name, 'histogram', help);
      h.buckets.forEach((b, i) =>
        o.push(`${name}_bucket${labels({ ...l, le: num(b) })} ${h.counts[i] ?? 0}`),
      );
      o.push(`${name}_bucket${labels({ ...l, le: '+Inf' })} ${h.count}`);
      o.push(`${name}_sum${labels(l)} ${num(h.sum)}`, `${name}_count${labels(l)} ${h.count}`);
    };
    histogram(
      'devmigrate_job_downtime_seconds',
      "From the guest seen suspended to the job's end: done (devices synced, the toolstack may unpause at the destination) or the guest running at the source again.",
      this.downtime,
      {},
      true,
    );
    let first = true;
    for (const [p, h] of this.phases) {
      histogram(
        'devmigrate_phase_duration_seconds',
        'Duration of each job phase, all devices of the phase together.',
        h,
        { phase: p },
        first,
      );
      first = false;
    }
    head(
      'devmigrate_device_failures_total',
      'counter',
      'Device operations that failed (or were stopped), by device type and phase.',
    );
    for (const [k, v] of [...this.deviceFailures].sort()) {
      const [type = '', phase = ''] = k.split('\u0000');
      o.push(`devmigrate_device_failures_total${labels({ type, phase })} ${v}`);
    }
    head(
      'devmigrate_xenstore_reconnects_total',
      'counter',
      'Reconnections to xenstored after a lost connection.',
    );
    o.push(`devmigrate_xenstore_reconnects_total ${this.reconnects}`);
    return `${o.join('\n')}\n`;
  }
}

/**
 * Writes `text` to `path` atomically: a temp file in the same folder (node_exporter skips names
 * that do not end in .prom), flushed, then renamed over the old file. A missing folder is not an
 * error (no node_exporter here): returns false.
 */
let tmpSeq = 0;

export async function writeTextfile(path: string, text: string): Promise<boolean> {
  tmpSeq += 1;
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${tmpSeq}.tmp`);
  let fh;
  try {
    fh = await open(tmp, 'w', 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  return true;
}

/** Serialises the writes (one rename at a time) and never lets a failure reach the agent. */
export class MetricsFile {
  private chain: Promise<void> = Promise.resolve();
  private warned = false;

  constructor(
    private readonly metrics: AgentMetrics,
    private path: () => string | undefined,
    private readonly onError: (err: Error) => void,
  ) {}

  write(): Promise<void> {
    this.chain = this.chain.then(async () => {
      const p = this.path();
      if (p === undefined) return;
      try {
        await writeTextfile(p, this.metrics.render());
      } catch (err) {
        if (!this.warned) this.onError(err instanceof Error ? err : new Error(String(err)));
        this.warned = true;
      }
    });
    return this.chain;
  }
}
