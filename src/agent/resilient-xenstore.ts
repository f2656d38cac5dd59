// A XenStore that outlives xenstored restarts: it reconnects with capped, jittered backoff,
// re-registers every watch made through it (each fires its initial event again, which tells
// its owner to reconcile), and lets calls made while disconnected wait, boundedly, for the link.
import { XenStoreDisconnectedError } from '../xenstore/errors.js';
import { nextWatchToken } from '../xenstore/watch-registry.js';
import type {
  Perm,
  TransactionOptions,
  Watch,
  WatchEvent,
  WatchOptions,
  XenStore,
  XsOps,
} from '../xenstore/types.js';
import { Backoff, sleep, type BackoffOptions } from './backoff.js';
import type { Logger } from './logger.js';

export interface ResilientOptions {
  connect: () => Promise<XenStore>;
  logger?: Logger;
  backoff?: BackoffOptions;
  /** How long a call made while disconnected waits for the link, ms. Default 15000. */
  waitMs?: number;
}

type Listener = () => void;

class ManagedWatch implements Watch {
  private queue: WatchEvent[] = [];
  private wake: (() => void) | undefined;
  closed = false;
  inner: Watch | undefined;

  constructor(
    readonly path: string,
    readonly token: string,
    private readonly onEvent: ((ev: WatchEvent) => void) | undefined,
    private readonly owner: ResilientXenStore,
  ) {}

  deliver(ev: WatchEvent): void {
    if (this.closed) return;
    this.onEvent?.(ev);
    // Keep a queue only for iterating consumers; callback users never read it, so bound it.
    if (this.wake || this.queue.length < 1024) this.queue.push(ev);
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.owner.forget(this);
    const w = this.wake;
    this.wake = undefined;
    w?.();
    const inner = this.inner;
    this.inner = undefined;
    if (inner) await inner.close().catch(() => undefined);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    while (!this.closed) {
      const ev = this.queue.shift();
      if (ev) {
        yield ev;
        continue;
      }
      await new Promise<void>((r) => (this.wake = r));
    }
  }
}

export class ResilientXenStore implements XenStore {
  private current: XenStore | undefined;
  private readonly watches = new Set<ManagedWatch>();
  private readonly backoff: Backoff;
  private readonly waitMs: number;
  private readonly abort = new AbortController();
  private waiters: (() => void)[] = [];
  private readonly disconnectListeners = new Set<(err: Error) => void>();
  private readonly reconnectListeners = new Set<Listener>();
  private loop: Promise<void> | undefined;
  /** Successful connections so far (1 after start). */
  connections = 0;

  constructor(private readonly opts: ResilientOptions) {
    this.backoff = new Backoff(opts.backoff);
    this.waitMs = opts.waitMs ?? 15_000;
  }

  /** Connects, retrying with backoff until it works or close() is called. */
  async start(): Promise<void> {
    this.loop ??= this.connectLoop();
    await this.loop;
    if (!this.current) throw new XenStoreDisconnectedError('closed before xenstored could be reached');
  }

  get connected(): boolean {
    return this.current?.connected ?? false;
  }

  /** Called on every loss of the link (not only the first, unlike a plain connection). */
  onDisconnect(cb: (err: Error) => void): () => void {
    this.disconnectListeners.add(cb);
    return () => this.disconnectListeners.delete(cb);
  }

  /** Called after every successful reconnection, once the watches are registered again. */
  onReconnect(cb: Listener): () => void {
    this.reconnectListeners.add(cb);
    return () => this.reconnectListeners.delete(cb);
  }

  private async connectLoop(): Promise<void> {
    while (!this.abort.signal.aborted) {
      try {
        const xs = await this.opts.connect();
        if (this.abort.signal.aborted) {
          await xs.close().catch(() => undefined);
          return;
        }
        try {
          await this.adopt(xs);
        } catch (err) {
          await xs.close().catch(() => undefined);
          throw err;
        }
        return;
      } catch (err) {
        const delay = this.backoff.next();
        const n = this.backoff.attempts;
        // Log the first failures and then every tenth: a long xenstored outage must not flood the journal.
        if (n <= 3 || n % 10 === 0)
          this.opts.logger?.warn('xenstored not reachable, retrying', {
            attempt: n,
            retry_ms: delay,
            error: err instanceof Error ? err.message : String(err),
          });
        await sleep(delay, this.abort.signal);
      }
    }
  }

