// Fuzzing of the XenStore client's wire side: random, truncated and corrupted xenstored replies
// into the pure codec (FrameDecoder and every reply parser) and through a real socket into the
// transport. Nothing may crash or hang: every frame is decoded or refused with a typed error,
// every call settles with a value or a typed error. Counts are printed (FUZZ_SCALE multiplies).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  XenStoreDisconnectedError,
  XenStoreError,
  XenStoreInputError,
  XenStoreProtocolError,
  XenStoreTimeoutError,
} from '../../src/xenstore/errors.js';
import { connectXenStore } from '../../src/xenstore/index.js';
import {
  FrameDecoder,
  parseAck,
  parseDirectory,
  parseDirectoryPart,
  parseError,
  parseGetPerms,
  parseIsIntroduced,
  parseNumber,
  parseQuotaList,
  parseString,
  parseTransactionId,
  parseWatchEvent,
  XsType,
} from '../../src/xenstore/wire.js';
import { seededRandom } from '../sim/virtual-clock.js';
import { FakeServer, frame, type Req } from './xenstore-fake-server.js';

const SCALE = Number(process.env['FUZZ_SCALE'] ?? 1);
const TYPED = [XenStoreProtocolError, XenStoreError, XenStoreInputError];
const typed = (err: unknown, kinds: readonly (new (...a: never[]) => Error)[]): boolean =>
  kinds.some((k) => err instanceof k);

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)] as T;
}
function bytes(r: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = r() < 0.2 ? 0 : Math.floor(r() * 256);
  return b;
}
const STRINGS = [
  '',
  'OK',
  '0',
  '1',
  '-1',
  '42',
  '4294967296',
  'T',
  'F',
  'n0',
  'b5',
  'r0\0w7',
  'x'.repeat(200),
  'a\0b\0',
  '\0',
  'EACCES',
  'ENOPE',
  '3 a b',
  'name 5',
];
/** A payload for a reply: strings joined by NULs, or random bytes. */
function payload(r: () => number): Buffer {
  if (r() < 0.3) return bytes(r, Math.floor(r() * 300));
  const parts = Array.from({ length: Math.floor(r() * 5) }, () => pick(r, STRINGS));
  return Buffer.from(parts.join('\0') + (r() < 0.7 ? '\0' : ''), 'latin1');
}
/** A frame as xenstored might (mis)send it. */
function randomFrame(r: () => number): Buffer {
  const type = r() < 0.85 ? pick(r, Object.values(XsType)) : Math.floor(r() * 40);
  const f = frame(type, Math.floor(r() * 2 ** 32), Math.floor(r() * 3), payload(r));
  const x = r();
  if (x < 0.05)
    f.writeUInt32LE(Math.floor(r() * 10_000), 12); // a lying length
  else if (x < 0.1) {
    const i = Math.floor(r() * f.length);
    f[i] = (f[i] ?? 0) ^ (1 << Math.floor(r() * 8)); // a flipped bit
  }
  return x < 0.15 ? f.subarray(0, Math.floor(r() * f.length)) : f; // truncated
}

const PARSERS: Record<number, (p: Buffer) => unknown> = {
  [XsType.DIRECTORY]: parseDirectory,
  [XsType.GET_PERMS]: parseGetPerms,
  [XsType.TRANSACTION_START]: parseTransactionId,
  [XsType.IS_DOMAIN_INTRODUCED]: parseIsIntroduced,
  [XsType.GET_DOMAIN_PATH]: (p) => parseString(p, 'GET_DOMAIN_PATH'),
  [XsType.DIRECTORY_PART]: parseDirectoryPart,
  [XsType.ERROR]: parseError,
  [XsType.WATCH_EVENT]: parseWatchEvent,
  [XsType.GET_QUOTA]: parseQuotaList,
  [XsType.GET_FEATURE]: (p) => parseNumber(p, 'GET_FEATURE'),
  [XsType.WRITE]: parseAck,
};

