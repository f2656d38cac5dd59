// Binds one job's marks (JobRun's onMark) to its timeline nodes: each mark is folded by the pure
// TimelineRecorder, its node writes are queued on the job's writer (so they go out with the next
// batch, before the job's state), and the mark is passed on. At each end (done or a final
// state) the job's figures go to onEnd: the agent's summary log line and its metrics.
import { figures, TimelineRecorder, type JobTimeline, type TimelineFigures } from './timeline.js';

export interface JobEndReport {
  domid: number;
  jobId: string;
  /** The domain's name as the agent trusted it at acceptance (dom0-owned, safe characters). */
  name?: string;
  /** done, refused, aborted or failed. */
  outcome: string;
  timeline: JobTimeline;
  figures: TimelineFigures;
}

export interface TimelineHookOptions {
  domid: number;
  jobId: string;
  name?: string;
  writer: { note(rel: string, value: string): void };
  /** The engine's own mark listener (benchmarks), called after the timeline. */
  forward?: (domid: number, mark: string, atMs: number) => void;
  onEnd?: (report: JobEndReport) => void;
  /** The job starts (new, or recovered/adopted after a restart): its domain's name, for log lines. */
  onStart?: (info: { domid: number; jobId: string; name?: string }) => void;
  /** performance.now() -> epoch ms; injectable for tests. */
  toEpoch?: (perfMs: number) => number;
}

/** Marks carry performance.now() times; XenStore gets wall-clock epoch ms another process can read. */
export function perfToEpoch(perfMs: number): number {
  return Math.round(performance.timeOrigin + perfMs);
}

export function timelineHook(opts: TimelineHookOptions): (domid: number, mark: string, atMs: number) => void {
  const rec = new TimelineRecorder();
  const toEpoch = opts.toEpoch ?? perfToEpoch;
  return (domid, mark, atMs) => {
    if (mark === 'start:new' && opts.name !== undefined) opts.writer.note('name', opts.name);
    if (mark.startsWith('start:') && opts.onStart !== undefined) {
      try {
        opts.onStart({
          domid: opts.domid,
          jobId: opts.jobId,
          ...(opts.name !== undefined ? { name: opts.name } : {}),
        });
      } catch {
        // as for onEnd
      }
    }
    for (const [rel, value] of rec.apply(mark, toEpoch(atMs))) opts.writer.note(rel, value);
    if (mark.startsWith('end:') && opts.onEnd !== undefined) {
      const report: JobEndReport = {
        domid: opts.domid,
        jobId: opts.jobId,
        outcome: rec.outcome ?? mark.slice(4),
        timeline: rec.timeline,
        figures: figures(rec.timeline),
      };
      if (opts.name !== undefined) report.name = opts.name;
      try {
        opts.onEnd(report);
      } catch {
        // Reporting (a log line, a metrics file) must never disturb the job.
      }
    }
    opts.forward?.(domid, mark, atMs);
  };
}
