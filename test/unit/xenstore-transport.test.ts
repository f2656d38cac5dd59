// Specification of the socket transport against a scripted in-process fake server (no
// xenstored): req_id matching and wrap-around, the in-flight cap, back-pressure, timeouts, and
// that a dropped connection or a protocol breach rejects EVERY pending call and watch.

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SocketXenStore } from '../../src/xenstore/client.js';
import {
  XenStoreDisconnectedError,
  XenStoreError,
  XenStoreInputError,
  XenStoreProtocolError,
  XenStoreTimeoutError,
} from '../../src/xenstore/errors.js';
import { SocketTransport } from '../../src/xenstore/socket-transport.js';
import { XsType, encodeRead, parseAck, parseValue } from '../../src/xenstore/wire.js';
import { FakeServer, frame, type Req } from './xenstore-fake-server.js';

let dir = '';
let fake: FakeServer;
const opened: SocketTransport[] = [];

async function open(opts: Parameters<typeof SocketTransport.connect>[1] = {}): Promise<SocketTransport> {
  const t = await SocketTransport.connect(fake.socketPath, opts);
  opened.push(t);
  return t;
}

beforeEach(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'xs-transport-'));
  fake = new FakeServer(path.join(dir, 'socket'));
  await fake.listen();
});

afterEach(async () => {
  for (const t of opened.splice(0)) await t.close();
  await fake.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('SocketTransport', () => {
  it('matches out-of-order replies by req_id', async () => {
    const held: Req[] = [];
    fake.onRequest = (r, sock) => {
      held.push(r);
      if (held.length === 3) {
        for (const h of held.reverse()) {
          sock.write(frame(XsType.READ, h.reqId, 0, h.payload.toString('latin1').replace('\0', '!')));
        }
      }
    };
    const t = await open();
    const got = await Promise.all(
      ['/a', '/b', '/c'].map((p) => t.request(encodeRead(p), 'read', p, (b) => b.toString())),
    );
    expect(got).toEqual(['/a!', '/b!', '/c!']);
  });

  it('wraps req_id around 2^32 and never reuses one in flight', async () => {
    const t = await open({ firstReqId: 0xfffffffe });
    await Promise.all([0, 1, 2, 3].map(() => t.request(encodeRead('/x'), 'read', '/x', parseValue)));
    expect(fake.seen.map((r) => r.reqId)).toEqual([0xfffffffe, 0xffffffff, 0, 1]);
  });

  it('turns ERROR replies into XenStoreError with op and path', async () => {
    fake.onRequest = (r, sock) => sock.write(frame(XsType.ERROR, r.reqId, 0, 'ENOENT\0'));
    const t = await open();
    const err = await t.request(encodeRead('/nope'), 'read', '/nope', parseValue).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(XenStoreError);
    expect(err).toMatchObject({ errno: 'ENOENT', op: 'read', path: '/nope' });
    expect(t.connected).toBe(true);
  });

  it('caps the requests in flight; the others wait and all complete', async () => {
    let outstanding = 0;
    let maxOutstanding = 0;
    fake.onRequest = (r, sock) => {
      outstanding++;
      maxOutstanding = Math.max(maxOutstanding, outstanding);
      setTimeout(() => {
        outstanding--;
        sock.write(frame(XsType.READ, r.reqId, 0, 'v'));
      }, 1);
    };
    const t = await open({ maxInFlight: 8 });
    const calls = Array.from({ length: 100 }, () => t.request(encodeRead('/x'), 'read', '/x', parseValue));
    expect(t.inFlightCount).toBe(8);
    expect(t.queuedCount).toBe(92);
    await Promise.all(calls);
    expect(maxOutstanding).toBe(8);
    expect(fake.seen).toHaveLength(100);
  });

  it('waits for drain when the socket is full, then sends everything', async () => {
    fake.onRequest = (r, sock) => sock.write(frame(XsType.WRITE, r.reqId, 0, 'OK\0'));
    const t = await open({ maxInFlight: 100000 });
    await new Promise((r) => setTimeout(r, 20));
    const server = fake.conns[0];
    expect(server).toBeDefined();
    server?.pause();
    const big = (): Buffer => {
      const f = frame(XsType.WRITE, 0, 0, Buffer.concat([Buffer.from('/k\0'), Buffer.alloc(4000, 0x61)]));
      return f;
    };
    const calls = Array.from({ length: 800 }, () => t.request(big(), 'write', '/k', parseAck));
    await new Promise((r) => setTimeout(r, 50));
    // 3 MB cannot fit in the socket buffers: the rest waits in our queue, not in Node's.
    expect(t.queuedCount).toBeGreaterThan(0);
    server?.resume();
    await Promise.all(calls);
    expect(fake.seen).toHaveLength(800);
  });

  it('rejects every pending call with XenStoreDisconnectedError when the server goes away', async () => {
    fake.onRequest = () => undefined; // never answers
    const t = await open({ maxInFlight: 4 });
    let heard: Error | undefined;
    t.onDisconnect((e) => (heard = e));
    const calls = Array.from({ length: 10 }, () =>
      t.request(encodeRead('/x'), 'read', '/x', parseValue).then(
        () => 'resolved',
        (e: unknown) => e,
      ),
    );
    await new Promise((r) => setTimeout(r, 20));
    for (const c of fake.conns) c.destroy();
    const results = await Promise.all(calls);
    for (const r of results) expect(r).toBeInstanceOf(XenStoreDisconnectedError);
    expect(heard).toBeInstanceOf(XenStoreDisconnectedError);
    expect(t.connected).toBe(false);
    await expect(t.request(encodeRead('/x'), 'read', '/x', parseValue)).rejects.toBeInstanceOf(
      XenStoreDisconnectedError,
    );
  });

  const breaches: Array<[string, (r: Req) => Buffer]> = [
    [
      'an oversized frame',
      (r) => Buffer.concat([frame(XsType.READ, r.reqId, 0, ''), Buffer.alloc(0)]).fill(0xff, 12, 16),
    ],
    ['an unknown type', (r) => frame(20, r.reqId, 0, 'OK\0')],
    ['an ERROR without NUL', (r) => frame(XsType.ERROR, r.reqId, 0, 'ENOENT')],
    ['a reply for an unknown req_id', (r) => frame(XsType.READ, r.reqId + 1000, 0, 'v')],
    ['a reply of the wrong type', (r) => frame(XsType.WRITE, r.reqId, 0, 'OK\0')],
    ['a malformed event', () => frame(XsType.WATCH_EVENT, 0, 0, '/x')],
  ];
  for (const [name, reply] of breaches) {
    it(`fails every pending call with XenStoreProtocolError on ${name}`, async () => {
      let first = true;
      fake.onRequest = (r, sock) => {
        if (first) {
          first = false;
          setTimeout(() => sock.write(reply(r)), 10);
        }
      };
      const t = await open();
      const calls = Array.from({ length: 5 }, () =>
        t.request(encodeRead('/x'), 'read', '/x', parseValue).catch((e: unknown) => e),
      );
      const results = await Promise.all(calls);
      for (const r of results) expect(r).toBeInstanceOf(XenStoreProtocolError);
      expect(t.connected).toBe(false);
    });
  }

  it('times out a call, drops its late reply and keeps serving', async () => {
    let n = 0;
    fake.onRequest = (r, sock) => {
      const delay = n++ === 0 ? 80 : 0;
      setTimeout(() => sock.write(frame(XsType.READ, r.reqId, 0, 'v')), delay);
    };
    const t = await open();
    const slow = t.request(encodeRead('/slow'), 'read', '/slow', parseValue, 20);
    await expect(slow).rejects.toBeInstanceOf(XenStoreTimeoutError);
    await new Promise((r) => setTimeout(r, 100));
    expect(t.connected).toBe(true);
    await expect(t.request(encodeRead('/x'), 'read', '/x', parseValue)).resolves.toEqual(Buffer.from('v'));
  });

  it('close() rejects pending calls and does not fire onDisconnect', async () => {
    fake.onRequest = () => undefined;
    const t = await open();
    let heard = false;
    t.onDisconnect(() => (heard = true));
    const pending = t.request(encodeRead('/x'), 'read', '/x', parseValue).catch((e: unknown) => e);
    await t.close();
    expect(await pending).toBeInstanceOf(XenStoreDisconnectedError);
    expect(heard).toBe(false);
  });

  it('connect() to a missing socket rejects with XenStoreDisconnectedError', async () => {
    await expect(SocketTransport.connect(path.join(dir, 'missing'))).rejects.toBeInstanceOf(
      XenStoreDisconnectedError,
    );
  });
});

describe('SocketXenStore over the fake server', () => {
  it('refuses bad input before sending anything', async () => {
    const xs = new SocketXenStore(await open());
    await expect(xs.read('/a//b')).rejects.toBeInstanceOf(XenStoreInputError);
    await expect(xs.write('/a', Buffer.alloc(5000))).rejects.toMatchObject({ field: 'value' });
    await expect(xs.getDomainPath(-1)).rejects.toMatchObject({ field: 'domid' });
    await expect(xs.watch('@bogus')).rejects.toBeInstanceOf(XenStoreInputError);
    await expect(xs.setPerms('/a', [])).rejects.toMatchObject({ field: 'perms' });
    expect(fake.seen).toHaveLength(0);
  });

  it('routes events by token, survives a throwing callback, and ends watches on disconnect', async () => {
    fake.onRequest = (r, sock) => {
      sock.write(frame(r.type, r.reqId, 0, 'OK\0'));
      if (r.type === XsType.WATCH) sock.write(frame(XsType.WATCH_EVENT, 0, 0, r.payload));
    };
    const xs = new SocketXenStore(await open());
    const seenA: string[] = [];
    const a = await xs.watch('/a', {
      token: 'ta',
      onEvent: (ev) => {
        seenA.push(ev.path);
        throw new Error('callback bug');
      },
    });
    const b = await xs.watch('/b', { token: 'tb' });
    let errorsB = 0;
    const it = b[Symbol.asyncIterator]();
    expect(await it.next()).toEqual({ value: { path: '/b', token: 'tb' }, done: false });
    fake.conns[0]?.write(frame(XsType.WATCH_EVENT, 0, 0, '/a/x\0ta\0'));
    fake.conns[0]?.write(frame(XsType.WATCH_EVENT, 0, 0, '/b/y\0tb\0'));
    expect(await it.next()).toEqual({ value: { path: '/b/y', token: 'tb' }, done: false });
    expect(seenA).toEqual(['/a', '/a/x']);
    expect(xs.connected).toBe(true);
    const next = it.next().catch((e: unknown) => {
      errorsB++;
      return e;
    });
    for (const c of fake.conns) c.destroy();
    expect(await next).toBeInstanceOf(XenStoreDisconnectedError);
    expect(errorsB).toBe(1);
    await a.close();
    await b.close();
  });
});
