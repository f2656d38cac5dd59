// Readiness reaches a real AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET: a python3
// receiver binds the socket and prints what arrives; both senders (libsystemd, libc) are checked.
import { describe, it, expect, afterEach } from 'vitest';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { createNotifier, notifySender } from '../../src/agent/sd-notify.js';

const RECEIVER = `
import socket, sys, json
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(addr if not addr.startswith('@') else '\\0' + addr[1:])
s.settimeout(10)
print('listening', flush=True)
while True:
    try:
        data = s.recv(4096)
    except socket.timeout:
        break
    print(json.dumps(data.decode()), flush=True)
`;

interface Receiver {
  proc: ChildProcessWithoutNullStreams;
  next(): Promise<string>;
}

const started: ChildProcessWithoutNullStreams[] = [];
const dirs: string[] = [];

afterEach(() => {
  for (const p of started.splice(0)) p.kill('SIGKILL');
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function startReceiver(addr: string): Promise<Receiver> {
  const proc = spawn('python3', ['-c', RECEIVER, addr]);
  started.push(proc);
  const queue: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  createInterface({ input: proc.stdout }).on('line', (l) => {
    const w = waiters.shift();
    if (w) w(l);
    else queue.push(l);
  });
  const next = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const q = queue.shift();
      if (q !== undefined) return resolve(q);
      const t = setTimeout(() => reject(new Error('no datagram within 5 s')), 5000);
      waiters.push((l) => {
        clearTimeout(t);
        resolve(l);
      });
    });
  expect(await next()).toBe('listening');
  return { proc, next: async () => JSON.parse(await next()) as string };
}

describe('sd_notify', () => {
  it('is a no-op without NOTIFY_SOCKET', () => {
    const n = createNotifier({ env: {} });
    expect(n.enabled).toBe(false);
    expect(() => n.ready('x')).not.toThrow();
  });

  for (const prefer of ['libsystemd', 'libc'] as const) {
    it(`sends READY, STATUS and STOPPING through ${prefer}`, async () => {
      expect(notifySender(prefer).name).toBe(prefer);
      const dir = mkdtempSync(join(tmpdir(), 'sdn-'));
      dirs.push(dir);
      const path = join(dir, 'notify');
      const rx = await startReceiver(path);
      const errors: Error[] = [];
      const n = createNotifier({ env: { NOTIFY_SOCKET: path }, prefer, onError: (e) => errors.push(e) });
      n.ready('watching 0 jobs');
      expect(await rx.next()).toBe(`READY=1\nMAINPID=${process.pid}\nSTATUS=watching 0 jobs`);
      n.status('2 jobs');
      expect(await rx.next()).toBe('STATUS=2 jobs');
      n.stopping();
      expect(await rx.next()).toBe('STOPPING=1');
      expect(errors).toEqual([]);
    });
  }

  it('reaches an abstract-namespace socket (@name) through libc', async () => {
    const name = `@devmigrate-test-${process.pid}-${Date.now()}`;
    const rx = await startReceiver(name);
    const n = createNotifier({ env: { NOTIFY_SOCKET: name }, prefer: 'libc' });
    n.watchdog();
    expect(await rx.next()).toBe('WATCHDOG=1');
  });

  it('reports a send failure through onError instead of throwing', () => {
    const errors: Error[] = [];
    const n = createNotifier({
      env: { NOTIFY_SOCKET: '/nonexistent/dir/sock' },
      prefer: 'libc',
      onError: (e) => errors.push(e),
    });
    n.ready();
    expect(errors).toHaveLength(1);
    expect(errors[0]?.name).toBe('SdNotifyError');
  });

  it('reads the watchdog interval only when meant for this process', () => {
    expect(createNotifier({ env: { WATCHDOG_USEC: '4000000' } }).watchdogMs).toBe(4000);
    expect(
      createNotifier({ env: { WATCHDOG_USEC: '4000000', WATCHDOG_PID: '1' } }).watchdogMs,
    ).toBeUndefined();
  });
});
