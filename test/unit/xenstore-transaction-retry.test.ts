// Specification of runTransaction(), the retry loop both transports share: commit once on
// success, retry EAGAIN (at commit or from inside fn) a bounded number of times, abort and
// rethrow anything else, end each attempt's handle; the capped, jittered backoff; and the
// XsOpsBase helpers its handles share (ended guard, tryRead, exists).

import { describe, expect, it } from 'vitest';
import { XenStoreError, XenStoreInputError } from '../../src/xenstore/errors.js';
import { XsOpsBase } from '../../src/xenstore/ops-base.js';
import {
  backoffDelay,
  runTransaction,
  type TransactionCalls,
  type TransactionHandle,
} from '../../src/xenstore/transaction-retry.js';
import type { Perm } from '../../src/xenstore/types.js';

/** A handle whose reads answer from a map; writes and the rest are not needed here. */
class MapOps extends XsOpsBase implements TransactionHandle {
  constructor(
    readonly txId: number,
    private readonly data: Map<string, string>,
  ) {
    super();
  }
  end(): void {
    this.ended = true;
  }
  read(path: string): Promise<Buffer> {
    return this.readString(path).then((s) => Buffer.from(s));
  }
  readString(path: string): Promise<string> {
    try {
      this.checkPath(path);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    const v = this.data.get(path);
    if (v === 'EACCES') return Promise.reject(new XenStoreError('EACCES', 'read', path));
    return v === undefined ? Promise.reject(new XenStoreError('ENOENT', 'read', path)) : Promise.resolve(v);
  }
  write(): Promise<void> {
    return Promise.reject(new Error('not used'));
  }
  mkdir(): Promise<void> {
    return Promise.reject(new Error('not used'));
  }
  rm(): Promise<void> {
    return Promise.reject(new Error('not used'));
  }
  directory(): Promise<string[]> {
    return Promise.reject(new Error('not used'));
  }
  getPerms(): Promise<Perm[]> {
    return Promise.reject(new Error('not used'));
  }
  setPerms(): Promise<void> {
    return Promise.reject(new Error('not used'));
  }
}

/** Scripted transport: commit answers come from `commits` (then succeed); logs every call. */
function scripted(commits: (Error | undefined)[] = []): { calls: TransactionCalls; log: string[] } {
  const log: string[] = [];
  let next = 1;
  const data = new Map([['/k', 'v']]);
  const calls: TransactionCalls = {
    start: () => {
      log.push(`start ${next}`);
      return Promise.resolve(next++);
    },
    bind: (txId) => new MapOps(txId, data),
    end: (txId, commit) => {
      log.push(`${commit ? 'commit' : 'abort'} ${txId}`);
      const err = commit ? commits.shift() : undefined;
      return err ? Promise.reject(err) : Promise.resolve();
    },
  };
  return { calls, log };
}

const eagain = (): XenStoreError => new XenStoreError('EAGAIN', 'transaction_commit');
const fast = { backoffMs: 0 };

describe('runTransaction', () => {
  it('runs fn once on its own transaction and commits it', async () => {
    const { calls, log } = scripted();
    const ids: number[] = [];
    const out = await runTransaction(
      calls,
      async (tx) => {
        ids.push((tx as MapOps).txId);
        return tx.readString('/k');
      },
      fast,
      undefined,
    );
    expect(out).toBe('v');
    expect(ids).toEqual([1]);
    expect(log).toEqual(['start 1', 'commit 1']);
  });

  it('EAGAIN at commit runs fn again on a fresh transaction; the old handle is ended', async () => {
    const { calls, log } = scripted([eagain(), eagain()]);
    const handles: MapOps[] = [];
    await runTransaction(calls, async (tx) => void handles.push(tx as MapOps), fast, undefined);
    expect(log).toEqual(['start 1', 'commit 1', 'start 2', 'commit 2', 'start 3', 'commit 3']);
    await expect(handles[0]?.readString('/k')).rejects.toBeInstanceOf(XenStoreInputError);
  });

  it('EAGAIN from inside fn aborts and retries', async () => {
    const { calls, log } = scripted();
    let runs = 0;
    const out = await runTransaction(
      calls,
      async () => {
        if (++runs === 1) throw new XenStoreError('EAGAIN', 'read', '/k');
        return runs;
      },
      fast,
      undefined,
    );
    expect(out).toBe(2);
    expect(log).toEqual(['start 1', 'abort 1', 'start 2', 'commit 2']);
  });

  it('after maxAttempts EAGAINs at commit, throws XenStoreError EAGAIN (op transaction)', async () => {
    const { calls, log } = scripted([eagain(), eagain(), eagain()]);
    const err = await runTransaction(calls, async () => 0, { maxAttempts: 3, backoffMs: 0 }, undefined).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(XenStoreError);
    expect(err).toMatchObject({ errno: 'EAGAIN', op: 'transaction' });
    expect(log.filter((l) => l.startsWith('start'))).toHaveLength(3);
  });

  it('per-call options win over the client defaults, which win over 10 attempts', async () => {
    const many = (): (Error | undefined)[] => Array.from({ length: 20 }, eagain);
    const a = scripted(many());
    await expect(runTransaction(a.calls, async () => 0, fast, { maxAttempts: 2 })).rejects.toThrow(/EAGAIN/);
    expect(a.log.filter((l) => l.startsWith('start'))).toHaveLength(2);
    const b = scripted(many());
    await expect(
      runTransaction(b.calls, async () => 0, { maxAttempts: 4, backoffMs: 0 }, { maxAttempts: 2 }),
    ).rejects.toThrow(/EAGAIN/);
    expect(b.log.filter((l) => l.startsWith('start'))).toHaveLength(4);
    const c = scripted(many());
    await expect(runTransaction(c.calls, async () => 0, fast, undefined)).rejects.toThrow(/EAGAIN/);
    expect(c.log.filter((l) => l.startsWith('start'))).toHaveLength(10);
  });

  it('another error from fn aborts once and is rethrown as it is; an abort failure is ignored', async () => {
    const { calls, log } = scripted();
    calls.end = (txId, commit) => {
      log.push(`${commit ? 'commit' : 'abort'} ${txId}`);
      return Promise.reject(new Error('abort failed too'));
    };
    const boom = new Error('boom');
    await expect(
      runTransaction(
        calls,
        async () => {
          throw boom;
        },
        fast,
        undefined,
      ),
    ).rejects.toBe(boom);
    expect(log).toEqual(['start 1', 'abort 1']);
  });

  it('another error at commit is rethrown without retry', async () => {
    const denied = new XenStoreError('EACCES', 'transaction_commit');
    const { calls, log } = scripted([denied]);
    await expect(runTransaction(calls, async () => 0, fast, undefined)).rejects.toBe(denied);
    expect(log).toEqual(['start 1', 'commit 1']);
  });
});

describe('backoffDelay', () => {
  it('is full jitter over base * 2^(attempt-1), capped at 250 ms', () => {
    expect(backoffDelay(2, 1, () => 1)).toBe(2);
    expect(backoffDelay(2, 4, () => 1)).toBe(16);
    expect(backoffDelay(2, 4, () => 0.5)).toBe(8);
    expect(backoffDelay(2, 20, () => 1)).toBe(250);
    expect(backoffDelay(0, 5, () => 1)).toBe(0);
  });
});

describe('XsOpsBase', () => {
  const ops = (): MapOps =>
    new MapOps(
      0,
      new Map([
        ['/k', 'v'],
        ['/secret', 'EACCES'],
      ]),
    );

  it('tryRead: the value, undefined for ENOENT, other errors thrown', async () => {
    const o = ops();
    expect(await o.tryRead('/k')).toBe('v');
    expect(await o.tryRead('/missing')).toBeUndefined();
    await expect(o.tryRead('/secret')).rejects.toMatchObject({ errno: 'EACCES' });
  });

  it('exists: true, false for ENOENT, other errors thrown', async () => {
    const o = ops();
    expect(await o.exists('/k')).toBe(true);
    expect(await o.exists('/missing')).toBe(false);
    await expect(o.exists('/secret')).rejects.toMatchObject({ errno: 'EACCES' });
  });

  it('checkPath refuses a bad path and an ended handle with XenStoreInputError', async () => {
    const o = ops();
    await expect(o.readString('relative//bad')).rejects.toBeInstanceOf(XenStoreInputError);
    o.end();
    await expect(o.tryRead('/k')).rejects.toMatchObject({ field: 'tx' });
    await expect(o.exists('/k')).rejects.toMatchObject({ field: 'tx' });
  });
});
