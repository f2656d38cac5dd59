// The simulated hypervisor of the deterministic world: domains with a controller pause count,
// shutdown reason and death, the calls of src/domains/hypervisor.ts's Hypervisor interface per
// caller (so the agent's real XenDomainControl runs on it), a fault hook per call, a log of who
// did what, and @releaseDomain fired on the store as xenstored does on a shutdown or a death.
import { DomainError } from '../../src/domains/errors.js';
import type { Hypervisor } from '../../src/domains/hypervisor.js';
import type { DomainInfo, ShutdownReason } from '../../src/domains/types.js';
import { never, type Owner } from './dispatch.js';
import type { SimStore } from './sim-store.js';

export interface SimDomain {
  domid: number;
  /** Controller pause count (xl pause / xc_domain_pause). */
  pauseCount: number;
  shutdown: boolean;
  reason?: ShutdownReason;
  hvm: boolean;
  /** HVM: PV drivers up (HVM_PARAM_CALLBACK_IRQ != 0). */
  pvDrivers: boolean;
  resumes: number;
}

export type HvCall = 'info' | 'list' | 'pause' | 'unpause' | 'shutdown' | 'resume' | 'hvm-params' | 'destroy';

export type HvFault =
  | { kind: 'ok' }
  | { kind: 'error'; errno: string }
  /** Answered later (and done then). */
  | { kind: 'delay'; ms: number }
  /** Never answers (a call stuck in the library). */
  | { kind: 'hang' }
  /** The caller's owner dies at this call. */
  | { kind: 'crash' };

export interface HvRecord {
  caller: string;
  call: HvCall;
  domid: number;
  at: number;
  detail?: string;
}

const REASON_CODE: readonly ShutdownReason[] = [
  'poweroff',
  'reboot',
  'suspend',
  'crash',
  'watchdog',
  'soft_reset',
];

export class SimHypervisor {
  readonly domains = new Map<number, SimDomain>();
  /** Every state-changing call (and every info by the agent), in order. */
  readonly calls: HvRecord[] = [];
  faults: ((caller: string, call: HvCall, domid: number) => HvFault) | undefined;
  private readonly runnable = new Map<number, (() => void)[]>();
  /** Called after every change of a domain's state (the fault model checks attribution here). */
  onChange: ((domid: number, what: string, by: string) => void) | undefined;

  constructor(private readonly store: SimStore) {}

  add(domid: number, opts: { hvm?: boolean; pvDrivers?: boolean } = {}): SimDomain {
    const d: SimDomain = {
      domid,
      pauseCount: 0,
      shutdown: false,
      hvm: opts.hvm ?? false,
      pvDrivers: opts.pvDrivers ?? true,
      resumes: 0,
    };
    this.domains.set(domid, d);
    return d;
  }

  info(domid: number): DomainInfo | undefined {
    const d = this.domains.get(domid);
    if (d === undefined) return undefined;
    const i: DomainInfo = { domid, paused: d.pauseCount > 0, shutdown: d.shutdown, dying: false, hvm: d.hvm };
    if (d.shutdown) i.shutdownReason = d.reason ?? 'unknown';
    return i;
  }

  /** The guest can run: exists, not shut down, not paused. */
  canRun(domid: number): boolean {
    const d = this.domains.get(domid);
    return d !== undefined && !d.shutdown && d.pauseCount === 0;
  }

  /** Runs fn once the guest can run (at once if it can); dropped if the domain goes. */
  whenRunnable(domid: number, fn: () => void): void {
    if (this.canRun(domid)) {
      fn();
      return;
    }
    const list = this.runnable.get(domid) ?? [];
    list.push(fn);
    this.runnable.set(domid, list);
  }

  private wake(domid: number): void {
    if (!this.canRun(domid)) return;
    const list = this.runnable.get(domid) ?? [];
    this.runnable.delete(domid);
    for (const fn of list) fn();
  }

  private changed(domid: number, what: string, by: string, release: boolean): void {
    this.onChange?.(domid, what, by);
    if (release) this.store.fireSpecial('@releaseDomain');
    this.wake(domid);
  }

  // ---- what the world does directly (guests, administrator, toolstack) ----

