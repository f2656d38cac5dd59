// What a running job tells whoever listens (the engine, a job timeline, benchmarks, tests): typed
// events instead of fields to poll. The older timing marks (onMark) are derived from them, so both
// stay in step.
import type { JobState, Phase } from './state-machine.js';

/** A device operation: a phase, or the recovery after one. */
export type DeviceOpName = Phase | 'recover';

export type JobRunEventBody =
  /** The run starts: a new job, or one a crashed agent left (recover) or finished (adopt). */
  | { type: 'run-start'; start: 'new' | 'recover' | 'adopt' }
  /** The job's state changed (in memory; persisted with it or, inside the suspended window, just after). */
  | { type: 'state'; from: JobState; to: JobState }
  /** A phase on every device, or the recovery of the devices ('recover'). */
  | { type: 'phase-start'; phase: Phase | 'recover' }
  | { type: 'phase-end'; phase: Phase | 'recover'; failures: number }
  | { type: 'device-op-start'; device: string; op: DeviceOpName }
  /** bytes: what the operation last reported through progress(), if anything. */
  | { type: 'device-op-end'; device: string; op: DeviceOpName; ok: boolean; reason?: string; bytes?: number }
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

const OP_LABEL: Record<DeviceOpName, string> = {
  test: 'test',
  preSuspend: 'pre-suspend',
  postSuspend: 'post-suspend',
  sync: 'sync',
  recover: 'recover',
};

/**
 * The timing mark an event also gives (onMark's vocabulary, which the job timeline folds):
 * 'start:<new|recover|adopt>', 'phase-start:<phase|recover>', 'phase-end:<phase|recover>',
 * 'device-start:<type/devid> <op>', 'device-end:<type/devid> <op>:<ok|failed>:<bytes>',
 * 'suspended', 'resumed', 'synced', 'done-visible', 'end:<done|refused|aborted|failed>',
 * 'finished'; undefined for events with no mark.
 */
export function markOf(ev: JobRunEventBody): string | undefined {
  switch (ev.type) {
    case 'run-start':
      return `start:${ev.start}`;
    case 'state':
      return ev.to === 'done' || ev.to === 'refused' || ev.to === 'aborted' || ev.to === 'failed'
        ? `end:${ev.to}`
        : undefined;
    case 'phase-start':
    case 'phase-end':
      return `${ev.type}:${ev.phase}`;
    case 'device-op-start':
      return `device-start:${ev.device} ${OP_LABEL[ev.op]}`;
    case 'device-op-end':
      return `device-end:${ev.device} ${OP_LABEL[ev.op]}:${ev.ok ? 'ok' : 'failed'}:${ev.bytes ?? ''}`;
    case 'suspended':
    case 'resumed':
    case 'synced':
    case 'done-visible':
    case 'finished':
      return ev.type;
    case 'suspend-requested':
      return undefined;
  }
}
