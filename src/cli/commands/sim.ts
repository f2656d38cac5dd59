// `devmigrate sim up|down --dir D`: a simulated Xen host (real xenstored + simulated hypervisor
// + simulated guests) running in the background, for trying the product without Xen. `up` starts
// a detached supervisor (`sim serve`) and prints the environment that points tools at it.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { CliError, ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { println, printJson, type CliContext } from '../context.js';
import { SIM_FILES, type SimEnv } from '../sim-files.js';
import { pidAlive } from '../../agent/pid-alive.js';

export function readSimPid(dir: string): number | undefined {
  try {
    const t = readFileSync(resolve(dir, SIM_FILES.pid), 'utf8').trim();
    return /^[0-9]+$/.test(t) ? Number(t) : undefined;
  } catch {
    return undefined;
  }
}

function shellQuote(v: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]*$/.test(v) ? v : `'${v.replace(/'/g, `'\\''`)}'`;
}

export function envLines(env: SimEnv): string[] {
  return Object.entries(env).map(([k, v]) => `export ${k}=${shellQuote(v)}`);
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
  args: { dir: string; host?: string; timeoutMs?: number },
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
  const script = process.argv[1];
  if (script === undefined)
    throw new CliError('cannot find the devmigrate program to start', ExitCode.SOFTWARE);
  const log = openSync(resolve(dir, SIM_FILES.log), 'w');
  const argv = [script, 'sim', 'serve', '--dir', dir];
  if (args.host !== undefined) argv.push('--host', resolve(args.host));
  const child = spawn(process.execPath, argv, { detached: true, stdio: ['ignore', log, log] });
  closeSync(log);
  const pid = child.pid;
  if (pid === undefined) throw new CliError('could not start the simulated host', ExitCode.FAILURE);
  let exited: number | null | undefined;
  child.on('exit', (code) => (exited = code));
  const deadline = Date.now() + (args.timeoutMs ?? 60_000);
  while (!existsSync(resolve(dir, SIM_FILES.ready))) {
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
  if (ctx.json) printJson(ctx, { dir, pid, env });
  else {
    for (const l of envLines(env)) println(ctx, l);
    println(ctx, `# simulated Xen host running (pid ${pid}); stop it with: devmigrate sim down --dir ${dir}`);
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
  const deadline = Date.now() + (args.timeoutMs ?? 20_000);
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