  /** SCHEDOP_shutdown by the guest itself (suspend, crash, poweroff). */
  guestShutdown(domid: number, reason: ShutdownReason, by = `guest-${domid}`): void {
    const d = this.domains.get(domid);
    if (d === undefined || d.shutdown) return;
    d.shutdown = true;
    d.reason = reason;
    this.calls.push({ caller: by, call: 'shutdown', domid, at: this.store.dispatch.now(), detail: reason });
    this.changed(domid, `shutdown:${reason}`, by, true);
  }
  destroy(domid: number, by = 'toolstack'): void {
    if (!this.domains.delete(domid)) return;
    this.runnable.delete(domid);
    this.calls.push({ caller: by, call: 'destroy', domid, at: this.store.dispatch.now() });
    this.changed(domid, 'destroyed', by, true);
  }
  adminPause(domid: number, by = 'admin'): void {
    const d = this.domains.get(domid);
    if (d === undefined) return;
    d.pauseCount += 1;
    this.calls.push({ caller: by, call: 'pause', domid, at: this.store.dispatch.now() });
    this.changed(domid, 'paused', by, false);
  }
  adminUnpause(domid: number, by = 'admin'): void {
    const d = this.domains.get(domid);
    if (d === undefined || d.pauseCount === 0) return;
    d.pauseCount -= 1;
    this.calls.push({ caller: by, call: 'unpause', domid, at: this.store.dispatch.now() });
    this.changed(domid, 'unpaused', by, false);
  }
  /** xc_domain_resume as a toolstack does it (xl migrate's failure path). */
  resumeBy(domid: number, by: string): boolean {
    const d = this.domains.get(domid);
    if (d === undefined || !d.shutdown || d.reason !== 'suspend') return false;
    d.shutdown = false;
    delete d.reason;
    d.resumes += 1;
    this.calls.push({ caller: by, call: 'resume', domid, at: this.store.dispatch.now() });
    this.changed(domid, 'resumed', by, false);
    return true;
  }

  /** The Hypervisor interface for one caller (an agent generation's domain layer). */
  handle(who: Owner, name: string): Hypervisor {
    const fail = (domid: number, step: string, errno: string): DomainError =>
      new DomainError('hypercall', domid, step, 'failed', errno);
    const call = <T>(c: HvCall, domid: number, step: string, fn: () => T): Promise<T> => {
      if (who.dead) return never();
      const f = this.faults?.(name, c, domid) ?? { kind: 'ok' };
      const run = (): T => {
        if (c !== 'info' && c !== 'list' && c !== 'hvm-params')
          this.calls.push({ caller: name, call: c, domid, at: this.store.dispatch.now() });
        return fn();
      };
      switch (f.kind) {
        case 'crash':
          who.dead = true;
          return never();
        case 'hang':
          return never();
        case 'error':
          return Promise.reject(fail(domid, step, f.errno));
        case 'delay':
          return new Promise<T>((resolve, reject) =>
            this.store.dispatch.post(who, f.ms, () => {
              try {
                resolve(run());
              } catch (err) {
                reject(err as Error);
              }
            }),
          );
        case 'ok':
          try {
            return Promise.resolve(run());
          } catch (err) {
            return Promise.reject(err as Error);
          }
      }
    };
    const exists = (domid: number, step: string): SimDomain => {
      const d = this.domains.get(domid);
      if (d === undefined) throw fail(domid, step, 'ESRCH');
      return d;
    };
    return {
      info: (domid) => call('info', domid, 'xc_domain_getinfolist', () => this.info(domid)),
      list: () =>
        call('list', 0, 'xc_domain_getinfolist', () =>
          [...this.domains.keys()].sort((a, b) => a - b).flatMap((d) => this.info(d) ?? []),
        ),
      pause: (domid) =>
        call('pause', domid, 'xc_domain_pause', () => {
          exists(domid, 'xc_domain_pause').pauseCount += 1;
          this.changed(domid, 'paused', name, false);
        }),
      unpause: (domid) =>
        call('unpause', domid, 'xc_domain_unpause', () => {
          const d = exists(domid, 'xc_domain_unpause');
          if (d.pauseCount === 0) throw fail(domid, 'xc_domain_unpause', 'EINVAL');
          d.pauseCount -= 1;
          this.changed(domid, 'unpaused', name, false);
        }),
      shutdown: (domid, reason) =>
        call('shutdown', domid, 'xc_domain_shutdown', () => {
          const d = exists(domid, 'xc_domain_shutdown');
          if (d.shutdown) return;
          d.shutdown = true;
          d.reason = REASON_CODE[reason] ?? 'unknown';
          this.changed(domid, `shutdown:${d.reason}`, name, true);
        }),
      resume: (domid, fast) =>
        call('resume', domid, `xc_domain_resume(fast=${fast ? 1 : 0})`, () => {
          const d = exists(domid, 'xc_domain_resume');
          // Like xg_resume.c: a domain not shut down for a suspend cannot be resumed.
          if (!d.shutdown || d.reason !== 'suspend') throw fail(domid, 'xc_domain_resume', 'EINVAL');
          d.shutdown = false;
          delete d.reason;
          d.resumes += 1;
          // XEN_DOMCTL_resumedomain leaves the controller pause count alone.
          this.changed(domid, 'resumed', name, false);
        }),
      hvmSuspendParams: (domid) =>
        call('hvm-params', domid, 'xc_hvm_param_get', () => {
          const d = exists(domid, 'xc_hvm_param_get');
          if (!d.hvm) throw fail(domid, 'xc_hvm_param_get', 'EINVAL');
          return { callbackIrq: d.pvDrivers ? 1n : 0n, acpiSState: 0n };
        }),
      close: () => Promise.resolve(),
    };
  }
}
