// `devmigrate migrate` as an administrator meets it, on a simulated host with the stand-in xl
// (shaped like xl_migrate.c): Ctrl-C before the job reaches xl, during xl's live rounds, and past
// xl's point of no return (once: it goes on; twice: it leaves with where the guest is), and
// `devmigrate abort` from another terminal once xl suspended the guest. Each case checks the
// exit code, what is said, the job, and where the guest really is (hypervisor and destination).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { XenStore } from '../../src/xenstore/types.js';
import type { HostDescription } from '../../xen-mocks/sim-host.js';
import { startSimHost, type RunningSim } from '../../xen-mocks/sim-kit.js';
import {
  builtCli,
  domainRunning,
  spawnAgent,
  waitAgentReady,
  waitWatched,
  type AgentProcess,
} from './agent-world.js';

const J = (d: number): string => `/tool/devmigrate/jobs/${d}`;

function guest(domid: number, name: string, imageMb?: number): HostDescription['guests'][number] {
  const hex = domid.toString(16).padStart(2, '0');
  return {
    domid,
    name,
    uuid: `00000000-0000-4000-8000-0000000c10${hex}`,
    devices: [
      imageMb === undefined
        ? {
            type: 'vbd',
            vdev: 'xvda',
            params: `/srv/nfs/${name}.img`,
            format: 'file',
            mode: 'w',
            backend: 'qdisk',
          }
        : {
            type: 'vbd',
            vdev: 'xvda',
            params: `{dir}/images/${name}.img`,
            format: 'file',
            mode: 'w',
            backend: 'qdisk',
            image: { sizeMb: imageMb },
          },
      { type: 'vif', mac: `00:16:3e:0c:10:${hex}` },
    ],
  };
}

