// The live view of a running job: a header (domain, destination, state, elapsed, which devices
// the phase still waits for) and one line per device with its state, bytes, rate and ETA from its
// `progress` node. On a terminal the block is redrawn in place and never wider than the terminal
// (80 columns without one); elsewhere plain lines, one per change (progress at most every 5 s
// per device), so a log or a pipe gets a readable record.
import type { Writable } from 'node:stream';
import { fit, formatDuration, formatEta, formatPair, formatRate } from './format.js';
import type { DeviceResult, JobView } from './job-client.js';

/** The device state a running job state waits for (a device not there yet is being waited on). */
const WAITS_FOR: Readonly<Record<string, string>> = {
  testing: 'tested',
  'pre-suspend': 'pre-suspended',
  'post-suspend': 'post-suspended',
  syncing: 'synced',
  recovering: 'recovered',
};
const SETTLED = new Set(['refused', 'failed', 'recover-failed']);

export function parseProgress(p: string | undefined): { done: number; total: number } | undefined {
  const m = p === undefined ? null : /^([0-9]{1,16})\/([0-9]{1,16})$/.exec(p);
  if (m === null) return undefined;
  const total = Number(m[2]);
  return total > 0 ? { done: Math.min(Number(m[1]), total), total } : undefined;
}

/** Rate from the progress samples of the last few seconds (the agent writes about once a second). */
export class RateTracker {
  private readonly samples = new Map<string, { at: number; done: number }[]>();

  /** Records a sample; returns bytes/s over the window, undefined until two samples differ. */
  sample(key: string, done: number, at: number, windowMs = 5000): number | undefined {
    const list = this.samples.get(key) ?? [];
    const last = list[list.length - 1];
    if (last !== undefined && done < last.done) list.length = 0; // a new pass started over
    if (last === undefined || last.done !== done || at - last.at >= 1000) list.push({ at, done });
    while (list.length > 2 && at - (list[0]?.at ?? at) > windowMs) list.shift();
    this.samples.set(key, list);
    const first = list[0];
    const newest = list[list.length - 1];
    if (first === undefined || newest === undefined || newest.at <= first.at) return undefined;
    return ((newest.done - first.done) * 1000) / (newest.at - first.at);
  }
}

function deviceName(d: DeviceResult): string {
  return `${d.type}/${d.devid}`;
}

export function waitingOn(job: JobView): DeviceResult[] {
  const want = job.state !== undefined ? WAITS_FOR[job.state] : undefined;
  if (want === undefined) return [];
  return job.devices.filter((d) => d.state !== want && !SETTLED.has(d.state));
}

export interface LiveLineInput {
  job: JobView;
  /** ms since the view started (the job's elapsed time as this watcher saw it). */
  elapsedMs: number;
  rates: ReadonlyMap<string, number | undefined>;
  width: number;
}

/** The live block, pure: every line fits `width` columns. */
export function liveLines(inp: LiveLineInput): string[] {
  const { job, width } = inp;
  const waiting = waitingOn(job);
  const head = [
    `${job.name ?? `domain ${job.domid}`}${job.target ? ` -> ${job.target}` : ''}`,
    job.state ?? 'waiting for the agent',
    job.progress !== undefined ? `${job.progress} devices` : '',
    formatDuration(inp.elapsedMs),
    waiting.length > 0 && waiting.length < job.devices.length
      ? `waiting for ${waiting.map(deviceName).join(' ')}`
      : '',
  ]
    .filter(Boolean)
    .join('  ');
  const lines = [fit(head, width)];
  const nameW = Math.min(16, Math.max(8, ...job.devices.map((d) => deviceName(d).length)));
  const waitingSet = new Set(waiting);
  for (const d of job.devices) {
    const mark = waitingSet.has(d) ? '>' : ' ';
    const parts = [`${mark} ${deviceName(d).padEnd(nameW)}`, d.state.padEnd(14)];
    const p = parseProgress(d.progress);
    if (p !== undefined) {
      parts.push(
        formatPair(p.done, p.total).padStart(17),
        `${Math.floor((p.done / p.total) * 100)}%`.padStart(4),
      );
      const rate = inp.rates.get(deviceName(d));
      if (p.done < p.total && waitingSet.has(d) && rate !== undefined && rate > 0) {
        parts.push(formatRate(rate).padStart(12), `ETA ${formatEta(((p.total - p.done) * 1000) / rate)}`);
      }
    }
    lines.push(fit(parts.join(' ').trimEnd(), width));
  }
  return lines;
}

