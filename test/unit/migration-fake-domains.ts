// A minimal DomainControl for UNIT tests of the engine: domains that suspend on request (or
// refuse), can be "suspended by the toolstack", resumed and destroyed, with a call log.
import { SuspendCancelledError } from '../../src/domains/errors.js';
import type {
  DomainControl,
  DomainEvent,
  DomainInfo,
  SuspendOptions,
  WithdrawOutcome,
} from '../../src/domains/types.js';

export class FakeDomains implements DomainControl {
  readonly doms = new Map<number, DomainInfo>();
  readonly calls: string[] = [];
  refuseSuspend = new Set<number>();
  /** Misbehaving domain layer: the suspend lands this late (ignoring its own timeouts). */
  suspendDelayMs = 0;
  /** Misbehaving domain layer: these calls never settle. */
  hangSuspend = false;
  hangResume = false;
  /** These guests ack the suspend request and then wait: only the caller's signal ends the call. */
  ackThenWait = new Set<number>();
  private listeners: ((ev: DomainEvent) => void)[] = [];
  private suspendWaiters: { domid: number; resolve: () => void }[] = [];

  add(domid: number): void {
    this.doms.set(domid, { domid, paused: false, shutdown: false, dying: false, hvm: false });
  }
  info(domid: number): Promise<DomainInfo | undefined> {
    const d = this.doms.get(domid);
    return Promise.resolve(d === undefined ? undefined : { ...d });
  }
  list(): Promise<DomainInfo[]> {
    return Promise.resolve([...this.doms.values()]);
  }
  pause(domid: number): Promise<void> {
    this.calls.push(`pause ${domid}`);
    return Promise.resolve();
  }
  unpause(domid: number): Promise<void> {
    this.calls.push(`unpause ${domid}`);
    return Promise.resolve();
  }
  private markSuspended(domid: number): void {
    const d = this.doms.get(domid);
    if (d === undefined) return;
    d.shutdown = true;
    d.shutdownReason = 'suspend';
    for (const w of this.suspendWaiters.filter((x) => x.domid === domid)) w.resolve();
    this.suspendWaiters = this.suspendWaiters.filter((x) => x.domid !== domid);
  }
  async suspend(domid: number, opts: SuspendOptions = {}): Promise<void> {
    this.calls.push(`suspend ${domid}`);
    const { signal } = opts;
    await opts.onRequest?.('pv-control');
    if (this.ackThenWait.has(domid) && signal !== undefined) {
      // As the real layer after its cancel grace: acked, still running.
      await new Promise<void>((resolve) => {
        if (signal.aborted) resolve();
        else signal.addEventListener('abort', () => resolve(), { once: true });
      });
      throw new SuspendCancelledError(domid, 'wait-suspended', 'running', true, 'cancelled (acked)');
    }
    if (this.refuseSuspend.has(domid))
      throw new Error(`domain ${domid} did not acknowledge the suspend request`);
    if (!this.doms.has(domid)) throw new Error(`domain ${domid} does not exist`);
    if (this.hangSuspend) return new Promise<void>(() => undefined);
    if (this.suspendDelayMs > 0) await new Promise((r) => setTimeout(r, this.suspendDelayMs));
    this.markSuspended(domid);
  }
  /** A request the fake never wrote anywhere: nothing to withdraw. */
  withdrawSuspend(): Promise<WithdrawOutcome> {
    return Promise.resolve('withdrawn');
  }
  /** The toolstack suspends the domain. */
  toolstackSuspend(domid: number): void {
    this.markSuspended(domid);
  }
  resume(domid: number): Promise<void> {
    this.calls.push(`resume ${domid}`);
    if (this.hangResume) return new Promise<void>(() => undefined);
    const d = this.doms.get(domid);
    if (d?.shutdown === true && d.shutdownReason === 'suspend') {
      d.shutdown = false;
      delete d.shutdownReason;
    }
    return Promise.resolve();
  }
  waitForSuspended(domid: number, timeoutMs: number): Promise<void> {
    const d = this.doms.get(domid);
    if (d?.shutdown === true && d.shutdownReason === 'suspend') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`domain ${domid} not suspended within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.suspendWaiters.push({
        domid,
        resolve: () => {
          clearTimeout(t);
          resolve();
        },
      });
    });
  }
  destroy(domid: number): void {
    this.doms.delete(domid);
    for (const l of this.listeners) l({ kind: 'gone', domid });
  }
  onEvent(cb: (ev: DomainEvent) => void): () => void {
    this.listeners.push(cb);
    return () => {
      this.listeners = this.listeners.filter((l) => l !== cb);
    };
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}
