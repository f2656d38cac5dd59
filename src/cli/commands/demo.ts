// `devmigrate demo`: the product on a machine without Xen, told the same way every run. It starts
// a simulated host (real xenstored, simulated hypervisor and guests, the stand-in xl; from the test
// world, loaded by path) and the agent as a child process, then types the commands an operator
// would: check and migrate a guest with a local disk (copied by rsync) and shared storage, check
// one that is refused, and migrate one whose kernel never answers the suspend request (left
// running). Each migration is followed by its timeline. Exit 0 only when every scene ends as it should.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, writeSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { connectXenStore } from '../../xenstore/index.js';
import type { XenStore } from '../../xenstore/types.js';
import { CliError, ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { println, type CliContext } from '../context.js';
import { readJob, waitUntil } from '../job-client.js';
import { timelineTable } from '../render.js';
import { loadSimKit, type RunningSimPort } from '../sim-port.js';
import { cliEntry } from '../entry.js';

export const DEMO_TARGET = 'host-b';

/** Writes every line of what it is given with a prefix (a scene's output under its title). */
class Indented extends Writable {
  private atStart = true;
  constructor(
    private readonly out: Writable,
    private readonly prefix: string,
  ) {
    super();
  }
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    let s = '';
    for (const ch of chunk.toString()) {
      if (this.atStart && ch !== '\n') s += this.prefix;
      s += ch;
      this.atStart = ch === '\n';
    }
    this.out.write(s, cb);
  }
}

interface Scene {
  title: string;
  argv: string[];
  expect: ExitCodeValue;
  /** After a migration: the timeline of this domain's job, and where the guest runs. */
  timelineOf?: { domid: number; name: string };
  /** The guest must still run at the source afterwards. */
  runningHere?: number;
  /** The guest must run at the destination afterwards (xl list there). */
  atDestination?: string;
}

const SCENES: readonly Scene[] = [
  {
    title: 'Can web01 go to host-b? (a disk on shared storage, a local data disk, two NICs, a console)',
    argv: ['check', 'web01', DEMO_TARGET],
    expect: ExitCode.OK,
  },
  {
    title: 'Migrate it: xl moves the memory, the agent copies the local disk (rsync) and syncs every device',
    argv: ['migrate', '-s', 'sim-ssh', 'web01', DEMO_TARGET],
    expect: ExitCode.OK,
    timelineOf: { domid: 1, name: 'web01' },
    atDestination: 'web01',
  },
  {
    title: 'db01 has a vTPM (no vTPM migration tool is configured) and a PCI device passed through',
    argv: ['check', 'db01', DEMO_TARGET],
    expect: ExitCode.REFUSED,
  },
  {
    title: "Migrate stubborn01: its kernel never answers the suspend request, so xl's suspend fails",
    argv: ['migrate', '-s', 'sim-ssh', 'stubborn01', DEMO_TARGET],
    expect: ExitCode.ABORTED,
    timelineOf: { domid: 3, name: 'stubborn01' },
    runningHere: 3,
  },
];

