// The built `devmigrate` as an administrator meets it, on a simulated host: the agent as a
// process (exit 78 on a bad config, READY/STOPPING to a real NOTIFY_SOCKET, journal lines under
// systemd, SIGHUP refusing a bad config, SIGTERM exit 0) and the CLI's commands with their exit
// codes, including `migrate` driving a stand-in for `xl migrate -p`.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { main } from '../../src/cli/main.js';
import { ExitCode } from '../../src/cli/exit-codes.js';
import { startSim, type RunningSim } from '../../xen-mocks/sim-kit.js';
import { removeJob, writeRequest } from '../../src/cli/job-client.js';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { XenStore } from '../../src/xenstore/types.js';
import type { HostDescription } from '../../xen-mocks/sim-host.js';
import { builtCli, spawnAgent, waitAgentReady, type AgentProcess } from './agent-world.js';

class Sink extends Writable {
  text = '';
  override _write(c: Buffer | string, _e: BufferEncoding, cb: () => void): void {
    this.text += c.toString();
    cb();
  }
}

function host(): HostDescription {
  const g = (domid: number, name: string, extra: HostDescription['guests'][number]['devices'] = []) => ({
    domid,
    name,
    uuid: `00000000-0000-4000-8000-0000000001${String(domid).padStart(2, '0')}`,
    devices: [
      {
        type: 'vbd' as const,
        vdev: 'xvda',
        params: `/srv/shared/${name}.img`,
        format: 'file',
        mode: 'w' as const,
        backend: 'qdisk' as const,
      },
      { type: 'vif' as const, mac: `00:16:3e:00:01:${String(domid).padStart(2, '0')}` },
      ...extra,
    ],
  });
  return {
    guests: [
      g(1, 'alpha'),
      g(2, 'vaulty', [{ type: 'vtpm', uuid: '3d5b7e11-9a2c-4f80-b6d4-1e2f3a4b5c03' }]),
      g(3, 'gamma'),
      g(4, 'delta'),
      g(5, 'epsilon'),
    ],
  };
}

