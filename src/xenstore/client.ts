// The XenStore interface over one SocketTransport: validates input, encodes each operation,
// routes watch events by token, runs bounded-retry transactions. Reconnection is explicit: a
// client whose connection dropped stays dead; call connectXenStore() again and re-register.

import { XenStoreDisconnectedError, XenStoreError, XenStoreInputError, isXsErrno } from './errors.js';
import type { Perm, TransactionOptions, Watch, WatchEvent, WatchOptions, XenStore, XsOps } from './types.js';
import {
  validateDomid,
  validateMfn,
  validatePath,
  validateToken,
  validateU32,
  validateValue,
  validateWatchPath,
} from './paths.js';
import type { SocketTransport } from './socket-transport.js';
import * as wire from './wire.js';

const DIRECTORY_PART_RESTARTS = 16;

// Module-level parsers: passing these (not fresh closures) keeps each call to one allocation.
const parseValue = wire.parseValue;
const parseUtf8 = (b: Buffer): string => b.toString('utf8');
const parseAck = wire.parseAck;

/** Operations bound to one transaction id (0: none). */
class OpsImpl implements XsOps {
  /** Set when a transaction has ended: its handle must not be used any more. */
  protected ended = false;

  constructor(
    protected readonly t: SocketTransport,
    readonly txId: number,
  ) {}

  protected check(): void {
    if (this.ended) {
      throw new XenStoreInputError('transaction handle used after the transaction ended', 'tx');
    }
  }

  read(path: string): Promise<Buffer> {
    try {
      this.check();
      validatePath(path);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    return this.t.request(wire.encodeRead(path, this.txId), 'read', path, parseValue);
  }

  readString(path: string): Promise<string> {
    try {
      this.check();
      validatePath(path);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    return this.t.request(wire.encodeRead(path, this.txId), 'read', path, parseUtf8);
  }

  async tryRead(path: string): Promise<string | undefined> {
    try {
      return await this.readString(path);
    } catch (err) {
      if (isXsErrno(err, 'ENOENT')) return undefined;
      throw err;
    }
  }

  async write(path: string, value: Buffer | string): Promise<void> {
    this.check();
    validatePath(path);
    const bytes = validateValue(path, value);
    await this.t.request(wire.encodeWrite(path, bytes, this.txId), 'write', path, parseAck);
  }

  async mkdir(path: string): Promise<void> {
    this.check();
    validatePath(path);
    await this.t.request(wire.encodeMkdir(path, this.txId), 'mkdir', path, parseAck);
  }

  async rm(path: string): Promise<void> {
    this.check();
    validatePath(path);
    await this.t.request(wire.encodeRm(path, this.txId), 'rm', path, parseAck);
  }

  async directory(path: string): Promise<string[]> {
    this.check();
    validatePath(path);
    try {
      return await this.t.request(
        wire.encodeDirectory(path, this.txId),
        'directory',
        path,
        wire.parseDirectory,
      );
    } catch (err) {
      // A directory too big for one reply: xenstored answers E2BIG; read it in parts.
      if (!isXsErrno(err, 'E2BIG')) throw err;
    }
    return this.directoryPart(path);
  }

  /** DIRECTORY_PART loop, restarted when the node's generation changes between chunks. */
  async directoryPart(path: string): Promise<string[]> {
    this.check();
    validatePath(path);
    for (let restart = 0; restart < DIRECTORY_PART_RESTARTS; restart++) {
      const children: string[] = [];
      let offset = 0;
      let generation: string | undefined;
      let changed = false;
      for (;;) {
        const part = await this.t.request(
          wire.encodeDirectoryPart(path, offset, this.txId),
          'directory',
          path,
          wire.parseDirectoryPart,
        );
        if (generation === undefined) generation = part.generation;
        else if (generation !== part.generation) {
          changed = true;
          break;
        }
        children.push(...part.children);
        if (part.done) return children;
        if (part.consumed === 0) {
          throw new XenStoreError('EIO', 'directory', path);
        }
        offset += part.consumed;
      }
      if (!changed) break;
    }
    throw new XenStoreError('EAGAIN', 'directory', path);
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.read(path);
      return true;
    } catch (err) {
      if (isXsErrno(err, 'ENOENT')) return false;
      throw err;
    }
  }

  async getPerms(path: string): Promise<Perm[]> {
    this.check();
    validatePath(path);
    return this.t.request(wire.encodeGetPerms(path, this.txId), 'getPerms', path, wire.parseGetPerms);
  }

  async setPerms(path: string, perms: readonly Perm[]): Promise<void> {
    this.check();
    validatePath(path);
    await this.t.request(wire.encodeSetPerms(path, perms, this.txId), 'setPerms', path, parseAck);
  }
}

/** The transaction handle given to transaction(fn). */
class TxOps extends OpsImpl {
  end(): void {
    this.ended = true;
  }
}

/** A registered watch: events go to onEvent and/or a queue read by async iteration. */
class WatchImpl implements Watch {
  private readonly queue: WatchEvent[] = [];
  private waiter:
    { resolve: (r: IteratorResult<WatchEvent>) => void; reject: (e: Error) => void } | undefined;
  private error: Error | undefined;
  private closed = false;
  private iterating = false;

