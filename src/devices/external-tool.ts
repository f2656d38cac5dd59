// Runs an external device tool: argv only (spawn, never a shell), every value validated first
// against a strict charset (Debian's external-device-migrate runs `eval` on its arguments), a
// timeout that sends SIGTERM then SIGKILL, output lines to the log, and the exit status decides.
import { spawn } from 'node:child_process';
import type { ToolConfig } from '../config/schema.js';
import { SAFE_WORD } from '../config/schema.js';
import type {
  DeviceMigrator,
  DeviceRef,
  Logger,
  OpContext,
  Phase,
  TestOutcome,
  ToolTracking,
} from './types.js';
import { DeviceOpError } from './types.js';

/** Values that may reach the tool's argv: no whitespace, quotes, $, `, ;, |, &, <, >, *, ?, ... */
const TOOL_VALUE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}$/;

export class ToolInputError extends Error {
  override readonly name = 'ToolInputError';
  constructor(
    readonly arg: string,
    readonly value: string,
  ) {
    super(
      `refusing to run the tool: ${arg} ${JSON.stringify(value.slice(0, 40))} has characters outside [A-Za-z0-9_.:-]`,
    );
  }
}

export interface ToolRunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  aborted: boolean;
  /** Last non-empty output lines (stderr and stdout), for the one-line reason. */
  tail: string[];
}

export interface RunToolOptions {
  timeoutMs: number;
  killGraceMs: number;
  signal?: AbortSignal;
  log: Logger;
  env?: Record<string, string>;
  cwd?: string;
  /** Each output line; return true for a progress line (then logged at debug, not info). */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => boolean | void;
  /**
   * The check every argv value must pass (default: a plain word, SAFE_WORD). A caller whose argv
   * holds values of another validated shape (rsync's `-e "ssh -o X"`, `[v6]:path`) passes its own.
   */
  argOk?: (arg: string) => boolean;
  /** Records the tool before it runs (its environment marks its processes); see OpContext.toolProcess. */
  track?: () => Promise<ToolTracking>;
}

/** Checks each argv value; throws ToolInputError before anything is spawned. */
export function checkToolValue(arg: string, value: string): string {
  if (!TOOL_VALUE.test(value)) throw new ToolInputError(arg, value);
  return value;
}

