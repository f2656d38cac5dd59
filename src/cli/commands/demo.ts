// `devmigrate demo`: the product on a machine without Xen. Starts a simulated host (real
// xenstored, simulated hypervisor and guests) and the agent as a child process, then runs three
// scenes: a migration with several devices, a refusal (vtpm, no tool) and an abort (a guest that
// will not suspend, left running). Exit 0 only when every scene ends as it should.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { closeSync, openSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connectXenStore } from '../../xenstore/index.js';
import type { XenStore } from '../../xenstore/types.js';
import type { HostDescription } from '../../../xen-mocks/sim-host.js';
import { CliError, ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { println, type CliContext } from '../context.js';
import {
  isFinal,
  newJobId,
  readJob,
  removeJob,
  waitForJob,
  writeRequest,
  type JobView,
} from '../job-client.js';
import { deviceLines, ProgressDisplay } from '../render.js';
import { cliEntry, startSim, type RunningSim } from './sim-serve.js';

export const DEMO_TARGET = 'host-b.example.org';

/** Three guests, one per scene. Device paths under /srv/shared/ count as shared storage. */
export function demoHost(): HostDescription & {
  guests: (HostDescription['guests'][number] & { simMode?: string })[];
} {
  return {
    dom0: { name: 'Domain-0' },
    guests: [
      {
        domid: 1,
        name: 'web01',
        uuid: '6f1c3a52-8d0e-4b7a-9c11-2f5e7d8a9b01',
        memoryKb: 524288,
        vcpus: 2,
        devices: [
          {
            type: 'vbd',
            vdev: 'xvda',
            params: '/srv/shared/web01-root.img',
            format: 'file',
            mode: 'w',
            backend: 'qdisk',
          },
          {
            type: 'vbd',
            vdev: 'xvdb',
            params: '/srv/shared/web01-data.img',
            format: 'file',
            mode: 'w',
            backend: 'qdisk',
          },
          { type: 'vif', mac: '00:16:3e:5a:01:01', bridge: 'xenbr0' },
          { type: 'vif', devid: 1, mac: '00:16:3e:5a:01:02', bridge: 'xenbr1' },
          { type: 'console' },
        ],
      },
      {
        domid: 2,
        name: 'vault01',
        uuid: '0b9e2d44-1c7f-4e36-8a5d-7f3c2b1e4d02',
        devices: [
          {
            type: 'vbd',
            vdev: 'xvda',
            params: '/srv/shared/vault01.img',
            format: 'file',
            mode: 'w',
            backend: 'qdisk',
          },
          { type: 'vif', mac: '00:16:3e:5a:02:01' },
          { type: 'vtpm', uuid: '3d5b7e11-9a2c-4f80-b6d4-1e2f3a4b5c03' },
        ],
      },
      {
        domid: 3,
        name: 'stubborn01',
        uuid: '9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c04',
        simMode: 'never-ack',
        devices: [
          {
            type: 'vbd',
            vdev: 'xvda',
            params: '/srv/shared/stubborn01.img',
            format: 'file',
            mode: 'w',
            backend: 'qdisk',
          },
          { type: 'vif', mac: '00:16:3e:5a:03:01' },
        ],
      },
    ],
  };
}

/** The agent's config for the demo: shared storage under /srv/shared, short suspend waits. */
export function demoConfig(): Record<string, unknown> {
  return {
    $comment: 'devmigrate demo: disks under /srv/shared/ are on shared storage; no vtpm tool',
    logLevel: 'info',
    disks: { sharedPathPrefixes: ['/srv/shared/'] },
    timeouts: { suspendAckMs: 3000, suspendMs: 5000, testMs: 20000 },
  };
}

interface Scene {
  title: string;
  domid: number;
  /** The job's final state; an abort after an error ends in "failed" with recovered=1. */
  expect: 'done' | 'refused' | 'failed';
}

async function waitAgentReady(xs: XenStore, agent: ChildProcess, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  await new Promise<void>((resolveReady, reject) => {
    let watchClose: (() => Promise<void>) | undefined;
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      agent.off('exit', onExit);
      void watchClose?.();
      if (err) reject(err);
      else resolveReady();
    };
    const onExit = (code: number | null): void =>
      finish(new CliError(`the agent exited during start (code ${code})`, ExitCode.FAILURE));
    agent.on('exit', onExit);
    const timer = setTimeout(
      () => finish(new CliError('the agent did not become ready', ExitCode.TIMEOUT)),
      Math.max(0, end - Date.now()),
    );
    void xs
      .watch('/tool/devmigrate/agent/state', {
        onEvent: () =>
          void xs.tryRead('/tool/devmigrate/agent/pid').then(async (pid) => {
            if (pid === String(agent.pid) && (await xs.tryRead('/tool/devmigrate/agent/state')) === 'ready')
              finish();
          }),
      })
      .then(
        (w) => (watchClose = () => w.close()),
        (e: unknown) => finish(e instanceof Error ? e : new Error(String(e))),
      );
  });
}

