// What only the libxenstore (FFI) transport must guarantee, against the real xenstored: memory
// libxenstore returns is freed, errno becomes typed errors, watch events arrive through the
// reader thread, and no call on a hung or dead xenstored blocks the event loop (or close()).
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import koffi from 'koffi';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildMocks, startXenstored, type XenstoredHarness } from '../../xen-mocks/harness.js';
import {
  XenStoreDisconnectedError,
  XenStoreError,
  XenStoreInputError,
  XenStoreTimeoutError,
} from '../../src/xenstore/errors.js';
import { openFfiXenStoreClient, type FfiXenStore } from '../../src/xenstore/ffi-client.js';
import type { WatchEvent } from '../../src/xenstore/types.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Resolves when cond() holds, polling; rejects after timeoutMs. */
async function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(10);
  }
}

/** Bytes the main malloc arena has handed out (glibc mallinfo2().uordblks). */
const mallinfo2 = koffi.load('libc.so.6').func(
  'mallinfo2',
  koffi.struct({
    arena: 'size_t',
    ordblks: 'size_t',
    smblks: 'size_t',
    hblks: 'size_t',
    hblkhd: 'size_t',
    usmblks: 'size_t',
    fsmblks: 'size_t',
    uordblks: 'size_t',
    fordblks: 'size_t',
    keepcost: 'size_t',
  }),
  [],
) as () => { uordblks: number | bigint };
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
/** Main-arena bytes in use after a full GC (JS Buffers are malloc'ed too: collect them first). */
const allocated = (): number => {
  gc();
  gc();
  return Number(mallinfo2().uordblks);
};

let xsd: XenstoredHarness;
const clients: FfiXenStore[] = [];

async function open(opts: Parameters<typeof openFfiXenStoreClient>[0] = {}): Promise<FfiXenStore> {
  const c = await openFfiXenStoreClient({ path: xsd.socketPath, ...opts });
  clients.push(c);
  return c;
}

beforeAll(async () => {
  await buildMocks();
  xsd = await startXenstored();
});

afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
});

afterAll(async () => {
  await xsd?.stop();
});

