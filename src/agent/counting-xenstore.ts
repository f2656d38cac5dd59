// A XenStore wrapper that counts the requests its user sends (and the watch events it gets):
// how the bench and the tests prove that an idle agent causes no XenStore traffic at all.
import type { TransactionOptions, Watch, WatchOptions, XenStore, XsOps } from '../xenstore/types.js';

export interface XsCounts {
  /** Requests sent (each read, write, watch, transaction start/commit, ... counts one). */
  ops: number;
  /** Watch events delivered. */
  events: number;
}

function countOps(target: XsOps, counts: XsCounts): XsOps {
  const c = <A extends unknown[], R>(fn: (...a: A) => Promise<R>) => {
    return (...a: A): Promise<R> => {
      counts.ops++;
      return fn(...a);
    };
  };
  return {
    read: c((p: string) => target.read(p)),
    readString: c((p: string) => target.readString(p)),
    tryRead: c((p: string) => target.tryRead(p)),
    write: c((p: string, v: Buffer | string) => target.write(p, v)),
    mkdir: c((p: string) => target.mkdir(p)),
    rm: c((p: string) => target.rm(p)),
    directory: c((p: string) => target.directory(p)),
    exists: c((p: string) => target.exists(p)),
    getPerms: c((p: string) => target.getPerms(p)),
    setPerms: c((p: string, perms: Parameters<XsOps['setPerms']>[1]) => target.setPerms(p, perms)),
  };
}

export function countingXenStore(
  inner: XenStore,
  counts: XsCounts = { ops: 0, events: 0 },
): XenStore & { counts: XsCounts } {
  const ops = countOps(inner, counts);
  const wrapped: XenStore & { counts: XsCounts } = {
    ...ops,
    counts,
    transaction<T>(fn: (tx: XsOps) => Promise<T>, opts?: TransactionOptions): Promise<T> {
      counts.ops += 2; // TRANSACTION_START + TRANSACTION_END (per attempt; retries are rare)
      return inner.transaction((tx) => fn(countOps(tx, counts)), opts);
    },
    watch(path: string, opts: WatchOptions = {}): Promise<Watch> {
      counts.ops++;
      const onEvent = opts.onEvent;
      return inner.watch(path, {
        ...opts,
        onEvent: (ev) => {
          counts.events++;
          onEvent?.(ev);
        },
      });
    },
    getDomainPath: (d) => (counts.ops++, inner.getDomainPath(d)),
    introduce: (d, m, p) => (counts.ops++, inner.introduce(d, m, p)),
    release: (d) => (counts.ops++, inner.release(d)),
    isIntroduced: (d) => (counts.ops++, inner.isIntroduced(d)),
    setTarget: (d, t) => (counts.ops++, inner.setTarget(d, t)),
    resume: (d) => (counts.ops++, inner.resume(d)),
    resetWatches: () => (counts.ops++, inner.resetWatches()),
    getFeature: (d) => (counts.ops++, inner.getFeature(d)),
    getQuota: (d) => (counts.ops++, inner.getQuota(d)),
    get connected() {
      return inner.connected;
    },
    onDisconnect: (cb) => inner.onDisconnect(cb),
    close: () => inner.close(),
  };
  return wrapped;
}
