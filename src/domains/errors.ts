// Typed errors of domain control. Each carries what went wrong as a code, the step that failed
// and, for a failed hypercall, the errno name, so that the engine can branch and log precisely.

export type DomainErrorCode =
  /** domid is not an integer in 1..0x7fef. */
  | 'invalid-domid'
  /** The control domain cannot be suspended or resumed by us. */
  | 'dom0'
  /** No such domain (before anything was done). */
  | 'not-found'
  /** The domain is already shut down (any reason) when a suspend was asked. */
  | 'already-shutdown'
  /** The domain is dying. */
  | 'dying'
  /** The guest said control/feature-suspend = "0": it will not answer a suspend request. */
  | 'guest-refuses'
  /** Another suspend of this domain is in progress in this process. */
  | 'busy'
  /** The guest did not acknowledge control/shutdown in time; the request was cancelled. */
  | 'ack-timeout'
  /** The guest acknowledged but did not shut down with reason suspend in time. */
  | 'suspend-timeout'
  /** The domain disappeared (destroyed or dying) while we waited for it. */
  | 'gone'
  /** The domain shut down with a reason other than suspend while we waited. */
  | 'unexpected-shutdown'
  /** resume() on a domain shut down for another reason than suspend. */
  | 'not-suspended'
  /** A libxenctrl/libxenguest call failed; errno says why. */
  | 'hypercall'
  /** A XenStore operation failed. */
  | 'xenstore'
  /** DomainControl was closed. */
  | 'closed'
  /** The caller aborted the suspend (SuspendOptions.signal); see SuspendCancelledError. */
  | 'cancelled'
  /** SuspendOptions.onRequest failed: the request could not be recorded, so it was not made. */
  | 'not-recorded';

export class DomainError extends Error {
  override readonly name = 'DomainError';
  constructor(
    readonly code: DomainErrorCode,
    readonly domid: number,
    /** The step that failed, e.g. "xc_domain_shutdown", "ack", "wait-suspended", "xs-resume". */
    readonly step: string,
    message: string,
    /** errno name (e.g. "ESRCH") when a native call failed. */
    readonly errno?: string,
    options?: { cause?: unknown },
  ) {
    super(`domain ${domid}: ${step}: ${message}${errno !== undefined ? ` (${errno})` : ''}`, options);
  }
}

/** How a cancelled suspend left the domain, at the end of the grace. */
export type CancelledEnd = 'suspended' | 'running' | 'gone' | 'shutdown';

/**
 * suspend() was aborted through its signal. `suspended` is true when the domain ended shut down
 * with reason suspend (the guest acked before the cancel, or suspended anyway): resume it.
 */
export class SuspendCancelledError extends DomainError {
  readonly suspended: boolean;
  constructor(
    domid: number,
    step: string,
    readonly end: CancelledEnd,
    /** The guest acked (or the hypervisor was asked) before the cancel: it may still suspend later. */
    readonly acked: boolean,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('cancelled', domid, step, message, undefined, options);
    this.suspended = end === 'suspended';
  }
}