/** Runs a program with argv, bounded in time; resolves with how it ended (never rejects on exit status). */
export async function runTool(
  path: string,
  args: readonly string[],
  opts: RunToolOptions,
): Promise<ToolRunResult> {
  if (!path.startsWith('/')) throw new ToolInputError('path', path);
  const argOk = opts.argOk ?? ((a: string) => SAFE_WORD.test(a));
  for (const a of args) {
    if (!argOk(a)) throw new ToolInputError('argv', a);
  }
  let tracking: ToolTracking | undefined;
  try {
    tracking = await opts.track?.();
  } catch (err) {
    throw new DeviceOpError(`cannot record the tool in the job, not run: ${(err as Error).message}`, {
      cause: err,
    });
  }
  // The record's write may outlast the operation (an abort, a timeout meanwhile): a tool started
  // now would run beside the recovery that has begun; it is not started at all.
  if (opts.signal?.aborted) {
    tracking?.ended();
    throw new DeviceOpError(`not run: the operation ended while the tool was being recorded`);
  }
  return new Promise((resolve, reject) => {
    const tail: string[] = [];
    let timedOut = false;
    let aborted = false;
    let killTimer: NodeJS.Timeout | undefined;
    const child = spawn(path, args, {
      shell: false,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...opts.env, ...tracking?.env },
      cwd: opts.cwd ?? '/',
      // Own process group: a timeout kills the tool's children too.
      detached: true,
    });
    if (child.pid !== undefined) tracking?.spawned(child.pid);
    const killGroup = (sig: NodeJS.Signals): void => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, sig);
      } catch {
        // Already gone.
      }
    };
    const stop = (): void => {
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), opts.killGraceMs);
      killTimer.unref();
    };
    const timer = setTimeout(() => {
      timedOut = true;
      opts.log.warn(`tool ${path} timed out after ${opts.timeoutMs} ms; terminating`, { args });
      stop();
    }, opts.timeoutMs);
    const onAbort = (): void => {
      aborted = true;
      stop();
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.signal?.aborted) onAbort();

    const lineReader = (stream: 'stdout' | 'stderr') => {
      let buf = '';
      return (chunk: Buffer): void => {
        buf += chunk.toString('utf8');
        const parts = buf.split(/\r\n|\n|\r/);
        buf = parts.pop() ?? '';
        if (buf.length > 8192) buf = buf.slice(-8192);
        for (const line of parts) {
          if (line.trim() === '') continue;
          tail.push(line);
          if (tail.length > 5) tail.shift();
          // A progress line the caller consumed (rsync's, about every second) goes to debug:
          // info keeps what a tool says, not a ticker of it.
          const progress = opts.onLine?.(line, stream) === true;
          opts.log[progress ? 'debug' : 'info'](`[${path}] ${line}`, { stream });
        }
      };
    };
    child.stdout.on('data', lineReader('stdout'));
    child.stderr.on('data', lineReader('stderr'));
    child.on('error', (err) => {
      tracking?.ended();
      clearTimeout(timer);
      if (killTimer !== undefined) clearTimeout(killTimer);
      opts.signal?.removeEventListener('abort', onAbort);
      reject(new DeviceOpError(`cannot run ${path}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      tracking?.ended();
      clearTimeout(timer);
      if (killTimer !== undefined) clearTimeout(killTimer);
      opts.signal?.removeEventListener('abort', onAbort);
      resolve({ code, signal, timedOut, aborted, tail });
    });
  });
}

const STEP_NUMBER: Record<Phase, number> = { test: 0, preSuspend: 1, postSuspend: 2, sync: 3 };

/** Builds external-device-migrate's argv; every value is checked first. */
export function externalDeviceMigrateArgs(p: {
  step: number;
  host: string;
  domname: string;
  type: string;
  subtype?: string;
  recover?: boolean;
}): string[] {
  const args = [
    '-step',
    String(p.step),
    '-host',
    checkToolValue('-host', p.host),
    '-domname',
    checkToolValue('-domname', p.domname),
    '-type',
    checkToolValue('-type', p.type),
  ];
  if (p.subtype !== undefined) args.push('-subtype', checkToolValue('-subtype', p.subtype));
  if (p.recover === true) args.push('-recover');
  return args;
}

function describeEnd(r: ToolRunResult, timeoutMs: number): string {
  if (r.timedOut) return `timed out after ${timeoutMs} ms`;
  if (r.aborted) return 'aborted';
  const how = r.code !== null ? `exit status ${r.code}` : `signal ${r.signal ?? '?'}`;
  const last = r.tail[r.tail.length - 1];
  return last !== undefined ? `${how}: ${last}` : how;
}

/** A device whose every phase is delegated to an external tool (the xend contract). */
export class ExternalToolMigrator implements DeviceMigrator {
  readonly policy: string;
  constructor(
    private readonly dev: DeviceRef,
    private readonly tool: ToolConfig,
    private readonly killGraceMs: number,
  ) {
    this.policy = `external:${tool.path}`;
  }

  private subtype(): string | undefined {
    const t = this.dev.backend.type;
    return this.tool.passSubtype && t !== undefined && t !== '' ? t : undefined;
  }

  private async call(ctx: OpContext, phase: Phase, recover: boolean): Promise<ToolRunResult> {
    if (ctx.job.domainName === undefined) {
      throw new DeviceOpError('no trustworthy domain name for the tool (-domname)');
    }
    const args = externalDeviceMigrateArgs({
      step: STEP_NUMBER[phase],
      host: ctx.job.target,
      domname: ctx.job.domainName,
      type: this.dev.type,
      subtype: this.subtype(),
      recover,
    });
    return runTool(this.tool.path, args, {
      timeoutMs: this.tool.timeoutMs,
      killGraceMs: this.killGraceMs,
      signal: ctx.signal,
      log: ctx.log,
      track: ctx.toolProcess?.bind(ctx),
      env: {
        DEVMIGRATE_DOMID: String(this.dev.domid),
        DEVMIGRATE_DEVID: this.dev.devid,
        DEVMIGRATE_BACKEND_DOMID: String(this.dev.backendDomid),
        DEVMIGRATE_BACKEND_PATH: this.dev.backendPath,
        DEVMIGRATE_JOB_ID: ctx.job.jobId,
      },
    });
  }

  private async step(ctx: OpContext, phase: Phase): Promise<void> {
    const r = await this.call(ctx, phase, false);
    if (r.code !== 0)
      throw new DeviceOpError(`${this.tool.path} ${phase}: ${describeEnd(r, this.tool.timeoutMs)}`);
  }

  async test(ctx: OpContext): Promise<TestOutcome> {
    let r: ToolRunResult;
    try {
      r = await this.call(ctx, 'test', false);
    } catch (err) {
      return { ok: false, reason: (err as Error).message };
    }
    return r.code === 0
      ? { ok: true }
      : { ok: false, reason: `${this.tool.path}: ${describeEnd(r, this.tool.timeoutMs)}` };
  }
  preSuspend(ctx: OpContext): Promise<void> {
    return this.step(ctx, 'preSuspend');
  }
  postSuspend(ctx: OpContext): Promise<void> {
    return this.step(ctx, 'postSuspend');
  }
  sync(ctx: OpContext): Promise<void> {
    return this.step(ctx, 'sync');
  }
  async recover(ctx: OpContext, lastPhase: Phase): Promise<void> {
    const r = await this.call(ctx, lastPhase, true);
    if (r.code !== 0)
      throw new DeviceOpError(`${this.tool.path} recover: ${describeEnd(r, this.tool.timeoutMs)}`);
  }
}