  private async adopt(xs: XenStore): Promise<void> {
    for (const w of this.watches) {
      w.inner = undefined;
      w.inner = await xs.watch(w.path, { token: w.token, onEvent: (ev) => w.deliver(ev) });
    }
    xs.onDisconnect((err) => this.lost(xs, err));
    if (!xs.connected) throw new XenStoreDisconnectedError('connection dropped while re-registering watches');
    this.current = xs;
    this.connections++;
    this.backoff.reset();
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
    if (this.connections > 1) {
      this.opts.logger?.notice('reconnected to xenstored', { watches: this.watches.size });
      for (const cb of this.reconnectListeners) cb();
    }
  }

  private lost(xs: XenStore, err: Error): void {
    if (this.current !== xs || this.abort.signal.aborted) return;
    this.current = undefined;
    for (const w of this.watches) w.inner = undefined;
    this.opts.logger?.warn('lost the connection to xenstored', { error: err.message });
    for (const cb of this.disconnectListeners) cb(err);
    this.loop = this.connectLoop();
  }

  private async conn(): Promise<XenStore> {
    const c = this.current;
    if (c?.connected) return c;
    if (this.abort.signal.aborted) throw new XenStoreDisconnectedError('closed');
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== done);
        reject(new XenStoreDisconnectedError(`no connection to xenstored within ${this.waitMs} ms`));
      }, this.waitMs);
      const done = (): void => {
        clearTimeout(t);
        resolve();
      };
      this.waiters.push(done);
    });
    const after = this.current;
    if (!after) throw new XenStoreDisconnectedError('closed');
    return after;
  }

  forget(w: ManagedWatch): void {
    this.watches.delete(w);
  }

  async read(path: string): Promise<Buffer> {
    return (await this.conn()).read(path);
  }
  async readString(path: string): Promise<string> {
    return (await this.conn()).readString(path);
  }
  async tryRead(path: string): Promise<string | undefined> {
    return (await this.conn()).tryRead(path);
  }
  async write(path: string, value: Buffer | string): Promise<void> {
    return (await this.conn()).write(path, value);
  }
  async mkdir(path: string): Promise<void> {
    return (await this.conn()).mkdir(path);
  }
  async rm(path: string): Promise<void> {
    return (await this.conn()).rm(path);
  }
  async directory(path: string): Promise<string[]> {
    return (await this.conn()).directory(path);
  }
  async exists(path: string): Promise<boolean> {
    return (await this.conn()).exists(path);
  }
  async getPerms(path: string): Promise<Perm[]> {
    return (await this.conn()).getPerms(path);
  }
  async setPerms(path: string, perms: readonly Perm[]): Promise<void> {
    return (await this.conn()).setPerms(path, perms);
  }
  async transaction<T>(fn: (tx: XsOps) => Promise<T>, opts?: TransactionOptions): Promise<T> {
    return (await this.conn()).transaction(fn, opts);
  }
  async getDomainPath(domid: number): Promise<string> {
    return (await this.conn()).getDomainPath(domid);
  }
  async introduce(domid: number, mfn: bigint | number, port: number): Promise<void> {
    return (await this.conn()).introduce(domid, mfn, port);
  }
  async release(domid: number): Promise<void> {
    return (await this.conn()).release(domid);
  }
  async isIntroduced(domid: number): Promise<boolean> {
    return (await this.conn()).isIntroduced(domid);
  }
  async setTarget(domid: number, target: number): Promise<void> {
    return (await this.conn()).setTarget(domid, target);
  }
  async resume(domid: number): Promise<void> {
    return (await this.conn()).resume(domid);
  }
  async resetWatches(): Promise<void> {
    return (await this.conn()).resetWatches();
  }
  async getFeature(domid?: number): Promise<number> {
    return (await this.conn()).getFeature(domid);
  }
  async getQuota(domid?: number): Promise<Map<string, number>> {
    return (await this.conn()).getQuota(domid);
  }

  /** Registered now if connected, and again after every reconnection, with the same token. */
  async watch(path: string, opts: WatchOptions = {}): Promise<Watch> {
    // Process-wide counter: two resilient stores (or a plain client) on one xenstored never share a token.
    const token = opts.token ?? nextWatchToken('devmigrate-rw-');
    const w = new ManagedWatch(path, token, opts.onEvent, this);
    const c = await this.conn();
    w.inner = await c.watch(path, { token, onEvent: (ev) => w.deliver(ev) });
    this.watches.add(w);
    return w;
  }

  async close(): Promise<void> {
    this.abort.abort();
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
    for (const w of [...this.watches]) {
      w.closed = true;
      this.watches.delete(w);
    }
    const c = this.current;
    this.current = undefined;
    if (c) await c.close().catch(() => undefined);
  }
}