/** Draws the live view: redrawn in place on a terminal, plain change lines elsewhere, nothing with --json. */
export class LiveDisplay {
  private readonly tty: boolean;
  private readonly started: number;
  private drawn = 0;
  private last: JobView | undefined;
  private readonly rates = new RateTracker();
  private readonly rateNow = new Map<string, number | undefined>();
  private plainSeen = new Map<string, string>();
  private plainProgressAt = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly out: Writable & { isTTY?: boolean; columns?: number },
    private readonly enabled = true,
    private readonly now: () => number = Date.now,
  ) {
    this.tty = Boolean(out.isTTY);
    this.started = now();
  }

  private width(): number {
    const cols = this.out.columns;
    return typeof cols === 'number' && cols > 20 ? cols - 1 : 79;
  }

  update(job: JobView | undefined): void {
    if (!this.enabled || job === undefined) return;
    this.last = job;
    const at = this.now();
    for (const d of job.devices) {
      const p = parseProgress(d.progress);
      if (p !== undefined) this.rateNow.set(deviceName(d), this.rates.sample(deviceName(d), p.done, at));
    }
    if (this.tty) {
      this.draw();
      // The elapsed time and ETA move between events too.
      this.timer ??= setInterval(() => this.draw(), 1000);
      this.timer.unref();
    } else this.plain(job, at);
  }

  private draw(): void {
    const job = this.last;
    if (job === undefined) return;
    const lines = liveLines({
      job,
      elapsedMs: this.now() - this.started,
      rates: this.rateNow,
      width: this.width(),
    });
    let s = this.drawn > 0 ? `\x1b[${this.drawn}A` : '';
    for (const l of lines) s += `\r\x1b[2K${l}\n`;
    // A shorter block than last time: clear what is left below.
    for (let i = lines.length; i < this.drawn; i++) s += '\r\x1b[2K\n';
    if (this.drawn > lines.length) s += `\x1b[${this.drawn - lines.length}A`;
    this.out.write(s);
    this.drawn = lines.length;
  }

  private plain(job: JobView, at: number): void {
    const emit = (key: string, value: string, line: string): void => {
      if (this.plainSeen.get(key) === value) return;
      this.plainSeen.set(key, value);
      this.out.write(`${line}\n`);
    };
    emit('job', job.state ?? '', `  ${job.state ?? 'waiting for the agent'}`);
    for (const d of job.devices) {
      const name = deviceName(d);
      emit(`dev:${name}`, d.state, `    ${name} ${d.state}`);
      const p = parseProgress(d.progress);
      if (p === undefined || p.done >= p.total) continue;
      if (at - (this.plainProgressAt.get(name) ?? 0) < 5000) continue;
      this.plainProgressAt.set(name, at);
      const rate = this.rateNow.get(name);
      const tail =
        rate !== undefined && rate > 0
          ? ` ${formatRate(rate)} ETA ${formatEta(((p.total - p.done) * 1000) / rate)}`
          : '';
      this.out.write(
        `    ${name} ${formatPair(p.done, p.total)} ${Math.floor((p.done / p.total) * 100)}%${tail}\n`,
      );
    }
  }

  /** Removes the live block (the summary follows) and stops redrawing. */
  end(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    if (!this.enabled || !this.tty || this.drawn === 0) return;
    let s = `\x1b[${this.drawn}A`;
    for (let i = 0; i < this.drawn; i++) s += '\r\x1b[2K\n';
    s += `\x1b[${this.drawn}A`;
    this.out.write(s);
    this.drawn = 0;
  }

  /** Ends the block before other output (a message), then goes on drawing below it at the next update. */
  say(line: string): void {
    this.end();
    this.out.write(`${line}\n`);
  }
}