describe.each(['auto', 'async'] as const)('libxenstore client, mode %s', (mode) => {
  it(`runs calls ${mode === 'auto' ? 'synchronously (bounded) on a socket' : 'on the pool'}`, async () => {
    const xs = await open({ mode });
    expect(xs.callMode).toBe(mode === 'auto' ? 'sync' : 'async');
  });

  it('maps errno to typed XenStoreErrors', async () => {
    const xs = await open({ mode });
    await expect(xs.read(`/ffi-${mode}/none`)).rejects.toMatchObject({
      name: 'XenStoreError',
      errno: 'ENOENT',
    });
    await xs.write(`/ffi-${mode}/file`, 'x');
    // A node under a node that is a value is still a directory in xenstored: use rm of root instead.
    await expect(xs.rm('/')).rejects.toBeInstanceOf(XenStoreError);
    await expect(xs.setTarget(0x7fef, 0x7fee)).rejects.toMatchObject({ errno: 'ENOENT' });
    await expect(xs.read('bad//path')).rejects.toBeInstanceOf(XenStoreInputError);
    await expect(xs.write(`/ffi-${mode}/big`, Buffer.alloc(5000))).rejects.toBeInstanceOf(XenStoreInputError);
    // The connection survives ordinary errors.
    expect(xs.connected).toBe(true);
    expect(await xs.readString(`/ffi-${mode}/file`)).toBe('x');
  });

  it('maps a guest permission refusal to EACCES and resolves relative paths to its home', async () => {
    const g = await xsd.addGuest(mode === 'auto' ? 11 : 12);
    const dom0 = await open({ mode });
    await dom0.write(`/ffi-${mode}/secret`, 's');
    await dom0.setPerms(`/ffi-${mode}/secret`, [{ domid: 0, access: 'n' }]);
    const guest = await open({ mode, path: g.socketPath });
    await expect(guest.read(`/ffi-${mode}/secret`)).rejects.toMatchObject({ errno: 'EACCES' });
    await guest.write('data/x', 'mine');
    expect(await dom0.readString(`/local/domain/${g.domid}/data/x`)).toBe('mine');
    await guest.close();
    await g.stop();
  });

  it('releases and re-introduces a domain (mfn as bigint or number), seen by isIntroduced', async () => {
    const domid = mode === 'auto' ? 13 : 14;
    const g = await xsd.addGuest(domid);
    await g.stop();
    const xs = await open({ mode, libPath: 'libxenstore.so.4' });
    expect(await xs.isIntroduced(domid)).toBe(true);
    await xs.release(domid);
    expect(await xs.isIntroduced(domid)).toBe(false);
    await xs.introduce(domid, 0n, 1000 + domid);
    expect(await xs.isIntroduced(domid)).toBe(true);
    await xs.release(domid);
    await xs.introduce(domid, 0, 1000 + domid);
    expect(await xs.isIntroduced(domid)).toBe(true);
    await expect(xs.introduce(-1, 0, 1)).rejects.toBeInstanceOf(XenStoreInputError);
  });

  it('delivers watch events (initial + changes), by callback and by iteration, and stops after close', async () => {
    const xs = await open({ mode });
    const base = `/ffi-${mode}/watched`;
    await xs.mkdir(base);
    const seen: WatchEvent[] = [];
    const w = await xs.watch(base, { token: `tok-${mode}`, onEvent: (e) => seen.push(e) });
    await until(() => seen.length >= 1);
    expect(seen[0]).toEqual({ path: base, token: `tok-${mode}` });
    await xs.write(`${base}/a`, '1');
    await until(() => seen.some((e) => e.path === `${base}/a`));

    const w2 = await xs.watch(`${base}/b`);
    const it2 = w2[Symbol.asyncIterator]();
    expect((await it2.next()).value).toMatchObject({ path: `${base}/b` });
    await xs.transaction(async (tx) => {
      await tx.write(`${base}/b`, '2');
    });
    expect((await it2.next()).value).toMatchObject({ path: `${base}/b`, token: w2.token });
    await w2.close();
    expect((await it2.next()).done).toBe(true);

    await w.close();
    const count = seen.length;
    await xs.write(`${base}/c`, '3');
    await sleep(100);
    expect(seen.length).toBe(count);
    await expect(
      xs.watch(base, { token: 'dup' }).then(() => xs.watch(base, { token: 'dup' })),
    ).rejects.toMatchObject({
      errno: 'EEXIST',
    });
  });
});

describe('memory returned by libxenstore', () => {
  it('frees what libxenstore returns (read, directory, perms, domain path)', async () => {
    const xs = await open();
    expect(xs.callMode).toBe('sync');
    const base = `/ffi-sync/mem`;
    await xs.write(`${base}/v`, Buffer.alloc(3000, 0x61));
    for (let i = 0; i < 20; i++) await xs.write(`${base}/d/child-with-a-long-name-${i}`, '');
    // Warm up every call measured, then measure the main arena across many calls: a leak of
    // each 3 KB value alone would show as ~6 MB a window. Only synchronous calls allocate in
    // the main arena (pool threads malloc in their own arenas, which mallinfo2 does not count),
    // hence the sync client here; both modes share the same decode-and-free code
    // (takeBytes/takeStrings). Two windows, the smaller growth counts: a leak grows in every
    // window, while one-off growth (V8 tiering up a function, an internal table resizing: 631
    // KB once in a loaded fresh chroot, with only reads warmed up) shows in one.
    const round = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        await xs.read(`${base}/v`);
        await xs.directory(`${base}/d`);
        await xs.getPerms(`${base}/v`);
        await xs.getDomainPath(i % 100);
      }
    };
    await round(300);
    const windows: number[] = [];
    for (let w = 0; w < 2; w++) {
      const before = allocated();
      await round(2000);
      windows.push(allocated() - before);
    }
    expect(Math.min(...windows)).toBeLessThan(512 * 1024);
    expect((await xs.read(`${base}/v`)).length).toBe(3000);
  });
});

