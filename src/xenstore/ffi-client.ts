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
import { XenStoreDisconnectedError, XenStoreInputError } from './errors.js';
import { XsHandle } from './ffi-handle.js';
import { XsOpsBase } from './ops-base.js';
import {
  validateDomid,
  validateMfn,
  validateToken,
  validateU32,
  validateValue,
  validateWatchPath,
} from './paths.js';
import { formatPerms } from './perms.js';
import { runTransaction, type TransactionCalls, type TransactionHandle } from './transaction-retry.js';
import type { Access, Perm, TransactionOptions, Watch, WatchOptions, XenStore, XsOps } from './types.js';
import { QueuedWatch, type WatchOwner } from './watch-queue.js';
import { WatchRegistry, ignoreWatchGone, nextWatchToken } from './watch-registry.js';

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
class FfiOps extends XsOpsBase implements TransactionHandle {
  constructor(
    protected readonly lib: LibXenStore,
    protected readonly h: XsHandle,
    readonly txId: number,
  ) {
    super();
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
      this.checkPath(path);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    const len: OutUint = [0];
    return this.h.run('read', path, this.lib.xs_read, [this.h.ptr, this.txId, path, len], notNull, (p) =>
      as(takeBytes(this.lib, p as NativePointer, len[0])),
    );
  }

  write(path: string, value: Buffer | string): Promise<void> {
    let bytes: Buffer;
    try {
      this.checkPath(path);
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
    this.checkPath(path);
    await this.h.run('mkdir', path, this.lib.xs_mkdir, [this.h.ptr, this.txId, path], isTrue, toVoid);
  }

  async rm(path: string): Promise<void> {
    this.checkPath(path);
    await this.h.run('rm', path, this.lib.xs_rm, [this.h.ptr, this.txId, path], isTrue, toVoid);
  }

  /** xs_directory() itself falls back to DIRECTORY_PART when the list is too big (E2BIG). */
  async directory(path: string): Promise<string[]> {
    this.checkPath(path);
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

  async getPerms(path: string): Promise<Perm[]> {
    this.checkPath(path);
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
    this.checkPath(path);
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

export class FfiXenStore extends FfiOps implements XenStore, WatchOwner {
  private readonly watches = new WatchRegistry();
  private watchHandle: Promise<XsHandle> | undefined;
  /** The watch handle whose xs_read_watch loop is running (a retired one's loop just ends). */
  private pumpFor: XsHandle | undefined;
  private closing = false;
  private lostError: Error | undefined;
  private readonly disconnectCbs = new Set<(err: Error) => void>();
  /** The three calls runTransaction() needs, bound once to the request handle. */
  private readonly txCalls: TransactionCalls;

  /** Use openFfiXenStore(). */
  constructor(
    lib: LibXenStore,
    h: XsHandle,
    private readonly opts: Required<Pick<FfiXenStoreOptions, 'mode' | 'syncTimeoutMs' | 'callTimeoutMs'>> &
      FfiXenStoreOptions,
  ) {
    super(lib, h, 0);
    this.txCalls = {
      start: () =>
        h.run(
          'transaction_start',
          undefined,
          lib.xs_transaction_start,
          [h.ptr],
          (id: number) => id !== 0,
          (id: number) => id,
        ),
      bind: (txId) => new FfiOps(lib, h, txId),
      end: async (txId, commit) => {
        await h.run(
          commit ? 'transaction_commit' : 'transaction_abort',
          undefined,
          lib.xs_transaction_end,
          [h.ptr, txId, !commit],
          isTrue,
          toVoid,
        );
      },
    };
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
    for (const w of this.watches.takeAll()) w.kill(err);
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
    const token = nextWatchToken(WAKE_TOKEN_PREFIX);
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

  transaction<T>(fn: (tx: XsOps) => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
    return runTransaction(this.txCalls, fn, opts, this.opts.transaction);
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
          if (path !== undefined && token !== undefined) this.watches.route(path, token);
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

  async watch(path: string, opts: WatchOptions = {}): Promise<Watch> {
    validateWatchPath(path);
    const token = validateToken(opts.token ?? nextWatchToken('xsf'));
    if (!this.connected) throw new XenStoreDisconnectedError('not connected to xenstored');
    const wh = await this.getWatchHandle();
    const w = new QueuedWatch(this, path, token, opts.onEvent, opts.onError);
    await this.watches.register(w, () =>
      wh.run('watch', path, this.lib.xs_watch, [wh.ptr, path, token], isTrue, toVoid),
    );
    this.pump(wh);
    return w;
  }

  /** Called by Watch.close(): forget locally, then UNWATCH while connected. */
  async unregister(w: QueuedWatch): Promise<void> {
    if (!this.watches.release(w) || !this.connected || !this.watchHandle) return;
    const wh = await this.watchHandle;
    await wh
      .run('unwatch', w.path, this.lib.xs_unwatch, [wh.ptr, w.path, w.token], isTrue, toVoid)
      .catch(ignoreWatchGone);
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
    for (const w of this.watches.takeAll()) w.finish();
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
    for (const w of this.watches.takeAll()) w.finish();
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
