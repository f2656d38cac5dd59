// The XenStore interface through libxenstore (koffi): the transport for hosts where xenstored is
// reachable only through /dev/xen/xenbus (stub-domain xenstored); it works on a socket too.
// Requests use one handle (ffi-handle.ts: bounded sync on sockets, pool calls on devices);
// watches use a second handle whose events a blocking xs_read_watch loop delivers from the pool.
//
// Why a second handle for watches: libxenstore starts a reader thread on a handle's first
// xs_watch, after which every reply on that handle is passed between threads (slower), and that
// thread's reads must not carry the request handle's receive timeout. The blocking
// xs_read_watch (rather than polling xs_fileno()) is libxenstore's own wake-up for a dropped
// connection: the reader thread sets fd = -1 and broadcasts, so a dead xenstored is noticed at
// once. Node exposes no readiness-only poll of a foreign fd, and reading the xs_fileno() pipe
// ourselves would steal the byte libxenstore's blocking clear loop waits for (a hang).
// Cost: one libuv pool thread per client while it has watches; close() wakes it.

import koffi from 'koffi';
import {
  loadLibXenStore,
  type LibXenStore,
  type NativePointer,
  type OutUint,
} from '../../native-bindings/libxenstore.js';
import { XenStoreDisconnectedError, XenStoreError, XenStoreInputError, isXsErrno } from './errors.js';
import { XsHandle } from './ffi-handle.js';
import {
  validateDomid,
  validateMfn,
  validatePath,
  validateToken,
  validateU32,
  validateValue,
  validateWatchPath,
} from './paths.js';
import { formatPerms } from './perms.js';
import type {
  Access,
  Perm,
  TransactionOptions,
  Watch,
  WatchEvent,
  WatchOptions,
  XenStore,
  XsOps,
} from './types.js';

export interface FfiXenStoreOptions {
  /** Socket or device (e.g. /dev/xen/xenbus); default: libxenstore's discovery (XENSTORED_PATH...). */
  path?: string;
  /** libxenstore to load; default $DEVMIGRATE_LIBXENSTORE, else libxenstore.so.4. */
  libPath?: string;
  /** 'auto' (default): bounded synchronous calls on a socket, pool calls on a device. 'async': pool always. */
  mode?: 'auto' | 'async';
  /** Bound of a synchronous call (the longest the event loop can stall), ms. Default 500. */
  syncTimeoutMs?: number;
  /** Deadline of a pool call, ms (0: none). Default 30000. */
  callTimeoutMs?: number;
  /** Attempts/backoff defaults for transaction(). */
  transaction?: TransactionOptions;
}

const ACCESS_BITS: Record<Access, number> = { n: 0, r: 1, w: 2, b: 3 };
const BITS_ACCESS: readonly Access[] = ['n', 'r', 'w', 'b'];
/** Token of the watch close() registers to wake a blocked xs_read_watch on a device. */
const WAKE_TOKEN_PREFIX = 'devmigrate-ffi-wake-';
let tokenCounter = 0;

/** Copies a libxenstore string array (char ** in one malloc'ed block) and frees the block. */
function takeStrings(lib: LibXenStore, p: NativePointer, n: number): string[] {
  try {
    return n === 0 ? [] : (koffi.decode(p, 'const char *', n) as string[]);
  } finally {
    lib.free(p);
  }
}

/**
 * Copies `len` bytes of a libxenstore result and frees it. memcpy into a Buffer costs ~0.3 us;
 * koffi.view() (an external ArrayBuffer per call) measured 7-9 us, a tenth of a read.
 */
function takeBytes(lib: LibXenStore, p: NativePointer, len: number): Buffer {
  try {
    const out = Buffer.allocUnsafe(len);
    if (len > 0) lib.memcpy(out, p, len);
    return out;
  } finally {
    lib.free(p);
  }
}

const notNull = (r: NativePointer | null): boolean => r !== null;
const isTrue = (r: boolean): boolean => r;
const toVoid = (): void => undefined;

/** Operations bound to one transaction id (0: none). */
class FfiOps implements XsOps {
  protected ended = false;

  constructor(
    protected readonly lib: LibXenStore,
    protected readonly h: XsHandle,
    readonly txId: number,
  ) {}

  protected check(): void {
    if (this.ended) throw new XenStoreInputError('transaction handle used after the transaction ended', 'tx');
  }