describe('wire codec fuzz', () => {
  it('random, truncated and corrupted streams: every frame decoded or refused with a typed error', () => {
    const r = seededRandom(20261129);
    const counts = { streams: 0, frames: 0, parsed: 0, refusedFrames: 0, refusedParses: 0 };
    for (let s = 0; s < 2000 * SCALE; s++) {
      counts.streams += 1;
      const stream = Buffer.concat(Array.from({ length: 1 + Math.floor(r() * 8) }, () => randomFrame(r)));
      const dec = new FrameDecoder((type, _reqId, _txId, p) => {
        counts.frames += 1;
        const parse = PARSERS[type] ?? ((x: Buffer) => x);
        try {
          parse(p);
          counts.parsed += 1;
        } catch (err) {
          if (!typed(err, TYPED)) throw new Error(`untyped error parsing type ${type}: ${String(err)}`);
          counts.refusedParses += 1;
        }
      });
      let off = 0;
      try {
        while (off < stream.length) {
          const n = 1 + Math.floor(r() * 64);
          dec.push(stream.subarray(off, off + n));
          off += n;
        }
      } catch (err) {
        if (!typed(err, TYPED)) throw err;
        counts.refusedFrames += 1;
        // Broken stays broken: the transport closes such a connection.
        expect(() => dec.push(Buffer.alloc(1))).toThrow(XenStoreProtocolError);
      }
    }
    console.log(`wire codec fuzz: ${JSON.stringify(counts)}`);
    expect(counts.frames).toBeGreaterThan(1000 * SCALE);
    expect(counts.refusedFrames).toBeGreaterThan(0);
    expect(counts.refusedParses).toBeGreaterThan(0);
  });
});

describe('socket transport fuzz', () => {
  let dir: string;
  let server: FakeServer;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'xs-fuzz-'));
    server = new FakeServer(join(dir, 'sock'));
    await server.listen();
  });
  afterAll(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('a xenstored answering garbage: every call settles, with a value or a typed error', async () => {
    const r = seededRandom(4242);
    const counts = { sessions: 0, calls: 0, values: 0, byError: {} as Record<string, number> };
    server.onRequest = (q: Req, sock) => {
      const x = r();
      if (x < 0.4) {
        // The right answer.
        const ok = q.type === XsType.READ ? 'v' : q.type === XsType.DIRECTORY ? 'a\0b\0' : 'OK\0';
        sock.write(frame(q.type, q.reqId, q.txId, q.type === XsType.TRANSACTION_START ? '7\0' : ok));
      } else if (x < 0.55) sock.write(frame(q.type, q.reqId, q.txId, payload(r)));
      else if (x < 0.65)
        sock.write(
          frame(
            XsType.ERROR,
            q.reqId,
            q.txId,
            `${pick(r, ['EACCES', 'ENOENT', 'EAGAIN', 'EINVAL', 'WHAT'])}\0`,
          ),
        );
      else if (x < 0.72)
        sock.write(frame(q.type, q.reqId + 1, q.txId, 'OK\0')); // a reply to no one
      else if (x < 0.8) sock.write(randomFrame(r));
      else if (x < 0.85) sock.write(frame(XsType.WATCH_EVENT, 0, 0, payload(r)));
      else if (x < 0.9) {
        sock.write(frame(q.type, q.reqId, q.txId, 'OK\0').subarray(0, 10));
        sock.destroy();
      } else if (x < 0.95) sock.destroy();
      // else: no answer at all (the call's timeout)
    };
    for (let s = 0; s < 60 * SCALE; s++) {
      counts.sessions += 1;
      let xs;
      try {
        xs = await connectXenStore({ path: server.socketPath, timeoutMs: 150 });
      } catch (err) {
        expect(typed(err, [XenStoreDisconnectedError, XenStoreTimeoutError])).toBe(true);
        continue;
      }
      const calls: Promise<unknown>[] = [];
      for (let i = 0; i < 12; i++) {
        const op = pick(r, ['read', 'write', 'directory', 'getPerms', 'rm', 'tx', 'watch'] as const);
        const p =
          op === 'read'
            ? xs.read('/a')
            : op === 'write'
              ? xs.write('/a', 'x')
              : op === 'directory'
                ? xs.directory('/a')
                : op === 'getPerms'
                  ? xs.getPerms('/a')
                  : op === 'rm'
                    ? xs.rm('/a')
                    : op === 'watch'
                      ? xs.watch('/a', { onEvent: () => undefined, onError: () => undefined })
                      : xs.transaction((tx) => tx.read('/a'), { maxAttempts: 2 });
        calls.push(p);
      }
      const settled = await Promise.allSettled(calls);
      for (const res of settled) {
        counts.calls += 1;
        if (res.status === 'fulfilled') counts.values += 1;
        else {
          const err: unknown = res.reason;
          const ok = typed(err, [
            XenStoreError,
            XenStoreProtocolError,
            XenStoreDisconnectedError,
            XenStoreTimeoutError,
          ]);
          expect(ok, `untyped rejection: ${String(err)}`).toBe(true);
          const name = (err as Error).name;
          counts.byError[name] = (counts.byError[name] ?? 0) + 1;
        }
      }
      await xs.close().catch(() => undefined);
    }
    console.log(`socket transport fuzz: ${JSON.stringify(counts)}`);
    expect(counts.calls).toBeGreaterThan(500 * SCALE);
    expect(counts.values).toBeGreaterThan(0);
  }, 120_000);
});
