// One libxenstore connection (struct xs_handle *): opens it on a chosen path, runs calls either
// synchronously under a socket receive timeout or on libuv's pool, maps errno to typed errors,
// and can wake a call blocked on a hung xenstored so that close() and process exit never hang.
//
// Why two call modes. Measured here (2 loaded cores, real xenstored, paired rounds against a C
// xs_read loop, medians): C 50-56 us/read; a koffi `.async` call adds ~35-40 us of thread
// hand-offs (pool queue + uv_async wake-up; an async no-op costs 33 us, a sync one 2 us), so
// sequential reads on the pool run at 0.52-0.55x the C loop. A persistent worker thread driven
// through SharedArrayBuffer/Atomics (waitAsync, or a bounded Atomics.wait) pays the same two
// hand-offs and was no faster (76-120 us vs 80). Batching cannot help sequential awaits, and
// libxenstore serialises requests per handle (request_mutex): nothing to pipeline. Synchronous
// reads through this client run at 0.87-0.98x the C loop. So on a SOCKET calls are synchronous
// but BOUNDED: SO_RCVTIMEO/SO_SNDTIMEO make the kernel end any read/write waiting longer than
// syncTimeoutMs (default 500 ms); libxenstore then drops the connection and the caller gets a
// XenStoreTimeoutError (and onDisconnect). The event loop thus stalls at most syncTimeoutMs, and
// only when xenstored hangs; after that, new handles on that path use the pool for 60 s, and a
// run of fast calls yields to the event loop every SLICE_MS. The price: a xenstored slower than
// the bound costs the connection (the owner reconnects), where a pool call would just wait.
// A DEVICE (/dev/xen/xenbus, stub-domain xenstored) cannot be bounded that way (its read ends
// only on a reply or a signal, which libxenstore retries), so calls there always run on the
// pool, one at a time per handle, with a JS-side deadline (callTimeoutMs).

import { readlinkSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import koffi from 'koffi';
import {
  SHUT_RDWR,
  SOL_SOCKET,
  SO_RCVTIMEO,
  SO_SNDTIMEO,
  TIMEVAL_SIZE,
  type LibXenStore,
  type NativeFn,
  type NativePointer,
} from '../../native-bindings/libxenstore.js';
import {
  XenStoreDisconnectedError,
  XenStoreError,
  XenStoreTimeoutError,
  XS_ERRNO_NAMES,
  toXsErrno,
} from './errors.js';

/** 'sync': bounded synchronous calls (sockets only); 'async': every call on libuv's pool. */
export type CallMode = 'sync' | 'async';

/** Longest run of back-to-back synchronous calls before the event loop gets a turn, ms. */
const SLICE_MS = 4;

// errno number -> name, for the names xenstored and libxenstore use.
const ERRNO_NAMES = new Map<number, string>();
for (const [name, num] of Object.entries(koffi.os.errno)) {
  if (!ERRNO_NAMES.has(num) || (XS_ERRNO_NAMES as readonly string[]).includes(name))
    ERRNO_NAMES.set(num, name);
}
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}
const EAGAIN = koffi.os.errno.EAGAIN ?? 11;

// xs_open() takes its path from XENSTORED_PATH only; opens are serialised so that two opens on
// different paths never see each other's value.
let openChain: Promise<unknown> = Promise.resolve();

// Handles not yet closed. process.exit() waits for libuv's pool threads, so a thread blocked in
// xs_read_watch (or in a call to a hung xenstored) would hang the exit forever: an 'exit' hook
// wakes every socket handle's blocked thread with shutdown(2). (A device cannot be woken.)
const liveHandles = new Set<XsHandle>();
let exitHookInstalled = false;
function track(h: XsHandle): void {
  liveHandles.add(h);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const live of liveHandles) live.unblock();
  });
}

/** Paths whose last synchronous call timed out: new handles there start in async mode. */
const recentSyncTimeouts = new Map<string, number>();
const SYNC_QUARANTINE_MS = 60_000;