  end(): void {
    this.ended = true;
  }

  // read/readString/write are the hot path: plain methods returning the handle's promise (no
  // async frame of their own); bad input still comes back as a rejected promise.
  read(path: string): Promise<Buffer> {
    return this.readAs(path, (b) => b);
  }

  readString(path: string): Promise<string> {
    return this.readAs(path, (b) => b.toString('utf8'));
  }

  private readAs<T>(path: string, as: (b: Buffer) => T): Promise<T> {
    try {
      this.check();
      validatePath(path);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    const len: OutUint = [0];
    return this.h.run('read', path, this.lib.xs_read, [this.h.ptr, this.txId, path, len], notNull, (p) =>
      as(takeBytes(this.lib, p as NativePointer, len[0])),
    );
  }

  async tryRead(path: string): Promise<string | undefined> {
    try {
      return await this.readString(path);
    } catch (err) {
      if (isXsErrno(err, 'ENOENT')) return undefined;
      throw err;
    }
  }

  write(path: string, value: Buffer | string): Promise<void> {
    let bytes: Buffer;
    try {
      this.check();
      validatePath(path);
      bytes = validateValue(path, value);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    return this.h.run(
      'write',
      path,
      this.lib.xs_write,
      [this.h.ptr, this.txId, path, bytes, bytes.length],
      isTrue,
      toVoid,
    );
  }

  async mkdir(path: string): Promise<void> {
    this.check();
    validatePath(path);
    await this.h.run('mkdir', path, this.lib.xs_mkdir, [this.h.ptr, this.txId, path], isTrue, toVoid);
  }

  async rm(path: string): Promise<void> {
    this.check();
    validatePath(path);
    await this.h.run('rm', path, this.lib.xs_rm, [this.h.ptr, this.txId, path], isTrue, toVoid);
  }

  /** xs_directory() itself falls back to DIRECTORY_PART when the list is too big (E2BIG). */
  async directory(path: string): Promise<string[]> {
    this.check();
    validatePath(path);
    const num: OutUint = [0];
    return this.h.run(
      'directory',
      path,
      this.lib.xs_directory,
      [this.h.ptr, this.txId, path, num],
      notNull,
      (p) => takeStrings(this.lib, p as NativePointer, num[0]),
    );
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
    const num: OutUint = [0];
    return this.h.run(
      'getPerms',
      path,
      this.lib.xs_get_permissions,
      [this.h.ptr, this.txId, path, num],
      notNull,
      (p) => {
        try {
          const raw = koffi.decode(p, this.lib.permsType, num[0]) as { id: number; perms: number }[];
          return raw.map((e) => ({ domid: e.id, access: BITS_ACCESS[e.perms & 3] ?? 'n' }));
        } finally {
          this.lib.free(p as NativePointer);
        }
      },
    );
  }

  async setPerms(path: string, perms: readonly Perm[]): Promise<void> {
    this.check();
    validatePath(path);
    formatPerms(perms); // validates every entry
    const structs = perms.map((p) => ({ id: p.domid, perms: ACCESS_BITS[p.access] }));
    await this.h.run(
      'setPerms',
      path,
      this.lib.xs_set_permissions,
      [this.h.ptr, this.txId, path, structs, structs.length],
      isTrue,
      toVoid,
    );
  }
}

/** A registered watch: events go to onEvent and/or a queue read by async iteration. */
class FfiWatch implements Watch {
  private readonly queue: WatchEvent[] = [];
  private waiter:
    { resolve: (r: IteratorResult<WatchEvent>) => void; reject: (e: Error) => void } | undefined;
  private error: Error | undefined;
  private closed = false;
  private iterating = false;

  constructor(
    private readonly client: FfiXenStore,
    readonly path: string,
    readonly token: string,
    private readonly onEvent: ((ev: WatchEvent) => void) | undefined,
    private readonly onError: ((err: Error) => void) | undefined,
  ) {}

  /** The event path is this watch's path or below it (special "@" paths: exact match). */
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
        // A throwing callback must not stop the event loop that serves every other watch.
      }
      if (!this.iterating) return;
    }
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.resolve({ value: ev, done: false });
    } else this.queue.push(ev);
  }

  kill(err: Error): void {
    if (this.closed || this.error) return;
    this.error = err;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.reject(err);
    }
    try {
      this.onError?.(err);
    } catch {
      // Same reason as in deliver().
    }
  }

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