  constructor(
    private readonly client: SocketXenStore,
    readonly path: string,
    readonly token: string,
    private readonly onEvent: ((ev: WatchEvent) => void) | undefined,
    private readonly onError: ((err: Error) => void) | undefined,
  ) {}

  /** True when an event path is this watch's path or below it (special paths: exact). */
  matches(eventPath: string): boolean {
    const p = this.path;
    if (eventPath === p) return true;
    if (p.startsWith('@')) return false;
    if (p === '/') return eventPath.startsWith('/');
    return eventPath.startsWith(p) && eventPath.charCodeAt(p.length) === 0x2f;
  }

  deliver(ev: WatchEvent): void {
    if (this.closed) return;
    if (this.onEvent) {
      try {
        this.onEvent(ev);
      } catch {
        // A throwing callback must not break the connection that serves every other call.
      }
    }
    // Without a callback, events wait for iteration (the initial one arrives before the caller
    // can start iterating); with one, they are queued only while someone iterates.
    if (this.onEvent && !this.iterating) return;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.resolve({ value: ev, done: false });
    } else {
      this.queue.push(ev);
    }
  }

  /** The connection died: iteration throws after the queued events; onError hears it once. */
  kill(err: Error): void {
    if (this.closed || this.error) return;
    this.error = err;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.reject(err);
    }
    if (this.onError) {
      try {
        this.onError(err);
      } catch {
        // Same reason as in deliver().
      }
    }
  }

  /** Ends iteration locally (no UNWATCH): the client is closing or the server forgot it. */
  finish(): void {
    if (this.closed) return;
    this.closed = true;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.resolve({ value: undefined, done: true });
    }
    this.queue.length = 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.finish();
    await this.client.unregister(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    this.iterating = true;
    return {
      next: (): Promise<IteratorResult<WatchEvent>> => {
        const ev = this.queue.shift();
        if (ev !== undefined) return Promise.resolve({ value: ev, done: false });
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        if (this.error) return Promise.reject(this.error);
        return new Promise((resolve, reject) => {
          this.waiter = { resolve, reject };
        });
      },
      return: async (): Promise<IteratorResult<WatchEvent>> => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }
}

let tokenCounter = 0;

export interface SocketXenStoreOptions {
  /** Attempts/backoff defaults for transaction(). */
  transaction?: TransactionOptions;
}

export class SocketXenStore extends OpsImpl implements XenStore {
  /** token -> watches with that token (several paths may share one token). */
  private readonly watches = new Map<string, WatchImpl[]>();
  private readonly txDefaults: TransactionOptions;

