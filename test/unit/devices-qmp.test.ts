// Specification of the QMP codec and session (golden lines in both directions, as QEMU 7.2 sends
// them), and of the thin client over a fake monitor socket: a busy monitor that never greets, a
// command that never gets its reply, events before and after a wait, a peer speaking nonsense.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, unlink, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  encodeQmpCommand,
  parseQmpLine,
  QmpLineSplitter,
  QmpProtocolError,
} from '../../src/devices/qmp-codec.js';
import { QmpSession } from '../../src/devices/qmp-session.js';
import { QmpClient, QmpCommandError, QmpTimeoutError } from '../../src/devices/qmp-client.js';
import { acquireQmpLock, libxlQmpLockPath, QmpLockError } from '../../src/devices/qmp-lock.js';

const GREETING =
  '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}';

describe('QMP codec', () => {
  it('parses the greeting, returns, errors and events QEMU sends', () => {
    expect(parseQmpLine(GREETING)).toEqual({
      kind: 'greeting',
      version: { major: 7, minor: 2, micro: 22 },
      capabilities: ['oob'],
    });
    expect(parseQmpLine('{"return": {}, "id": "c-1"}')).toEqual({ kind: 'return', id: 'c-1', value: {} });
    expect(
      parseQmpLine(
        '{"id": "c-2", "error": {"class": "DeviceNotActive", "desc": "No active block job with id \'x\'"}}',
      ),
    ).toEqual({
      kind: 'error',
      id: 'c-2',
      errorClass: 'DeviceNotActive',
      desc: "No active block job with id 'x'",
    });
    expect(
      parseQmpLine(
        '{"timestamp": {"seconds": 1764418742, "microseconds": 12}, "event": "JOB_STATUS_CHANGE", "data": {"status": "ready", "id": "devmigrate-51712"}}',
      ),
    ).toEqual({
      kind: 'event',
      event: 'JOB_STATUS_CHANGE',
      data: { status: 'ready', id: 'devmigrate-51712' },
      seconds: 1764418742,
    });
  });
  it('refuses what is not QMP', () => {
    for (const bad of ['hello', '[1,2]', '{"foo": 1}', '{"event": 5}']) {
      expect(() => parseQmpLine(bad), bad).toThrow(QmpProtocolError);
    }
  });
  it('encodes a command with arguments and id, one line', () => {
    expect(encodeQmpCommand('block-job-cancel', { device: 'devmigrate-51712' }, 'c-3')).toBe(
      '{"execute":"block-job-cancel","arguments":{"device":"devmigrate-51712"},"id":"c-3"}\n',
    );
    expect(encodeQmpCommand('query-block-jobs', undefined, 'c-4')).toBe(
      '{"execute":"query-block-jobs","id":"c-4"}\n',
    );
    expect(() => encodeQmpCommand('x"; evil', undefined, 'c')).toThrow(QmpProtocolError);
  });
  it('splits CRLF lines across chunks and bounds the line length', () => {
    const sp = new QmpLineSplitter(64);
    expect(sp.push(Buffer.from('{"return"'))).toEqual([]);
    expect(sp.push(Buffer.from(': {}}\r\n{"ret'))).toEqual(['{"return": {}}']);
    expect(sp.push(Buffer.from('urn": 1}\r\n\r\n'))).toEqual(['{"return": 1}']);
    expect(() => sp.push(Buffer.alloc(100, 0x61))).toThrow(/line of more than 64 bytes/);
  });
});