export class FfiXenStore extends FfiOps implements XenStore {
  private readonly watches = new Map<string, FfiWatch[]>();
  private watchHandle: Promise<XsHandle> | undefined;
  /** The watch handle whose xs_read_watch loop is running (a retired one's loop just ends). */
  private pumpFor: XsHandle | undefined;
  private closing = false;
  private lostError: Error | undefined;
  private readonly disconnectCbs = new Set<(err: Error) => void>();

  /** Use openFfiXenStore(). */
  constructor(
    lib: LibXenStore,
    h: XsHandle,
    private readonly opts: Required<Pick<FfiXenStoreOptions, 'mode' | 'syncTimeoutMs' | 'callTimeoutMs'>> &
      FfiXenStoreOptions,
  ) {
    super(lib, h, 0);
  }

  /** 'sync' or 'async': how requests run (for tests, benchmarks and logs). */
  get callMode(): string {
    return this.h.mode;
  }

  get connected(): boolean {
    return !this.closing && this.lostError === undefined && this.h.connected;
  }

  /** The connection died (either handle): fail watches, tell listeners, free both handles. */
  lost(err: Error): void {
    if (this.closing || this.lostError) return;
    this.lostError = err;
    const all = [...this.watches.values()].flat();
    this.watches.clear();
    for (const w of all) w.kill(err);
    for (const cb of [...this.disconnectCbs]) {
      try {
        cb(err);
      } catch {
        // A listener's failure must not stop the others.
      }
    }
    void this.releaseHandles();
  }

  private released: Promise<void> | undefined;

  /** Closes both handles once, whoever asks first (close() or a lost connection). */
  private releaseHandles(): Promise<void> {
    this.released ??= this.doRelease();
    return this.released;
  }

  private async doRelease(): Promise<void> {
    const w = this.watchHandle ? await this.watchHandle.catch(() => undefined) : undefined;
    if (w) {
      await this.retireWatchHandle(w);
    }
    await this.h.close();
  }

