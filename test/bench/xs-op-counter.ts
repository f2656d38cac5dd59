// Wraps a XenStore so every request it sends is counted and logged by operation name, on the
// client side: the bench reports XenStore operations per suspend, tests check which ops ran.
// A transaction counts as its start, its inner operations and its end (EAGAIN re-runs included).
import type { Watch, XenStore, XsOps } from '../../src/xenstore/types.js';

const XS_OPS = [
  'read',
  'readString',
  'tryRead',
  'write',
  'mkdir',
  'rm',
  'directory',
  'exists',
  'getPerms',
  'setPerms',
] as const;
const XS_OTHER = [
  'getDomainPath',
  'introduce',
  'release',
  'isIntroduced',
  'setTarget',
  'resume',
  'resetWatches',
  'getFeature',
  'getQuota',
] as const;

export interface OpCounter {
  readonly xs: XenStore;
  /** Operation names in call order; inner transaction ops are prefixed "tx:". */
  readonly log: string[];
  count(): number;
  reset(): void;
}

function wrapOps<T extends XsOps>(target: T, log: string[], prefix: string): T {
  return new Proxy(target, {
    get(obj, prop, receiver) {
      const v: unknown = Reflect.get(obj, prop, receiver);
      if (typeof v !== 'function') return v;
      const fn = v as (...a: unknown[]) => unknown;
      if (prop === 'watch') {
        // WATCH is one request; the UNWATCH sent by Watch.close() is another.
        return async (...args: unknown[]) => {
          log.push(`${prefix}watch`);
          const w = (await fn.apply(obj, args)) as Watch;
          const close = w.close.bind(w);
          let counted = false;
          return Object.assign(Object.create(w) as Watch, {
            close: () => {
              if (!counted) log.push(`${prefix}unwatch`);
              counted = true;
              return close();
            },
            [Symbol.asyncIterator]: () => w[Symbol.asyncIterator](),
          });
        };
      }
      if (
        (XS_OPS as readonly (string | symbol)[]).includes(prop) ||
        (XS_OTHER as readonly (string | symbol)[]).includes(prop)
      ) {
        return (...args: unknown[]) => {
          log.push(`${prefix}${String(prop)}`);
          return fn.apply(obj, args);
        };
      }
      if (prop === 'transaction') {
        return (body: (tx: XsOps) => Promise<unknown>, opts?: unknown) =>
          fn.call(
            obj,
            async (tx: XsOps) => {
              log.push('transaction_start');
              try {
                return await body(wrapOps(tx, log, 'tx:'));
              } finally {
                log.push('transaction_end');
              }
            },
            opts,
          );
      }
      return fn.bind(obj);
    },
  });
}

export function countXenStoreOps(xs: XenStore): OpCounter {
  const log: string[] = [];
  return {
    xs: wrapOps(xs, log, ''),
    log,
    count: () => log.length,
    reset: () => {
      log.length = 0;
    },
  };
}
