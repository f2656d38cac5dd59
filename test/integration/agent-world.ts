// Shared by the agent's fault-injection tests and benchmark: the built `devmigrate agent` as a
// child process (the only honest way to SIGKILL it), its readiness seen through XenStore, and
// waits on job and presence nodes through watches, each with a deadline.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { chmod, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { XenStore } from '../../src/xenstore/types.js';
import type { XenstoredHarness } from '../../xen-mocks/harness.js';
import type { HostDescription } from '../../xen-mocks/sim-host.js';

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

/**
 * A simulated guest with a disk under the shared prefix and one vif. `series` (two hex digits)
 * keeps the uuids and MACs of one test file apart from another's.
 */
export function sharedDiskGuest(
  domid: number,
  name: string,
  series: string,
): HostDescription['guests'][number] {
  const hex = domid.toString(16).padStart(2, '0');
  return {
    domid,
    name,
    uuid: `00000000-0000-4000-8000-00000000${series}${hex}`,
    devices: [
      {
        type: 'vbd',
        vdev: 'xvda',
        params: `/srv/shared/${name}.img`,
        format: 'file',
        mode: 'w',
        backend: 'qdisk',
      },
      { type: 'vif', mac: `00:16:3e:00:${series}:${hex}` },
    ],
  };
}

/** The state node of the job on `domid` (undefined: no job). */
export function jobState(xs: XenStore, domid: number): Promise<string | undefined> {
  return xs.tryRead(`/tool/devmigrate/jobs/${domid}/state`);
}

/** Resolves when pred(job state) holds, re-checked on every change under the job; rejects after ms. */
export function waitJobState(
  xs: XenStore,
  domid: number,
  pred: (s: string | undefined) => boolean,
  ms: number,
  what: string,
): Promise<void> {
  return waitWatched(
    xs,
    `/tool/devmigrate/jobs/${domid}`,
    async () => pred(await jobState(xs, domid)),
    ms,
    what,
  );
}

/** Running and not paused: what "left running at the source" means to the hypervisor. */
export async function domainRunning(harness: XenstoredHarness, domid: number): Promise<boolean> {
  const d = await harness.getDomain(domid);
  return d !== undefined && !d.shutdown && d.paused === 0 && !d.dying;
}

/**
 * Writes `tool` (the vif device tool, made executable) and an agent config in `dir` that runs it,
 * with the disks sharedDiskGuest lays out (under /srv/shared/) shared; returns the config's path.
 */
export async function writeAgentConfig(
  dir: string,
  tool: string,
  opts: { toolTimeoutMs: number; timeouts: Record<string, number> },
): Promise<string> {
  await chmod(tool, 0o755);
  const cfgPath = join(dir, 'devmigrate.json');
  await writeFile(
    cfgPath,
    JSON.stringify({
      disks: { sharedPathPrefixes: ['/srv/shared/'] },
      devices: { vif: { tool: { path: tool, timeoutMs: opts.toolTimeoutMs } } },
      timeouts: opts.timeouts,
    }),
  );
  return cfgPath;
}
