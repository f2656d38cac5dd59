// The test world's foundation: Debian's real xenstored under the xsd-shim.so LD_PRELOAD, a
// simulated hypervisor (state folder shared with libxenctrl-sim.so), and guest ring bridges that
// let any libxenstore client act as domain N. API and formats: xen-mocks/README.md.
import { execFile } from 'node:child_process';
import { access, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildDir, XENSTORED_BIN } from './paths.js';
import { ManagedProcess, MockProcessError, spawnManaged, trackTempDir, untrackTempDir } from './processes.js';
import {
  defaultDomain,
  MAX_DOMID,
  readDomain,
  removeDomain,
  sendEvent,
  VIRQ_DOM_EXC_PORT,
  withDomainLock,
  writeDomain,
  XENBUS_PORT_BASE,
  type SimDomainState,
} from './sim-state.js';
import { pidAlive } from '../src/agent/pid-alive.js';

export { buildMocks, MockBuildError } from './build.js';
export { MockProcessError } from './processes.js';
export { VIRQ_DOM_EXC_PORT, XENBUS_PORT_BASE, type SimDomainState } from './sim-state.js';

const execFileP = promisify(execFile);

export interface GuestHandle {
  domid: number;
  socketPath: string;
  env: NodeJS.ProcessEnv;
  stop(): Promise<void>;
}

export interface XenstoredHarness {
  dir: string;
  socketPath: string;
  stateDir: string;
  pid: number;
  /** XENSTORED_PATH, XEN_SIM_STATE, DEVMIGRATE_LIBXENCTRL/LIBXENGUEST (sim libs), on top of process.env. */
  env: NodeJS.ProcessEnv;
  /** Folder holding libxenctrl-sim.so / libxenguest-sim.so (and the other build products). */
  simLibDir: string;
  addGuest(domid: number, opts?: { hvm?: boolean; name?: string }): Promise<GuestHandle>;
  setDomain(domid: number, patch: Partial<SimDomainState>): Promise<void>;
  getDomain(domid: number): Promise<SimDomainState | undefined>;
  destroyDomain(domid: number): Promise<void>;
  raiseDomExc(): Promise<void>;
  kill(signal?: NodeJS.Signals): Promise<void>;
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export class HarnessError extends Error {
  override readonly name = 'HarnessError';
}

const STARTUP_TIMEOUT_MS = 10_000;
const TOOL_TIMEOUT_MS = 10_000;
const RELEASE_TIMEOUT_MS = 5_000;

function tryConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Zeroes a ring page in place: xenstored may still have it mapped (a re-added guest), and
 * truncating a mapped file would SIGBUS it; replacing the file would split the two sides.
 */
async function zeroRingPage(path: string): Promise<void> {
  const fh = await open(path, 'a+').then(async (h) => {
    await h.close();
    return open(path, 'r+');
  });
  try {
    await fh.write(Buffer.alloc(4096), 0, 4096, 0);
  } finally {
    await fh.close();
  }
}

class Harness implements XenstoredHarness {
  readonly socketPath: string;
  readonly stateDir: string;
  readonly simLibDir = buildDir();
  readonly env: NodeJS.ProcessEnv;
  private daemon: ManagedProcess | undefined;
  private readonly guests = new Map<number, { bridge: ManagedProcess; handle: GuestHandle }>();
  private stopped = false;

  constructor(
    readonly dir: string,
    private readonly ownsDir: boolean,
    private readonly trace: boolean,
  ) {
    this.socketPath = join(dir, 'socket');
    this.stateDir = join(dir, 'state');
    this.env = {
      ...process.env,
      XENSTORED_PATH: this.socketPath,
      XEN_SIM_STATE: this.stateDir,
      DEVMIGRATE_LIBXENCTRL: join(this.simLibDir, 'libxenctrl-sim.so'),
      DEVMIGRATE_LIBXENGUEST: join(this.simLibDir, 'libxenguest-sim.so'),
    };
    delete this.env['LD_PRELOAD'];
  }

  get pid(): number {
    if (!this.daemon) throw new HarnessError('xenstored is not running');
    return this.daemon.pid;
  }

