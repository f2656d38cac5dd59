// Specifies the pure rules of suspend/resume taken from libxl (libxl_dom_suspend.c,
// libxl_domain.c) and xenstore-paths.pandoc: which domains may be suspended, by which method,
// what counts as an ack, and what resume does for each domain state.
import { describe, it, expect } from 'vitest';
import { DomainError } from '../../src/domains/errors.js';
import {
  afterAckTimeout,
  checkSuspendable,
  chooseSuspendMethod,
  isSuspendAcked,
  judgeSuspendWait,
  parseFeatureSuspend,
  planResume,
  shutdownReasonName,
  validateDomid,
} from '../../src/domains/suspend.js';
import type { DomainInfo } from '../../src/domains/types.js';

const running: DomainInfo = { domid: 5, paused: false, shutdown: false, dying: false, hvm: false };

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof DomainError) return err.code;
    throw err;
  }
  return undefined;
}

describe('domid validation', () => {
  it('refuses dom0, negatives, non-integers and reserved domids', () => {
    expect(codeOf(() => validateDomid(0, 'suspend'))).toBe('dom0');
    expect(codeOf(() => validateDomid(-1, 'suspend'))).toBe('invalid-domid');
    expect(codeOf(() => validateDomid(1.5, 'suspend'))).toBe('invalid-domid');
    expect(codeOf(() => validateDomid(0x7ff0, 'suspend'))).toBe('invalid-domid');
    expect(codeOf(() => validateDomid(Number.NaN, 'suspend'))).toBe('invalid-domid');
    expect(codeOf(() => validateDomid(7, 'suspend'))).toBeUndefined();
  });
});

describe('checkSuspendable', () => {
  it('names why a domain cannot be suspended', () => {
    expect(codeOf(() => checkSuspendable(5, undefined))).toBe('not-found');
    expect(codeOf(() => checkSuspendable(5, { ...running, dying: true }))).toBe('dying');
    expect(codeOf(() => checkSuspendable(5, { ...running, shutdown: true, shutdownReason: 'suspend' }))).toBe(
      'already-shutdown',
    );
    expect(checkSuspendable(5, running)).toBe(running);
  });
});

describe('suspend method (libxl domain_suspend_callback_common)', () => {
  it('uses the hypervisor for HVM without a callback IRQ or in an ACPI sleep state', () => {
    expect(chooseSuspendMethod(true, { callbackIrq: 0n, acpiSState: 0n })).toBe('hypervisor');
    expect(chooseSuspendMethod(true, { callbackIrq: 5n, acpiSState: 3n })).toBe('hypervisor');
    expect(chooseSuspendMethod(true, { callbackIrq: 5n, acpiSState: 0n })).toBe('pv-control');
  });
  it('asks PV guests, and HVM guests when params are unknown, through control/shutdown', () => {
    expect(chooseSuspendMethod(false, undefined)).toBe('pv-control');
    expect(chooseSuspendMethod(false, { callbackIrq: 0n, acpiSState: 0n })).toBe('pv-control');
    expect(chooseSuspendMethod(true, undefined)).toBe('pv-control');
  });
});

describe('handshake inputs from the guest', () => {
  it('reads feature-suspend as no / yes / unknown, garbage being unknown', () => {
    expect(parseFeatureSuspend('0')).toBe('no');
    expect(parseFeatureSuspend('1')).toBe('yes');
    expect(parseFeatureSuspend('')).toBe('unknown');
    expect(parseFeatureSuspend(undefined)).toBe('unknown');
    expect(parseFeatureSuspend('1; rm -rf /')).toBe('unknown');
  });
  it('counts anything but "suspend" as an ack, a missing node included', () => {
    expect(isSuspendAcked('suspend')).toBe(false);
    expect(isSuspendAcked('')).toBe(true);
    expect(isSuspendAcked(undefined)).toBe(true);
    expect(isSuspendAcked('poweroff')).toBe(true);
  });
  it('falls back to the hypervisor after an ack timeout only for a silent HVM guest', () => {
    expect(afterAckTimeout('unknown', true, true)).toBe('hypervisor');
    expect(afterAckTimeout('unknown', true, false)).toBe('fail');
    expect(afterAckTimeout('yes', true, true)).toBe('fail');
    expect(afterAckTimeout('unknown', false, true)).toBe('fail');
  });
});

describe('waiting for the suspend', () => {
  it('judges each domain state', () => {
    expect(judgeSuspendWait(undefined)).toBe('gone');
    expect(judgeSuspendWait({ ...running, dying: true })).toBe('gone');
    expect(judgeSuspendWait(running)).toBe('waiting');
    expect(judgeSuspendWait({ ...running, shutdown: true, shutdownReason: 'suspend' })).toBe('suspended');
    expect(judgeSuspendWait({ ...running, shutdown: true, shutdownReason: 'crash' })).toBe(
      'unexpected-shutdown',
    );
  });
  it('names shutdown codes as sched.h does', () => {
    expect([0, 1, 2, 3, 4, 5, 9].map(shutdownReasonName)).toEqual([
      'poweroff',
      'reboot',
      'suspend',
      'crash',
      'watchdog',
      'soft_reset',
      'unknown',
    ]);
  });
});

describe('resume plan', () => {
  it('resumes a suspended domain (paused or not); leaves a running one alone, paused or not (never unpauses)', () => {
    expect(planResume(5, { ...running, shutdown: true, shutdownReason: 'suspend' })).toBe('resume');
    expect(planResume(5, { ...running, shutdown: true, shutdownReason: 'suspend', paused: true })).toBe(
      'resume',
    );
    expect(planResume(5, { ...running, paused: true })).toBe('nothing');
    expect(planResume(5, running)).toBe('nothing');
  });
  it('refuses a missing, dying or otherwise shut down domain', () => {
    expect(codeOf(() => planResume(5, undefined))).toBe('not-found');
    expect(codeOf(() => planResume(5, { ...running, dying: true }))).toBe('dying');
    expect(codeOf(() => planResume(5, { ...running, shutdown: true, shutdownReason: 'poweroff' }))).toBe(
      'not-suspended',
    );
  });
});
