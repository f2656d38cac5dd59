// ONE behavioural specification of the XenStore interface, run against the real xenstored for
// every transport (socket client, libxenstore FFI client). A transport file calls
// defineConformance(label, open); open(h) connects as dom0, open(h, N) as guest N.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  XenStoreDisconnectedError,
  XenStoreError,
  XenStoreInputError,
  isXsErrno,
} from '../../src/xenstore/errors.js';
import type { Watch, WatchEvent, XenStore } from '../../src/xenstore/types.js';
import { startXenstored, type GuestHandle, type XenstoredHarness } from '../../xen-mocks/harness.js';

export type OpenXenStore = (h: XenstoredHarness, asGuest?: number) => Promise<XenStore>;

// Guests the suite added, so that open(h, N) can find guest N's ring-bridge socket.
const guestsOf = new WeakMap<XenstoredHarness, Map<number, GuestHandle>>();

/** The handle of guest `domid` that the suite added to `h` (for open(h, domid)). */
export function guestHandle(h: XenstoredHarness, domid: number): GuestHandle {
  const g = guestsOf.get(h)?.get(domid);
  if (!g) throw new Error(`conformance: guest ${domid} was not added to this harness`);
  return g;
}

async function addGuest(h: XenstoredHarness, domid: number): Promise<GuestHandle> {
  const g = await h.addGuest(domid);
  let m = guestsOf.get(h);
  if (!m) guestsOf.set(h, (m = new Map()));
  m.set(domid, g);
  return g;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Collects a watch's events and lets a test wait for one that matches. */
class EventLog {
  readonly events: WatchEvent[] = [];
  private waiters: Array<{ pred: (e: WatchEvent) => boolean; resolve: (e: WatchEvent) => void }> = [];
  push = (e: WatchEvent): void => {
    this.events.push(e);
    for (const w of [...this.waiters]) {
      if (w.pred(e)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(e);
      }
    }
  };
  waitFor(pred: (e: WatchEvent) => boolean, ms = 5000, what = 'watch event'): Promise<WatchEvent> {
    const seen = this.events.find(pred);
    if (seen) return Promise.resolve(seen);
    return withTimeout(new Promise<WatchEvent>((resolve) => this.waiters.push({ pred, resolve })), ms, what);
  }
  /** Forgets what was seen (to prove that nothing new arrives afterwards). */
  clear(): void {
    this.events.length = 0;
  }
}

async function expectErrno(p: Promise<unknown>, errno: string): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${errno}`).toBeInstanceOf(XenStoreError);
  expect((err as XenStoreError).errno).toBe(errno);
}

async function expectInputError(p: Promise<unknown>, field: string): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected XenStoreInputError(${field})`).toBeInstanceOf(XenStoreInputError);
  expect((err as XenStoreInputError).field).toBe(field);
}

