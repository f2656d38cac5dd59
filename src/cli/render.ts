// Human output of the CLI: a job with its per-device results, and the live progress display
// (one rewritten line on a TTY, one line per change elsewhere, nothing at all with --json).
import type { Writable } from 'node:stream';
import type { JobView } from './job-client.js';

const MARK: Record<string, string> = {
  ok: 'ok',
  done: 'ok',
  refused: 'REFUSED',
  failed: 'FAILED',
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

export function jobSummary(job: JobView): string[] {
  const head = [
    `domain ${job.name ?? '?'} (id ${job.domid})`,
    `job ${job.id ?? '?'}`,
    job.target ? `-> ${job.target}` : '',
    job.mode ? `mode ${job.mode}` : '',
  ]
    .filter(Boolean)
    .join(', ');
  const lines = [
    head,
    `  state: ${job.state ?? '(not taken by the agent yet)'}${job.progress ? `  progress ${job.progress}` : ''}`,
  ];
  if (job.error) lines.push(`  error: ${job.error}`);
  if (job.controlError) lines.push(`  control refused: ${job.controlError}`);
  if (job.devices.length > 0) {
    lines.push('  devices:');
    lines.push(...deviceLines(job));
  }
  return lines;
}

/** Live progress: on a TTY one line rewritten in place; elsewhere a line per state change. */
export class ProgressDisplay {
  private lastLine = '';
  private lastState: string | undefined;
  private readonly tty: boolean;

  constructor(
    private readonly out: Writable & { isTTY?: boolean },
    private readonly enabled = true,
  ) {
    this.tty = Boolean(out.isTTY);
  }

  update(job: JobView | undefined): void {
    if (!this.enabled || !job) return;
    const devs = job.devices.map((d) => `${d.type}/${d.devid}:${d.state}`).join(' ');
    const line = `${job.state ?? 'waiting for the agent'}${job.progress ? ` ${job.progress}` : ''}${devs ? `  ${devs}` : ''}`;
    if (line === this.lastLine) return;
    this.lastLine = line;
    if (this.tty) {
      const cols = (this.out as { columns?: number }).columns ?? 100;
      this.out.write(`\r\x1b[2K${line.slice(0, Math.max(20, cols - 1))}`);
    } else if (job.state !== this.lastState) {
      this.out.write(`  ${job.state ?? 'waiting'}${job.progress ? ` ${job.progress}` : ''}\n`);
    }
    this.lastState = job.state;
  }

  /** Ends the rewritten line so later output starts on a fresh one. */
  end(): void {
    if (this.enabled && this.tty && this.lastLine !== '') this.out.write('\n');
    this.lastLine = '';
  }
}
