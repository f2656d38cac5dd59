// Specification of the test world itself: the real xenstored under the shim starts and stops
// cleanly, guests act as their own domain through ring bridges, domain death reaches xenstored,
// and Xen's own test-xenstore passes against it as dom0 and as a guest.
import { execFile, spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildMocks, startXenstored, type XenstoredHarness } from '../../xen-mocks/harness.js';
import {
  buildDir,
  TEST_XENSTORE_BIN,
  XENSTORED_BIN,
  XENSTORE_CONTROL_BIN,
  xenToolsVersion,
} from '../../xen-mocks/paths.js';

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

/** True while pid runs (a zombie waiting for a reaper counts as dead). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Pids of live processes whose command line mentions `text` (e.g. a run folder). */
function processesMentioning(text: string): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(text) && alive(Number(name)))
        found.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return found;
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
  return { done, lines: () => out.split('\n').filter((l) => l !== ''), stop: () => child.kill('SIGKILL') };
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
    expect(processesMentioning(dir)).toHaveLength(1); // the bridge (xenstored's argv is just -N)
    await other.stop();
    expect(alive(pid)).toBe(false);
    expect(processesMentioning(dir)).toEqual([]);
    expect(existsSync(dir)).toBe(false);
  });

  it('takes xenstored down with a harness process that dies without stop()', async () => {
    // The parent here is a shell standing in for a crashed test worker: SIGKILL leaves no
    // chance for exit hooks, so only the shim's parent-death signal can clean up.
    const dir = mkdtempSync(join(tmpdir(), 'xsd-orphan-'));
    let daemonPid = 0;
    try {
      mkdirSync(join(dir, 'state'));
      writeFileSync(join(dir, 'state', 'xsd_port'), '1000\n');
      writeFileSync(join(dir, 'state', 'ring-0'), Buffer.alloc(4096));
      const shim = join(buildDir(), 'xsd-shim.so');
      const cmd = `XEN_MOCKS_PARENT_PID=$$ LD_PRELOAD="${shim}" "${XENSTORED_BIN}" -N & echo $!; wait`;
      const sh = spawn('sh', ['-c', cmd], {
        env: {
          ...process.env,
          XEN_SIM_STATE: join(dir, 'state'),
          XENSTORED_RUNDIR: dir,
          XENSTORED_PATH: join(dir, 'socket'),
        },
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      let out = '';
      sh.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
      await until(() => existsSync(join(dir, 'socket')) && out.includes('\n'), 5_000);
      daemonPid = Number(out.trim());
      expect(alive(daemonPid)).toBe(true);
      sh.kill('SIGKILL');
      await until(() => !alive(daemonPid), 5_000);
    } finally {
      if (daemonPid > 0 && alive(daemonPid)) process.kill(daemonPid, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
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

  // The release installed here: Debian 12's 4.17 or Debian 13's 4.20 (CI runs both).
  it(`passes Xen ${xenToolsVersion()}'s own test-xenstore as dom0`, async () => {
    const r = await run(TEST_XENSTORE_BIN, [], xs.env, 60_000);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it(`passes Xen ${xenToolsVersion()}'s own test-xenstore as a guest through the ring bridge`, async () => {
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
    w.stop();
    await w.done;
    await until(async () => (await watches()) === '0', 5_000);
  });

  it('multiplexes concurrent clients of one guest: watches, transactions and replies stay apart', async () => {
    const g = await xs.addGuest(12);
    await run('xenstore-write', ['w', '0'], g.env);
    const w = watch('w', 3, g.env, 10_000); // initial event + two writes by other clients
    await until(() => w.lines().length >= 1, 5_000);
    // A second client keeps a transaction open meanwhile (xenstore-write uses none): raw wire.
    const XS_TRANSACTION_START = 6;
    const tx = await pipelined(
      g.socketPath,
      [{ type: XS_TRANSACTION_START, payload: Buffer.from('\0') }],
      5_000,
    );
    expect(tx.get(1)?.type).toBe(XS_TRANSACTION_START);
    expect((await run('xenstore-write', ['w', '1'], g.env)).code).toBe(0);
    expect((await run('xenstore-write', ['w', '2'], g.env)).code).toBe(0);
    const { code, lines } = await w.done;
    expect(code).toBe(0);
    expect(lines).toEqual(['w', 'w', 'w']);
    // The transaction's client closed: the bridge aborted it, so none is left open.
    const quota = async (): Promise<string> =>
      (await run(XENSTORE_CONTROL_BIN, ['quota', '12'], xs.env)).stdout;
    await until(async () => /transactions\s*:\s*0\b/.test(await quota()), 5_000);
    await until(async () => /watches\s*:\s*0\b/.test(await quota()), 5_000);
  });

  it('re-adds a live guest: the old bridge goes, the new one works, xenstored survives', async () => {
    const first = await xs.addGuest(13);
    expect((await run('xenstore-write', ['a', '1'], first.env)).code).toBe(0);
    const pid = xs.pid;
    const second = await xs.addGuest(13);
    expect((await run('xenstore-read', ['a'], second.env)).stdout).toBe('1\n');
    expect((await run('xenstore-write', ['b', '2'], second.env)).code).toBe(0);
    expect(alive(pid)).toBe(true);
  });

  it('relays pipelined requests and maximum-size payloads through full rings', async () => {
    const g = await xs.addGuest(11);
    const XS_READ = 2;
    const XS_WRITE = 11;
    const n = 200;
    const value = (i: number): string => String(i % 10).repeat(i % 7 === 0 ? 2000 : 100 + i);
    const writes = Array.from({ length: n }, (_, i) => ({
      type: XS_WRITE,
      payload: Buffer.from(`p${i}\0${value(i)}`),
    }));
    const wr = await pipelined(g.socketPath, writes, 20_000);
    expect(wr.size).toBe(n);
    for (const r of wr.values()) expect(r).toEqual({ type: XS_WRITE, payload: Buffer.from('OK\0') });
    const reads = Array.from({ length: n }, (_, i) => ({ type: XS_READ, payload: Buffer.from(`p${i}\0`) }));
    const rd = await pipelined(g.socketPath, reads, 20_000);
    for (let i = 0; i < n; i++) expect(rd.get(i + 1)?.payload.toString()).toBe(value(i));
    // A near-maximum request crosses the 1 KiB ring intact; the guest's 2048-byte entry quota
    // (xenstored -S default) then refuses it, as it would on real Xen.
    const big = await pipelined(
      g.socketPath,
      [{ type: XS_WRITE, payload: Buffer.from(`big\0${'x'.repeat(4000)}`) }],
      5_000,
    );
    expect(big.get(1)).toEqual({ type: 16, payload: Buffer.from('ENOSPC\0') });
  });

  it('kills xenstored, then restarts it on the same socket with an empty store', async () => {
    await run('xenstore-write', ['/harness/before-restart', '1'], xs.env);
    const oldPid = xs.pid;
    await xs.kill('SIGKILL');
    expect(alive(oldPid)).toBe(false);
    expect((await run('xenstore-read', ['/harness/before-restart'], xs.env, 5_000)).code).not.toBe(0);
    await xs.restart();
    expect(xs.pid).not.toBe(oldPid);
    expect(alive(oldPid)).toBe(false);
    expect((await run('xenstore-exists', ['/harness/before-restart'], xs.env)).code).not.toBe(0);
    expect((await run('xenstore-write', ['/harness/after', '1'], xs.env)).code).toBe(0);
  });
});
