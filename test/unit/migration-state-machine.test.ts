// Specification of the job state machine: every allowed transition, every refused one, the
// controls per state and mode, and the recovery table (one action per persisted state).
import { describe, expect, it } from 'vitest';
import { InvalidTransitionError } from '../../src/migration/errors.js';
import {
  allowedControls,
  JOB_STATES,
  lastPhaseOf,
  nextAutoStep,
  RECOVERY_TABLE,
  recoveryAction,
  transition,
  type JobEvent,
  type JobState,
} from '../../src/migration/state-machine.js';

const EVENTS: JobEvent[] = [
  { type: 'step', step: 'test' },
  { type: 'step', step: 'pre-suspend' },
  { type: 'step', step: 'post-suspend' },
  { type: 'step', step: 'sync' },
  { type: 'phase-ok' },
  { type: 'phase-failed' },
  { type: 'suspended' },
  { type: 'suspend-failed' },
  { type: 'abort' },
  { type: 'gone' },
  { type: 'source-gone' },
  { type: 'recovered', cause: 'abort' },
  { type: 'recovered', cause: 'error' },
  { type: 'recovery-failed' },
];
const key = (e: JobEvent): string =>
  e.type === 'step' ? `step:${e.step}` : e.type === 'recovered' ? `recovered:${e.cause}` : e.type;

/** The complete table: every (state, event) pair not listed here must be refused. */
const TABLE: Record<JobState, Record<string, JobState>> = {
  accepted: { 'step:test': 'testing', abort: 'aborted', gone: 'failed' },
  testing: { 'phase-ok': 'tested', 'phase-failed': 'refused', abort: 'aborted', gone: 'failed' },
  tested: { 'step:pre-suspend': 'pre-suspend', abort: 'aborted', gone: 'failed' },
  'pre-suspend': {
    'phase-ok': 'pre-suspended',
    'phase-failed': 'recovering',
    abort: 'recovering',
    gone: 'recovering',
  },
  'pre-suspended': { 'step:post-suspend': 'suspending', abort: 'recovering', gone: 'recovering' },
  suspending: {
    suspended: 'post-suspend',
    'suspend-failed': 'recovering',
    abort: 'recovering',
    gone: 'recovering',
  },
  'post-suspend': {
    'phase-ok': 'post-suspended',
    'phase-failed': 'recovering',
    abort: 'recovering',
    gone: 'recovering',
    'source-gone': 'post-suspend',
  },
  'post-suspended': {
    'step:sync': 'syncing',
    abort: 'recovering',
    gone: 'recovering',
    'source-gone': 'post-suspended',
  },
  syncing: {
    'phase-ok': 'done',
    'phase-failed': 'recovering',
    abort: 'recovering',
    gone: 'recovering',
    'source-gone': 'syncing',
  },
  done: { abort: 'recovering', gone: 'done' },
  recovering: { 'recovered:abort': 'aborted', 'recovered:error': 'failed', 'recovery-failed': 'failed' },
  refused: {},
  aborted: {},
  failed: {},
};

describe('job state machine', () => {
  for (const s of JOB_STATES) {
    for (const e of EVENTS) {
      const expected = TABLE[s][key(e)];
      it(`${s} --${key(e)}--> ${expected ?? 'refused'}`, () => {
        if (expected === undefined) {
          expect(() => transition(s, e)).toThrow(InvalidTransitionError);
        } else {
          expect(transition(s, e)).toBe(expected);
        }
      });
    }
  }

  it('auto mode walks test -> pre-suspend -> post-suspend -> sync from the rest states', () => {
    expect(nextAutoStep('accepted')).toBe('test');
    expect(nextAutoStep('tested')).toBe('pre-suspend');
    expect(nextAutoStep('pre-suspended')).toBe('post-suspend');
    expect(nextAutoStep('post-suspended')).toBe('sync');
    expect(nextAutoStep('done')).toBeUndefined();
  });

  it('steps mode allows exactly the next step plus recover/abort; auto mode only recover/abort', () => {
    expect(allowedControls('accepted', 'steps')).toEqual(['test', 'recover', 'abort']);
    expect(allowedControls('tested', 'steps')).toEqual(['pre-suspend', 'recover', 'abort']);
    expect(allowedControls('pre-suspended', 'steps')).toEqual(['post-suspend', 'recover', 'abort']);
    expect(allowedControls('post-suspended', 'steps')).toEqual(['sync', 'recover', 'abort']);
    expect(allowedControls('testing', 'steps')).toEqual(['recover', 'abort']);
    expect(allowedControls('done', 'steps')).toEqual(['recover', 'abort']);
    expect(allowedControls('accepted', 'auto')).toEqual(['recover', 'abort']);
    for (const s of ['recovering', 'refused', 'aborted', 'failed'] as const) {
      expect(allowedControls(s, 'steps')).toEqual([]);
      expect(allowedControls(s, 'auto')).toEqual([]);
    }
  });

  it('the recovery table maps every state to one action', () => {
    expect(Object.keys(RECOVERY_TABLE).sort()).toEqual([...JOB_STATES].sort());
    expect(recoveryAction('accepted')).toBe('restart');
    expect(recoveryAction('testing')).toBe('forget');
    expect(recoveryAction('tested')).toBe('forget');
    for (const s of [
      'pre-suspend',
      'pre-suspended',
      'suspending',
      'post-suspend',
      'post-suspended',
      'syncing',
      'recovering',
    ] as const) {
      expect(recoveryAction(s)).toBe('recover');
    }
    expect(recoveryAction('done')).toBe('adopt');
    for (const s of ['refused', 'aborted', 'failed'] as const) expect(recoveryAction(s)).toBe('none');
  });

  it('names the last device phase each state implies (what recover is told)', () => {
    expect(lastPhaseOf('accepted')).toBeUndefined();
    expect(lastPhaseOf('pre-suspended')).toBe('preSuspend');
    expect(lastPhaseOf('suspending')).toBe('preSuspend');
    expect(lastPhaseOf('post-suspend')).toBe('postSuspend');
    expect(lastPhaseOf('done')).toBe('sync');
  });
});