  constructor(transport: SocketTransport, opts: SocketXenStoreOptions = {}) {
    super(transport, 0);
    this.txDefaults = opts.transaction ?? {};
    transport.onEvent = (path, token) => this.routeEvent(path, token);
    transport.onDisconnect((err) => {
      const all = [...this.watches.values()].flat();
      this.watches.clear();
      for (const w of all) w.kill(err);
    });
  }

  get connected(): boolean {
    return this.t.connected;
  }

  private routeEvent(path: string, token: string): void {
    const list = this.watches.get(token);
    if (list === undefined) return; // Late event after unwatch: harmless, drop it.
    const ev: WatchEvent = { path, token };
    if (list.length === 1) {
      list[0]?.deliver(ev);
      return;
    }
    for (const w of list) if (w.matches(path)) w.deliver(ev);
  }

  async transaction<T>(fn: (tx: XsOps) => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
    const maxAttempts = Math.max(1, opts.maxAttempts ?? this.txDefaults.maxAttempts ?? 10);
    const backoffMs = Math.max(0, opts.backoffMs ?? this.txDefaults.backoffMs ?? 2);
    for (let attempt = 1; ; attempt++) {
      const txId = await this.t.request(
        wire.encodeTransactionStart(),
        'transaction_start',
        undefined,
        wire.parseTransactionId,
      );
      const tx = new TxOps(this.t, txId);
      let result: T;
      try {
        result = await fn(tx);
      } catch (err) {
        tx.end();
        await this.endTransaction(txId, false).catch(() => undefined);
        // EAGAIN from an operation inside the transaction is a conflict too: retry it.
        if (isXsErrno(err, 'EAGAIN') && attempt < maxAttempts) {
          await sleep(jitter(backoffMs, attempt));
          continue;
        }
        throw err;
      }
      tx.end();
      try {
        await this.endTransaction(txId, true);
        return result;
      } catch (err) {
        if (!isXsErrno(err, 'EAGAIN')) throw err;
        if (attempt >= maxAttempts) throw new XenStoreError('EAGAIN', 'transaction');
        await sleep(jitter(backoffMs, attempt));
      }
    }
  }

  private async endTransaction(txId: number, commit: boolean): Promise<void> {
    await this.t.request(
      wire.encodeTransactionEnd(txId, commit),
      commit ? 'transaction_commit' : 'transaction_abort',
      undefined,
      parseAck,
    );
  }

  async watch(path: string, opts: WatchOptions = {}): Promise<Watch> {
    validateWatchPath(path);
    const token = validateToken(opts.token ?? `xsw${process.pid}-${++tokenCounter}`);
    if (!this.t.connected) throw new XenStoreDisconnectedError('not connected to xenstored');
    const w = new WatchImpl(this, path, token, opts.onEvent, opts.onError);
    // Registered before WATCH is sent: the initial event can follow the ack in the same chunk.
    const list = this.watches.get(token);
    if (list) list.push(w);
    else this.watches.set(token, [w]);
    try {
      await this.t.request(wire.encodeWatch(path, token), 'watch', path, parseAck);
    } catch (err) {
      this.forget(w);
      throw err;
    }
    return w;
  }

  private forget(w: WatchImpl): void {
    const list = this.watches.get(w.token);
    if (!list) return;
    const i = list.indexOf(w);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.watches.delete(w.token);
  }

  /** Called by Watch.close(): forget locally, then UNWATCH while connected. */
  async unregister(w: WatchImpl): Promise<void> {
    const wasRegistered = this.watches.get(w.token)?.includes(w) ?? false;
    this.forget(w);
    if (!wasRegistered || !this.t.connected) return;
    try {
      await this.t.request(wire.encodeUnwatch(w.path, w.token), 'unwatch', w.path, parseAck);
    } catch (err) {
      // Gone already (ENOENT) or disconnected meanwhile: the watch is dead either way.
      if (isXsErrno(err, 'ENOENT') || err instanceof XenStoreDisconnectedError) return;
      throw err;
    }
  }

