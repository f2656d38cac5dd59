// `devmigrate sim up|down --dir D`: a simulated Xen host (real xenstored + simulated hypervisor
// + simulated guests + a stand-in xl) running in the background, for trying the product without
// Xen. `up` starts a detached supervisor (`sim serve`, from the test world loaded by path) and
// prints the shell lines that point devmigrate, xl and xenstore-utils at it, and what to try.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { CliError, ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { println, printJson, type CliContext } from '../context.js';
import { SIM_FILES, type SimEnv } from '../sim-files.js';
import { loadSimKit, type SimGuestSummary } from '../sim-port.js';
import { pidAlive } from '../../agent/pid-alive.js';
import { cliEntry } from '../entry.js';

function readPidFile(file: string): number | undefined {
  try {
    const t = readFileSync(file, 'utf8').trim();
    return /^[0-9]+$/.test(t) ? Number(t) : undefined;
  } catch {
    return undefined;
  }
}

export function readSimPid(dir: string): number | undefined {
  return readPidFile(resolve(dir, SIM_FILES.pid));
}

function shellQuote(v: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]*$/.test(v) ? v : `'${v.replace(/'/g, `'\\''`)}'`;
}

/** The shell lines `eval "$(devmigrate sim up --dir D)"` runs; bin/ goes first on PATH (the stand-in xl). */
export function envLines(env: SimEnv, dir?: string): string[] {
  const lines = Object.entries(env).map(([k, v]) => `export ${k}=${shellQuote(v)}`);
  if (dir !== undefined) lines.push(`export PATH=${shellQuote(resolve(dir, 'bin'))}:"$PATH"`);
  return lines;
}

/** What to try, as shell comments (harmless under eval). */
export function tryLines(dir: string, guests: readonly SimGuestSummary[], agentRuns = false): string[] {
  const names = guests.map((g) => `${g.name} (id ${g.domid}: ${g.devices.join(', ') || 'no devices'})`);
  return [
    `# simulated Xen host in ${dir}; guests: ${names.join('; ')}`,
    '# `xl` is a stand-in (migrate, unpause, list) and `sim-ssh host CMD` runs CMD "on" host; the agent',
    `# configuration is ${resolve(dir, 'devmigrate.json')} (DEVMIGRATE_CONFIG). Try:`,
    ...(agentRuns
      ? [`#   tail -f ${resolve(dir, SIM_FILES.agentLog)} &        # the agent's log`]
      : ['#   devmigrate agent --log-format human > agent.log 2>&1 &   # (or: sim up --agent)']),
    '#   devmigrate check web01 host-b',
    '#   devmigrate migrate -s sim-ssh web01 host-b   # xl migrate -p through the stand-in, then unpause there',
    '#   devmigrate status web01; devmigrate report web01 --svg web01.svg',
    '#   sim-ssh host-b xl list                  # the guest on the pretend destination',
    `# stop: devmigrate sim down --dir ${dir}${agentRuns ? ' (the agent too)' : ' (and the agent you started)'}`,
  ];
}

function logTail(dir: string): string[] {
  try {
    return readFileSync(resolve(dir, SIM_FILES.log), 'utf8').trim().split('\n').slice(-10);
  } catch {
    return [];
  }
}