describe('devmigrate as a process on a simulated host', () => {
  let dir: string;
  let sim: RunningSim;
  let xs: XenStore;
  let agent: AgentProcess | undefined;
  let cfg: string;
  const savedEnv = { ...process.env };

  const cli = async (...argv: string[]): Promise<{ code: number; out: string; err: string }> => {
    const out = new Sink();
    const err = new Sink();
    const code = await main(['--config', cfg, ...argv], { out, err });
    return { code, out: out.text, err: err.text };
  };

  beforeAll(async () => {
    builtCli(); // fails clearly when dist/ is missing
    dir = await mkdtemp(join(tmpdir(), 'agent-proc-'));
    sim = await startSim({ dir: join(dir, 'xenstored'), desc: host() });
    // The CLI runs in this process and its children (the stand-in xl) use xenstore-utils.
    Object.assign(process.env, sim.env);
    xs = await connectXenStore({ path: sim.harness.socketPath, timeoutMs: 10_000 });
    cfg = join(dir, 'devmigrate.json');
    await writeFile(
      cfg,
      JSON.stringify({
        disks: { sharedPathPrefixes: ['/srv/shared/'] },
        timeouts: { toolstackSuspendMs: 20_000 },
      }),
    );
    agent = spawnAgent({ env: { ...process.env }, configPath: cfg, logFile: join(dir, 'agent.log') });
    await waitAgentReady(xs, agent.pid);
  }, 60_000);

  afterAll(async () => {
    await agent?.stop('SIGTERM');
    await xs?.close().catch(() => undefined);
    await Promise.race([sim?.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 15_000))]);
    for (const k of Object.keys(process.env)) if (!(k in savedEnv)) delete process.env[k];
    Object.assign(process.env, savedEnv);
    await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('agent: a malformed config stops it at start with exit 78, naming the key', async () => {
    const bad = join(dir, 'bad.json');
    await writeFile(bad, JSON.stringify({ timeouts: { testMs: 'soon' } }));
    const r = spawnSync(process.execPath, [builtCli(), 'agent', '--config', bad, '--log-format', 'journal'], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.status).toBe(78);
    expect(r.stdout).toMatch(
      /^<3>configuration refused, not starting key=timeouts\.testMs reason="must be an integer, got string"/m,
    );
  });

  it('agent under systemd: READY=1 to NOTIFY_SOCKET, journal lines, SIGHUP refuses a bad file, SIGTERM exits 0', async () => {
    const sock = join(dir, 'notify.sock');
    const rx: ChildProcessWithoutNullStreams = spawn('python3', [
      '-c',
      'import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\ns.settimeout(30)\nprint("listening",flush=True)\nwhile True:\n  d=s.recv(4096).decode()\n  print(d.replace("\\n","|"),flush=True)',
      sock,
    ]);
    const lines: string[] = [];
    const waiters: (() => void)[] = [];
    createInterface({ input: rx.stdout }).on('line', (l) => {
      lines.push(l);
      for (const w of waiters.splice(0)) w();
    });
    const seen = (pred: (l: string) => boolean, what: string): Promise<void> =>
      new Promise((res, rej) => {
        const t = setTimeout(() => rej(new Error(`no ${what} within 20 s: ${lines.join(' / ')}`)), 20_000);
        const check = (): void => {
          if (lines.some(pred)) {
            clearTimeout(t);
            res();
          } else waiters.push(check);
        };
        check();
      });
    // One agent per host: the suite's agent makes way for this one and comes back after it.
    await agent?.stop('SIGTERM');
    agent = undefined;
    try {
      await seen((l) => l === 'listening', 'listener');
      const cfg2 = join(dir, 'reload.json');
      await writeFile(cfg2, JSON.stringify({ disks: { sharedPathPrefixes: ['/srv/shared/'] } }));
      const log = join(dir, 'agent-notify.log');
      const a = spawnAgent({
        env: { ...process.env, NOTIFY_SOCKET: sock, INVOCATION_ID: 'test' },
        configPath: cfg2,
        logFile: log,
        logFormat: 'auto',
      });
      try {
        await seen((l) => l.startsWith('READY=1|MAINPID='), 'READY=1');
        expect(lines.find((l) => l.startsWith('READY=1'))).toContain(`MAINPID=${a.pid}`);
        await writeFile(cfg2, '{ "logLevel": "chatty" }');
        a.child.kill('SIGHUP');
        await seen((l) => l === 'RELOADING=1', 'RELOADING=1');
        await seen(
          (l, i = lines.indexOf('RELOADING=1')) => l.startsWith('READY=1') && lines.lastIndexOf(l) > i,
          'READY=1 after reload',
        );
      } finally {
        a.child.kill('SIGTERM');
      }
      const exit = await a.exited;
      expect(exit.code).toBe(0);
      await seen((l) => l.startsWith('STOPPING=1'), 'STOPPING=1');
      const text = await readFile(log, 'utf8');
      expect(text).toMatch(/^<6>agent ready pid=\d+ version=/m);
      expect(text).toMatch(
        /^<3>configuration reload refused, keeping the running configuration key=logLevel reason=/m,
      );
      expect(text).toMatch(/^<5>agent stopped$/m);
    } finally {
      rx.kill('SIGKILL');
      agent = spawnAgent({ env: { ...process.env }, configPath: cfg, logFile: join(dir, 'agent.log') });
      await waitAgentReady(xs, agent.pid);
    }
  }, 60_000);

  it('agent: a second agent while one runs refuses to start (exit 1) and leaves the first in charge', () => {
    const r = spawnSync(process.execPath, [builtCli(), 'agent', '--config', cfg, '--log-format', 'human'], {
      encoding: 'utf8',
      timeout: 20_000,
      env: { ...process.env },
    });
    expect(r.status).toBe(1);
    expect(r.stdout).toContain(`another devmigrate agent (pid ${agent?.pid}, state ready) is running`);
  });

  it('status, check and the per-device reasons; unknown domain 6; busy 7', async () => {
    const s = await cli('--json', 'status');
    expect(s.code).toBe(0);
    expect(JSON.parse(s.out)).toMatchObject({ agent: { alive: true, state: 'ready' }, jobs: [] });
    const ok = await cli('check', 'alpha', 'host-b');
    expect(ok.code).toBe(ExitCode.OK);
    expect(ok.out).toContain('alpha (id 1) -> host-b: can migrate');
    const refused = await cli('--json', 'check', 'vaulty', 'host-b');
    expect(refused.code).toBe(ExitCode.REFUSED);
    const v = JSON.parse(refused.out) as {
      verdict: string;
      devices: { type: string; state: string; reason?: string }[];
    };
    expect(v.verdict).toBe('refused');
    expect(v.devices.find((d) => d.type === 'vtpm')?.reason).toMatch(/tool/);
    expect((await cli('check', 'nosuch')).code).toBe(ExitCode.NO_DOMAIN);
    expect((await cli('check', '77')).code).toBe(ExitCode.NO_DOMAIN);
    // A job in progress on gamma (steps mode, resting) makes a second request BUSY.
    await writeRequest(xs, 3, { id: 'held-1', target: 'host-b', mode: 'steps', suspend: 'agent' });
    const deadline = Date.now() + 10_000;
    while ((await xs.tryRead('/tool/devmigrate/jobs/3/state')) !== 'accepted' && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    const busy = await cli('check', 'gamma');
    expect(busy.code).toBe(ExitCode.BUSY);
    expect(busy.err).toContain('already has a job (held-1) in state accepted');
    const ab = await cli('abort', 'gamma');
    expect(ab.code).toBe(ExitCode.OK);
    expect(await xs.tryRead('/tool/devmigrate/jobs/3/state')).toBe('aborted');
  }, 60_000);

  it('migrate: the stand-in xl suspends the guest, the agent syncs, the destination unpauses (0)', async () => {
    const xl = join(dir, 'fake-xl-ok.sh');
    await writeFile(
      xl,
      [
        '#!/bin/sh',
        '# stand-in for `xl migrate -p <domain> <host>`: suspends the guest as libxl does, then "sends" it',
        'for d in $(xenstore-list /local/domain); do [ "$(xenstore-read /local/domain/$d/name 2>/dev/null)" = "$1" ] && id=$d; done',
        'xenstore-write /local/domain/$id/control/shutdown suspend',
        'sleep 1',
        '# xl renames the source <name>--migratedaway, then destroys it: its name is gone here',
        'xenstore-write /local/domain/$id/name "$1--migratedaway"',
        'xenstore-rm /local/domain/$id/name',
        'echo "migration to $2 complete"',
        '',
      ].join('\n'),
    );
    await chmod(xl, 0o755);
    const unpause = join(dir, 'unpause.sh');
    await writeFile(unpause, `#!/bin/sh\necho "$@" > ${join(dir, 'unpaused')}\n`);
    await chmod(unpause, 0o755);
    const r = await cli(
      'migrate',
      'alpha',
      'host-b',
      '--migrate-command',
      xl,
      '--unpause-command',
      `${unpause} {host}`,
      '--timeout',
      '30',
    );
    expect(r.code, r.out + r.err).toBe(ExitCode.OK);
    expect(r.out).toContain('migrated alpha to host-b; it is running there');
    // The summary names the domain resolved before the migration, not "?".
    expect(r.out).toContain('domain alpha (id 1)');
    expect((await readFile(join(dir, 'unpaused'), 'utf8')).trim()).toBe('host-b alpha');
    const d = await sim.harness.getDomain(1);
    expect(d?.shutdown && d.shutdownReason === 2).toBe(true); // suspended at the source, as xl leaves it
  }, 60_000);

  it('migrate: unpauses once the devices are synced and xl reported its target started, before xl destroyed the source', async () => {
    // xl prints "Target reports successful startup" and only then destroys the source, which on a
    // real host takes seconds (device teardown); the guest must not stay paused for that.
    const xl = join(dir, 'fake-xl-slow-destroy.sh');
    const times = join(dir, 'overlap-times');
    await writeFile(
      xl,
      [
        '#!/bin/sh',
        'for d in $(xenstore-list /local/domain); do [ "$(xenstore-read /local/domain/$d/name 2>/dev/null)" = "$1" ] && id=$d; done',
        'xenstore-write /local/domain/$id/control/shutdown suspend',
        'sleep 1',
        'xenstore-write /local/domain/$id/name "$1--migratedaway"',
        'echo "migration sender: Target reports successful startup." >&2',
        'sleep 4',
        `echo "xl-exit $(date +%s%N)" >> ${times}`,
        'xenstore-rm /local/domain/$id/name',
        'echo "Migration successful." >&2',
        '',
      ].join('\n'),
    );
    await chmod(xl, 0o755);
    const unpause = join(dir, 'unpause-timed.sh');
    await writeFile(
      unpause,
      `#!/bin/sh\necho "unpause $(date +%s%N) job=$(xenstore-read /tool/devmigrate/jobs/5/state)" >> ${times}\n`,
    );
    await chmod(unpause, 0o755);
    const r = await cli(
      'migrate',
      'epsilon',
      'host-b',
      '--migrate-command',
      xl,
      '--unpause-command',
      unpause,
      '--timeout',
      '30',
    );
    expect(r.code, r.out + r.err).toBe(ExitCode.OK);
    expect(r.out).toContain('migrated epsilon to host-b; it is running there');
    const lines = (await readFile(times, 'utf8')).trim().split('\n');
    const at = (what: string) => Number(lines.find((l) => l.startsWith(what))?.split(' ')[1]);
    expect(lines.find((l) => l.startsWith('unpause'))).toContain('job=done');
    expect(at('unpause')).toBeLessThan(at('xl-exit'));
  }, 60_000);

  it('migrate: xl fails -> the job is aborted and the guest keeps running at the source (4)', async () => {
    const xl = join(dir, 'fake-xl-fail.sh');
    await writeFile(xl, '#!/bin/sh\necho "xc: error: Failed to enable logdirty" >&2\nexit 1\n');
    await chmod(xl, 0o755);
    const r = await cli(
      'migrate',
      'delta',
      'host-b',
      '--migrate-command',
      xl,
      '--unpause-command',
      '/bin/true',
      '--timeout',
      '30',
    );
    expect(r.code, r.out + r.err).toBe(ExitCode.ABORTED);
    expect(r.out).toContain('delta: it is running here');
    expect(r.out).toContain('xl said: xc: error: Failed to enable logdirty');
    const d = await sim.harness.getDomain(4);
    expect(d !== undefined && !d.shutdown && d.paused === 0).toBe(true);
  }, 60_000);

  it('step: drives a steps job xend-style (test, pre-suspend, abort) and the guest stays running', async () => {
    expect((await cli('step', 'gamma', 'pre-suspend')).code).toBe(ExitCode.USAGE); // no job yet: test first
    expect((await cli('step', 'gamma', 'test')).code).toBe(ExitCode.USAGE); // the first step needs --host
    const t = await cli('--json', 'step', 'gamma', 'test', '--host', 'host-b');
    expect(t.code, t.out + t.err).toBe(ExitCode.OK);
    expect(JSON.parse(t.out)).toMatchObject({ state: 'tested', mode: 'steps', target: 'host-b' });
    const p = await cli('step', 'gamma', 'pre-suspend');
    expect(p.code, p.out + p.err).toBe(ExitCode.OK);
    expect(p.out).toContain('state: pre-suspended');
    const a = await cli('step', 'gamma', 'abort');
    expect(a.code, a.out + a.err).toBe(ExitCode.OK);
    expect(['aborted', 'failed']).toContain(await xs.tryRead('/tool/devmigrate/jobs/3/state'));
    const d = await sim.harness.getDomain(3);
    expect(d !== undefined && !d.shutdown && d.paused === 0).toBe(true);
  }, 60_000);

  it('status --watch follows a job live and ends when it reaches a final state', async () => {
    // The watcher starts before the job exists and prints every new view of it (a finished job
    // left by an earlier test would end the watch at once: it is removed first, as a requester does).
    await removeJob(xs, 3);
    const watching = cli('--json', 'status', 'gamma', '--watch', '--timeout', '30');
    await new Promise((r) => setTimeout(r, 500));
    await writeRequest(xs, 3, { id: 'watched-1', target: 'host-b', mode: 'steps', suspend: 'agent' });
    const deadline = Date.now() + 10_000;
    while ((await xs.tryRead('/tool/devmigrate/jobs/3/state')) !== 'accepted' && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 200));
    await xs.write('/tool/devmigrate/jobs/3/control', 'abort');
    const r = await watching;
    expect(r.code).toBe(ExitCode.OK);
    const views = r.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { id?: string; state?: string });
    expect(views.length, r.out).toBeGreaterThanOrEqual(2);
    expect(views.every((v) => v.id === 'watched-1')).toBe(true);
    expect(views.map((v) => v.state)).toContain('accepted');
    expect(views[views.length - 1]?.state).toBe('aborted');
  }, 60_000);
});