  async getDomainPath(domid: number): Promise<string> {
    validateDomid(domid);
    return this.t.request(wire.encodeGetDomainPath(domid), 'getDomainPath', undefined, wire.parseDomainPath);
  }

  async introduce(domid: number, mfn: bigint | number, port: number): Promise<void> {
    validateDomid(domid);
    validateMfn(mfn);
    validateU32(port, 'port');
    await this.t.request(wire.encodeIntroduce(domid, mfn, port), 'introduce', undefined, parseAck);
  }

  async release(domid: number): Promise<void> {
    validateDomid(domid);
    await this.t.request(wire.encodeRelease(domid), 'release', undefined, parseAck);
  }

  async isIntroduced(domid: number): Promise<boolean> {
    validateDomid(domid);
    return this.t.request(
      wire.encodeIsDomainIntroduced(domid),
      'isIntroduced',
      undefined,
      wire.parseIsIntroduced,
    );
  }

  async setTarget(domid: number, target: number): Promise<void> {
    validateDomid(domid);
    validateDomid(target, 'target');
    await this.t.request(wire.encodeSetTarget(domid, target), 'setTarget', undefined, parseAck);
  }

  async resume(domid: number): Promise<void> {
    validateDomid(domid);
    await this.t.request(wire.encodeResume(domid), 'resume', undefined, parseAck);
  }

  /** RESET_WATCHES drops every watch of this connection server-side; local watches end too. */
  async resetWatches(): Promise<void> {
    await this.t.request(wire.encodeResetWatches(), 'resetWatches', undefined, parseAck);
    const all = [...this.watches.values()].flat();
    this.watches.clear();
    for (const w of all) w.finish();
  }

  /** GET_FEATURE; a server without it (4.17 answers ENOSYS) reports no features: 0. */
  async getFeature(domid?: number): Promise<number> {
    if (domid !== undefined) validateDomid(domid);
    try {
      return await this.t.request(wire.encodeGetFeature(domid), 'getFeature', undefined, (p) =>
        wire.parseNumber(p, 'GET_FEATURE'),
      );
    } catch (err) {
      if (isXsErrno(err, 'ENOSYS')) return 0;
      throw err;
    }
  }

  /**
   * GET_QUOTA: asks for the quota names, then each value (for domid when given). A server
   * without GET_QUOTA (4.17 answers ENOSYS) gives an empty map.
   */
  async getQuota(domid?: number): Promise<Map<string, number>> {
    if (domid !== undefined) validateDomid(domid);
    try {
      const names = await this.t.request(wire.encodeGetQuota(), 'getQuota', undefined, (p) =>
        wire.splitStrings(p, 'GET_QUOTA').filter((s) => s !== ''),
      );
      const out = new Map<string, number>();
      for (const name of names) {
        const value = await this.t.request(wire.encodeGetQuota(domid, name), 'getQuota', name, (p) =>
          wire.parseNumber(p, 'GET_QUOTA'),
        );
        out.set(name, value);
      }
      return out;
    } catch (err) {
      if (isXsErrno(err, 'ENOSYS')) return new Map();
      throw err;
    }
  }

  onDisconnect(cb: (err: Error) => void): () => void {
    return this.t.onDisconnect(cb);
  }

  async close(): Promise<void> {
    const all = [...this.watches.values()].flat();
    this.watches.clear();
    for (const w of all) w.finish();
    await this.t.close();
  }

  /** Requests in flight and queued (for tests and metrics). */
  get pendingCount(): number {
    return this.t.inFlightCount + this.t.queuedCount;
  }
}

function jitter(baseMs: number, attempt: number): number {
  // Full jitter over an exponential window, capped so a retry loop never sleeps long.
  const window = Math.min(baseMs * 2 ** (attempt - 1), 250);
  return Math.random() * window;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
