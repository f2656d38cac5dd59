// Simulated guest kernels of the deterministic world: each speaks XenStore as its own domain
// and answers control/shutdown "suspend" as Linux's manage.c does (ack with "" in a transaction
// that re-reads the request, then SCHEDOP_shutdown(suspend)), or misbehaves on purpose. A paused
// or suspended guest does nothing until it can run again.
import { owner, type Owner } from './dispatch.js';
import type { SimHypervisor } from './sim-hypervisor.js';
import type { SimConnection, SimStore } from './sim-store.js';

export const GUEST_MODES = [
  'normal',
  'slow-ack',
  'never-ack',
  'ack-no-suspend',
  'late-suspend',
  'rogue',
  'crash',
  'die',
] as const;
/**
 * normal: ack, suspend after suspendDelayMs. slow-ack: ack after ackDelayMs, then suspend.
 * never-ack: ignores requests. ack-no-suspend: acks, keeps running. late-suspend: acks, suspends
 * after suspendDelayMs (typically long). rogue: never acks but suspends after suspendDelayMs,
 * even if the request was withdrawn meanwhile. crash: acks, then shuts down with reason crash.
 * die: acks, then the domain is destroyed.
 */
export type GuestMode = (typeof GUEST_MODES)[number];

export interface GuestBehaviour {
  mode: GuestMode;
  ackDelayMs?: number;
  suspendDelayMs?: number;
  /** control/feature-suspend as written by the guest ("1" by Linux); null: not written. */
  featureSuspend?: '0' | '1' | '' | null;
}

export interface GuestStats {
  requests: number;
  acks: number;
  suspends: number;
  /** When the guest last acked a request (world clock). */
  ackedAt?: number;
}

export class SimGuest {
  readonly stats: GuestStats = { requests: 0, acks: 0, suspends: 0 };
  readonly who: Owner;
  private conn: SimConnection | undefined;
  private busy = false;

  constructor(
    private readonly store: SimStore,
    private readonly hv: SimHypervisor,
    readonly domid: number,
    readonly behaviour: GuestBehaviour,
  ) {
    this.who = owner(`guest-${domid}`);
  }

  private get shutdownPath(): string {
    return `/local/domain/${this.domid}/control/shutdown`;
  }

  /** Lays out what libxl gives a guest (control/shutdown writable by it) and starts listening. */
  async start(): Promise<void> {
    const dom = `/local/domain/${this.domid}`;
    const mine = [{ domid: this.domid, access: 'n' as const }];
    if (this.store.value(dom) === undefined) this.store.put(dom, '', [{ domid: 0, access: 'r' }]);
    this.store.put(`${dom}/name`, `g${this.domid}`, [{ domid: 0, access: 'r' }]);
    this.store.put(`${dom}/control`, '', [{ domid: 0, access: 'r' }]);
    this.store.put(this.shutdownPath, '', mine);
    this.store.put(`${dom}/control/feature-suspend`, '', mine);
    this.conn = this.store.connect(`guest-${this.domid}`, this.who, this.domid);
    const fs = this.behaviour.featureSuspend === undefined ? '1' : this.behaviour.featureSuspend;
    if (fs !== null) await this.conn.write(`${dom}/control/feature-suspend`, fs);
    await this.conn.watch(this.shutdownPath, { onEvent: () => void this.onRequest() });
  }

  private after(ms: number, fn: () => void): void {
    this.store.dispatch.post(this.who, ms, () => this.hv.whenRunnable(this.domid, fn));
  }

  private async onRequest(): Promise<void> {
    const conn = this.conn;
    if (conn === undefined || this.busy || !this.hv.domains.has(this.domid)) return;
    const v = await conn.tryRead(this.shutdownPath).catch(() => undefined);
    if (v !== 'suspend' || this.busy) return;
    this.busy = true;
    this.stats.requests += 1;
    const { mode } = this.behaviour;
    if (mode === 'never-ack') {
      this.busy = false;
      return;
    }
    if (mode === 'rogue') {
      this.after(this.behaviour.suspendDelayMs ?? 0, () => {
        this.busy = false;
        this.stats.suspends += 1;
        this.hv.guestShutdown(this.domid, 'suspend');
      });
      return;
    }
    const ackDelay =
      mode === 'slow-ack' ? (this.behaviour.ackDelayMs ?? 2000) : (this.behaviour.ackDelayMs ?? 0);
    this.after(ackDelay, () => void this.ack(conn));
  }

  private async ack(conn: SimConnection): Promise<void> {
    // Linux acks in a transaction that re-reads the request: a withdrawn request is not acked.
    const acked = await conn
      .transaction(async (tx) => {
        if ((await tx.tryRead(this.shutdownPath)) !== 'suspend') return false;
        await tx.write(this.shutdownPath, '');
        return true;
      })
      .catch(() => false);
    if (!acked) {
      this.busy = false;
      return;
    }
    this.stats.acks += 1;
    this.stats.ackedAt = this.store.dispatch.now();
    const { mode } = this.behaviour;
    if (mode === 'ack-no-suspend') {
      this.busy = false;
      return;
    }
    this.after(this.behaviour.suspendDelayMs ?? 0, () => {
      this.busy = false;
      if (mode === 'die') this.hv.destroy(this.domid, `guest-${this.domid}`);
      else if (mode === 'crash') this.hv.guestShutdown(this.domid, 'crash');
      else {
        this.stats.suspends += 1;
        this.hv.guestShutdown(this.domid, 'suspend');
      }
    });
  }

  stop(): void {
    this.who.dead = true;
    void this.conn?.close();
  }
}
