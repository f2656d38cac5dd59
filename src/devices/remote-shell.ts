// Commands on the destination host through the configured remote shell (`ssh -o BatchMode=yes`
// by default). ssh joins the words with spaces and the remote shell parses them again, so every
// word is checked against a charset with no shell meaning before anything runs; argv only here.
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { runTool, ToolInputError, type ToolRunResult } from './external-tool.js';
import { DeviceOpError, type Logger } from './types.js';

/** Words that mean the same to a POSIX shell as to us: no spaces, quotes, $, `, ;, |, &, <, >, *, ?, [, ~. */
const REMOTE_WORD = /^[A-Za-z0-9_@%+=:,./-]{1,1024}$/;
/** The job target, already validated upstream (host name, IPv4, IPv6); never an option. */
const HOST = /^[A-Za-z0-9:][A-Za-z0-9:.-]{0,252}$/;

export function remoteWordOk(w: string): boolean {
  return REMOTE_WORD.test(w);
}

export interface RemoteShell {
  rsh: readonly string[];
  host: string;
  killGraceMs: number;
}

/** The PATH tools run with (external-tool.ts): where a bare remote shell name is looked up. */
const TOOL_PATH = ['/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/**
 * The remote shell's program as an absolute path: the configuration may say `ssh` (the default
 * does), tools only run from absolute paths. A bare name is looked up in the fixed tool PATH,
 * never in the agent's environment.
 */
export function resolveShellProgram(program: string): string {
  if (program.startsWith('/')) return program;
  if (!/^[A-Za-z0-9_.+-]{1,255}$/.test(program)) throw new ToolInputError('rsh', program);
  for (const dir of TOOL_PATH) {
    const candidate = join(dir, program);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new DeviceOpError(
    `remote shell ${program} not found in ${TOOL_PATH.join(':')} (give its absolute path)`,
  );
}

/** argv of `<rsh...> [extra...] <host> <words...>`, every value checked; throws ToolInputError. */
export function remoteArgv(
  shell: RemoteShell,
  words: readonly string[],
  rshExtra: readonly string[] = [],
): { path: string; args: string[] } {
  const [path, ...rshArgs] = shell.rsh;
  if (path === undefined) throw new ToolInputError('rsh', '');
  if (!HOST.test(shell.host)) throw new ToolInputError('host', shell.host);
  for (const w of [...rshArgs, ...rshExtra, ...words]) {
    if (!remoteWordOk(w)) throw new ToolInputError('remote argv', w);
  }
  return { path: resolveShellProgram(path), args: [...rshArgs, ...rshExtra, shell.host, ...words] };
}

export interface RemoteResult {
  code: number | null;
  /** stdout lines (stderr is logged and kept in `tail`). */
  stdout: string[];
  run: ToolRunResult;
}

/** A remote command that could not run or ended badly; `reason` fits one line in XenStore. */
export class RemoteCommandError extends Error {
  override readonly name = 'RemoteCommandError';
  constructor(
    readonly command: string,
    readonly reason: string,
  ) {
    super(`${command} on the destination: ${reason}`);
  }
}

export function describeRun(r: ToolRunResult, timeoutMs: number): string {
  if (r.timedOut) return `timed out after ${timeoutMs} ms`;
  if (r.aborted) return 'aborted';
  const how = r.code !== null ? `exit status ${r.code}` : `signal ${r.signal ?? '?'}`;
  const last = r.tail[r.tail.length - 1];
  return last !== undefined ? `${how}: ${last}` : how;
}

/** Runs one remote command, bounded; resolves however it exits (the caller reads `code`). */
export async function runRemote(
  shell: RemoteShell,
  words: readonly string[],
  opts: { timeoutMs: number; signal?: AbortSignal; log: Logger },
): Promise<RemoteResult> {
  const { path, args } = remoteArgv(shell, words);
  const stdout: string[] = [];
  const run = await runTool(path, args, {
    timeoutMs: opts.timeoutMs,
    killGraceMs: shell.killGraceMs,
    signal: opts.signal,
    log: opts.log,
    // Already checked (remoteArgv); runTool's default check would refuse long paths.
    argOk: (a) => a === shell.host || remoteWordOk(a),
    onLine: (line, stream) => {
      if (stream === 'stdout' && stdout.length < 1000) stdout.push(line);
    },
  });
  return { code: run.code, stdout, run };
}

/** Runs a remote command that must succeed; throws RemoteCommandError otherwise. */
export async function mustRunRemote(
  shell: RemoteShell,
  words: readonly string[],
  opts: { timeoutMs: number; signal?: AbortSignal; log: Logger },
): Promise<string[]> {
  const r = await runRemote(shell, words, opts);
  if (r.code !== 0)
    throw new RemoteCommandError(words.join(' ').slice(0, 120), describeRun(r.run, opts.timeoutMs));
  return r.stdout;
}