async function waitAgentReady(xs: XenStore, agent: ChildProcess, timeoutMs: number): Promise<void> {
  let exited: number | null | undefined;
  agent.once('exit', (code) => (exited = code));
  const ready = await waitUntil(
    xs,
    '/tool/devmigrate/agent',
    async () => {
      if (exited !== undefined) return true;
      return (
        (await xs.tryRead('/tool/devmigrate/agent/pid')) === String(agent.pid) &&
        (await xs.tryRead('/tool/devmigrate/agent/state')) === 'ready'
      );
    },
    timeoutMs,
  );
  if (exited !== undefined)
    throw new CliError(`the agent exited during start (code ${exited})`, ExitCode.FAILURE);
  if (!ready) throw new CliError('the agent did not become ready', ExitCode.TIMEOUT);
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

/** Runs a command "on" a host through the simulated host's remote shell; its output. */
function onHost(simDir: string, host: string, argv: string[]): Promise<string> {
  return new Promise((resolveOut) => {
    const child = spawn(join(simDir, 'bin', 'sim-ssh'), [host, ...argv], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('close', () => {
      clearTimeout(t);
      resolveOut(out);
    });
  });
}

export async function demoCommand(ctx: CliContext, args: { dir?: string }): Promise<ExitCodeValue> {
  const kit = await loadSimKit();
  const keep = args.dir !== undefined;
  const dir = keep ? resolve(args.dir ?? '.') : await mkdtemp(join(tmpdir(), 'devmigrate-demo-'));
  await mkdir(dir, { recursive: true });
  const say = (l = ''): void => println(ctx, l);
  const savedEnv = { ...process.env };
  let sim: RunningSimPort | undefined;
  let agent: ChildProcess | undefined;
  let xs: XenStore | undefined;
  let ok = true;
  let simLog: number | undefined;
  try {
    say('devmigrate demo: a simulated Xen host (the real xenstored, a simulated hypervisor and guests, a');
    say('stand-in xl), the agent, and the commands an operator types');
    // Open until the simulated guests stop: a descriptor closed under them would be reused (by a
    // socket) and their log lines written into it.
    const logFd = openSync(join(dir, 'sim.log'), 'a');
    simLog = logFd;
    sim = await kit.startSimHost({
      simDir: dir,
      hostFile: kit.demoHostFile(),
      log: (m) => {
        try {
          writeSync(logFd, `${m}\n`);
        } catch {
          // logging the simulation must never break the demo
        }
      },
      // Short live rounds, and less patience than libxl's 60 s with a guest that never answers.
      xlTimings: { SIM_XL_ROUND_MS: '300', SIM_XL_SUSPEND_TIMEOUT_MS: '2000' },
    });
    for (const g of sim.guestsInfo) {
      say(
        `  guest ${g.name} (id ${g.domid}): ${g.devices.join(', ')}${g.simMode ? `  [kernel: ${g.simMode}]` : ''}`,
      );
    }
    // The commands below run in this process and their children (xl, sim-ssh) find the host too.
    Object.assign(process.env, sim.env, { PATH: `${join(dir, 'bin')}:${process.env['PATH'] ?? ''}` });
    xs = await connectXenStore({ path: sim.socketPath, timeoutMs: 10_000 });
    const cfg = join(dir, 'devmigrate.json');
    const agentLog = openSync(join(dir, 'agent.log'), 'a');
    agent = spawn(process.execPath, [cliEntry(), 'agent', '--config', cfg, '--log-format', 'human'], {
      env: { ...process.env },
      stdio: ['ignore', agentLog, agentLog],
    });
    closeSync(agentLog);
    await waitAgentReady(xs, agent, 20_000);
    say(`  agent ready (pid ${agent.pid})${keep ? `; its log: ${join(dir, 'agent.log')}` : ''}`);

    const { main } = await import('../main.js');
    const out = new Indented(ctx.out, '    ');
    for (const [i, sc] of SCENES.entries()) {
      say();
      say(`${i + 1}. ${sc.title}`);
      say(`  $ devmigrate ${sc.argv.join(' ')}`);
      const code = await main(['--config', cfg, ...sc.argv], {
        out,
        err: out,
        live: false,
        ...(ctx.interrupt !== undefined ? { interrupt: ctx.interrupt } : {}),
      });
      if (ctx.interrupt?.received !== undefined) {
        say('  interrupted: the demo stops here');
        return ctx.interrupt.exitCode;
      }
      const matched = code === sc.expect;
      if (!matched) ok = false;
      say(`  => exit ${code}${matched ? ' as expected' : `, expected ${sc.expect}`}`);
      if (sc.timelineOf !== undefined) {
        const job = await readJob(xs, sc.timelineOf.domid, { timeline: true });
        const table =
          job !== undefined ? timelineTable({ ...job, name: job.name ?? sc.timelineOf.name }) : [];
        say(
          `  timeline of ${sc.timelineOf.name} (from the request; \`devmigrate report ${sc.timelineOf.name}\` draws it):`,
        );
        for (const l of table) say(`  ${l}`);
        if (table.length === 0) ok = false;
      }
      if (sc.atDestination !== undefined) {
        say(`  $ sim-ssh ${DEMO_TARGET} xl list ${sc.atDestination}`);
        const listed = await onHost(dir, DEMO_TARGET, ['xl', 'list', sc.atDestination]);
        for (const l of listed.trimEnd().split('\n')) say(`    ${l}`);
        if (!/\br-----/.test(listed)) ok = false;
      }
      if (sc.runningHere !== undefined) {
        const running = await sim.domainRunning(sc.runningHere);
        say(`  the guest ${running ? 'is RUNNING at the source' : 'is NOT running at the source'}`);
        if (!running) ok = false;
      }
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
    if (!keep) say('(its files are removed; keep them, the agent log included, with --dir DIR)');
    return ok ? ExitCode.OK : ExitCode.FAILURE;
  } finally {
    if (agent) await stopAgent(agent, 45_000).catch(() => undefined);
    await xs?.close().catch(() => undefined);
    await sim?.stop().catch(() => undefined);
    if (simLog !== undefined) closeSync(simLog);
    for (const k of Object.keys(process.env)) if (!(k in savedEnv)) delete process.env[k];
    Object.assign(process.env, savedEnv);
    if (!keep) await rm(dir, { recursive: true, force: true });
  }
}