describe('a hung or dead xenstored', () => {
  let ticker: NodeJS.Timeout | undefined;
  afterEach(() => {
    if (ticker) clearInterval(ticker);
    ticker = undefined;
    try {
      process.kill(xsd.pid, 'SIGCONT');
    } catch {
      // Already dead (kill test): the harness restarts it below.
    }
  });

  /** Largest gap between setInterval ticks while fn runs: how long the event loop was blocked. */
  async function maxTickGap<T>(
    fn: () => Promise<T>,
  ): Promise<{ gap: number; result: PromiseSettledResult<T> }> {
    let last = performance.now();
    let gap = 0;
    ticker = setInterval(() => {
      const now = performance.now();
      gap = Math.max(gap, now - last);
      last = now;
    }, 5);
    const [result] = await Promise.allSettled([fn()]);
    clearInterval(ticker);
    ticker = undefined;
    return { gap: Math.max(gap, performance.now() - last), result: result as PromiseSettledResult<T> };
  }

  it('auto (sync) mode: a burst of fast calls still lets timers run (the loop gets a turn every few ms)', async () => {
    const xs = await open();
    expect(xs.callMode).toBe('sync');
    await xs.write('/ffi-burst/k', 'v');
    const { gap, result } = await maxTickGap(async () => {
      const all = Array.from({ length: 3000 }, () => xs.readString('/ffi-burst/k'));
      const sequential: string[] = [];
      for (let i = 0; i < 1000; i++) sequential.push(await xs.readString('/ffi-burst/k'));
      return [...(await Promise.all(all)), ...sequential];
    });
    expect(result.status).toBe('fulfilled');
    expect((result as PromiseFulfilledResult<string[]>).value.every((v) => v === 'v')).toBe(true);
    // 4000 reads take 100+ ms; without the slices the loop would be blocked all along.
    expect(gap).toBeLessThan(60);
  });

  it('async mode: the event loop keeps ticking while a call waits on a stopped xenstored; it completes on SIGCONT', async () => {
    const xs = await open({ mode: 'async' });
    await xs.write('/ffi-hang/a', 'v');
    process.kill(xsd.pid, 'SIGSTOP');
    let ticks = 0;
    const { gap, result } = await maxTickGap(async () => {
      const p = xs.readString('/ffi-hang/a');
      const t = setInterval(() => ticks++, 10);
      await sleep(400);
      clearInterval(t);
      process.kill(xsd.pid, 'SIGCONT');
      return p;
    });
    expect(ticks).toBeGreaterThan(10);
    expect(gap).toBeLessThan(150);
    expect(result).toEqual({ status: 'fulfilled', value: 'v' });
    expect(xs.connected).toBe(true);
  });

  // Puts the socket path in quarantine (new clients on it use the pool for 60 s): keep it after
  // the tests that need a synchronous client.
  it('auto (sync) mode: a stopped xenstored stalls the loop at most syncTimeoutMs, then a timeout error and a disconnect', async () => {
    const xs = await open({ syncTimeoutMs: 150 });
    expect(xs.callMode).toBe('sync');
    await xs.write('/ffi-hang/b', 'v');
    const lost: Error[] = [];
    xs.onDisconnect((e) => lost.push(e));
    process.kill(xsd.pid, 'SIGSTOP');
    const t0 = performance.now();
    const { gap, result } = await maxTickGap(() => xs.read('/ffi-hang/b'));
    expect(performance.now() - t0).toBeLessThan(1500);
    expect(gap).toBeLessThan(150 + 400); // the bound plus a loaded machine's slack
    expect(result.status).toBe('rejected');
    expect((result as PromiseRejectedResult).reason).toBeInstanceOf(XenStoreTimeoutError);
    expect(lost).toHaveLength(1);
    expect(xs.connected).toBe(false);
    await expect(xs.read('/ffi-hang/b')).rejects.toBeInstanceOf(XenStoreDisconnectedError);
    process.kill(xsd.pid, 'SIGCONT');
    // A new client on the same path starts on the pool for a while (no repeated stalls).
    const again = await open({ syncTimeoutMs: 150 });
    expect(again.callMode).toBe('async');
    expect(await again.readString('/ffi-hang/b')).toBe('v');
  });

  it('async mode: a call past callTimeoutMs rejects with a timeout and the connection is dropped', async () => {
    const xs = await open({ mode: 'async', callTimeoutMs: 200 });
    await xs.write('/ffi-hang/c', 'v');
    process.kill(xsd.pid, 'SIGSTOP');
    const t0 = performance.now();
    await expect(xs.read('/ffi-hang/c')).rejects.toBeInstanceOf(XenStoreTimeoutError);
    expect(performance.now() - t0).toBeLessThan(1000);
    await until(() => !xs.connected);
  });

  it('close() returns promptly while calls and the watch reader wait on a stopped xenstored', async () => {
    const xs = await openFfiXenStoreClient({ path: xsd.socketPath, mode: 'async', callTimeoutMs: 0 });
    const w = await xs.watch('/ffi-hang');
    process.kill(xsd.pid, 'SIGSTOP');
    const pending = xs.read('/ffi-hang/a').catch((e: unknown) => e);
    const queued = xs.read('/ffi-hang/a').catch((e: unknown) => e);
    await sleep(50);
    const t0 = performance.now();
    await xs.close();
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(await pending).toBeInstanceOf(XenStoreDisconnectedError);
    expect(await queued).toBeInstanceOf(XenStoreDisconnectedError);
    const it = w[Symbol.asyncIterator]();
    // The initial event may still be queued; after it, iteration ends.
    let r = await it.next();
    if (!r.done) r = await it.next();
    expect(r.done).toBe(true);
  });

  it('a killed xenstored rejects pending calls, fails watches and fires onDisconnect once', async () => {
    const xsA = await open({ mode: 'async', callTimeoutMs: 0 });
    const xsS = await open();
    const lostA: Error[] = [];
    const lostS: Error[] = [];
    xsA.onDisconnect((e) => lostA.push(e));
    xsS.onDisconnect((e) => lostS.push(e));
    const watchErrors: Error[] = [];
    const w = await xsA.watch('/ffi-kill', { onError: (e) => watchErrors.push(e), onEvent: () => undefined });
    const wS = await xsS.watch('/ffi-kill');
    process.kill(xsd.pid, 'SIGSTOP');
    const pending = xsA.read('/ffi-kill/x').catch((e: unknown) => e);
    await sleep(30);
    await xsd.kill('SIGKILL');
    expect(await pending).toBeInstanceOf(XenStoreDisconnectedError);
    await until(() => lostA.length > 0 && lostS.length > 0 && watchErrors.length > 0);
    expect(lostA).toHaveLength(1);
    expect(watchErrors[0]).toBeInstanceOf(XenStoreDisconnectedError);
    // The second client noticed through its watch reader, without any request of its own.
    expect(lostS).toHaveLength(1);
    const itS = wS[Symbol.asyncIterator]();
    let r: IteratorResult<WatchEvent> | Error = await itS.next().catch((e: Error) => e);
    if (!(r instanceof Error)) r = await itS.next().catch((e: Error) => e);
    expect(r).toBeInstanceOf(XenStoreDisconnectedError);
    await expect(xsS.read('/ffi-kill/x')).rejects.toBeInstanceOf(XenStoreDisconnectedError);
    await w.close();
    await xsd.restart();
    const fresh = await open();
    await fresh.write('/ffi-kill/after', 'ok');
    expect(await fresh.readString('/ffi-kill/after')).toBe('ok');
  });
});
