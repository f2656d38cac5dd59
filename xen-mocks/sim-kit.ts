// The simulated Xen host as a whole, for `devmigrate sim` and `devmigrate demo` (loaded by path
// at run time: the product does not import the test world) and for the tests: the real
// xenstored under the harness, the host's guests laid out as libxl does with their simulated
// kernels, the disk images they name, a stand-in `xl` and a remote-shell stand-in `sim-ssh` in
// <dir>/bin, and an agent configuration that fits the host (<dir>/devmigrate.json).
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connectXenStore } from '../src/xenstore/index.js';
import { startXenstored, type XenstoredHarness } from './harness.js';
import { mocksDir } from './paths.js';
import { SIM_GUEST_MODES, type SimGuest, type SimGuestMode } from './sim-guest.js';
import {
  createSimHost,
  loadHostDescription,
  type DeviceDescription,
  type HostDescription,
  type SimHost,
} from './sim-host.js';
import { SIM_FILES, type SimEnv } from '../src/cli/sim-files.js';
import type { RunningSimPort, SimGuestSummary, SimKitPort } from '../src/cli/sim-port.js';

/** A host file may give each guest a misbehaviour of the simulated kernel (default normal). */
export type SimGuestExtras = { simMode?: SimGuestMode; simBoot?: boolean };

export function defaultHostFile(): string {
  return join(mocksDir(), 'hosts', 'example-host.json');
}

export function demoHostFile(): string {
  return join(mocksDir(), 'hosts', 'demo-host.json');
}

/** The environment `sim up` prints: what devmigrate and xenstore-utils need to use this host. */
export function simEnv(h: XenstoredHarness): SimEnv {
  const pick = (k: string): string => h.env[k] ?? '';
  return {
    XENSTORED_PATH: h.socketPath,
    XEN_SIM_STATE: pick('XEN_SIM_STATE'),
    DEVMIGRATE_LIBXENCTRL: pick('DEVMIGRATE_LIBXENCTRL'),
    DEVMIGRATE_LIBXENGUEST: pick('DEVMIGRATE_LIBXENGUEST'),
  };
}

export interface RunningSim extends RunningSimPort {
  harness: XenstoredHarness;
  host: SimHost;
  guests: SimGuest[];
  env: SimEnv;
  desc: HostDescription;
  stop(): Promise<void>;
}

/** `{dir}` in a disk's params is the simulated host's folder (images live there). */
export function expandHost(desc: HostDescription, simDir: string | undefined): HostDescription {
  if (simDir === undefined) return desc;
  return {
    ...desc,
    guests: desc.guests.map((g) => ({
      ...g,
      devices: (g.devices ?? []).map((d): DeviceDescription =>
        d.type === 'vbd' ? { ...d, params: d.params.split('{dir}').join(simDir) } : d,
      ),
    })),
  };
}

/** Creates the images the description asks for (random bytes: a copy must really move them). */
async function createImages(desc: HostDescription): Promise<void> {
  for (const g of desc.guests) {
    for (const d of g.devices ?? []) {
      if (d.type !== 'vbd' || d.image === undefined) continue;
      const path = d.params.replace(/^[a-z0-9]+:(?=\/)/, '');
      const want = d.image.sizeMb * 1024 * 1024;
      const have = await stat(path).then(
        (s) => s.size,
        () => -1,
      );
      if (have === want) continue;
      await mkdir(dirname(path), { recursive: true });
      const fh = await open(path, 'w');
      try {
        for (let off = 0; off < want; off += 1 << 20)
          await fh.write(randomBytes(Math.min(1 << 20, want - off)));
      } finally {
        await fh.close();
      }
    }
  }
}

