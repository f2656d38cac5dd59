// The job state machine, pure: states, events, the transition function, the controls a requester
// may write in each state, and the recovery table (persisted state -> the one action to take
// after an agent crash, as libvirt does per migration phase). No I/O here.
import { InvalidTransitionError } from './errors.js';
import type { JobMode } from './job-schema.js';

/** Rest states wait (for the requester in steps mode); running states have work in flight. */
export const JOB_STATES = [
  'accepted',
  'testing',
  'tested',
  'pre-suspend',
  'pre-suspended',
  'suspending',
  'post-suspend',
  'post-suspended',
  'syncing',
  'done',
  'recovering',
  'refused',
  'aborted',
  'failed',
] as const;
export type JobState = (typeof JOB_STATES)[number];

export const TERMINAL_STATES: readonly JobState[] = ['refused', 'aborted', 'failed'];
/** States after which devices may have changed something: leaving them needs a recover. */
export const MUTATED_STATES: readonly JobState[] = [
  'pre-suspend',
  'pre-suspended',
  'suspending',
  'post-suspend',
  'post-suspended',
  'syncing',
  'done',
];

export type Step = 'test' | 'pre-suspend' | 'post-suspend' | 'sync';
export const STEPS: readonly Step[] = ['test', 'pre-suspend', 'post-suspend', 'sync'];
export type Control = Step | 'recover' | 'abort';
export const CONTROLS: readonly Control[] = [...STEPS, 'recover', 'abort'];

export type JobEvent =
  | { type: 'step'; step: Step }
  | { type: 'phase-ok' }
  | { type: 'phase-failed' }
  | { type: 'suspended' }
  | { type: 'suspend-failed' }
  | { type: 'abort' }
  | { type: 'gone' }
  | { type: 'source-gone' }
  | { type: 'recovered'; cause: 'abort' | 'error' }
  | { type: 'recovery-failed' };

/** The rest state a step starts from, and the state it runs in. */
const STEP_FROM: Record<Step, JobState> = {
  test: 'accepted',
  'pre-suspend': 'tested',
  'post-suspend': 'pre-suspended',
  sync: 'post-suspended',
};
const STEP_RUNS_IN: Record<Step, JobState> = {
  test: 'testing',
  'pre-suspend': 'pre-suspend',
  'post-suspend': 'suspending',
  sync: 'syncing',
};
const PHASE_DONE: Partial<Record<JobState, JobState>> = {
  testing: 'tested',
  'pre-suspend': 'pre-suspended',
  'post-suspend': 'post-suspended',
  syncing: 'done',
};

/**
 * With suspend=toolstack, states in which the source domain may be destroyed by a successful
 * `xl migrate` (the toolstack was seen suspending it): the job goes on (event source-gone).
 */
export const SOURCE_MAY_LEAVE: readonly JobState[] = ['post-suspend', 'post-suspended', 'syncing'];

export function isTerminal(s: JobState): boolean {
  return TERMINAL_STATES.includes(s);
}
export function isMutated(s: JobState): boolean {
  return MUTATED_STATES.includes(s);
}
export function isJobState(s: string): s is JobState {
  return (JOB_STATES as readonly string[]).includes(s);
}
export function isControl(s: string): s is Control {
  return (CONTROLS as readonly string[]).includes(s);
}
/** A job in these states holds its domain: a new request for the domain is refused. */
export function isBusy(s: JobState): boolean {
  return !isTerminal(s) && s !== 'done';
}

function describe(ev: JobEvent): string {
  return ev.type === 'step' ? `step:${ev.step}` : ev.type === 'recovered' ? `recovered:${ev.cause}` : ev.type;
}