export interface HandleOptions {
  /** Socket or device path; undefined: libxenstore's own discovery. */
  path: string | undefined;
  /** 'auto': sync on a socket, async on a device. */
  mode: 'auto' | 'async';
  syncTimeoutMs: number;
  /** Deadline of an async call (0: none). */
  callTimeoutMs: number;
  /** Called once when the connection is found dead (not after close()). */
  onLost: (err: Error) => void;
}

export class XsHandle {
  private callMode: CallMode;
  private alive = true;
  private closed = false;
  private closing: Promise<boolean> | undefined;
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  private chain: Promise<unknown> = Promise.resolve();
  private sliceStart = performance.now();
  private yielding: Promise<void> | undefined;

  private constructor(
    private readonly lib: LibXenStore,
    readonly ptr: NativePointer,
    /** The daemon connection's fd (struct xs_handle's first member) at open time. */
    readonly fd: number,
    /** readlink of /proc/self/fd/<fd> at open time: proves the fd was not reused. */
    private readonly fdLink: string,
    private readonly opts: HandleOptions,
    wantSync: boolean,
  ) {
    this.callMode = wantSync && this.isSocket ? 'sync' : 'async';
    if (this.callMode === 'sync') this.armSocketTimeouts();
    track(this);
  }

  get mode(): CallMode {
    return this.callMode;
  }

  get isSocket(): boolean {
    return this.fdLink.startsWith('socket:');
  }

  get connected(): boolean {
    return this.alive && !this.closed;
  }

  /** Opens a handle. Never blocks the event loop: xs_open runs on the pool, with a deadline. */
  static async open(lib: LibXenStore, opts: HandleOptions, forWatches = false): Promise<XsHandle> {
    const key = opts.path ?? '';
    const quarantined = (recentSyncTimeouts.get(key) ?? 0) > Date.now();
    const wantSync = !forWatches && opts.mode === 'auto' && !quarantined;
    // The next open waits for this one's native call to finish (not for its JS deadline): only
    // then is XENSTORED_PATH restored and free for the next path.
    let nativeDone: () => void = () => undefined;
    const previous = openChain;
    openChain = new Promise<void>((r) => (nativeDone = r));
    await previous;
    let ptr: NativePointer;
    try {
      ptr = await openNative(lib, opts.path, opts.callTimeoutMs, nativeDone);
    } catch (err) {
      // A deadline leaves the native call running (it calls nativeDone itself); any other
      // failure means it is over.
      if (!(err instanceof XenStoreTimeoutError)) nativeDone();
      throw err;
    }
    // struct xs_handle starts with `int fd` (xs.c, every release since 2005).
    const fd = koffi.decode(ptr, 'int') as number;
    let link = '';
    try {
      link = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      // Unknown fd kind: treated as a device (never shut down, never given socket options).
    }
    return new XsHandle(lib, ptr, fd, link, opts, wantSync);
  }

  private armSocketTimeouts(): void {
    const ms = this.opts.syncTimeoutMs;
    const tv = { tv_sec: Math.floor(ms / 1000), tv_usec: (ms % 1000) * 1000 };
    for (const opt of [SO_RCVTIMEO, SO_SNDTIMEO]) {
      if (this.lib.setsockopt_timeval(this.fd, SOL_SOCKET, opt, tv, TIMEVAL_SIZE) !== 0) {
        // Without a bound a synchronous call could hang the event loop: use the pool instead.
        this.callMode = 'async';
        return;
      }
    }
  }

  /** h->fd now: -1 once libxenstore has dropped the connection. Only while the handle lives. */
  private currentFd(): number {
    return koffi.decode(this.ptr, 'int') as number;
  }

  /** The connection is still up as far as libxenstore knows (its fd is not -1). */
  fdAlive(): boolean {
    return !this.closed && this.currentFd() >= 0;
  }

