// Measures how fast dom0 reads a disk image: dd with O_DIRECT (the page cache would flatter the
// figure) over a sample from the middle of the image, bounded in time; buffered reads where the
// filesystem refuses O_DIRECT (tmpfs), marked as such.
import type { ReadRate } from './downtime-estimate.js';
import { runTool } from './external-tool.js';
import type { Logger } from './types.js';

const MIB = 1024 * 1024;

/** "67108864 bytes (67 MB, 64 MiB) copied, 0.0512 s, 1.3 GB/s" -> bytes and seconds. */
export function parseDdSummary(line: string): { bytes: number; seconds: number } | undefined {
  const m = /^([0-9]+) bytes .*copied, ([0-9.]+(?:e-?[0-9]+)?) s/.exec(line);
  if (m?.[1] === undefined || m[2] === undefined) return undefined;
  const seconds = Number(m[2]);
  return Number.isFinite(seconds) ? { bytes: Number(m[1]), seconds } : undefined;
}

export async function measureReadRate(
  path: string,
  sizeBytes: number,
  opts: { log: Logger; timeoutMs?: number; sampleMiB?: number; signal?: AbortSignal; dd?: string },
): Promise<ReadRate | undefined> {
  const sample = Math.max(1, Math.min(opts.sampleMiB ?? 64, Math.floor(sizeBytes / MIB)));
  const skip = Math.max(0, Math.floor((sizeBytes / MIB - sample) / 2));
  for (const direct of [true, false]) {
    const args = [`if=${path}`, 'of=/dev/null', 'bs=1M', `count=${sample}`, `skip=${skip}`];
    if (direct) args.push('iflag=direct');
    let summary: { bytes: number; seconds: number } | undefined;
    const r = await runTool(opts.dd ?? '/usr/bin/dd', args, {
      timeoutMs: opts.timeoutMs ?? 10_000,
      killGraceMs: 500,
      signal: opts.signal,
      // dd's lines are of no interest to the operator: debug level.
      log: {
        error: (m, x) => opts.log.error(m, x),
        warn: (m, x) => opts.log.warn(m, x),
        info: (m, x) => opts.log.debug(m, x),
        debug: (m, x) => opts.log.debug(m, x),
      },
      env: { LC_ALL: 'C' },
      onLine: (line) => {
        summary = parseDdSummary(line) ?? summary;
      },
    }).catch(() => undefined);
    if (r?.code === 0 && summary !== undefined && summary.bytes > 0) {
      return { bytesPerSec: summary.bytes / Math.max(summary.seconds, 1e-6), direct };
    }
  }
  return undefined;
}
