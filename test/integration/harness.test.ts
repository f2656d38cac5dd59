// Specification of the test world itself: the real xenstored under the shim starts and stops
// cleanly, guests act as their own domain through ring bridges, domain death reaches xenstored,
// and Xen's own test-xenstore passes against it as dom0 and as a guest.
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildMocks, startXenstored, type XenstoredHarness } from '../../xen-mocks/harness.js';
import { TEST_XENSTORE_BIN, XENSTORE_CONTROL_BIN } from '../../xen-mocks/paths.js';

const execFileP = promisify(execFile);

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  timeout = 20_000,
): Promise<RunResult> {
  try {
    const { stdout, stderr } = await execFileP(file, args, { env, timeout });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Starts `xenstore-watch -n <count> <path>` and resolves with its output lines when it exits. */
function watch(path: string, count: number, env: NodeJS.ProcessEnv, timeoutMs: number) {
  const child = spawn('xenstore-watch', ['-n', String(count), path], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const done = new Promise<{ code: number | null; lines: string[] }>((resolve) =>
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, lines: out.split('\n').filter((l) => l !== '') });
    }),
  );
  return { done, lines: () => out.split('\n').filter((l) => l !== '') };
}

async function until(cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Sends raw wire requests pipelined in one burst and collects one reply per request. */
async function pipelined(
  socketPath: string,
  reqs: Array<{ type: number; payload: Buffer }>,
  timeoutMs: number,
): Promise<Map<number, { type: number; payload: Buffer }>> {
  const sock = connect(socketPath);
  const replies = new Map<number, { type: number; payload: Buffer }>();
  let pending = Buffer.alloc(0);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`only ${replies.size}/${reqs.length} replies`)),
        timeoutMs,
      );
      sock.once('error', reject);
      sock.on('data', (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        while (pending.length >= 16 && pending.length >= 16 + pending.readUInt32LE(12)) {
          const len = pending.readUInt32LE(12);
          const type = pending.readUInt32LE(0);
          if (type !== 15)
            replies.set(pending.readUInt32LE(4), { type, payload: pending.subarray(16, 16 + len) });
          pending = pending.subarray(16 + len);
        }
        if (replies.size === reqs.length) {
          clearTimeout(timer);
          resolve();
        }
      });
      sock.once('connect', () => {
        const frames = reqs.map((r, i) => {
          const h = Buffer.alloc(16);
          h.writeUInt32LE(r.type, 0);
          h.writeUInt32LE(i + 1, 4);
          h.writeUInt32LE(0, 8);
          h.writeUInt32LE(r.payload.length, 12);
          return Buffer.concat([h, r.payload]);
        });
        sock.write(Buffer.concat(frames));
      });
    });
  } finally {
    sock.destroy();
  }
  return replies;
}