describe('QMP session', () => {
  it('greeting -> qmp_capabilities -> ready; replies matched by id; events passed on', () => {
    const s = new QmpSession();
    expect(s.receive(parseQmpLine(GREETING))).toEqual([
      { kind: 'send', line: '{"execute":"qmp_capabilities","id":"cap-0"}\n' },
    ]);
    expect(() => s.command('query-block-jobs')).toThrow(/session is negotiating/);
    expect(s.receive(parseQmpLine('{"return": {}, "id": "cap-0"}'))).toEqual([
      { kind: 'ready', version: { major: 7, minor: 2, micro: 22 } },
    ]);
    const a = s.command('query-block-jobs');
    const b = s.command('query-named-block-nodes', { flat: true });
    expect(s.inFlight).toBe(2);
    // Replies may come in any order; events may come between them.
    expect(s.receive(parseQmpLine(`{"return": [], "id": "${b.id}"}`))).toEqual([
      { kind: 'reply', id: b.id, ok: true, value: [] },
    ]);
    expect(s.receive(parseQmpLine('{"event": "BLOCK_JOB_READY", "data": {"device": "j"}}'))).toEqual([
      { kind: 'event', event: 'BLOCK_JOB_READY', data: { device: 'j' } },
    ]);
    expect(
      s.receive(parseQmpLine(`{"error": {"class": "GenericError", "desc": "nope"}, "id": "${a.id}"}`)),
    ).toEqual([{ kind: 'reply', id: a.id, ok: false, errorClass: 'GenericError', desc: 'nope' }]);
    expect(s.inFlight).toBe(0);
  });
  it('a reply to no command of ours, a second greeting, or a refused negotiation ends the session', () => {
    const s = new QmpSession();
    s.receive(parseQmpLine(GREETING));
    s.receive(parseQmpLine('{"return": {}, "id": "cap-0"}'));
    const [fail] = s.receive(parseQmpLine('{"return": {}, "id": "c-99"}'));
    expect(fail).toMatchObject({ kind: 'fail' });
    expect(s.state).toBe('closed');
    const t = new QmpSession();
    expect(t.receive(parseQmpLine('{"return": {}}'))[0]).toMatchObject({ kind: 'fail' });
    const u = new QmpSession();
    u.receive(parseQmpLine(GREETING));
    expect(
      u.receive(parseQmpLine('{"error": {"class": "GenericError", "desc": "x"}, "id": "cap-0"}'))[0],
    ).toMatchObject({ kind: 'fail', error: { reason: expect.stringContaining('refused') } });
  });
});

/** A scripted monitor: `onLine` answers each line the client sends. */
function fakeMonitor(
  path: string,
  script: { greet?: boolean; onLine?: (line: string, sock: Socket) => void },
): Promise<Server> {
  const server = createServer((sock) => {
    if (script.greet !== false) sock.write(`${GREETING}\r\n`);
    let buf = '';
    sock.on('data', (c) => {
      buf += c.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const msg = JSON.parse(line) as { execute: string; id: string };
        if (msg.execute === 'qmp_capabilities') sock.write(`{"return": {}, "id": "${msg.id}"}\r\n`);
        else script.onLine?.(line, sock);
      }
    });
    sock.on('error', () => undefined);
  });
  return new Promise((res) => server.listen(path, () => res(server)));
}

