// What the daemon needs from the migration engine, and nothing more: the daemon owns the
// connection, signals and readiness; the engine owns jobs (and its own watch on the jobs).
// engine-adapter.ts binds the real engine (src/migration/) to this port; tests bind fakes.
import type { DevMigrateConfig } from '../config/schema.js';

export interface DrainResult {
  /** Jobs that reached a safe end (done, refused, aborted with the domain resumed) in time. */
  finished: number;
  /** Jobs still not at a safe end when the bound ran out (named in the log). */
  left: number;
  /** Of finished: jobs that ended `done` (they were past the suspension and could finish). */
  completed?: number;
  /** Of finished: jobs aborted, their devices recovered and the domain resumed if we suspended it. */
  aborted?: number;
  /** Jobs already `done` when the drain began, left as they are for the toolstack. */
  kept?: number;
}

export interface JobEngine {
  /**
   * Starts watching the jobs. The watch's first event makes the engine read every job: new ones
   * start, ones an earlier agent left mid-flight go through the recovery table. Over the
   * daemon's resilient connection the watch is re-registered after a xenstored restart, and its
   * initial event makes the engine reconcile again.
   */
  start(): Promise<void>;
  /** SIGTERM's first step, at once: no new job is taken (requests stay in XenStore untouched). */
  stopAccepting(): void;
  /**
   * SIGTERM: no new jobs; jobs past the suspension may finish, the others are aborted (devices
   * recovered, the domain resumed at the source if we suspended it), all within timeoutMs.
   */
  drain(timeoutMs: number): Promise<DrainResult>;
  /** A new, already validated config (SIGHUP): new limits and policies; running jobs keep theirs. */
  applyConfig(config: DevMigrateConfig): void;
  /** Jobs not yet at a final state. */
  activeJobs(): number;
}