const settle = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function defineConformance(label: string, open: OpenXenStore): void {
  describe(`XenStore conformance: ${label}`, () => {
    let h: XenstoredHarness;
    let xs: XenStore;
    const extra: XenStore[] = [];
    let seq = 0;
    const base = (): string => `/conformance/${label.replace(/[^A-Za-z0-9_-]/g, '_')}/t${++seq}`;
    const connect = async (asGuest?: number): Promise<XenStore> => {
      const c = await open(h, asGuest);
      extra.push(c);
      return c;
    };

    beforeAll(async () => {
      h = await startXenstored();
      xs = await connect();
    });

    afterAll(async () => {
      for (const c of extra) await c.close().catch(() => undefined);
      await h?.stop();
    });

    describe('nodes', () => {
      it('writes, reads (string, bytes, binary, empty) and lists nodes', async () => {
        const b = base();
        await xs.write(`${b}/a`, 'hello');
        await xs.write(`${b}/bin`, Buffer.from([0, 1, 2, 0xff]));
        await xs.write(`${b}/empty`, '');
        expect(await xs.readString(`${b}/a`)).toBe('hello');
        expect(await xs.read(`${b}/a`)).toEqual(Buffer.from('hello'));
        expect(await xs.read(`${b}/bin`)).toEqual(Buffer.from([0, 1, 2, 0xff]));
        expect(await xs.readString(`${b}/empty`)).toBe('');
        expect((await xs.directory(b)).sort()).toEqual(['a', 'bin', 'empty']);
        expect(await xs.directory(`${b}/a`)).toEqual([]);
      });

      it('writes the largest value that fits in one payload', async () => {
        const p = `${base()}/big`;
        const value = Buffer.alloc(4096 - p.length - 1, 0x5a);
        await xs.write(p, value);
        expect(await xs.read(p)).toEqual(value);
      });

      it('mkdir creates an empty node (and is idempotent), rm removes a subtree', async () => {
        const b = base();
        await xs.mkdir(`${b}/d/e`);
        await xs.mkdir(`${b}/d/e`);
        expect(await xs.readString(`${b}/d/e`)).toBe('');
        expect(await xs.exists(`${b}/d`)).toBe(true);
        await xs.write(`${b}/d/e/f`, 'x');
        await xs.rm(`${b}/d`);
        expect(await xs.exists(`${b}/d`)).toBe(false);
        expect(await xs.exists(`${b}/d/e/f`)).toBe(false);
      });

      it('answers ENOENT for a missing node; tryRead gives undefined, exists false', async () => {
        const b = base();
        await expectErrno(xs.read(`${b}/missing`), 'ENOENT');
        await expectErrno(xs.directory(`${b}/missing`), 'ENOENT');
        await expectErrno(xs.getPerms(`${b}/missing`), 'ENOENT');
        expect(await xs.tryRead(`${b}/missing`)).toBeUndefined();
        expect(await xs.exists(`${b}/missing`)).toBe(false);
      });

      it('lists a directory too big for one reply (DIRECTORY_PART)', async () => {
        const b = base();
        const names = Array.from({ length: 250 }, (_, i) => `child-with-a-rather-long-name-${i}`);
        // 250 * 35 bytes > 4096: xenstored answers E2BIG to DIRECTORY.
        await Promise.all(names.map((n) => xs.write(`${b}/${n}`, '')));
        expect((await xs.directory(b)).sort()).toEqual([...names].sort());
      });

      it('resolves relative paths against /local/domain/0 for dom0', async () => {
        const rel = `conformance-rel-${++seq}`;
        await xs.write(rel, 'r');
        expect(await xs.readString(`/local/domain/0/${rel}`)).toBe('r');
        await xs.rm(rel);
      });
    });

    describe('permissions', () => {
      it('dom0 sets and reads permission lists, including another owner', async () => {
        const p = `${base()}/node`;
        await xs.write(p, 'v');
        expect(await xs.getPerms(p)).toEqual([{ domid: 0, access: 'n' }]);
        await xs.setPerms(p, [
          { domid: 0, access: 'n' },
          { domid: 5, access: 'r' },
          { domid: 6, access: 'b' },
        ]);
        expect(await xs.getPerms(p)).toEqual([
          { domid: 0, access: 'n' },
          { domid: 5, access: 'r' },
          { domid: 6, access: 'b' },
        ]);
        await xs.setPerms(p, [{ domid: 0, access: 'r' }]);
        expect(await xs.getPerms(p)).toEqual([{ domid: 0, access: 'r' }]);
        // New children inherit the parent's permissions.
        await xs.write(`${p}/child`, 'c');
        expect(await xs.getPerms(`${p}/child`)).toEqual([{ domid: 0, access: 'r' }]);
        // xenstored refuses an owner that is not a known domain.
        await expectErrno(xs.setPerms(p, [{ domid: 4000, access: 'n' }]), 'ENOENT');
      });

      it('a guest is refused (EACCES) on dom0 nodes until dom0 grants access', async () => {
        await addGuest(h, 5);
        const guest = await connect(5);
        const b = base();
        await xs.write(`${b}/secret`, 's');
        await expectErrno(guest.read(`${b}/secret`), 'EACCES');
        await expectErrno(guest.write(`${b}/secret`, 'x'), 'EACCES');
        await expectErrno(guest.write(`${b}/new`, 'x'), 'EACCES');
        await expectErrno(guest.rm(`${b}/secret`), 'EACCES');
        await expectErrno(guest.setPerms(`${b}/secret`, [{ domid: 5, access: 'b' }]), 'EACCES');
        await expectErrno(guest.introduce(9, 0, 1009), 'EACCES');

        await xs.setPerms(`${b}/secret`, [
          { domid: 0, access: 'n' },
          { domid: 5, access: 'r' },
        ]);
        expect(await guest.readString(`${b}/secret`)).toBe('s');
        await expectErrno(guest.write(`${b}/secret`, 'x'), 'EACCES');
        expect(await xs.readString(`${b}/secret`)).toBe('s');

        // dom0 gives the node away: the new owner has full access.
        await xs.setPerms(`${b}/secret`, [{ domid: 5, access: 'n' }]);
        await guest.write(`${b}/secret`, 'mine');
        expect(await xs.readString(`${b}/secret`)).toBe('mine');
      });

      it('a guest uses its own home with relative paths and owns what it creates', async () => {
        await addGuest(h, 6);
        const guest = await connect(6);
        expect(await guest.getDomainPath(6)).toBe('/local/domain/6');
        await guest.write('data/x', 'from-guest');
        expect(await xs.readString('/local/domain/6/data/x')).toBe('from-guest');
        expect(await guest.getPerms('data/x')).toEqual([{ domid: 6, access: 'n' }]);
        // Only the control domain may give a node away.
        await expectErrno(guest.setPerms('data/x', [{ domid: 0, access: 'n' }]), 'EPERM');
        await guest.setPerms('data/x', [
          { domid: 6, access: 'n' },
          { domid: 0, access: 'r' },
        ]);
        expect(await guest.getPerms('data/x')).toEqual([
          { domid: 6, access: 'n' },
          { domid: 0, access: 'r' },
        ]);
      });
    });

    describe('domains', () => {
      it('GET_DOMAIN_PATH, IS_DOMAIN_INTRODUCED, SET_TARGET, RESUME, RELEASE', async () => {
        expect(await xs.getDomainPath(0)).toBe('/local/domain/0');
        expect(await xs.getDomainPath(42)).toBe('/local/domain/42');
        expect(await xs.isIntroduced(0)).toBe(true);
        expect(await xs.isIntroduced(4321)).toBe(false);

        await addGuest(h, 11);
        await addGuest(h, 12);
        expect(await xs.isIntroduced(11)).toBe(true);
        await xs.setTarget(11, 12);
        // With 12 as its target, domain 11 may write domain 12's home.
        const g11 = await connect(11);
        await g11.write('/local/domain/12/from-11', 'ok');
        expect(await xs.readString('/local/domain/12/from-11')).toBe('ok');
        await xs.resume(11);
        await expectErrno(xs.resume(4321), 'ENOENT');

        await xs.release(12);
        // Only introduced domains can be released, and never dom0.
        await expectErrno(xs.release(4321), 'ENOENT');
        await expectErrno(xs.release(0), 'EINVAL');
      });

      it('GET_FEATURE and GET_QUOTA are tolerated on a 4.17 server (ENOSYS)', async () => {
        const f = await xs.getFeature();
        expect(Number.isInteger(f) && f >= 0).toBe(true);
        const q = await xs.getQuota();
        expect(q).toBeInstanceOf(Map);
        // The connection survives the unknown message types.
        expect(await xs.getDomainPath(1)).toBe('/local/domain/1');
      });
    });

    describe('transactions', () => {
      it('commits several operations atomically', async () => {
        const b = base();
        const result = await xs.transaction(async (tx) => {
          await tx.write(`${b}/x`, '1');
          await tx.write(`${b}/y`, '2');
          await tx.mkdir(`${b}/z`);
          expect((await tx.directory(b)).sort()).toEqual(['x', 'y', 'z']);
          return 'done';
        });
        expect(result).toBe('done');
        expect((await xs.directory(b)).sort()).toEqual(['x', 'y', 'z']);
      });

      it('aborts when fn throws: nothing is written, the error comes back', async () => {
        const b = base();
        const boom = new Error('boom');
        await expect(
          xs.transaction(async (tx) => {
            await tx.write(`${b}/never`, 'x');
            throw boom;
          }),
        ).rejects.toBe(boom);
        expect(await xs.exists(`${b}/never`)).toBe(false);
      });

      it('retries a REAL conflict (EAGAIN from xenstored) and the retry succeeds', async () => {
        const p = `${base()}/counter`;
        await xs.write(p, '0');
        const other = await connect();
        let attempts = 0;
        const seen = await xs.transaction(async (tx) => {
          attempts++;
          const v = Number(await tx.readString(p));
          // Another connection changes the node the transaction read: commit must fail.
          if (attempts === 1) await other.write(p, '100');
          await tx.write(p, String(v + 1));
          return v;
        });
        expect(attempts).toBe(2);
        expect(seen).toBe(100);
        expect(await xs.readString(p)).toBe('101');
      });

      it('gives up with EAGAIN after maxAttempts conflicts', async () => {
        const p = `${base()}/counter`;
        await xs.write(p, '0');
        const other = await connect();
        let attempts = 0;
        await expectErrno(
          xs.transaction(
            async (tx) => {
              attempts++;
              const v = Number(await tx.readString(p));
              await other.write(p, String(1000 + attempts));
              await tx.write(p, String(v + 1));
            },
            { maxAttempts: 3, backoffMs: 1 },
          ),
          'EAGAIN',
        );
        expect(attempts).toBe(3);
        expect(await xs.readString(p)).toBe('1003');
      });
    });

    describe('watches', () => {
      it('fires the initial event, then for the node and its subtree', async () => {
        const b = base();
        await xs.mkdir(b);
        const log = new EventLog();
        const w = await xs.watch(b, { token: `tok-${seq}`, onEvent: log.push });
        await log.waitFor((e) => e.path === b, 5000, 'initial event');
        expect(log.events[0]).toEqual({ path: b, token: `tok-${seq}` });
        await xs.write(`${b}/child/deeper`, 'x');
        await log.waitFor((e) => e.path === `${b}/child/deeper`);
        await w.close();
      });

      it('delivers events through async iteration', async () => {
        const b = base();
        await xs.mkdir(b);
        const w: Watch = await xs.watch(b);
        const it = w[Symbol.asyncIterator]();
        const first = await withTimeout(it.next(), 5000, 'initial event');
        expect(first.value).toEqual({ path: b, token: w.token });
        await xs.write(`${b}/n`, '1');
        let ev = await withTimeout(it.next(), 5000, 'subtree event');
        // Events may fire spuriously (e.g. for the parent): wait for ours.
        while (!ev.done && ev.value.path !== `${b}/n`) ev = await withTimeout(it.next(), 5000, 'event');
        expect(ev.value).toEqual({ path: `${b}/n`, token: w.token });
        await w.close();
        expect((await it.next()).done).toBe(true);
      });

      it('answers EEXIST for a duplicate path + token', async () => {
        const b = base();
        await xs.mkdir(b);
        const w = await xs.watch(b, { token: 'dup-token' });
        await expectErrno(xs.watch(b, { token: 'dup-token' }), 'EEXIST');
        // The first registration still works.
        const it = w[Symbol.asyncIterator]();
        expect((await withTimeout(it.next(), 5000, 'initial')).value?.path).toBe(b);
        await w.close();
      });

      it('stops delivering events after close() (UNWATCH)', async () => {
        const b = base();
        await xs.mkdir(b);
        const log = new EventLog();
        const w = await xs.watch(b, { onEvent: log.push });
        await log.waitFor((e) => e.path === b);
        await w.close();
        await w.close(); // idempotent
        log.clear();
        await xs.write(`${b}/after`, 'x');
        // A round trip after the write: any event for it would have been sent before this reply.
        await xs.read(`${b}/after`);
        await settle(50);
        expect(log.events).toEqual([]);
      });

      it('fires @introduceDomain and @releaseDomain', async () => {
        const intro = new EventLog();
        const rel = new EventLog();
        const wi = await xs.watch('@introduceDomain', { onEvent: intro.push });
        const wr = await xs.watch('@releaseDomain', { onEvent: rel.push });
        await intro.waitFor(() => true, 5000, 'initial @introduceDomain');
        await rel.waitFor(() => true, 5000, 'initial @releaseDomain');
        intro.clear();
        rel.clear();
        await addGuest(h, 21);
        await intro.waitFor((e) => e.path === '@introduceDomain', 5000, '@introduceDomain');
        await h.destroyDomain(21);
        await rel.waitFor((e) => e.path === '@releaseDomain', 5000, '@releaseDomain');
        await wi.close();
        await wr.close();
      });

      it('resetWatches drops every watch of the connection', async () => {
        const c = await connect();
        const b = base();
        await xs.mkdir(b);
        const log = new EventLog();
        await c.watch(b, { onEvent: log.push });
        await log.waitFor((e) => e.path === b);
        await c.resetWatches();
        log.clear();
        await xs.write(`${b}/x`, '1');
        await c.read(`${b}/x`);
        await settle(50);
        expect(log.events).toEqual([]);
      });
    });

    describe('concurrency and input', () => {
      it('keeps 1000 requests in flight and matches every reply', async () => {
        const b = base();
        await Promise.all(Array.from({ length: 1000 }, (_, i) => xs.write(`${b}/k${i}`, `v${i}`)));
        const values = await Promise.all(Array.from({ length: 1000 }, (_, i) => xs.readString(`${b}/k${i}`)));
        expect(values).toEqual(Array.from({ length: 1000 }, (_, i) => `v${i}`));
      });

      it('refuses bad input before sending it (the connection stays healthy)', async () => {
        const b = base();
        await expectInputError(xs.read(`${b}//x`), 'path');
        await expectInputError(xs.read(`${b}/x/`), 'path');
        await expectInputError(xs.read(''), 'path');
        await expectInputError(xs.write(`${b}/x y`, '1'), 'path');
        await expectInputError(xs.write('/' + 'a'.repeat(3072), '1'), 'path');
        await expectInputError(xs.read('@releaseDomain'), 'path');
        await expectInputError(xs.watch('@notSpecial'), 'path');
        await expectInputError(xs.write(`${b}/big`, Buffer.alloc(4096)), 'value');
        await expectInputError(xs.getDomainPath(0x7ff0), 'domid');
        await expectInputError(xs.introduce(-1, 0, 1), 'domid');
        await expectInputError(xs.setTarget(1, 1.5), 'target');
        await expectInputError(xs.setPerms(`${b}`, []), 'perms');
        // An oversized payload sent to xenstored would have cost us the connection.
        expect(xs.connected).toBe(true);
        expect(await xs.exists(`${b}/big`)).toBe(false);
      });
    });

    // Last: it kills the daemon.
    describe('daemon death', () => {
      it('rejects every pending call and ends every watch when xenstored is killed', async () => {
        const c = await connect();
        const b = base();
        let disconnected: Error | undefined;
        c.onDisconnect((e) => (disconnected = e));
        let watchError: Error | undefined;
        const log = new EventLog();
        const w = await c.watch('/', { onEvent: log.push, onError: (e) => (watchError = e) });
        const iter = w[Symbol.asyncIterator]();
        await log.waitFor((e) => e.path === '/');
        const big = 'x'.repeat(3000);
        const calls = Array.from({ length: 3000 }, (_, i) =>
          c.write(`${b}/k${i % 64}`, big).then(
            () => 'ok' as const,
            (e: unknown) => e,
          ),
        );
        await h.kill('SIGKILL');
        const results = await withTimeout(Promise.all(calls), 15_000, 'pending calls after kill');
        const failures = results.filter((r) => r !== 'ok');
        expect(failures.length).toBeGreaterThan(0);
        for (const f of failures) expect(f).toBeInstanceOf(XenStoreDisconnectedError);
        // Iteration ends with the error (after any events already queued).
        let end: unknown;
        for (;;) {
          try {
            const r = await withTimeout(iter.next(), 5000, 'watch iteration after kill');
            if (r.done) break;
          } catch (err) {
            end = err;
            break;
          }
        }
        expect(end).toBeInstanceOf(XenStoreDisconnectedError);
        expect(watchError).toBeInstanceOf(XenStoreDisconnectedError);
        expect(disconnected).toBeInstanceOf(XenStoreDisconnectedError);
        expect(c.connected).toBe(false);
        await expect(c.read('/')).rejects.toBeInstanceOf(XenStoreDisconnectedError);
        expect(isXsErrno(failures[0], 'EIO')).toBe(false);
      });
    });
  });
}