describe('xenstored harness', () => {
  let xs: XenstoredHarness;

  beforeAll(async () => {
    await buildMocks();
    xs = await startXenstored();
  });

  afterAll(async () => {
    await xs?.stop();
  });

  it('starts and stops leaving no process and no folder', async () => {
    const other = await startXenstored();
    const pid = other.pid;
    const dir = other.dir;
    expect(alive(pid)).toBe(true);
    const guest = await other.addGuest(3);
    expect(existsSync(guest.socketPath)).toBe(true);
    await other.stop();
    expect(alive(pid)).toBe(false);
    expect(existsSync(dir)).toBe(false);
  });

  it('serves dom0 writes and reads through xenstore-utils', async () => {
    expect((await run('xenstore-write', ['/harness/a', 'hello'], xs.env)).code).toBe(0);
    const r = await run('xenstore-read', ['/harness/a'], xs.env);
    expect(r).toMatchObject({ code: 0, stdout: 'hello\n' });
  });

  it('lets a guest write its own nodes but not dom0 nodes', async () => {
    const g = await xs.addGuest(5, { name: 'five' });
    expect((await run('xenstore-write', ['/local/domain/5/x', 'mine'], g.env)).code).toBe(0);
    // Relative paths resolve to the guest's home: proof the connection really is domain 5.
    expect((await run('xenstore-read', ['x'], g.env)).stdout).toBe('mine\n');
    expect((await run('xenstore-read', ['/local/domain/5/x'], xs.env)).stdout).toBe('mine\n');

    await run('xenstore-write', ['/harness/dom0-only', 'secret'], xs.env);
    const w = await run('xenstore-write', ['/harness/dom0-only', 'evil'], g.env);
    expect(w.code).not.toBe(0);
    expect(w.stderr).toMatch(/could not write path/);
    const rd = await run('xenstore-read', ['/harness/dom0-only'], g.env);
    expect(rd.code).not.toBe(0);
    expect((await run('xenstore-read', ['/harness/dom0-only'], xs.env)).stdout).toBe('secret\n');
  });

  it('fires @releaseDomain and removes /local/domain/N when a domain is destroyed', async () => {
    await xs.addGuest(7);
    expect((await run('xenstore-exists', ['/local/domain/7'], xs.env)).code).toBe(0);
    const w = watch('@releaseDomain', 2, xs.env, 10_000);
    await until(() => w.lines().length >= 1, 5_000); // the initial event: the watch is in place
    await xs.destroyDomain(7);
    const { code, lines } = await w.done;
    expect(code).toBe(0);
    expect(lines).toEqual(['@releaseDomain', '@releaseDomain']);
    expect((await run('xenstore-exists', ['/local/domain/7'], xs.env)).code).not.toBe(0);
    expect(await xs.getDomain(7)).toBeUndefined();
  });

  it('fires @releaseDomain when a domain shuts down (suspend) through setDomain', async () => {
    await xs.addGuest(8);
    const w = watch('@releaseDomain', 2, xs.env, 10_000);
    await until(() => w.lines().length >= 1, 5_000);
    await xs.setDomain(8, { shutdown: true, shutdownReason: 2 });
    expect((await w.done).lines).toHaveLength(2);
    expect(await xs.getDomain(8)).toMatchObject({ shutdown: true, shutdownReason: 2, dying: false });
    // A suspended domain is still known to xenstored: its nodes stay.
    expect((await run('xenstore-exists', ['/local/domain/8'], xs.env)).code).toBe(0);
  });

  it("passes Xen's own test-xenstore as dom0", async () => {
    const r = await run(TEST_XENSTORE_BIN, [], xs.env, 60_000);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it("passes Xen's own test-xenstore as a guest through the ring bridge", async () => {
    const g = await xs.addGuest(9);
    const r = await run(TEST_XENSTORE_BIN, [], g.env, 60_000);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('serves successive clients on one guest bridge, each starting without old watches', async () => {
    const g = await xs.addGuest(10);
    for (let i = 0; i < 5; i++) {
      expect((await run('xenstore-write', [`n${i}`, String(i)], g.env)).code).toBe(0);
    }
    expect((await run('xenstore-list', ['/local/domain/10'], g.env)).stdout.split('\n')).toEqual(
      expect.arrayContaining(['n0', 'n4']),
    );
    // A watcher killed mid-watch must not leave its watch behind for the next client.
    const watches = async (): Promise<string> => {
      const q = await run(XENSTORE_CONTROL_BIN, ['quota', '10'], xs.env);
      expect(q.code).toBe(0);
      return /watches\s*:\s*(\d+)/.exec(q.stdout)?.[1] ?? 'none';
    };
    const w = watch('n0', 1000, g.env, 1_000);
    await until(() => w.lines().length >= 1, 5_000);
    expect(await watches()).toBe('1');
    await w.done;
    await until(async () => (await watches()) === '0', 5_000);
  });

  it('relays pipelined requests and maximum-size payloads through full rings', async () => {
    const g = await xs.addGuest(11);
    const XS_READ = 2;
    const XS_WRITE = 11;
    const n = 200;
    const value = (i: number): string => String(i % 10).repeat(i % 7 === 0 ? 4000 : 100 + i);
    const writes = Array.from({ length: n }, (_, i) => ({
      type: XS_WRITE,
      payload: Buffer.from(`p${i}\0${value(i)}`),
    }));
    const wr = await pipelined(g.socketPath, writes, 20_000);
    expect(wr.size).toBe(n);
    const bad = [...wr.entries()].filter(([, r]) => r.type !== XS_WRITE).map(([id, r]) => `${id}:${r.payload.toString()}`);
    expect(bad).toEqual([]);
    for (const r of wr.values()) expect(r).toEqual({ type: XS_WRITE, payload: Buffer.from('OK\0') });
    const reads = Array.from({ length: n }, (_, i) => ({ type: XS_READ, payload: Buffer.from(`p${i}\0`) }));
    const rd = await pipelined(g.socketPath, reads, 20_000);
    for (let i = 0; i < n; i++) expect(rd.get(i + 1)?.payload.toString()).toBe(value(i));
  });

  it('restarts xenstored on the same socket with an empty store', async () => {
    await run('xenstore-write', ['/harness/before-restart', '1'], xs.env);
    const oldPid = xs.pid;
    await xs.restart();
    expect(xs.pid).not.toBe(oldPid);
    expect(alive(oldPid)).toBe(false);
    expect((await run('xenstore-exists', ['/harness/before-restart'], xs.env)).code).not.toBe(0);
    expect((await run('xenstore-write', ['/harness/after', '1'], xs.env)).code).toBe(0);
  });
});