export async function demoCommand(ctx: CliContext, args: { dir?: string }): Promise<ExitCodeValue> {
  const keep = args.dir !== undefined;
  const dir = keep ? resolve(args.dir ?? '.') : await mkdtemp(join(tmpdir(), 'devmigrate-demo-'));
  await mkdir(dir, { recursive: true });
  const say = (l = ''): void => println(ctx, l);
  let sim: RunningSim | undefined;
  let agent: ChildProcess | undefined;
  let xs: XenStore | undefined;
  let ok = true;
  try {
    say('devmigrate demo: a simulated Xen host (the real xenstored, a simulated hypervisor and guests)');
    const cfgPath = join(dir, 'devmigrate.json');
    await writeFile(cfgPath, `${JSON.stringify(demoConfig(), null, 2)}\n`);
    const simLog = openSync(join(dir, 'sim.log'), 'a');
    sim = await startSim({
      dir: join(dir, 'xenstored'),
      desc: demoHost(),
      log: (m) => writeFileSyncSafe(simLog, m),
    });
    say(`  xenstored pid ${sim.harness.pid}, socket ${sim.env['XENSTORED_PATH'] ?? '?'}`);
    for (const g of demoHost().guests) {
      const devs = (g.devices ?? []).map((d) => d.type).join(', ');
      say(`  guest ${g.name} (id ${g.domid}): ${devs}${g.simMode ? `  [kernel mode: ${g.simMode}]` : ''}`);
    }
    xs = await connectXenStore({ path: sim.harness.socketPath, timeoutMs: 10_000 });

    const agentLog = openSync(join(dir, 'agent.log'), 'a');
    agent = spawn(process.execPath, [cliEntry(), 'agent', '--config', cfgPath, '--log-format', 'human'], {
      env: { ...process.env, ...sim.env },
      stdio: ['ignore', agentLog, agentLog],
    });
    closeSync(agentLog);
    const t0 = Date.now();
    await waitAgentReady(xs, agent, 20_000);
    say(`  agent pid ${agent.pid} ready in ${Date.now() - t0} ms (log: ${join(dir, 'agent.log')})`);

    const scenes: Scene[] = [
      {
        title: `1. migrate web01 to ${DEMO_TARGET} (2 disks on shared storage, 2 NICs, console)`,
        domid: 1,
        expect: 'done',
      },
      {
        title: '2. migrate vault01: it has a vTPM and no vTPM migration tool is configured',
        domid: 2,
        expect: 'refused',
      },
      {
        title: '3. migrate stubborn01: its kernel never answers the suspend request',
        domid: 3,
        expect: 'failed',
      },
    ];
    for (const sc of scenes) {
      say();
      say(sc.title);
      const job = await runScene(ctx, xs, sc);
      const got = job?.state ?? 'none';
      for (const l of job ? deviceLines(job) : []) say(l);
      if (job?.error) say(`  reason: ${job.error}`);
      const recovered = (await xs.tryRead(`/tool/devmigrate/jobs/${sc.domid}/recovered`)) === '1';
      const matched = got === sc.expect && (sc.expect !== 'failed' || recovered);
      if (!matched) ok = false;
      const meaning =
        got === 'done'
          ? 'migrated'
          : got === 'refused'
            ? 'refused, nothing was changed'
            : recovered
              ? 'aborted: devices recovered'
              : got;
      say(`  => ${meaning} (job state ${got})${matched ? '' : ` -- expected ${sc.expect}`}`);
      if (sc.expect === 'done' && matched) {
        // The toolstack's part: xl would now send the last memory pages, start the guest on the
        // destination and destroy it here. The simulation does the last step.
        await sim.harness.destroyDomain(sc.domid);
        say(
          `  web01 has left this host (the toolstack finished the move; here it is destroyed at the source)`,
        );
      }
      if (sc.expect !== 'done') {
        const d = await sim.harness.getDomain(sc.domid);
        const running = d !== undefined && !d.shutdown && d.paused === 0 && !d.dying;
        say(`  guest ${running ? 'is RUNNING at the source' : `is NOT running (${JSON.stringify(d)})`}`);
        if (!running) ok = false;
      }
      await removeJob(xs, sc.domid);
    }
    say();
    const code = await stopAgent(agent, 45_000);
    agent = undefined;
    say(`agent stopped (exit ${code})`);
    if (code !== 0) ok = false;
    say(
      ok
        ? 'demo finished: every scene ended as expected'
        : 'demo finished: some scene did NOT end as expected',
    );
    return ok ? ExitCode.OK : ExitCode.FAILURE;
  } finally {
    if (agent) await stopAgent(agent, 45_000).catch(() => undefined);
    await xs?.close().catch(() => undefined);
    await sim?.stop().catch(() => undefined);
    if (!keep) await rm(dir, { recursive: true, force: true });
  }
}

function writeFileSyncSafe(fd: number, line: string): void {
  try {
    writeSync(fd, `${line}\n`);
  } catch {
    // logging the simulation must never break the demo
  }
}

async function runScene(ctx: CliContext, xs: XenStore, sc: Scene): Promise<JobView | undefined> {
  await writeRequest(xs, sc.domid, { id: newJobId(), target: DEMO_TARGET, mode: 'auto', suspend: 'agent' });
  const display = new ProgressDisplay(ctx.out, true);
  try {
    return await waitForJob(
      xs,
      sc.domid,
      (j) => isFinal(j?.state),
      60_000,
      (j) => display.update(j),
    );
  } catch (err) {
    if (err instanceof CliError && err.code === ExitCode.TIMEOUT) return readJob(xs, sc.domid);
    throw err;
  } finally {
    display.end();
  }
}

function stopAgent(agent: ChildProcess, timeoutMs: number): Promise<number> {
  return new Promise((resolveExit) => {
    if (agent.exitCode !== null) return resolveExit(agent.exitCode);
    const timer = setTimeout(() => agent.kill('SIGKILL'), timeoutMs);
    agent.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolveExit(code ?? (signal ? 128 : 1));
    });
    agent.kill('SIGTERM');
  });
}
