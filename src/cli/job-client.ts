// The requester's side of the job protocol (docs/protocol.md), used by the CLI: find a domain
// by name or id, write a request in one transaction, write controls, read a job with its
// devices, and wait for states through a watch (never by polling), always with a deadline.
import { randomBytes } from 'node:crypto';
import { classifyTarget } from '../migration/job-schema.js';
import { jobNode, jobPath, JOBS } from '../migration/paths.js';
import { isBusy, isJobState, type JobState } from '../migration/state-machine.js';
import { isXsErrno } from '../xenstore/errors.js';
import type { XenStore, XsOps } from '../xenstore/types.js';
import { CliError, ExitCode } from './exit-codes.js';

export interface DomainRef {
  domid: number;
  name: string;
}

export interface DeviceResult {
  type: string;
  devid: string;
  state: string;
  reason?: string;
}

export interface JobView {
  domid: number;
  name?: string;
  id?: string;
  target?: string;
  mode?: string;
  state?: string;
  error?: string;
  progress?: string;
  controlError?: string;
  devices: DeviceResult[];
}

/** States after which nothing more happens without a new request or control. */
export const FINAL_STATES: readonly string[] = ['done', 'refused', 'aborted', 'failed'];

export function isFinal(state: string | undefined): boolean {
  return state !== undefined && FINAL_STATES.includes(state);
}

/** A domain by id ("5") or by name ("web1"). dom0 is refused where migrating it is meant. */
export async function resolveDomain(xs: XenStore, spec: string): Promise<DomainRef> {
  if (/^[0-9]{1,5}$/.test(spec)) {
    const domid = Number(spec);
    const name = await xs.tryRead(`/local/domain/${domid}/name`);
    if (name === undefined && !(await xs.exists(`/local/domain/${domid}`))) {
      throw new CliError(`no domain with id ${domid}`, ExitCode.NO_DOMAIN);
    }
    return { domid, name: name ?? `domain-${domid}` };
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(spec)) {
    throw new CliError(`${JSON.stringify(spec)} is neither a domain id nor a domain name`, ExitCode.USAGE);
  }
  const ids = await xs.directory('/local/domain');
  const names = await Promise.all(ids.map((id) => xs.tryRead(`/local/domain/${id}/name`)));
  const hits = ids.filter((_, i) => names[i] === spec);
  if (hits.length === 0) throw new CliError(`no domain named ${spec}`, ExitCode.NO_DOMAIN);
  if (hits.length > 1) {
    throw new CliError(
      `${hits.length} domains are named ${spec} (ids ${hits.join(', ')}): give the id`,
      ExitCode.USAGE,
    );
  }
  return { domid: Number(hits[0]), name: spec };
}

export function checkMigratable(dom: DomainRef): void {
  if (dom.domid === 0) throw new CliError('dom0 cannot be migrated', ExitCode.USAGE);
}

export function checkTarget(host: string): void {
  if (classifyTarget(host) === undefined) {
    throw new CliError(
      `target ${JSON.stringify(host)} is not a host name, an IPv4 or an IPv6 address`,
      ExitCode.USAGE,
    );
  }
}

