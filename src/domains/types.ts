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
}

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
  /** xc_domain_resume + XS_RESUME + unpause. Idempotent on a running domain. */
  resume(domid: number, opts?: ResumeOptions): Promise<void>;
  /** Resolves when the domain is seen shut down with reason suspend; rejects on timeout or when it is gone. */
  waitForSuspended(domid: number, timeoutMs: number): Promise<void>;
  /** Domain lifecycle events (driven by @releaseDomain). Returns an unsubscribe function. */
  onEvent(cb: (ev: DomainEvent) => void): () => void;
  close(): Promise<void>;
}
