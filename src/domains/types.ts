// The DomainControl interface: the only door to the hypervisor for everything above src/domains/.
// Implemented by domain-control.ts over libxenctrl/libxenguest (native-bindings) and XenStore.

/** SHUTDOWN_* reasons of xen/include/public/sched.h. */
export type ShutdownReason =
  'poweroff' | 'reboot' | 'suspend' | 'crash' | 'watchdog' | 'soft_reset' | 'unknown';

export interface DomainInfo {
  domid: number;
  paused: boolean;
  shutdown: boolean;
  /** Present when shutdown is true. */
  shutdownReason?: ShutdownReason;
  dying: boolean;
  hvm: boolean;
}

export interface SuspendOptions {
  /** Wait for the guest's ack of control/shutdown (libxl: 60 s). */
  ackTimeoutMs?: number;
  /** Wait for the domain to be shut down with reason suspend after the ack (libxl: 60 s). */
  suspendTimeoutMs?: number;
  /**
   * Cancels the suspend. While waiting for the ack, the request is withdrawn as on an ack timeout
   * (control/shutdown cleared in a transaction if it still says "suspend"); then, and while waiting
   * for shutdown(suspend), a short grace (cancelGraceMs) shows whether the guest suspended anyway.
   * suspend() then rejects with a SuspendCancelledError (code 'cancelled', `suspended` says how the
   * domain ended): the caller resumes it if so.
   */
  signal?: AbortSignal;
  /** After an abort, how long to watch for a guest that suspends anyway. Default 2000 ms. */
  cancelGraceMs?: number;
  /**
   * Called (and awaited) right before the request is made: before control/shutdown is written, or
   * before xc_domain_shutdown for a guest without PV drivers. The caller records there that a
   * request may be outstanding (a crash after it must withdraw it); a rejection stops the suspend
   * with nothing asked.
   */
  onRequest?: (how: SuspendMethod) => Promise<void>;
}

/** How a suspend is asked: through the guest's control/shutdown node, or of the hypervisor. */
export type SuspendMethod = 'pv-control' | 'hypervisor';

/** What withdrawing a suspend request found. */
export type WithdrawOutcome =
  /** control/shutdown said "suspend" and now says "" (in one transaction): the guest never acked. */
  | 'withdrawn'
  /** It said something else (acked, never written, already withdrawn): the guest may have acked. */
  | 'not-pending';

export interface ResumeOptions {
  /** Cooperative resume (suspend cancel); only where the guest supports it. Default: true, then slow on failure. */
  fast?: boolean;
}

export type DomainEvent =
  | { kind: 'suspended'; domid: number }
  | { kind: 'gone'; domid: number }
  | { kind: 'shutdown'; domid: number; reason: ShutdownReason };

export interface DomainControl {
  info(domid: number): Promise<DomainInfo | undefined>;
  list(): Promise<DomainInfo[]>;
  pause(domid: number): Promise<void>;
  unpause(domid: number): Promise<void>;
  /** libxl's algorithm; rejects with a DomainError naming the step that failed. */
  suspend(domid: number, opts?: SuspendOptions): Promise<void>;
  /**
   * A domain shut down with reason suspend: xc_domain_resume + XS_RESUME. Anything else: nothing.
   * Never touches the controller pause count (whoever paused a domain unpauses it).
   */
  resume(domid: number, opts?: ResumeOptions): Promise<void>;
  /**
   * Withdraws a suspend request a guest has not acked (control/shutdown "suspend" -> "", in a
   * transaction that re-reads it), e.g. one a crashed agent left behind. Writes nothing otherwise.
   */
  withdrawSuspend(domid: number): Promise<WithdrawOutcome>;
  /** Resolves when the domain is seen shut down with reason suspend; rejects on timeout or when it is gone. */
  waitForSuspended(domid: number, timeoutMs: number): Promise<void>;
  /** Domain lifecycle events (driven by @releaseDomain). Returns an unsubscribe function. */
  onEvent(cb: (ev: DomainEvent) => void): () => void;
  close(): Promise<void>;
}