export function newJobId(): string {
  return `cli-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

export interface RequestSpec {
  id: string;
  target: string;
  mode: 'auto' | 'steps';
  suspend: 'agent' | 'toolstack';
  live?: boolean;
  deadlineSec?: number;
}

async function readState(tx: XsOps, domid: number): Promise<string | undefined> {
  return tx.tryRead(jobNode.state(domid));
}

/**
 * Writes a request in ONE transaction. A finished job left for the requester is cleared first;
 * a job still holding the domain is refused with BUSY (nothing is changed then).
 */
export async function writeRequest(xs: XenStore, domid: number, req: RequestSpec): Promise<void> {
  await xs.transaction(async (tx) => {
    const state = await readState(tx, domid);
    const hasRequest = await tx.exists(jobNode.request(domid));
    if (state !== undefined && isJobState(state) && isBusy(state)) {
      const id = await tx.tryRead(jobNode.requestField(domid, 'id'));
      throw new CliError(
        `domain ${domid} already has a job (${id ?? 'no id'}) in state ${state}`,
        ExitCode.BUSY,
        [`see: devmigrate status ${domid}`, `stop it: devmigrate abort ${domid}`],
      );
    }
    if (state === undefined && hasRequest) {
      throw new CliError(`domain ${domid} has a request the agent has not taken yet`, ExitCode.BUSY, [
        'is the agent running? systemctl status xen-devmigrate',
      ]);
    }
    if (await tx.exists(jobPath(domid))) await tx.rm(jobPath(domid));
    const base = jobNode.request(domid);
    await tx.write(`${base}/id`, req.id);
    await tx.write(`${base}/target`, req.target);
    await tx.write(`${base}/mode`, req.mode);
    await tx.write(`${base}/suspend`, req.suspend);
    await tx.write(`${base}/live`, req.live === false ? '0' : '1');
    if (req.deadlineSec !== undefined) await tx.write(`${base}/deadline`, String(req.deadlineSec));
  });
}

export async function writeControl(xs: XenStore, domid: number, control: string): Promise<void> {
  if (!(await xs.exists(jobPath(domid)))) {
    throw new CliError(`domain ${domid} has no job`, ExitCode.FAILURE);
  }
  await xs.write(jobNode.control(domid), control);
}

/** Removes a finished job (the requester's duty once it has read the outcome). */
export async function removeJob(xs: XenStore, domid: number): Promise<void> {
  try {
    await xs.rm(jobPath(domid));
  } catch (err) {
    if (!isXsErrno(err, 'ENOENT')) throw err;
  }
}

export async function readJob(xs: XenStore, domid: number): Promise<JobView | undefined> {
  if (!(await xs.exists(jobPath(domid)))) return undefined;
  const [id, target, mode, state, error, progress, controlError, name] = await Promise.all([
    xs.tryRead(jobNode.requestField(domid, 'id')),
    xs.tryRead(jobNode.requestField(domid, 'target')),
    xs.tryRead(jobNode.requestField(domid, 'mode')),
    xs.tryRead(jobNode.state(domid)),
    xs.tryRead(jobNode.error(domid)),
    xs.tryRead(jobNode.progress(domid)),
    xs.tryRead(jobNode.controlError(domid)),
    xs.tryRead(`/local/domain/${domid}/name`),
  ]);
  const devices: DeviceResult[] = [];
  const types = await listOrEmpty(xs, jobNode.devices(domid));
  for (const type of types) {
    for (const devid of await listOrEmpty(xs, `${jobNode.devices(domid)}/${type}`)) {
      const [st, reason] = await Promise.all([
        xs.tryRead(`${jobNode.device(domid, type, devid)}/state`),
        xs.tryRead(`${jobNode.device(domid, type, devid)}/reason`),
      ]);
      const d: DeviceResult = { type, devid, state: st ?? '?' };
      if (reason) d.reason = reason;
      devices.push(d);
    }
  }
  return compact({ domid, name, id, target, mode, state, error, progress, controlError, devices });
}

function compact(v: JobView): JobView {
  for (const k of Object.keys(v) as (keyof JobView)[]) if (v[k] === undefined) delete v[k];
  return v;
}

async function listOrEmpty(xs: XenStore, path: string): Promise<string[]> {
  try {
    return await xs.directory(path);
  } catch (err) {
    if (isXsErrno(err, 'ENOENT')) return [];
    throw err;
  }
}

export async function listJobs(xs: XenStore): Promise<JobView[]> {
  const keys = await listOrEmpty(xs, JOBS);
  const out: JobView[] = [];
  for (const k of keys) {
    if (!/^[0-9]+$/.test(k)) continue;
    const j = await readJob(xs, Number(k));
    if (j) out.push(j);
  }
  return out;
}

export class WaitTimeoutError extends CliError {
  constructor(what: string, ms: number) {
    super(`${what}: no answer within ${Math.round(ms / 1000)} s`, ExitCode.TIMEOUT);
  }
}

/**
 * Waits until pred(job) is true, re-reading the job on every watch event under it. onChange sees
 * every distinct view (the live progress display). Rejects with WaitTimeoutError after timeoutMs.
 */
export async function waitForJob(
  xs: XenStore,
  domid: number,
  pred: (job: JobView | undefined) => boolean,
  timeoutMs: number,
  onChange?: (job: JobView | undefined) => void,
): Promise<JobView | undefined> {
  let settle: ((v: JobView | undefined) => void) | undefined;
  let fail: ((e: Error) => void) | undefined;
  const result = new Promise<JobView | undefined>((resolve, reject) => {
    settle = resolve;
    fail = reject;
  });
  let last = '';
  let busy = false;
  let again = false;
  const check = async (): Promise<void> => {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      do {
        again = false;
        const job = await readJob(xs, domid);
        const key = JSON.stringify(job ?? null);
        if (key !== last) {
          last = key;
          onChange?.(job);
        }
        if (pred(job)) return settle?.(job);
      } while (again);
    } catch (err) {
      fail?.(err instanceof Error ? err : new Error(String(err)));
    } finally {
      busy = false;
    }
  };
  const watch = await xs.watch(jobPath(domid), { onEvent: () => void check(), onError: (e) => fail?.(e) });
  const timer = setTimeout(
    () => fail?.(new WaitTimeoutError(`waiting for the job of domain ${domid}`, timeoutMs)),
    timeoutMs,
  );
  try {
    return await result;
  } finally {
    clearTimeout(timer);
    await watch.close().catch(() => undefined);
  }
}

/** Is an agent announced and alive (its pid exists on this host)? */
export async function agentPresence(xs: XenStore): Promise<{ state?: string; pid?: number; alive: boolean }> {
  const [state, pidText] = await Promise.all([
    xs.tryRead('/tool/devmigrate/agent/state'),
    xs.tryRead('/tool/devmigrate/agent/pid'),
  ]);
  const pid = pidText !== undefined && /^[0-9]+$/.test(pidText) ? Number(pidText) : undefined;
  let alive = false;
  if (pid !== undefined) {
    try {
      process.kill(pid, 0);
      alive = state === 'ready';
    } catch (err) {
      // EPERM: it exists but is not ours to signal (another user): count it as alive.
      alive = (err as NodeJS.ErrnoException).code === 'EPERM' && state === 'ready';
    }
  }
  const out: { state?: string; pid?: number; alive: boolean } = { alive };
  if (state !== undefined) out.state = state;
  if (pid !== undefined) out.pid = pid;
  return out;
}

export function stateOf(job: JobView | undefined): JobState | undefined {
  const s = job?.state;
  return s !== undefined && isJobState(s) ? s : undefined;
}
