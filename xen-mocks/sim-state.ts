// The simulated hypervisor's state folder, TypeScript side: the same dom-<N> key=value files,
// mkdir locks and temp+rename writes as xen-mocks/src/sim-state.c, so the harness, xenstored's
// shim and the simulated libxenctrl agree on one hypervisor. Format: xen-mocks/README.md.
import { open, readFile, rename, rm, rmdir, mkdir, stat, writeFile, constants } from 'node:fs/promises';
import { join } from 'node:path';

/** VIRQ_DOM_EXC's local port in xenstored (fixed by the shim). */
export const VIRQ_DOM_EXC_PORT = 1;
/** Domain N's xenbus event channel is XENBUS_PORT_BASE + N. */
export const XENBUS_PORT_BASE = 1000;
export const MAX_DOMID = 0x7fef;

/** One simulated domain, as xc_domain_getinfo/getinfolist report it. */
export interface SimDomainState {
  domid: number;
  /** Controller pause count (xc_domain_pause increments, unpause decrements); > 0 = paused. */
  paused: number;
  /** Shut down, for any reason (a suspend is a shutdown with reason 2). */
  shutdown: boolean;
  /** SHUTDOWN_* of xen/sched.h: 0 poweroff, 1 reboot, 2 suspend, 3 crash, 4 watchdog, 5 soft_reset. */
  shutdownReason: number;
  dying: boolean;
  hvm: boolean;
  maxVcpus: number;
  maxMemKb: number;
  totPages: number;
  /** Successful xc_domain_resume calls, and the `fast` argument of the last one (-1: none). */
  resumeCount: number;
  lastResumeFast: number;
  /** HVM params by index for xc_hvm_param_get (0 = HVM_PARAM_CALLBACK_IRQ); unset read as 0. */
  hvmParams: Record<number, number>;
}

export class SimStateError extends Error {
  override readonly name = 'SimStateError';
}

export function defaultDomain(domid: number): SimDomainState {
  return {
    domid,
    paused: 0,
    shutdown: false,
    shutdownReason: 0,
    dying: false,
    hvm: false,
    maxVcpus: 1,
    maxMemKb: 262144,
    totPages: 65536,
    resumeCount: 0,
    lastResumeFast: -1,
    hvmParams: {},
  };
}

function domFile(stateDir: string, domid: number): string {
  return join(stateDir, `dom-${domid}`);
}

export function parseDomain(domid: number, text: string): SimDomainState | undefined {
  const d = defaultDomain(domid);
  let exists = true;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    const key = line.slice(0, eq);
    const val = line.slice(eq + 1);
    const n = Number(val);
    switch (key) {
      case 'exists':
        exists = n !== 0;
        break;
      case 'paused':
        d.paused = n;
        break;
      case 'shutdown':
        d.shutdown = n !== 0;
        break;
      case 'shutdown_reason':
        d.shutdownReason = n;
        break;
      case 'dying':
        d.dying = n !== 0;
        break;
      case 'hvm':
        d.hvm = n !== 0;
        break;
      case 'max_vcpus':
        d.maxVcpus = n || 1;
        break;
      case 'max_memkb':
        d.maxMemKb = n;
        break;
      case 'tot_pages':
        d.totPages = n;
        break;
      case 'resume_count':
        d.resumeCount = n;
        break;
      case 'last_resume_fast':
        d.lastResumeFast = n;
        break;
      default:
        if (key.startsWith('hvm_param_')) d.hvmParams[Number(key.slice('hvm_param_'.length))] = n;
    }
  }
  return exists || domid === 0 ? d : undefined;
}

export function formatDomain(d: SimDomainState): string {
  const lines = [
    'exists=1',
    `paused=${d.paused}`,
    `shutdown=${d.shutdown ? 1 : 0}`,
    `shutdown_reason=${d.shutdownReason}`,
    `dying=${d.dying ? 1 : 0}`,
    `hvm=${d.hvm ? 1 : 0}`,
    `max_vcpus=${d.maxVcpus}`,
    `max_memkb=${d.maxMemKb}`,
    `tot_pages=${d.totPages}`,
    `resume_count=${d.resumeCount}`,
    `last_resume_fast=${d.lastResumeFast}`,
  ];
  for (const [idx, v] of Object.entries(d.hvmParams)) lines.push(`hvm_param_${idx}=${v}`);
  return lines.join('\n') + '\n';
}

/** Reads dom-<N>; domain 0 always exists. undefined = no such domain. */
export async function readDomain(stateDir: string, domid: number): Promise<SimDomainState | undefined> {
  let text: string;
  try {
    text = await readFile(domFile(stateDir, domid), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return domid === 0 ? defaultDomain(0) : undefined;
    throw err;
  }
  return parseDomain(domid, text);
}

/** Replaces dom-<N> atomically (readers never see half a file). */
export async function writeDomain(stateDir: string, d: SimDomainState): Promise<void> {
  const tmp = join(stateDir, `.dom-${d.domid}.${process.pid}.ts.tmp`);
  await writeFile(tmp, formatDomain(d));
  await rename(tmp, domFile(stateDir, d.domid));
}

export async function removeDomain(stateDir: string, domid: number): Promise<void> {
  await rm(domFile(stateDir, domid), { force: true });
}

const LOCK_TIMEOUT_MS = 5_000;
const STALE_LOCK_MS = 5_000;

/** Runs fn under dom-<N>.lock, the lock the simulated libxenctrl takes too. */
export async function withDomainLock<T>(stateDir: string, domid: number, fn: () => Promise<T>): Promise<T> {
  const lock = join(stateDir, `dom-${domid}.lock`);
  const deadline = Date.now() + LOCK_TIMEOUT_MS * 2;
  for (;;) {
    try {
      await mkdir(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const st = await stat(lock).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > STALE_LOCK_MS) await rmdir(lock).catch(() => undefined);
    if (Date.now() > deadline) throw new SimStateError(`timed out waiting for ${lock}`);
    await new Promise((r) => setTimeout(r, 2));
  }
  try {
    return await fn();
  } finally {
    await rmdir(lock).catch(() => undefined);
  }
}

/**
 * Delivers an event-channel port to xenstored through the FIFO <state>/evtchn. Returns false
 * when no xenstored has the FIFO open (the event is lost, as on a closed channel).
 */
export async function sendEvent(stateDir: string, port: number): Promise<boolean> {
  const buf = Buffer.alloc(4);
  buf.writeUInt32LE(port, 0);
  let fh;
  try {
    fh = await open(join(stateDir, 'evtchn'), constants.O_WRONLY | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENXIO' || code === 'ENOENT') return false;
    throw err;
  }
  try {
    const { bytesWritten } = await fh.write(buf, 0, 4);
    return bytesWritten === 4;
  } finally {
    await fh.close();
  }
}