  async init(): Promise<void> {
    await mkdir(this.stateDir, { recursive: true });
    // What /proc/xen/xsd_port and /proc/xen/xsd_kva give a dom0 xenstored (the shim redirects).
    await writeFile(join(this.stateDir, 'xsd_port'), `${XENBUS_PORT_BASE}\n`);
    await writeDomain(this.stateDir, defaultDomain(0));
    await this.startDaemon();
  }

  private async startDaemon(): Promise<void> {
    await zeroRingPage(join(this.stateDir, 'ring-0'));
    const args = ['-N'];
    if (this.trace) args.push('-T', join(this.dir, 'xenstored-trace.log'));
    const env: NodeJS.ProcessEnv = {
      ...this.env,
      XENSTORED_RUNDIR: this.dir,
      LD_PRELOAD: join(this.simLibDir, 'xsd-shim.so'),
    };
    const daemon = spawnManaged('xenstored', XENSTORED_BIN, args, env);
    this.daemon = daemon;
    const deadline = Date.now() + STARTUP_TIMEOUT_MS;
    while (!(await tryConnect(this.socketPath))) {
      if (!daemon.running || Date.now() > deadline) {
        const why = daemon.running ? `no socket within ${STARTUP_TIMEOUT_MS} ms` : daemon.describeExit();
        await daemon.kill('SIGKILL');
        throw new HarnessError(`xenstored did not start (${why}): ${daemon.stderr.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Runs a tool (xenstore-utils or xs-tool) against xenstored as dom0. */
  private async tool(file: string, args: string[]): Promise<string> {
    try {
      const { stdout } = await execFileP(file, args, { env: this.env, timeout: TOOL_TIMEOUT_MS });
      return stdout;
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new HarnessError(`${file} ${args.join(' ')}: ${(e.stderr ?? '').trim() || e.message}`);
    }
  }

  private xsTool(...args: string[]): Promise<string> {
    return this.tool(join(this.simLibDir, 'xs-tool'), args);
  }

  async addGuest(domid: number, opts: { hvm?: boolean; name?: string } = {}): Promise<GuestHandle> {
    if (!Number.isInteger(domid) || domid < 1 || domid > MAX_DOMID)
      throw new HarnessError(`bad domid ${domid}`);
    if (!this.daemon?.running) throw new HarnessError('xenstored is not running');
    await this.guests.get(domid)?.handle.stop();
    const name = opts.name ?? `guest-${domid}`;
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new HarnessError(`bad guest name ${name}`);

    // The hypervisor's side: the domain exists and has a (zeroed) xenstore ring page.
    await withDomainLock(this.stateDir, domid, () =>
      writeDomain(this.stateDir, { ...defaultDomain(domid), hvm: opts.hvm ?? false }),
    );
    await zeroRingPage(join(this.stateDir, `ring-${domid}`));

    // The toolstack's side, as libxl does it: the home node owned by the guest, then INTRODUCE.
    const home = `/local/domain/${domid}`;
    await this.tool('xenstore-write', [`${home}/name`, name, `${home}/domid`, String(domid)]);
    await this.tool('xenstore-chmod', ['-r', home, `n${domid}`]);
    await this.xsTool('introduce', String(domid), '0', String(XENBUS_PORT_BASE + domid));

    const socketPath = join(this.dir, `guest-${domid}.sock`);
    const bridge = spawnManaged(
      `xs-ring-bridge[${domid}]`,
      join(this.simLibDir, 'xs-ring-bridge'),
      [this.stateDir, String(domid), socketPath],
      this.env,
    );
    try {
      await bridge.waitForOutput('ready', STARTUP_TIMEOUT_MS);
    } catch (err) {
      await bridge.kill('SIGKILL');
      throw err;
    }
    const handle: GuestHandle = {
      domid,
      socketPath,
      env: { ...this.env, XENSTORED_PATH: socketPath },
      stop: async () => {
        const g = this.guests.get(domid);
        if (g?.bridge === bridge) this.guests.delete(domid);
        await bridge.kill('SIGTERM');
      },
    };
    this.guests.set(domid, { bridge, handle });
    return handle;
  }

  async getDomain(domid: number): Promise<SimDomainState | undefined> {
    return readDomain(this.stateDir, domid);
  }

  async setDomain(domid: number, patch: Partial<SimDomainState>): Promise<void> {
    if (patch.domid !== undefined && patch.domid !== domid) throw new HarnessError('patch.domid differs');
    const announce = await withDomainLock(this.stateDir, domid, async () => {
      const before = await readDomain(this.stateDir, domid);
      const after: SimDomainState = { ...(before ?? defaultDomain(domid)), ...patch, domid };
      await writeDomain(this.stateDir, after);
      // Xen sends VIRQ_DOM_EXC when a domain shuts down (any reason) or starts dying.
      return (after.shutdown && !before?.shutdown) || (after.dying && !before?.dying);
    });
    if (announce) await this.raiseDomExc();
  }

  async destroyDomain(domid: number): Promise<void> {
    if (domid === 0) throw new HarnessError('domain 0 cannot be destroyed');
    await this.setDomain(domid, { dying: true });
    // Xen frees the domain once xenstored has dropped it (unmapped its ring).
    if (this.daemon?.running) {
      const deadline = Date.now() + RELEASE_TIMEOUT_MS;
      while ((await this.xsTool('is-introduced', String(domid))).trim() !== 'F') {
        if (Date.now() > deadline) throw new HarnessError(`xenstored did not release domain ${domid}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    await this.guests.get(domid)?.handle.stop();
    await withDomainLock(this.stateDir, domid, () => removeDomain(this.stateDir, domid));
    await rm(join(this.stateDir, `ring-${domid}`), { force: true });
  }

  async raiseDomExc(): Promise<void> {
    await sendEvent(this.stateDir, VIRQ_DOM_EXC_PORT);
  }

  async kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.daemon?.kill(signal);
  }

  async restart(): Promise<void> {
    if (this.stopped) throw new HarnessError('harness stopped');
    await this.daemon?.kill('SIGTERM');
    await this.startDaemon();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const errors: unknown[] = [];
    for (const g of [...this.guests.values()]) await g.handle.stop().catch((e: unknown) => errors.push(e));
    await this.daemon?.kill('SIGTERM').catch((e: unknown) => errors.push(e));
    if (this.ownsDir) {
      await rm(this.dir, { recursive: true, force: true });
      untrackTempDir(this.dir);
    }
    if (errors.length > 0) throw new MockProcessError(`stop: ${errors.map(String).join('; ')}`);
  }
}

const OWNER_FILE = 'owner-pid';

/**
 * Removes run folders of harnesses whose process was SIGKILLed (no exit hook ran): their daemons
 * died with them (parent-death signal), only the folder is left. Folders without an owner-pid
 * file, or whose owner lives, are never touched.
 */
async function sweepStaleRunDirs(): Promise<void> {
  const base = tmpdir();
  const names = await readdir(base).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith('xsd-')) continue;
    const dir = join(base, name);
    const owner = Number((await readFile(join(dir, OWNER_FILE), 'utf8').catch(() => '')).trim());
    if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && !pidAlive(owner)) {
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    }
  }
}

/**
 * Starts xenstored in a fresh folder (mkdtemp under os.tmpdir() unless opts.dir is given).
 * Requires buildMocks() to have run (vitest's global setup does it).
 */
export async function startXenstored(
  opts: { trace?: boolean; dir?: string } = {},
): Promise<XenstoredHarness> {
  await access(join(buildDir(), 'xsd-shim.so')).catch(() => {
    throw new HarnessError(`${buildDir()}/xsd-shim.so missing: run buildMocks() (make -C xen-mocks) first`);
  });
  const ownsDir = opts.dir === undefined;
  if (ownsDir) await sweepStaleRunDirs();
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'xsd-')));
  if (ownsDir) {
    trackTempDir(dir);
    await writeFile(join(dir, OWNER_FILE), `${process.pid}\n`);
  }
  const h = new Harness(dir, ownsDir, opts.trace ?? false);
  try {
    await h.init();
  } catch (err) {
    await h.stop().catch(() => undefined);
    throw err;
  }
  return h;
}