describe('QMP client over a socket', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'devmigrate-qmp-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('runs commands, maps errors to QmpCommandError, keeps events for later waiters', async () => {
    const path = join(dir, 'ok.sock');
    const server = await fakeMonitor(path, {
      onLine: (line, sock) => {
        const m = JSON.parse(line) as { execute: string; id: string };
        if (m.execute === 'block-job-cancel') {
          sock.write('{"event": "JOB_STATUS_CHANGE", "data": {"id": "j", "status": "concluded"}}\r\n');
          sock.write(`{"return": {}, "id": "${m.id}"}\r\n`);
        } else sock.write(`{"error": {"class": "CommandNotFound", "desc": "no"}, "id": "${m.id}"}\r\n`);
      },
    });
    const c = await QmpClient.connect(path, { timeoutMs: 2000 });
    expect(c.version).toEqual({ major: 7, minor: 2, micro: 22 });
    await expect(c.execute('block-job-cancel', { device: 'j' }, 2000)).resolves.toEqual({});
    // The event came before the wait began: still seen.
    await expect(
      c.waitForEvent((e) => e.data['status'] === 'concluded', 100, 'conclusion'),
    ).resolves.toMatchObject({ event: 'JOB_STATUS_CHANGE' });
    await expect(c.waitForEvent((e) => e.event === 'NEVER', 100, 'never')).rejects.toBeInstanceOf(
      QmpTimeoutError,
    );
    const err = await c.execute('frobnicate', undefined, 2000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err).toMatchObject({ command: 'frobnicate', errorClass: 'CommandNotFound' });
    await c.close();
    server.close();
  });

  it('a monitor that never greets (busy with another client) fails the connect at its bound', async () => {
    const path = join(dir, 'busy.sock');
    const server = await fakeMonitor(path, { greet: false });
    const began = Date.now();
    await expect(QmpClient.connect(path, { timeoutMs: 300 })).rejects.toThrow(/greeting .*300 ms/);
    expect(Date.now() - began).toBeLessThan(1500);
    server.close();
  });

  it('a command without a reply times out and closes the connection', async () => {
    const path = join(dir, 'mute.sock');
    const server = await fakeMonitor(path, { onLine: () => undefined });
    const c = await QmpClient.connect(path, { timeoutMs: 1000 });
    await expect(c.execute('query-block-jobs', undefined, 200)).rejects.toBeInstanceOf(QmpTimeoutError);
    await expect(c.execute('query-block-jobs', undefined, 200)).rejects.toThrow(/no answer within 200 ms/);
    await c.close();
    server.close();
  });

  it('a peer speaking nonsense, or no socket at all, is a clear error', async () => {
    const path = join(dir, 'junk.sock');
    const server = createServer((s) => s.end('SSH-2.0-OpenSSH_9.2\r\n'));
    await new Promise<void>((r) => server.listen(path, () => r()));
    await expect(QmpClient.connect(path, { timeoutMs: 1000 })).rejects.toBeInstanceOf(QmpProtocolError);
    server.close();
    await expect(QmpClient.connect(join(dir, 'none.sock'), { timeoutMs: 1000 })).rejects.toThrow(/ENOENT/);
  });
});

describe("libxl's QMP lock", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'devmigrate-qmplock-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('is libxl__userdata_path(domid, "qmp-socket-lock", "l") and refuses a malformed uuid', () => {
    expect(libxlQmpLockPath('/var/lib/xen', 7, '6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b')).toBe(
      '/var/lib/xen/userdata-l.7.6f1e2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b.qmp-socket-lock',
    );
    expect(() => libxlQmpLockPath('/var/lib/xen', 7, '../../etc')).toThrow(QmpLockError);
  });

  it('waits while another process (flock(1), as libxl would) holds it, and takes it once released', async () => {
    const path = join(dir, 'userdata-l.7.x.qmp-socket-lock');
    await writeFile(path, '');
    // flock(1) holds an exclusive lock on the file while its child sleeps.
    const holder = spawn('/usr/bin/flock', ['-x', path, '/bin/sleep', '0.8'], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 200));
    await expect(acquireQmpLock(path, 200)).rejects.toThrow(/held by someone else for 200 ms/);
    const began = Date.now();
    const lock = await acquireQmpLock(path, 5000);
    expect(Date.now() - began).toBeGreaterThan(200);
    // While we hold it, flock(1) -n fails (exit 1).
    const probe = spawn('/usr/bin/flock', ['-n', '-x', path, '/bin/true']);
    expect(await new Promise((r) => probe.once('exit', r))).toBe(1);
    await lock.release();
    const again = spawn('/usr/bin/flock', ['-n', '-x', path, '/bin/true']);
    expect(await new Promise((r) => again.once('exit', r))).toBe(0);
    holder.kill();
  });

  it('creates a missing lock file, as libxl does, and still locks after it was deleted and recreated', async () => {
    const path = join(dir, 'userdata-l.8.y.qmp-socket-lock');
    const lock = await acquireQmpLock(path, 1000);
    await lock.release();
    await unlink(path);
    const again = await acquireQmpLock(path, 1000);
    await again.release();
  });
});