describe('devmigrate migrate: Ctrl-C and abort against the stand-in xl', () => {
  let dir: string;
  let sim: RunningSim;
  let xs: XenStore;
  let agent: AgentProcess | undefined;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    builtCli();
    dir = await mkdtemp(join(tmpdir(), 'cli-migrate-'));
    sim = await startSimHost({
      simDir: dir,
      desc: {
        guests: [
          guest(1, 'early', 48),
          guest(2, 'rounds'),
          guest(3, 'late'),
          guest(4, 'later'),
          guest(5, 'aborted'),
          { ...guest(6, 'deaf'), simMode: 'never-ack' } as HostDescription['guests'][number],
          guest(7, 'prompt'),
        ],
      },
    });
    env = { ...process.env, ...sim.env, PATH: `${join(dir, 'bin')}:${process.env['PATH'] ?? ''}` };
    xs = await connectXenStore({ path: sim.socketPath, timeoutMs: 10_000 });
    agent = spawnAgent({ env, configPath: join(dir, 'devmigrate.json'), logFile: join(dir, 'agent.log') });
    await waitAgentReady(xs, agent.pid);
  }, 90_000);

  afterAll(async () => {
    await agent?.stop('SIGTERM');
    await xs?.close().catch(() => undefined);
    await sim?.stop().catch(() => undefined);
    if (process.env['KEEP_TEST_DIR'] === undefined) await rm(dir, { recursive: true, force: true });
    else console.log('KEPT', dir);
  }, 90_000);

  /** Starts `devmigrate migrate -s sim-ssh <name> host-b` with the stand-in xl's timings. */
  function migrate(name: string, xlEnv: Record<string, string>) {
    const child = spawn(
      process.execPath,
      [builtCli(), '--config', join(dir, 'devmigrate.json'), 'migrate', '-s', 'sim-ssh', name, 'host-b'],
      { env: { ...env, ...xlEnv }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    current = { output: () => out };
    return {
      child,
      output: () => out,
      exited: Promise.race([
        exited,
        new Promise<null>((_, rej) =>
          setTimeout(() => rej(new Error(`migrate did not end: ${out}`)), 60_000),
        ),
      ]),
    };
  }

  let current: { output(): string } | undefined;
  const until = (path: string, pred: () => Promise<boolean>, what: string): Promise<void> =>
    waitWatched(xs, path, pred, 30_000, what).catch((err: unknown) => {
      throw new Error(`${String(err)}; migrate said: ${current?.output() ?? ''}`);
    });

  async function atDestination(name: string): Promise<string | undefined> {
    try {
      const list = JSON.parse(await readFile(join(dir, 'hosts', 'host-b.json'), 'utf8')) as {
        name: string;
        state: string;
      }[];
      return list.find((g) => g.name === name)?.state;
    } catch {
      return undefined;
    }
  }

  it('Ctrl-C while the devices are prepared: the job is aborted, exit 130, the guest runs here', async () => {
    const m = migrate('early', {});
    await until(J(1), async () => (await xs.tryRead(`${J(1)}/state`)) === 'pre-suspend', 'pre-suspend');
    m.child.kill('SIGINT');
    expect(await m.exited, m.output()).toBe(130);
    expect(m.output()).toContain(
      'interrupted before xl ran: job aborted, devices recovered; early keeps running here',
    );
    expect(await xs.tryRead(`${J(1)}/state`)).toBe('aborted');
    expect(await domainRunning(sim.harness, 1)).toBe(true);
    expect(await xs.tryRead(`${J(1)}/toolstack/migrate-start`)).toBeUndefined(); // xl never ran
  }, 60_000);

  it("Ctrl-C during xl's live rounds: xl's transport is stopped, xl resumes the guest here, exit 130", async () => {
    const m = migrate('rounds', { SIM_XL_ROUND_MS: '6000' });
    await until(
      J(2),
      async () => (await xs.tryRead(`${J(2)}/toolstack/migrate-start`)) !== undefined,
      'xl started',
    );
    // Into the first round: xl has its transport ("exec sim-ssh host-b xl migrate-receive") by then.
    await new Promise((r) => setTimeout(r, 1500));
    m.child.kill('SIGINT');
    expect(await m.exited, m.output()).toBe(130);
    expect(m.output()).toContain('stopping xl before its point of no return');
    expect(m.output()).toMatch(
      /interrupted: xl migrate was stopped before its point of no return; rounds: it is running here; its devices recovered/,
    );
    expect(await xs.tryRead(`${J(2)}/state`)).toBe('aborted');
    expect(await xs.tryRead(`${J(2)}/toolstack/resumed`)).toBeDefined();
    expect(await domainRunning(sim.harness, 2)).toBe(true);
    expect(await atDestination('rounds')).toBeUndefined(); // the receiver discarded its copy
  }, 60_000);

  it("Ctrl-C past xl's point of no return: it says where the guest is, goes on and unpauses it there (0)", async () => {
    const m = migrate('late', { SIM_XL_ACK_DELAY_MS: '3000' });
    await until(
      J(3),
      async () => (await xs.tryRead(`${J(3)}/toolstack/point-of-no-return`)) !== undefined,
      'no return',
    );
    m.child.kill('SIGINT');
    expect(await m.exited, m.output()).toBe(0);
    expect(m.output()).toContain(
      'interrupted, but xl is past its point of no return: late is suspended here (renamed late--migratedaway) and host-b holds its memory',
    );
    expect(m.output()).toContain('migrated late to host-b; it is running there');
    // The unpause went through the remote shell started with xl (remote-command.ts), not a new one.
    expect(m.output()).toContain('unpausing at the destination (remote shell connected while xl ran)');
    expect(await atDestination('late')).toBe('running');
    expect(await xs.tryRead(`${J(3)}/state`)).toBe('done');
  }, 60_000);

  it("unpauses the moment xl reports the target's startup; xl's removal of the source yields the CPU", async () => {
    const niceFile = join(dir, 'teardown-nice');
    const m = migrate('prompt', { SIM_XL_TEARDOWN_MS: '4000', SIM_XL_NICE_FILE: niceFile });
    // Running at the destination while xl still removes the source (4 s here): the guest does
    // not wait for that removal.
    const deadline = Date.now() + 45_000;
    while ((await atDestination('prompt')) !== 'running' && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    expect(await atDestination('prompt'), m.output()).toBe('running');
    expect(existsSync(niceFile)).toBe(false);
    expect(await m.exited, m.output()).toBe(0);
    expect(m.output()).toContain('unpausing at the destination (remote shell connected while xl ran)');
    // The removal ran at nice 10 (XL_TEARDOWN_NICE), below the unpause's ssh and this command.
    expect((await readFile(niceFile, 'utf8')).trim()).toBe('10');
  }, 60_000);

  it('a second Ctrl-C there leaves at once with the steps still to take (5); xl finishes without us', async () => {
    const m = migrate('later', { SIM_XL_ACK_DELAY_MS: '4000' });
    await until(
      J(4),
      async () => (await xs.tryRead(`${J(4)}/toolstack/point-of-no-return`)) !== undefined,
      'no return',
    );
    m.child.kill('SIGINT');
    await new Promise((r) => setTimeout(r, 300));
    m.child.kill('SIGINT');
    expect(await m.exited, m.output()).toBe(5);
    expect(m.output()).toContain('left before the end');
    const xlLog = /xl goes on without this command; its output: (\S+)/.exec(m.output())?.[1];
    expect(xlLog).toBeDefined();
    expect(m.output()).toContain(
      "when `devmigrate status 4` says done (devices synced): sim-ssh 'host-b' xl unpause later".replace(
        "'host-b'",
        'host-b',
      ),
    );
    // xl (its own process group) finishes the move: paused there, as the hint says; the unpause's
    // remote shell, started with xl, ended with this command without its word.
    await until(J(4), async () => (await xs.tryRead(`${J(4)}/state`)) === 'done', 'done');
    const deadline = Date.now() + 20_000;
    while ((await atDestination('later')) !== 'paused' && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 100));
    expect(await atDestination('later')).toBe('paused');
    // xl writes its last line after the destination's startup, once it removed the source.
    const logDeadline = Date.now() + 20_000;
    while (
      !(await readFile(xlLog ?? '', 'utf8')).includes('Migration successful.') &&
      Date.now() < logDeadline
    )
      await new Promise((r) => setTimeout(r, 100));
    expect(await readFile(xlLog ?? '', 'utf8')).toContain('Migration successful.');
    await rm(xlLog ?? '', { force: true });
  }, 60_000);

  it('`devmigrate abort` after xl suspended the guest: migrate stops xl (4), abort says the guest runs here (0)', async () => {
    const m = migrate('aborted', { SIM_XL_ROUND_MS: '300', SIM_XL_LAST_ROUND_MS: '6000' });
    await until(
      J(5),
      async () => (await xs.tryRead(`${J(5)}/timeline/suspended`)) !== undefined,
      'suspended by xl',
    );
    const ab = spawnSync(
      process.execPath,
      [builtCli(), '--config', join(dir, 'devmigrate.json'), 'abort', 'aborted'],
      {
        env,
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    expect(await m.exited, m.output()).toBe(4);
    expect(m.output()).toMatch(
      /xl migrate was stopped before its point of no return; aborted: it is running here/,
    );
    expect(ab.status, ab.stdout + ab.stderr).toBe(0);
    expect(ab.stdout).toContain('xl stopped before its point of no return and aborted runs here');
    expect(await domainRunning(sim.harness, 5)).toBe(true);
    expect(await atDestination('aborted')).toBeUndefined();
  }, 60_000);

  it('`devmigrate abort` ends at once when the requester removes the job it waits for (5), not after its timeout', async () => {
    // A job whose agent suspend hangs on a guest that never acks: the abort has to wait for it.
    const { writeRequest, removeJob } = await import('../../src/cli/job-client.js');
    await writeRequest(xs, 6, { id: 'deaf-1', target: 'host-b', mode: 'auto', suspend: 'agent' });
    await until(J(6), async () => (await xs.tryRead(`${J(6)}/state`)) === 'suspending', 'suspending').catch(
      async (e: unknown) => {
        throw new Error(
          `${String(e)}; job: ${await xs.tryRead(`${J(6)}/state`)} ${await xs.tryRead(`${J(6)}/error`)}`,
        );
      },
    );
    const t0 = Date.now();
    const ab = spawn(
      process.execPath,
      [builtCli(), '--config', join(dir, 'devmigrate.json'), 'abort', 'deaf', '--timeout', '120'],
      {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    ab.stdout.on('data', (b: Buffer) => (out += b.toString()));
    ab.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const code = new Promise<number | null>((r) => ab.once('exit', (c) => r(c)));
    await until(J(6), async () => (await xs.tryRead(`${J(6)}/control`)) === 'abort', 'abort written');
    await removeJob(xs, 6);
    expect(await code, out).toBe(5);
    expect(out).toContain('the job deaf-1 was removed by its requester before it reported the abort');
    expect(Date.now() - t0).toBeLessThan(20_000);
    await waitWatched(
      xs,
      '/local/domain/6',
      async () => domainRunning(sim.harness, 6),
      20_000,
      'deaf running',
    );
  }, 60_000);
});
