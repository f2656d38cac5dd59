// The pure decisions of libxl's suspend and resume (libxl_dom_suspend.c, libxl_domain.c), kept
// apart from I/O so each rule can be tested on its own. Guest-writable values enter here only as
// handshake inputs (ack or not, feature-suspend), never as anything that chooses a target or path.
import { DomainError } from './errors.js';
import type { DomainInfo, ShutdownReason, SuspendMethod } from './types.js';

export type { SuspendMethod };

/** DOMID_FIRST_RESERVED (xen.h): domids at or above it are special (DOMID_SELF, DOMID_IO, ...). */
export const DOMID_FIRST_RESERVED = 0x7ff0;

/** libxl's fixed waits: 60 s for the ack, 60 s for the shutdown(suspend). */
export const LIBXL_ACK_TIMEOUT_MS = 60_000;
export const LIBXL_SUSPEND_TIMEOUT_MS = 60_000;

const REASONS: readonly ShutdownReason[] = [
  'poweroff',
  'reboot',
  'suspend',
  'crash',
  'watchdog',
  'soft_reset',
];

export function shutdownReasonName(code: number): ShutdownReason {
  return REASONS[code] ?? 'unknown';
}

/** Refuses what is not a guest domid: non-integers, out of range, dom0. */
export function validateDomid(domid: number, step: string): void {
  if (!Number.isInteger(domid) || domid < 0 || domid >= DOMID_FIRST_RESERVED) {
    throw new DomainError(
      'invalid-domid',
      Number.isFinite(domid) ? domid : -1,
      step,
      `not a domain id: ${domid}`,
    );
  }
  if (domid === 0) throw new DomainError('dom0', 0, step, 'refusing to act on the control domain');
}

/** A suspend may start only on a live domain that is not shut down or dying; nothing is touched otherwise. */
export function checkSuspendable(domid: number, info: DomainInfo | undefined): DomainInfo {
  if (info === undefined) throw new DomainError('not-found', domid, 'check', 'no such domain');
  if (info.dying) throw new DomainError('dying', domid, 'check', 'domain is dying');
  if (info.shutdown) {
    throw new DomainError(
      'already-shutdown',
      domid,
      'check',
      `domain already shut down (${info.shutdownReason ?? 'unknown'})`,
    );
  }
  return info;
}

/** control/feature-suspend as xenstore-paths.pandoc defines it; any other value counts as unknown. */
export type FeatureSuspend = 'no' | 'yes' | 'unknown';

export function parseFeatureSuspend(value: string | undefined): FeatureSuspend {
  if (value === '0') return 'no';
  if (value === '1') return 'yes';
  return 'unknown';
}

/**
 * libxl's choice: an HVM guest whose HVM_PARAM_CALLBACK_IRQ is 0 (no PV drivers set up) or that
 * is in an ACPI sleep state is suspended by the hypervisor (xc_domain_shutdown(SHUTDOWN_suspend));
 * everyone else is asked through control/shutdown. When the library cannot read HVM params
 * (hvmParams undefined) an HVM guest is asked through control/shutdown, like a PV one.
 */
export function chooseSuspendMethod(
  hvm: boolean,
  hvmParams: { callbackIrq: bigint; acpiSState: bigint } | undefined,
): SuspendMethod {
  if (hvm && hvmParams !== undefined && (hvmParams.callbackIrq === 0n || hvmParams.acpiSState !== 0n)) {
    return 'hypervisor';
  }
  return 'pv-control';
}

/** libxl's domain_suspend_pvcontrol_acked: anything but "suspend", including a missing node, is an ack. */
export function isSuspendAcked(value: string | undefined): boolean {
  return value !== 'suspend';
}

/**
 * What to do once the ack wait has timed out and the request has been cancelled: the guest that
 * said feature-suspend "1" failed its promise; one that said nothing ("") may be an HVM guest
 * whose PV drivers ignore control/shutdown, which the hypervisor can still suspend.
 */
export function afterAckTimeout(
  feature: FeatureSuspend,
  hvm: boolean,
  hvmFallback: boolean,
): 'fail' | 'hypervisor' {
  return feature === 'unknown' && hvm && hvmFallback ? 'hypervisor' : 'fail';
}

export type WaitVerdict = 'suspended' | 'waiting' | 'gone' | 'unexpected-shutdown';

/** libxl's suspend_common_wait_guest_check, plus "dying" counted as gone. */
export function judgeSuspendWait(info: DomainInfo | undefined): WaitVerdict {
  if (info === undefined || info.dying) return 'gone';
  if (!info.shutdown) return 'waiting';
  return info.shutdownReason === 'suspend' ? 'suspended' : 'unexpected-shutdown';
}

export type ResumePlan = 'resume' | 'nothing';

/**
 * resume() on a suspended domain does xc_domain_resume + XS_RESUME; on a running one it must not
 * call xc_domain_resume (a slow resume resets a live guest's PV state), so it does nothing: that
 * makes resume idempotent. The controller pause count is never touched (xl pause by an
 * administrator is theirs to undo; libxl_domain_resume does not unpause either).
 */
export function planResume(domid: number, info: DomainInfo | undefined): ResumePlan {
  if (info === undefined) throw new DomainError('not-found', domid, 'resume', 'no such domain');
  if (info.dying) throw new DomainError('dying', domid, 'resume', 'domain is dying');
  if (info.shutdown) {
    if (info.shutdownReason === 'suspend') return 'resume';
    throw new DomainError(
      'not-suspended',
      domid,
      'resume',
      `domain is shut down (${info.shutdownReason ?? 'unknown'}), not suspended`,
    );
  }
  return 'nothing';
}
