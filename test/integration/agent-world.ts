// Shared by the agent's fault-injection tests and benchmark: the built `devmigrate agent` as a
// child process (the only honest way to SIGKILL it), its readiness seen through XenStore, and
// waits on job and presence nodes through watches, each with a deadline.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { XenStore } from '../../src/xenstore/types.js';

/** dist/src/cli/main.js, from the sources (vitest) or from dist/test/... (the compiled bench). */
export function builtCli(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const c of [resolve(here, '../../dist/src/cli/main.js'), resolve(here, '../../src/cli/main.js')]) {
    if (existsSync(c) && c.endsWith('.js')) return c;
  }
  throw new Error('dist/src/cli/main.js not found: run `npm run build` first');
}

export interface AgentProcess {
  child: ChildProcess;
  pid: number;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM (or the given signal) and wait for the exit, SIGKILL after graceMs. */
  stop(
    signal?: NodeJS.Signals,
    graceMs?: number,
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function spawnAgent(opts: {
  env: NodeJS.ProcessEnv;
  configPath: string;
  logFile: string;
  logFormat?: string;
  extraArgs?: string[];
}): AgentProcess {
  const log = openSync(opts.logFile, 'a');
  const child = spawn(
    process.execPath,
    [
      builtCli(),
      'agent',
      '--config',
      opts.configPath,
      '--log-format',
      opts.logFormat ?? 'human',
      ...(opts.extraArgs ?? []),
    ],
    { env: opts.env, stdio: ['ignore', log, log] },
  );
  closeSync(log);
  if (child.pid === undefined) throw new Error('agent did not start');
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once('exit', (code, signal) => r({ code, signal })),
  );
  return {
    child,
    pid: child.pid,
    exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 40_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(t);
      }
    },
  };
}

/** Resolves when pred() holds, re-checked on every event of a watch on `path`; rejects after ms. */
export async function waitWatched(
  xs: XenStore,
  path: string,
  pred: () => Promise<boolean>,
  ms: number,
  what: string,
): Promise<void> {
  let done: () => void = () => undefined;
  let fail: (e: Error) => void = () => undefined;
  const p = new Promise<void>((res, rej) => {
    done = res;
    fail = rej;
  });
  let checking = false;
  let again = false;
  const check = async (): Promise<void> => {
    if (checking) {
      again = true;
      return;
    }
    checking = true;
    try {
      do {
        again = false;
        if (await pred()) return done();
      } while (again);
    } catch (e) {
      fail(e instanceof Error ? e : new Error(String(e)));
    } finally {
      checking = false;
    }
  };
  const w = await xs.watch(path, { onEvent: () => void check() });
  const t = setTimeout(() => fail(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  try {
    await p;
  } finally {
    clearTimeout(t);
    await w.close().catch(() => undefined);
  }
}

export async function waitAgentReady(xs: XenStore, pid: number, ms = 20_000): Promise<void> {
  await waitWatched(
    xs,
    '/tool/devmigrate/agent',
    async () =>
      (await xs.tryRead('/tool/devmigrate/agent/pid')) === String(pid) &&
      (await xs.tryRead('/tool/devmigrate/agent/state')) === 'ready',
    ms,
    `agent ${pid} ready`,
  );
}

export function agentLogPath(dir: string, n: number): string {
  return join(dir, `agent-${n}.log`);
}