  /** Device handles cannot be shut down: a watch's initial event wakes the blocked reader. */
  private async wakeWatchLoop(w: XsHandle): Promise<void> {
    const token = `${WAKE_TOKEN_PREFIX}${process.pid}-${++tokenCounter}`;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      w
        .run(
          'watch',
          '@introduceDomain',
          this.lib.xs_watch,
          [w.ptr, '@introduceDomain', token],
          isTrue,
          toVoid,
          true,
        )
        .catch(() => undefined),
      new Promise((r) => (timer = setTimeout(r, 2000))),
    ]);
    clearTimeout(timer);
  }

  async transaction<T>(fn: (tx: XsOps) => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
    const maxAttempts = Math.max(1, opts.maxAttempts ?? this.opts.transaction?.maxAttempts ?? 10);
    const backoffMs = Math.max(0, opts.backoffMs ?? this.opts.transaction?.backoffMs ?? 2);
    for (let attempt = 1; ; attempt++) {
      const txId = await this.h.run(
        'transaction_start',
        undefined,
        this.lib.xs_transaction_start,
        [this.h.ptr],
        (id: number) => id !== 0,
        (id: number) => id,
      );
      const tx = new FfiOps(this.lib, this.h, txId);
      let result: T;
      try {
        result = await fn(tx);
      } catch (err) {
        tx.end();
        await this.endTransaction(txId, false).catch(() => undefined);
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
    await this.h.run(
      commit ? 'transaction_commit' : 'transaction_abort',
      undefined,
      this.lib.xs_transaction_end,
      [this.h.ptr, txId, !commit],
      isTrue,
      toVoid,
    );
  }

  private getWatchHandle(): Promise<XsHandle> {
    this.watchHandle ??= XsHandle.open(
      this.lib,
      {
        path: this.opts.path,
        mode: 'async',
        syncTimeoutMs: this.opts.syncTimeoutMs,
        callTimeoutMs: this.opts.callTimeoutMs,
        onLost: (err) => this.lost(err),
      },
      true,
    );
    return this.watchHandle;
  }

  /** The blocking xs_read_watch loop: one pool call at a time, re-armed after each event. */
  private pump(w: XsHandle): void {
    if (this.pumpFor === w) return;
    this.pumpFor = w;
    const next = (): void => {
      const num: OutUint = [0];
      w.run(
        'read_watch',
        undefined,
        this.lib.xs_read_watch,
        [w.ptr, num],
        notNull,
        (p) => takeStrings(this.lib, p as NativePointer, num[0]),
        true,
      ).then(
        (strings) => {
          if (this.pumpFor !== w) return; // retired by resetWatches()/close(): drop the rest
          const [path, token] = strings;
          if (path !== undefined && token !== undefined) this.route(path, token);
          if (this.closing || this.lostError) this.pumpFor = undefined;
          else next();
        },
        (err: unknown) => {
          if (this.pumpFor !== w) return;
          this.pumpFor = undefined;
          if (!this.closing) this.lost(err instanceof Error ? err : new Error(String(err)));
        },
      );
    };
    next();
  }

  /** Stops a watch handle's reader (shutdown, or a wake-up event on a device) and closes it. */
  private async retireWatchHandle(w: XsHandle): Promise<void> {
    const running = this.pumpFor === w;
    if (running) this.pumpFor = undefined;
    if (running && !w.unblock()) await this.wakeWatchLoop(w);
    await w.close();
  }

  private route(path: string, token: string): void {
    const list = this.watches.get(token);
    if (list === undefined) return; // late event after unwatch, or our own wake-up watch
    const ev: WatchEvent = { path, token };
    if (list.length === 1) list[0]?.deliver(ev);
    else for (const w of list) if (w.matches(path)) w.deliver(ev);
  }

  async watch(path: string, opts: WatchOptions = {}): Promise<Watch> {
    validateWatchPath(path);
    const token = validateToken(opts.token ?? `xsf${process.pid}-${++tokenCounter}`);
    if (!this.connected) throw new XenStoreDisconnectedError('not connected to xenstored');
    const wh = await this.getWatchHandle();
    const w = new FfiWatch(this, path, token, opts.onEvent, opts.onError);
    // Registered before WATCH is sent: the initial event may arrive before the ack returns.
    const list = this.watches.get(token);
    if (list) list.push(w);
    else this.watches.set(token, [w]);
    try {
      await wh.run('watch', path, this.lib.xs_watch, [wh.ptr, path, token], isTrue, toVoid);
    } catch (err) {
      this.forget(w);
      throw err;
    }
    this.pump(wh);
    return w;
  }

  private forget(w: FfiWatch): void {
    const list = this.watches.get(w.token);
    if (!list) return;
    const i = list.indexOf(w);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.watches.delete(w.token);
  }

  /** Called by Watch.close(): forget locally, then UNWATCH while connected. */
  async unregister(w: FfiWatch): Promise<void> {
    const wasRegistered = this.watches.get(w.token)?.includes(w) ?? false;
    this.forget(w);
    if (!wasRegistered || !this.connected || !this.watchHandle) return;
    const wh = await this.watchHandle;
    try {
      await wh.run('unwatch', w.path, this.lib.xs_unwatch, [wh.ptr, w.path, w.token], isTrue, toVoid);
    } catch (err) {
      if (isXsErrno(err, 'ENOENT') || err instanceof XenStoreDisconnectedError) return;
      throw err;
    }
  }

  async getDomainPath(domid: number): Promise<string> {
    validateDomid(domid);
    return this.h.run(
      'getDomainPath',
      undefined,
      this.lib.xs_get_domain_path,
      [this.h.ptr, domid],
      notNull,
      (p) => {
        try {
          return koffi.decode(p, 'char', -1) as string;
        } finally {
          this.lib.free(p as NativePointer);
        }
      },
    );
  }

  async introduce(domid: number, mfn: bigint | number, port: number): Promise<void> {
    validateDomid(domid);
    validateMfn(mfn);
    validateU32(port, 'port');
    await this.h.run(
      'introduce',
      undefined,
      this.lib.xs_introduce_domain,
      [this.h.ptr, domid, mfn, port],
      isTrue,
      toVoid,
    );
  }

  async release(domid: number): Promise<void> {
    validateDomid(domid);
    await this.h.run('release', undefined, this.lib.xs_release_domain, [this.h.ptr, domid], isTrue, toVoid);
  }

  /**
   * xs_is_domain_introduced() returns false both for "F" and for an error. In sync mode errno
   * (cleared before the call) tells them apart; a pool thread's errno cannot be cleared first,
   * so there a false from a live connection is taken as "F".
   */
  async isIntroduced(domid: number): Promise<boolean> {
    validateDomid(domid);
    const sync = this.h.mode === 'sync';
    return this.h.run(
      'isIntroduced',
      undefined,
      this.lib.xs_is_domain_introduced,
      [this.h.ptr, domid],
      (r: boolean) => r || (sync ? koffi.errno() === 0 : this.h.fdAlive()),
      (r: boolean) => r,
    );
  }

  async setTarget(domid: number, target: number): Promise<void> {
    validateDomid(domid);
    validateDomid(target, 'target');
    await this.h.run(
      'setTarget',
      undefined,
      this.lib.xs_set_target,
      [this.h.ptr, domid, target],
      isTrue,
      toVoid,
    );
  }

  async resume(domid: number): Promise<void> {
    validateDomid(domid);
    await this.h.run('resume', undefined, this.lib.xs_resume_domain, [this.h.ptr, domid], isTrue, toVoid);
  }

  /**
   * libxenstore 4.17 has no xs_reset_watches(). Watches live on their own connection here, so
   * closing that connection is what RESET_WATCHES does to them: xenstored drops every watch of
   * a closed connection. The next watch() opens a fresh one.
   */
  async resetWatches(): Promise<void> {
    if (!this.connected) throw new XenStoreDisconnectedError('resetWatches: not connected to xenstored');
    const all = [...this.watches.values()].flat();
    this.watches.clear();
    for (const w of all) w.finish();
    const old = this.watchHandle;
    this.watchHandle = undefined;
    const w = old ? await old.catch(() => undefined) : undefined;
    if (w) await this.retireWatchHandle(w);
  }

  /**
   * libxenstore 4.17 has no GET_FEATURE call; a 4.17 xenstored answers ENOSYS to it anyway,
   * which this interface reports as "no features" (as the socket client does).
   */
  async getFeature(domid?: number): Promise<number> {
    if (domid !== undefined) validateDomid(domid);
    if (!this.connected) throw new XenStoreDisconnectedError('getFeature: not connected to xenstored');
    return 0;
  }

  /** libxenstore 4.17 has no GET_QUOTA call: no quotas known, as on a server answering ENOSYS. */
  async getQuota(domid?: number): Promise<Map<string, number>> {
    if (domid !== undefined) validateDomid(domid);
    if (!this.connected) throw new XenStoreDisconnectedError('getQuota: not connected to xenstored');
    return new Map();
  }

  onDisconnect(cb: (err: Error) => void): () => void {
    this.disconnectCbs.add(cb);
    return () => {
      this.disconnectCbs.delete(cb);
    };
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const all = [...this.watches.values()].flat();
    this.watches.clear();
    for (const w of all) w.finish();
    await this.releaseHandles();
  }
}

/** Opens a libxenstore connection (see FfiXenStoreOptions); rejects with a typed error. */
export async function openFfiXenStore(opts: FfiXenStoreOptions = {}): Promise<XenStore> {
  return openFfiXenStoreClient(opts);
}

/** Same as openFfiXenStore(), typed as the class (callMode, for tests and benchmarks). */
export async function openFfiXenStoreClient(opts: FfiXenStoreOptions = {}): Promise<FfiXenStore> {
  const lib = loadLibXenStore(opts.libPath);
  const full = {
    ...opts,
    mode: opts.mode ?? 'auto',
    syncTimeoutMs: opts.syncTimeoutMs ?? 500,
    callTimeoutMs: opts.callTimeoutMs ?? 30_000,
  };
  if (opts.path !== undefined && (opts.path === '' || opts.path.includes('\0'))) {
    throw new XenStoreInputError('path must be a non-empty string without NUL', 'path');
  }
  // The handle reports a lost connection to the client built around it just below.
  const owner: { client?: FfiXenStore } = {};
  const h = await XsHandle.open(lib, {
    path: opts.path,
    mode: full.mode,
    syncTimeoutMs: full.syncTimeoutMs,
    callTimeoutMs: full.callTimeoutMs,
    onLost: (err) => owner.client?.lost(err),
  });
  owner.client = new FfiXenStore(lib, h, full);
  return owner.client;
}

function jitter(baseMs: number, attempt: number): number {
  return Math.random() * Math.min(baseMs * 2 ** (attempt - 1), 250);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