  /**
   * Runs one libxenstore call. `ok` tells success from the return value; `convert` turns a
   * successful result into JS (and frees what libxenstore allocated) at once, on the main thread.
   * `concurrent` calls bypass the per-handle queue (the blocking xs_read_watch loop).
   */
  run<A extends unknown[], R, T>(
    op: string,
    path: string | undefined,
    fn: NativeFn<A, R>,
    args: A,
    ok: (r: R) => boolean,
    convert: (r: R) => T,
    concurrent = false,
  ): Promise<T> {
    if (!this.connected) return Promise.reject(this.deadError(op));
    if (this.callMode === 'sync') {
      // Fast path: the call right here, one settled promise, no async frames (they cost ~5 us
      // a read). Every SLICE_MS the event loop gets a turn first; later calls queue behind it.
      if (this.yielding === undefined && performance.now() - this.sliceStart <= SLICE_MS) {
        try {
          return Promise.resolve(this.callSync(op, path, fn, args, ok, convert));
        } catch (err) {
          return Promise.reject(err as Error);
        }
      }
      return this.runSyncAfterYield(op, path, fn, args, ok, convert);
    }
    if (concurrent) return this.runAsync(op, path, fn, args, ok, convert, 0);
    const p = this.chain.then(() => this.runAsync(op, path, fn, args, ok, convert, this.opts.callTimeoutMs));
    this.chain = p.catch(() => undefined);
    return p;
  }

  private callSync<A extends unknown[], R, T>(
    op: string,
    path: string | undefined,
    fn: NativeFn<A, R>,
    args: A,
    ok: (r: R) => boolean,
    convert: (r: R) => T,
  ): T {
    koffi.errno(0);
    const r = fn(...args);
    if (ok(r)) return convert(r);
    throw this.failure(koffi.errno(), op, path);
  }

  private async runSyncAfterYield<A extends unknown[], R, T>(
    op: string,
    path: string | undefined,
    fn: NativeFn<A, R>,
    args: A,
    ok: (r: R) => boolean,
    convert: (r: R) => T,
  ): Promise<T> {
    while (this.yielding !== undefined || performance.now() - this.sliceStart > SLICE_MS)
      await this.yieldToLoop();
    if (!this.connected) throw this.deadError(op);
    return this.callSync(op, path, fn, args, ok, convert);
  }

  private yieldToLoop(): Promise<void> {
    this.yielding ??= new Promise<void>((resolve) =>
      setImmediate(() => {
        this.sliceStart = performance.now();
        this.yielding = undefined;
        resolve();
      }),
    );
    return this.yielding;
  }