/** Starts xenstored + host + guest kernels in this process (tests use it directly too). */
export async function startSim(opts: {
  /** The harness's folder (xenstored's socket and state). */
  dir?: string;
  hostFile?: string;
  desc?: HostDescription;
  /** The simulated host's folder: `{dir}` in disk paths, images created there. */
  simDir?: string;
  log?: (m: string) => void;
}): Promise<RunningSim> {
  const raw = opts.desc ?? (await loadHostDescription(opts.hostFile ?? defaultHostFile()));
  const desc = expandHost(raw, opts.simDir);
  await createImages(desc);
  const harness = await startXenstored(opts.dir !== undefined ? { dir: opts.dir } : {});
  const guests: SimGuest[] = [];
  let host: SimHost | undefined;
  try {
    host = await createSimHost(harness, desc);
    for (const g of desc.guests as (HostDescription['guests'][number] & SimGuestExtras)[]) {
      if (g.simBoot === false) continue;
      const mode = g.simMode ?? 'normal';
      if (!SIM_GUEST_MODES.includes(mode))
        throw new Error(`guest ${g.name}: unknown simMode ${JSON.stringify(mode)}`);
      guests.push(await host.guest(g.domid).boot({ mode, log: opts.log }));
    }
  } catch (err) {
    await host?.close().catch(() => undefined);
    await harness.stop().catch(() => undefined);
    throw err;
  }
  const h = host;
  const guestsInfo: SimGuestSummary[] = desc.guests.map((g) => {
    const extra = g as SimGuestExtras;
    const s: SimGuestSummary = {
      domid: g.domid,
      name: g.name,
      devices: (g.devices ?? []).map((d) => d.type),
    };
    if (extra.simMode !== undefined) s.simMode = extra.simMode;
    return s;
  });
  return {
    harness,
    host: h,
    guests,
    env: simEnv(harness),
    desc,
    guestsInfo,
    xenstoredPid: harness.pid,
    socketPath: harness.socketPath,
    async domainRunning(domid: number) {
      const d = await harness.getDomain(domid);
      return d !== undefined && !d.shutdown && d.paused === 0 && !d.dying;
    },
    stop: async () => {
      await h.close().catch(() => undefined);
      await harness.stop();
    },
  };
}

/** The compiled stand-in xl: next to this file in dist/, or dist/xen-mocks/ from the sources (tests). */
function simXlScript(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const c of [join(here, 'sim-xl.js'), join(here, '..', 'dist', 'xen-mocks', 'sim-xl.js')]) {
    if (existsSync(c)) return c;
  }
  throw new Error('the stand-in xl (dist/xen-mocks/sim-xl.js) is missing: run npm run build');
}