export async function simUpCommand(
  ctx: CliContext,
  args: { dir: string; host?: string; agent?: boolean; timeoutMs?: number },
): Promise<ExitCodeValue> {
  const dir = resolve(args.dir);
  await mkdir(dir, { recursive: true });
  const old = readSimPid(dir);
  if (old !== undefined && pidAlive(old)) {
    throw new CliError(`a simulated host already runs in ${dir} (pid ${old})`, ExitCode.BUSY, [
      `stop it: devmigrate sim down --dir ${dir}`,
    ]);
  }
  await rm(resolve(dir, SIM_FILES.env), { force: true });
  await rm(resolve(dir, SIM_FILES.ready), { force: true });
  // Fails clearly here, not in the background, where the simulated host is not installed.
  await loadSimKit();
  const script = cliEntry();
  if (!existsSync(script))
    throw new CliError(`cannot find the devmigrate program to start (${script})`, ExitCode.SOFTWARE);
  const log = openSync(resolve(dir, SIM_FILES.log), 'w');
  const argv = [script, 'sim', 'serve', '--dir', dir];
  if (args.host !== undefined) argv.push('--host', resolve(args.host));
  if (args.agent === true) argv.push('--agent');
  const child = spawn(process.execPath, argv, { detached: true, stdio: ['ignore', log, log] });
  closeSync(log);
  const pid = child.pid;
  if (pid === undefined) throw new CliError('could not start the simulated host', ExitCode.FAILURE);
  let exited: number | null | undefined;
  child.on('exit', (code) => (exited = code));
  const deadline = Date.now() + (args.timeoutMs ?? 60_000);
  while (!existsSync(resolve(dir, SIM_FILES.ready))) {
    if (ctx.interrupt?.signal.aborted) {
      try {
        process.kill(-pid, 'SIGTERM');
      } catch {
        // gone already
      }
      throw new CliError(
        'interrupted: the simulated host was stopped while starting',
        ctx.interrupt.exitCode,
      );
    }
    if (exited !== undefined) {
      throw new CliError(
        `the simulated host exited during start (code ${exited})`,
        ExitCode.FAILURE,
        logTail(dir),
      );
    }
    if (Date.now() > deadline) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // gone already
      }
      throw new CliError('the simulated host did not come up in time', ExitCode.TIMEOUT, logTail(dir));
    }
    // Waiting on a file another process writes: a short sleep is the portable way (bounded above).
    await new Promise((r) => setTimeout(r, 100));
  }
  child.unref();
  const env = JSON.parse(await readFile(resolve(dir, SIM_FILES.env), 'utf8')) as SimEnv;
  const guests = JSON.parse(await readFile(resolve(dir, SIM_FILES.guests), 'utf8')) as SimGuestSummary[];
  const agentPid = readPidFile(resolve(dir, SIM_FILES.agentPid));
  if (ctx.json)
    printJson(ctx, { dir, pid, env, path: resolve(dir, 'bin'), guests, agentPid: agentPid ?? null });
  else {
    for (const l of envLines(env, dir)) println(ctx, l);
    println(ctx, `# simulated Xen host running (pid ${pid}); stop it with: devmigrate sim down --dir ${dir}`);
    if (agentPid !== undefined)
      println(ctx, `# agent running (pid ${agentPid}); its log: ${resolve(dir, SIM_FILES.agentLog)}`);
    for (const l of tryLines(dir, guests, agentPid !== undefined)) println(ctx, l);
  }
  return ExitCode.OK;
}

export async function simDownCommand(
  ctx: CliContext,
  args: { dir: string; timeoutMs?: number },
): Promise<ExitCodeValue> {
  const dir = resolve(args.dir);
  const pid = readSimPid(dir);
  if (pid === undefined || !pidAlive(pid)) {
    if (ctx.json) printJson(ctx, { dir, stopped: false, running: false });
    else println(ctx, `no simulated host runs in ${dir}`);
    await rm(resolve(dir, SIM_FILES.pid), { force: true });
    return ExitCode.OK;
  }
  process.kill(pid, 'SIGTERM');
  // The supervisor stops the agent first (its drain: up to 45 s with jobs running), then the host.
  const deadline = Date.now() + (args.timeoutMs ?? 60_000);
  while (pidAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  let forced = false;
  if (pidAlive(pid)) {
    forced = true;
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      process.kill(pid, 'SIGKILL');
    }
  }
  await rm(resolve(dir, SIM_FILES.pid), { force: true });
  if (ctx.json) printJson(ctx, { dir, stopped: true, forced });
  else println(ctx, `simulated host in ${dir} stopped${forced ? ' (forced)' : ''}`);
  return ExitCode.OK;
}

/** `sim serve`: the supervisor, from the simulated host kit. */
export async function simServeCommand(args: {
  dir: string;
  host?: string;
  agent?: boolean;
}): Promise<ExitCodeValue> {
  const kit = await loadSimKit();
  const agentArgv =
    args.agent === true
      ? [
          process.execPath,
          cliEntry(),
          'agent',
          '--config',
          resolve(args.dir, 'devmigrate.json'),
          '--log-format',
          'human',
        ]
      : undefined;
  const rc = await kit.serve({
    dir: args.dir,
    ...(args.host !== undefined ? { host: args.host } : {}),
    ...(agentArgv !== undefined ? { agentArgv } : {}),
  });
  return rc === 0 ? ExitCode.OK : ExitCode.FAILURE;
}
