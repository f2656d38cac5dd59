// What a running job tells whoever listens (the engine, a job timeline, benchmarks, tests): typed
// events instead of fields to poll. The older timing marks (onMark) are derived from them, so both
// stay in step.
import type { JobState, Phase } from './state-machine.js';

/** A device operation: a phase, or the recovery after one. */
export type DeviceOpName = Phase | 'recover';

export type JobRunEventBody =
  /** The job's state changed (in memory; persisted with it or, inside the suspended window, just after). */
  | { type: 'state'; from: JobState; to: JobState }
  | { type: 'phase-start'; phase: Phase }
  | { type: 'phase-end'; phase: Phase; failures: number }
  | { type: 'device-op-start'; device: string; op: DeviceOpName }
  | { type: 'device-op-end'; device: string; op: DeviceOpName; ok: boolean; reason?: string }
  /** The agent is about to ask the domain to suspend (the handshake starts). */
  | { type: 'suspend-requested' }
  /** The domain was seen suspended (by the agent's suspend, or the toolstack's). */
  | { type: 'suspended' }
  /** The agent resumed the domain at the source. */
  | { type: 'resumed' }
  /** Every device synced (just before `done` is written). */
  | { type: 'synced' }
  /** `done` is written: the toolstack may proceed. */
  | { type: 'done-visible' }
  /** The run is over (terminal, or released at `done`). */
  | { type: 'finished' };

/** One event: what, of which job, when (performance.now(), ms). */
export type JobRunEvent = JobRunEventBody & { domid: number; atMs: number };

export type JobRunListener = (ev: JobRunEvent) => void;

/**
 * The timing mark an event also gives (onMark's vocabulary: 'suspended', 'synced', 'done-visible',
 * 'finished', 'phase-start:<phase>', 'phase-end:<phase>'), or undefined.
 */
export function markOf(ev: JobRunEventBody): string | undefined {
  switch (ev.type) {
    case 'suspended':
    case 'synced':
    case 'done-visible':
    case 'finished':
      return ev.type;
    case 'phase-start':
    case 'phase-end':
      return `${ev.type}:${ev.phase}`;
    default:
      return undefined;
  }
}