function shQuote(v: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]*$/.test(v) ? v : `'${v.replace(/'/g, `'\\''`)}'`;
}

/** The agent configuration that fits the simulated host (docs/operations.md's walkthrough uses it). */
export function simAgentConfig(simDir: string): Record<string, unknown> {
  return {
    $comment:
      'devmigrate sim: disks under /srv/nfs/ and /dev/vg-shared/ are on shared storage; images in the sim folder are copied by rsync to <sim>/remote (sim-ssh runs the remote side here)',
    logLevel: 'info',
    disks: {
      sharedPathPrefixes: ['/srv/nfs/', '/dev/vg-shared/'],
      copy: {
        method: 'rsync',
        rsync: '/usr/bin/rsync',
        rsh: [join(simDir, 'bin', 'sim-ssh')],
        remoteRoot: join(simDir, 'remote'),
        // Slow enough that the live view has something to show, fast enough for a demo.
        extraArgs: ['--bwlimit=24M'],
      },
    },
    timeouts: { suspendAckMs: 5000, suspendMs: 5000, toolstackSuspendMs: 120000 },
  };
}

/**
 * bin/xl (the stand-in xl: migrate, migrate-receive, unpause, list on this simulated host and its
 * pretend destinations), bin/sim-ssh (runs a command "on" a host: here, as that host) and the
 * agent configuration. Every value is fixed in the scripts: they work from any shell.
 */
export async function writeSimTools(
  simDir: string,
  env: SimEnv,
  xlTimings: Record<string, string> = {},
): Promise<void> {
  const bin = join(simDir, 'bin');
  await mkdir(bin, { recursive: true });
  await mkdir(join(simDir, 'remote'), { recursive: true });
  const exports = Object.entries({ ...env, SIM_DIR: simDir, ...xlTimings })
    .map(([k, v]) => `export ${k}=${shQuote(v)}`)
    .join('\n');
  await writeFile(
    join(bin, 'xl'),
    [
      '#!/bin/sh',
      '# devmigrate sim: a stand-in for xl on this simulated host (xen-mocks/sim-xl.ts): migrate,',
      '# migrate-receive, unpause, list. Made by `devmigrate sim up`; not the real xl.',
      exports,
      `exec ${shQuote(process.execPath)} ${shQuote(simXlScript())} "$@"`,
      '',
    ].join('\n'),
  );
  await writeFile(
    join(bin, 'sim-ssh'),
    [
      '#!/bin/sh',
      '# devmigrate sim: a stand-in remote shell. "sim-ssh [ssh options] [user@]host command..." runs the',
      '# command here, as that host (SIM_XL_HOST tells the stand-in xl where it is). No network.',
      'while [ $# -gt 0 ]; do',
      '  case "$1" in',
      '    -[1246AaCfGgKkMNnqsTtVvXxYy]*) shift ;;',
      '    -[bcDEeFIiJLlmOoPpQRSWw]) shift; shift ;;',
      '    -*) shift ;;',
      '    *) break ;;',
      '  esac',
      'done',
      'host=${1:?sim-ssh: no host}; shift',
      'export SIM_XL_HOST="${host#*@}"',
      `export PATH=${shQuote(bin)}:"$PATH"`,
      'exec sh -c "$*"',
      '',
    ].join('\n'),
  );
  await chmod(join(bin, 'xl'), 0o755);
  await chmod(join(bin, 'sim-ssh'), 0o755);
  await writeFile(join(simDir, 'devmigrate.json'), `${JSON.stringify(simAgentConfig(simDir), null, 2)}\n`);
}

/** A running simulated host with its tools, in `simDir` (the demo's and `sim serve`'s start). */
export async function startSimHost(opts: {
  simDir: string;
  hostFile?: string;
  desc?: HostDescription;
  log?: (m: string) => void;
  xlTimings?: Record<string, string>;
}): Promise<RunningSim> {
  const simDir = resolve(opts.simDir);
  await mkdir(simDir, { recursive: true });
  const sim = await startSim({
    dir: join(simDir, SIM_FILES.xenstored),
    simDir,
    ...(opts.desc !== undefined ? { desc: opts.desc } : {}),
    ...(opts.hostFile !== undefined ? { hostFile: opts.hostFile } : {}),
    ...(opts.log !== undefined ? { log: opts.log } : {}),
  });
  try {
    await writeSimTools(simDir, sim.env, opts.xlTimings);
  } catch (err) {
    await sim.stop().catch(() => undefined);
    throw err;
  }
  return sim;
}

/** Resolves once the agent of pid `pid` is announced ready, or rejects (exit, timeout). */
async function agentReady(socketPath: string, agent: ChildProcess, timeoutMs: number): Promise<void> {
  const xs = await connectXenStore({ path: socketPath, timeoutMs: 10_000 });
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (agent.exitCode !== null) throw new Error(`the agent exited during start (code ${agent.exitCode})`);
      const [pid, state] = await Promise.all([
        xs.tryRead('/tool/devmigrate/agent/pid'),
        xs.tryRead('/tool/devmigrate/agent/state'),
      ]);
      if (pid === String(agent.pid) && state === 'ready') return;
      if (Date.now() > deadline) throw new Error('the agent did not become ready in time');
      // A wait on another process's start: short sleeps, bounded above.
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await xs.close().catch(() => undefined);
  }
}

function stopChild(child: ChildProcess, timeoutMs: number): Promise<void> {
  return new Promise((res) => {
    if (child.exitCode !== null || child.signalCode !== null) return res();
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', () => {
      clearTimeout(t);
      res();
    });
    child.kill('SIGTERM');
  });
}

/**
 * The supervisor behind `devmigrate sim up`: runs the host (and, with `agentArgv`, the agent as
 * the service would run on a dom0, logging to <dir>/agent.log) until SIGTERM/SIGINT.
 */
export async function simServe(args: { dir: string; host?: string; agentArgv?: string[] }): Promise<number> {
  const dir = resolve(args.dir);
  const log = (m: string): void => void process.stdout.write(`${new Date().toISOString()} ${m}\n`);
  await writeFile(join(dir, SIM_FILES.pid), `${process.pid}\n`);
  let sim: RunningSim;
  try {
    sim = await startSimHost({
      simDir: dir,
      ...(args.host !== undefined ? { hostFile: args.host } : {}),
      log,
    });
  } catch (err) {
    log(`start failed: ${err instanceof Error ? err.message : String(err)}`);
    await rm(join(dir, SIM_FILES.pid), { force: true });
    return 1;
  }
  const env: SimEnv = { ...sim.env, DEVMIGRATE_CONFIG: join(dir, 'devmigrate.json') };
  let agent: ChildProcess | undefined;
  if (args.agentArgv !== undefined && args.agentArgv.length > 0) {
    const [cmd = '', ...rest] = args.agentArgv;
    const out = await open(join(dir, SIM_FILES.agentLog), 'a');
    agent = spawn(cmd, rest, {
      env: { ...process.env, ...env, PATH: `${join(dir, 'bin')}:${process.env['PATH'] ?? ''}` },
      stdio: ['ignore', out.fd, out.fd],
    });
    await out.close();
    try {
      await agentReady(sim.socketPath, agent, 30_000);
      await writeFile(join(dir, SIM_FILES.agentPid), `${agent.pid}\n`);
      log(`agent pid ${agent.pid} ready; its log: ${join(dir, SIM_FILES.agentLog)}`);
    } catch (err) {
      log(`agent: ${err instanceof Error ? err.message : String(err)}`);
      await stopChild(agent, 5000);
      await sim.stop().catch(() => undefined);
      await rm(join(dir, SIM_FILES.pid), { force: true });
      return 1;
    }
  }
  await writeFile(join(dir, SIM_FILES.env), `${JSON.stringify(env, null, 1)}\n`);
  await writeFile(join(dir, SIM_FILES.guests), `${JSON.stringify(sim.guestsInfo, null, 1)}\n`);
  await writeFile(join(dir, SIM_FILES.ready), `${new Date().toISOString()}\n`);
  log(
    `simulated host up: ${sim.desc.guests.map((g) => `${g.name}(${g.domid})`).join(' ')}; xenstored pid ${sim.harness.pid}`,
  );
  const sig = await new Promise<string>((res) => {
    process.once('SIGTERM', () => res('SIGTERM'));
    process.once('SIGINT', () => res('SIGINT'));
  });
  log(`${sig}: stopping the simulated host`);
  // The agent first, as a host shutting down stops the service before xenstored: it drains.
  if (agent !== undefined) await stopChild(agent, 45_000);
  await sim.stop().catch((err: unknown) => log(`stop: ${String(err)}`));
  for (const f of [SIM_FILES.env, SIM_FILES.ready, SIM_FILES.pid, SIM_FILES.guests, SIM_FILES.agentPid])
    await rm(join(dir, f), { force: true });
  return 0;
}

export async function readSimEnv(dir: string): Promise<SimEnv> {
  return JSON.parse(await readFile(join(resolve(dir), SIM_FILES.env), 'utf8')) as SimEnv;
}

export const simKit: SimKitPort = {
  startSimHost: (opts) => startSimHost(opts),
  serve: simServe,
  defaultHostFile,
  demoHostFile,
};
