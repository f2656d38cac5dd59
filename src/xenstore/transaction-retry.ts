// The transaction loop both transports run: start, run fn on a handle bound to the id, commit;
// EAGAIN (a conflict, at commit or from an operation inside) retries after a jittered,
// exponentially growing pause, a bounded number of times. The transport supplies the three calls.

import { XenStoreError, isXsErrno } from './errors.js';
import type { TransactionOptions, XsOps } from './types.js';

/** A transaction's handle: end() makes further use of it throw. */
export interface TransactionHandle extends XsOps {
  end(): void;
}

/** What a transport does for one transaction attempt. */
export interface TransactionCalls {
  start(): Promise<number>;
  bind(txId: number): TransactionHandle;
  end(txId: number, commit: boolean): Promise<void>;
}

/** Longest pause between attempts, ms: a retry loop never sleeps long. */
const MAX_BACKOFF_WINDOW_MS = 250;

export async function runTransaction<T>(
  calls: TransactionCalls,
  fn: (tx: XsOps) => Promise<T>,
  opts: TransactionOptions,
  defaults: TransactionOptions | undefined,
): Promise<T> {
  const maxAttempts = Math.max(1, opts.maxAttempts ?? defaults?.maxAttempts ?? 10);
  const backoffMs = Math.max(0, opts.backoffMs ?? defaults?.backoffMs ?? 2);
  for (let attempt = 1; ; attempt++) {
    const txId = await calls.start();
    const tx = calls.bind(txId);
    let result: T;
    try {
      result = await fn(tx);
    } catch (err) {
      tx.end();
      await calls.end(txId, false).catch(() => undefined);
      // EAGAIN from an operation inside the transaction is a conflict too: retry it.
      if (isXsErrno(err, 'EAGAIN') && attempt < maxAttempts) {
        await sleep(backoffDelay(backoffMs, attempt));
        continue;
      }
      throw err;
    }
    tx.end();
    try {
      await calls.end(txId, true);
      return result;
    } catch (err) {
      if (!isXsErrno(err, 'EAGAIN')) throw err;
      if (attempt >= maxAttempts) throw new XenStoreError('EAGAIN', 'transaction');
      await sleep(backoffDelay(backoffMs, attempt));
    }
  }
}

/** Full jitter over an exponential window (base * 2^(attempt-1)), capped. */
export function backoffDelay(baseMs: number, attempt: number, random: () => number = Math.random): number {
  const window = Math.min(baseMs * 2 ** (attempt - 1), MAX_BACKOFF_WINDOW_MS);
  return random() * window;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