/** The transition function. Throws InvalidTransitionError for anything not in the table. */
export function transition(state: JobState, ev: JobEvent): JobState {
  const bad = (): never => {
    throw new InvalidTransitionError(state, describe(ev));
  };
  switch (ev.type) {
    case 'step':
      return STEP_FROM[ev.step] === state ? STEP_RUNS_IN[ev.step] : bad();
    case 'phase-ok':
      return PHASE_DONE[state] ?? bad();
    case 'phase-failed':
      if (state === 'testing') return 'refused';
      return state === 'pre-suspend' || state === 'post-suspend' || state === 'syncing'
        ? 'recovering'
        : bad();
    case 'suspended':
      return state === 'suspending' ? 'post-suspend' : bad();
    case 'suspend-failed':
      return state === 'suspending' ? 'recovering' : bad();
    case 'abort':
      if (state === 'accepted' || state === 'testing' || state === 'tested') return 'aborted';
      return isMutated(state) ? 'recovering' : bad();
    case 'gone':
      if (state === 'done') return 'done'; // the toolstack finished and destroyed the source
      if (state === 'accepted' || state === 'testing' || state === 'tested') return 'failed';
      return isMutated(state) ? 'recovering' : bad();
    case 'source-gone':
      // Toolstack suspend, past it: xl destroys the source once the destination holds the domain,
      // the expected end of its migration. The running phases go on; the state does not change.
      return SOURCE_MAY_LEAVE.includes(state) ? state : bad();
    case 'recovered':
      return state === 'recovering' ? (ev.cause === 'abort' ? 'aborted' : 'failed') : bad();
    case 'recovery-failed':
      return state === 'recovering' ? 'failed' : bad();
  }
}

/** Controls the requester may write in a state. Anything else is ignored with control-error. */
export function allowedControls(state: JobState, mode: JobMode): Control[] {
  if (isTerminal(state) || state === 'recovering') return [];
  const out: Control[] = [];
  if (mode === 'steps') {
    for (const step of STEPS) if (STEP_FROM[step] === state) out.push(step);
  }
  out.push('recover', 'abort');
  return out;
}

/** The next step auto mode takes from a rest state (undefined: none, the job is finished). */
export function nextAutoStep(state: JobState): Step | undefined {
  return STEPS.find((s) => STEP_FROM[s] === state);
}

/**
 * After an agent crash, each persisted state maps to ONE action (libvirt's rule: before Perform
 * forget, during Perform cancel and resume, after it keep):
 * - restart: nothing was done; run the job again from its request.
 * - forget: only checks ran; nothing to undo; the job is failed with "agent restarted".
 * - recover: devices may have changed: recover every device, resume the domain if the agent
 *   suspended it (suspended-by=agent), then failed with recovered=1|0.
 * - adopt: the job had finished (done); keep it and accept recover/abort for it again.
 * - none: terminal; leave it for the requester to read and remove.
 */
export type RecoveryAction = 'restart' | 'forget' | 'recover' | 'adopt' | 'none';

export const RECOVERY_TABLE: Readonly<Record<JobState, RecoveryAction>> = {
  accepted: 'restart',
  testing: 'forget',
  tested: 'forget',
  'pre-suspend': 'recover',
  'pre-suspended': 'recover',
  suspending: 'recover',
  'post-suspend': 'recover',
  'post-suspended': 'recover',
  syncing: 'recover',
  done: 'adopt',
  recovering: 'recover',
  refused: 'none',
  aborted: 'none',
  failed: 'none',
};

export function recoveryAction(state: JobState): RecoveryAction {
  return RECOVERY_TABLE[state];
}

/** Device phases, the migrator operation of each step. */
export type Phase = 'test' | 'preSuspend' | 'postSuspend' | 'sync';
export const PHASE_OF_STEP: Record<Step, Phase> = {
  test: 'test',
  'pre-suspend': 'preSuspend',
  'post-suspend': 'postSuspend',
  sync: 'sync',
};
/** The last device phase started in a state (what recover(lastPhase) is told). */
export function lastPhaseOf(state: JobState): Phase | undefined {
  switch (state) {
    case 'testing':
    case 'tested':
      return 'test';
    case 'pre-suspend':
    case 'pre-suspended':
    case 'suspending':
      return 'preSuspend';
    case 'post-suspend':
    case 'post-suspended':
      return 'postSuspend';
    case 'syncing':
    case 'done':
      return 'sync';
    default:
      return undefined;
  }
}