  private runAsync<A extends unknown[], R, T>(
    op: string,
    path: string | undefined,
    fn: NativeFn<A, R>,
    args: A,
    ok: (r: R) => boolean,
    convert: (r: R) => T,
    timeoutMs: number,
  ): Promise<T> {
    if (!this.connected) return Promise.reject(this.deadError(op));
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          settled = true;
          const err = new XenStoreTimeoutError(op, timeoutMs);
          reject(err);
          // The call's fate is unknown (a write may still land): the connection is unusable.
          this.lose(new XenStoreDisconnectedError(`libxenstore ${op} timed out`, { cause: err }));
          this.unblock();
        }, timeoutMs);
      }
      this.inFlight++;
      fn.async(...args, (err: unknown, r: R) => {
        const errno = koffi.errno(); // koffi sets the worker's errno only during this callback
        if (timer) clearTimeout(timer);
        let outcome: { v: T } | { e: Error };
        if (err !== null && err !== undefined) {
          outcome = { e: err instanceof Error ? err : new Error(String(err)) };
        } else if (ok(r)) {
          try {
            outcome = { v: convert(r) }; // always: it frees libxenstore's memory
          } catch (e) {
            outcome = { e: e as Error };
          }
        } else {
          outcome = { e: this.closed ? this.deadError(op) : this.failure(errno, op, path) };
        }
        this.inFlight--;
        if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
        if (settled) return;
        if ('v' in outcome) resolve(outcome.v);
        else reject(outcome.e);
      });
    });
  }

  /** errno of a failed call -> the typed error; a dropped connection marks the handle dead. */
  private failure(errno: number, op: string, path: string | undefined): Error {
    const fdNow = this.closed ? -1 : this.currentFd();
    if (fdNow < 0 || !this.alive) {
      let err: Error;
      if (this.mode === 'sync' && errno === EAGAIN) {
        recentSyncTimeouts.set(this.opts.path ?? '', Date.now() + SYNC_QUARANTINE_MS);
        err = new XenStoreTimeoutError(op, this.opts.syncTimeoutMs);
        this.lose(
          new XenStoreDisconnectedError(`xenstored did not answer ${op} within the bound`, { cause: err }),
        );
      } else {
        err = new XenStoreDisconnectedError(
          `libxenstore lost the xenstored connection (${op}: ${errnoName(errno)})`,
        );
        this.lose(err);
      }
      return err;
    }
    return new XenStoreError(toXsErrno(errnoName(errno)), op, path);
  }

  private deadError(op: string): Error {
    return new XenStoreDisconnectedError(
      this.closed ? `${op}: the libxenstore client is closed` : `${op}: the xenstored connection is lost`,
    );
  }

  private lose(err: Error): void {
    if (!this.alive) return;
    this.alive = false;
    if (!this.closed) this.opts.onLost(err);
  }

  /**
   * Wakes a thread blocked on this connection: shutdown(2) of the socket ends its read. Only
   * when the fd is still the one we opened (libxenstore closes it on errors; the number may be
   * reused). Devices cannot be woken this way; returns whether it did anything.
   */
  unblock(): boolean {
    if (this.closed || !this.isSocket || this.currentFd() !== this.fd) return false;
    let link = '';
    try {
      link = readlinkSync(`/proc/self/fd/${this.fd}`);
    } catch {
      return false;
    }
    if (link !== this.fdLink) return false;
    return this.lib.shutdown(this.fd, SHUT_RDWR) === 0;
  }

  /** Resolves when no call is in flight, or false after timeoutMs. */
  private waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  /**
   * Closes the handle: wakes blocked calls (socket), waits for them (bounded), then xs_close().
   * A call that cannot be woken (device + hung xenstored) keeps the handle: freeing it under a
   * running call would be a use-after-free, so it is leaked instead and false is returned.
   */
  close(wakeTimeoutMs = 2000): Promise<boolean> {
    // One close per handle, however many callers: a second xs_close() would be a double free.
    this.closing ??= this.doClose(wakeTimeoutMs);
    return this.closing;
  }

  private async doClose(wakeTimeoutMs: number): Promise<boolean> {
    this.alive = false;
    if (this.inFlight > 0) this.unblock();
    const idle = await this.waitIdle(wakeTimeoutMs);
    this.closed = true;
    liveHandles.delete(this);
    if (!idle) return false;
    this.lib.xs_close(this.ptr);
    return true;
  }
}

function openNative(
  lib: LibXenStore,
  path: string | undefined,
  timeoutMs: number,
  nativeDone: () => void,
): Promise<NativePointer> {
  return new Promise((resolve, reject) => {
    // xs_open() reads XENSTORED_PATH on the pool thread; it is set only for that call (and only
    // when it differs), then restored.
    const saved = process.env.XENSTORED_PATH;
    const swap = path !== undefined && path !== saved;
    if (swap) process.env.XENSTORED_PATH = path;
    let timedOut = false;
    const timer =
      timeoutMs > 0
        ? setTimeout(() => {
            timedOut = true;
            reject(new XenStoreTimeoutError(`open ${path ?? '(default)'}`, timeoutMs));
          }, timeoutMs)
        : undefined;
    lib.xs_open.async(0, (err: unknown, ptr: NativePointer | null) => {
      const errno = koffi.errno();
      if (swap) {
        if (saved === undefined) delete process.env.XENSTORED_PATH;
        else process.env.XENSTORED_PATH = saved;
      }
      nativeDone();
      if (timer) clearTimeout(timer);
      if (timedOut) {
        if (ptr) lib.xs_close(ptr);
        return;
      }
      if (err !== null && err !== undefined) reject(err instanceof Error ? err : new Error(String(err)));
      else if (!ptr) {
        reject(
          new XenStoreDisconnectedError(
            `xs_open: cannot connect to xenstored at ${path ?? '(libxenstore default)'}: ${errnoName(errno)}`,
          ),
        );
      } else resolve(ptr);
    });
  });
}
