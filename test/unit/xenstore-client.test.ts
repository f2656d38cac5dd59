// Specification of SocketXenStore's own logic against a scripted fake server (no xenstored):
// transaction retry/abort rules, DIRECTORY_PART restarts, ENOSYS tolerance, watch routing.

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SocketXenStore } from '../../src/xenstore/client.js';
import { XenStoreError, XenStoreInputError } from '../../src/xenstore/errors.js';
import { SocketTransport } from '../../src/xenstore/socket-transport.js';
import type { XsOps } from '../../src/xenstore/types.js';
import { XsType } from '../../src/xenstore/wire.js';
import { FakeServer, frame, type Req } from './xenstore-fake-server.js';

let dir = '';
let fake: FakeServer;
let xs: SocketXenStore;

const strings = (r: Req): string[] => r.payload.toString('latin1').split('\0');

beforeEach(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'xs-client-'));
  fake = new FakeServer(path.join(dir, 'socket'));
  await fake.listen();
  xs = new SocketXenStore(await SocketTransport.connect(fake.socketPath));
});

afterEach(async () => {
  await xs.close();
  await fake.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A fake xenstored whose commits answer EAGAIN `conflicts` times, then OK. */
function transactionServer(conflicts: number): { ends: string[] } {
  const ends: string[] = [];
  let nextTx = 7;
  fake.onRequest = (r, sock) => {
    if (r.type === XsType.TRANSACTION_START) {
      sock.write(frame(r.type, r.reqId, 0, `${nextTx++}\0`));
    } else if (r.type === XsType.TRANSACTION_END) {
      const commit = strings(r)[0] === 'T';
      ends.push(`${r.txId}:${commit ? 'T' : 'F'}`);
      if (commit && conflicts-- > 0) sock.write(frame(XsType.ERROR, r.reqId, r.txId, 'EAGAIN\0'));
      else sock.write(frame(r.type, r.reqId, r.txId, 'OK\0'));
    } else if (r.type === XsType.READ) {
      sock.write(frame(r.type, r.reqId, r.txId, `tx${r.txId}`));
    } else {
      sock.write(frame(r.type, r.reqId, r.txId, 'OK\0'));
    }
  };
  return { ends };
}

describe('transaction()', () => {
  it('runs fn inside the transaction id and commits', async () => {
    const { ends } = transactionServer(0);
    const v = await xs.transaction((tx) => tx.readString('/a'));
    expect(v).toBe('tx7');
    expect(ends).toEqual(['7:T']);
    expect(fake.seen.find((r) => r.type === XsType.READ)?.txId).toBe(7);
  });

  it('retries on EAGAIN with a new transaction each time', async () => {
    const { ends } = transactionServer(2);
    let attempts = 0;
    const v = await xs.transaction(async (tx) => {
      attempts++;
      return tx.readString('/a');
    });
    expect(attempts).toBe(3);
    expect(v).toBe('tx9');
    expect(ends).toEqual(['7:T', '8:T', '9:T']);
  });

  it('throws XenStoreError EAGAIN after maxAttempts', async () => {
    const { ends } = transactionServer(100);
    const err = await xs
      .transaction(async (tx) => tx.write('/a', 'x'), { maxAttempts: 4, backoffMs: 0 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(XenStoreError);
    expect((err as XenStoreError).errno).toBe('EAGAIN');
    expect(ends).toHaveLength(4);
  });

  it('aborts with "F" when fn throws and rethrows the same error', async () => {
    const { ends } = transactionServer(0);
    const boom = new Error('boom');
    await expect(
      xs.transaction(async (tx) => {
        await tx.write('/a', 'x');
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(ends).toEqual(['7:F']);
  });

  it('refuses the handle after the transaction ended', async () => {
    transactionServer(0);
    let kept: XsOps | undefined;
    await xs.transaction(async (tx) => {
      kept = tx;
    });
    await expect(kept?.read('/a')).rejects.toBeInstanceOf(XenStoreInputError);
  });
});

describe('directory()', () => {
  it('falls back to DIRECTORY_PART on E2BIG and restarts when the generation changes', async () => {
    const offsets: string[] = [];
    let calls = 0;
    fake.onRequest = (r, sock) => {
      if (r.type === XsType.DIRECTORY) {
        sock.write(frame(XsType.ERROR, r.reqId, 0, 'E2BIG\0'));
        return;
      }
      const [, offset] = strings(r);
      offsets.push(offset ?? '?');
      calls++;
      // First pass: generation 1, then 2 at the second chunk -> start again at offset 0.
      const reply =
        calls === 1 ? '1\0a\0bb\0' : calls === 2 ? '2\0c\0\0' : offset === '0' ? '2\0a\0bb\0' : '2\0c\0\0';
      sock.write(frame(r.type, r.reqId, 0, reply));
    };
    expect(await xs.directory('/big')).toEqual(['a', 'bb', 'c']);
    expect(offsets).toEqual(['0', '5', '0', '5']);
  });
});

describe('ENOSYS tolerance', () => {
  it('getFeature() is 0 and getQuota() empty when the server lacks them', async () => {
    fake.onRequest = (r, sock) => sock.write(frame(XsType.ERROR, r.reqId, 0, 'ENOSYS\0'));
    expect(await xs.getFeature()).toBe(0);
    expect((await xs.getQuota(3)).size).toBe(0);
    expect(xs.connected).toBe(true);
  });

  it('getQuota() asks for the names, then each value for the domain', async () => {
    fake.onRequest = (r, sock) => {
      const s = strings(r);
      const reply = r.payload.length === 0 ? 'nodes\0watches\0' : s[1] === 'nodes' ? '1000\0' : '128\0';
      sock.write(frame(r.type, r.reqId, 0, reply));
    };
    expect([...(await xs.getQuota(3))]).toEqual([
      ['nodes', 1000],
      ['watches', 128],
    ]);
    expect(fake.seen.slice(1).map((r) => r.payload.toString('latin1'))).toEqual([
      '3\0nodes\0',
      '3\0watches\0',
    ]);
  });
});

describe('watch routing', () => {
  it('separates watches sharing a token by path, and drops events after close()', async () => {
    fake.onRequest = (r, sock) => sock.write(frame(r.type, r.reqId, 0, 'OK\0'));
    const a: string[] = [];
    const b: string[] = [];
    const wa = await xs.watch('/a', { token: 't', onEvent: (e) => a.push(e.path) });
    const wb = await xs.watch('/b', { token: 't', onEvent: (e) => b.push(e.path) });
    const sock = fake.conns[0];
    sock?.write(frame(XsType.WATCH_EVENT, 0, 0, '/a/x\0t\0'));
    sock?.write(frame(XsType.WATCH_EVENT, 0, 0, '/b\0t\0'));
    sock?.write(frame(XsType.WATCH_EVENT, 0, 0, '/ab\0t\0'));
    await xs.getDomainPath(1).catch(() => undefined); // a round trip: the events are in
    expect(a).toEqual(['/a/x']);
    expect(b).toEqual(['/b']);
    await wa.close();
    sock?.write(frame(XsType.WATCH_EVENT, 0, 0, '/a/y\0t\0'));
    await xs.getDomainPath(1).catch(() => undefined);
    expect(a).toEqual(['/a/x']);
    expect(fake.seen.filter((r) => r.type === XsType.UNWATCH).map((r) => strings(r).slice(0, 2))).toEqual([
      ['/a', 't'],
    ]);
    await wb.close();
  });
});
