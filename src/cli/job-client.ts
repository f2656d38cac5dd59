// The requester's side of the job protocol (docs/protocol.md), used by the CLI: find a domain
// by name or id, write a request in one transaction, write controls, read a job with its
// devices, and wait for states through a watch (never by polling), always with a deadline.
import { randomBytes } from 'node:crypto';
import { classifyTarget } from '../migration/job-schema.js';
import { jobNode, jobPath, JOBS } from '../migration/paths.js';
import { isBusy, isJobState, type JobState } from '../migration/state-machine.js';
import {
  parseTimeline,
  TOOLSTACK_NODES,
  type JobTimeline,
  type ToolstackMarks,
} from '../migration/timeline.js';
import { isXsErrno } from '../xenstore/errors.js';
import type { XenStore, XsOps } from '../xenstore/types.js';
import { CliError, ExitCode } from './exit-codes.js';
import { InterruptedError } from './interrupt.js';

export interface DomainRef {
  domid: number;
  name: string;
}

export interface DeviceResult {
  type: string;
  devid: string;
  state: string;
  reason?: string;
  /** "<done>/<total>" of the running operation (bytes for a copy). */
  progress?: string;
  policy?: string;
}

export interface JobView {
  domid: number;
  /** The name the agent recorded with the job (trusted), else the domain's current name. */
  name?: string;
  id?: string;
  target?: string;
  mode?: string;
  suspend?: string;
  state?: string;
  error?: string;
  progress?: string;
  controlError?: string;
  suspendedBy?: string;
  recovered?: string;
  /** "gone": the toolstack destroyed the source after its suspend (xl migrate's normal end). */
  source?: string;
  devices: DeviceResult[];
  /** With readJob(..., { timeline: true }). */
  timeline?: JobTimeline;
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

export interface ReadJobOptions {
  /** Also read the timeline nodes (summaries and reports; waits need not). */
  timeline?: boolean;
}

async function readDir(xs: XenStore, dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const keys = await listOrEmpty(xs, dir);
  const values = await Promise.all(keys.map((k) => xs.tryRead(`${dir}/${k}`)));
  keys.forEach((k, i) => {
    const v = values[i];
    if (v !== undefined && v !== '') out[k] = v;
  });
  return out;
}

export async function readJob(
  xs: XenStore,
  domid: number,
  opts: ReadJobOptions = {},
): Promise<JobView | undefined> {
  if (!(await xs.exists(jobPath(domid)))) return undefined;
  const base = jobPath(domid);
  const [id, target, mode, suspend, state, error, progress, controlError, jobName, liveName] =
    await Promise.all([
      xs.tryRead(jobNode.requestField(domid, 'id')),
      xs.tryRead(jobNode.requestField(domid, 'target')),
      xs.tryRead(jobNode.requestField(domid, 'mode')),
      xs.tryRead(jobNode.requestField(domid, 'suspend')),
      xs.tryRead(jobNode.state(domid)),
      xs.tryRead(jobNode.error(domid)),
      xs.tryRead(jobNode.progress(domid)),
      xs.tryRead(jobNode.controlError(domid)),
      xs.tryRead(`${base}/name`),
      xs.tryRead(`/local/domain/${domid}/name`),
    ]);
  const [suspendedBy, recovered, source] = opts.timeline
    ? await Promise.all([
        xs.tryRead(jobNode.suspendedBy(domid)),
        xs.tryRead(jobNode.recovered(domid)),
        xs.tryRead(`${base}/source`),
      ])
    : [undefined, undefined, undefined];
  const devices: DeviceResult[] = [];
  const devTimelines: Record<string, Record<string, string>> = {};
  const types = await listOrEmpty(xs, jobNode.devices(domid));
  for (const type of types) {
    for (const devid of await listOrEmpty(xs, `${jobNode.devices(domid)}/${type}`)) {
      const dir = jobNode.device(domid, type, devid);
      const [st, reason, prog, policy] = await Promise.all([
        xs.tryRead(`${dir}/state`),
        xs.tryRead(`${dir}/reason`),
        xs.tryRead(`${dir}/progress`),
        xs.tryRead(`${dir}/policy`),
      ]);
      const d: DeviceResult = { type, devid, state: st ?? '?' };
      if (reason) d.reason = reason;
      if (prog) d.progress = prog;
      if (policy) d.policy = policy;
      devices.push(d);
      if (opts.timeline) devTimelines[`${type}/${devid}`] = await readDir(xs, `${dir}/timeline`);
    }
  }
  devices.sort(compareDevices);
  // The agent's record of the name first: the domain's own node is gone once xl moved it.
  const name = jobName ?? liveName;
  const view = compact({
    domid,
    name,
    id,
    target,
    mode,
    suspend,
    state,
    error,
    progress,
    controlError,
    suspendedBy,
    recovered,
    source,
    devices,
  });
  if (opts.timeline) {
    const [timeline, toolstack] = await Promise.all([
      readDir(xs, `${base}/timeline`),
      readDir(xs, `${base}/toolstack`),
    ]);
    view.timeline = parseTimeline({ timeline, toolstack, devices: devTimelines });
  }
  return view;
}

/** Devices in a stable order (type, then numeric devid): the same job prints the same way. */
export function compareDevices(
  a: { type: string; devid: string },
  b: { type: string; devid: string },
): number {
  if (a.type !== b.type) return a.type < b.type ? -1 : 1;
  const na = Number(a.devid);
  const nb = Number(b.devid);
  if (Number.isFinite(na) && Number.isFinite(nb) && na !== nb) return na - nb;
  return a.devid < b.devid ? -1 : a.devid > b.devid ? 1 : 0;
}

/**
 * The requester's own moments (xl started, its point of no return, xl ended, unpaused at the
 * destination), under toolstack/ in the job: the agent never reads them (docs/protocol.md).
 */
export async function writeToolstackMark(
  xs: XenStore,
  domid: number,
  mark: keyof ToolstackMarks,
  atMs: number = Date.now(),
): Promise<void> {
  if (!(await xs.exists(jobPath(domid)))) return;
  await xs.write(`${jobPath(domid)}/toolstack/${TOOLSTACK_NODES[mark]}`, String(Math.round(atMs)));
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

export async function listJobs(xs: XenStore, opts: ReadJobOptions = {}): Promise<JobView[]> {
  const keys = await listOrEmpty(xs, JOBS);
  const out: JobView[] = [];
  for (const k of keys) {
    if (!/^[1-9][0-9]{0,4}$/.test(k)) continue;
    const j = await readJob(xs, Number(k), opts);
    if (j) out.push(j);
  }
  return out.sort((a, b) => a.domid - b.domid);
}

/**
 * A job by what an operator remembers: a live domain (name or id), the name or id a kept job
 * recorded (the domain may have left this host), or the job's id.
 */
export async function findJob(xs: XenStore, spec: string): Promise<{ domid: number; name: string }> {
  if (/^[0-9]{1,5}$/.test(spec) && (await xs.exists(jobPath(Number(spec))))) {
    const j = await readJob(xs, Number(spec));
    return { domid: Number(spec), name: j?.name ?? `domain-${spec}` };
  }
  try {
    return await resolveDomain(xs, spec);
  } catch (err) {
    if (!(err instanceof CliError) || err.code !== ExitCode.NO_DOMAIN) throw err;
  }
  const jobs = await listJobs(xs);
  const byName = jobs.filter((j) => j.name === spec);
  const byId = jobs.filter((j) => j.id === spec);
  const hits = byName.length > 0 ? byName : byId;
  if (hits.length === 1 && hits[0] !== undefined) return { domid: hits[0].domid, name: hits[0].name ?? spec };
  if (hits.length > 1) {
    throw new CliError(
      `${hits.length} jobs match ${spec} (domains ${hits.map((h) => h.domid).join(', ')}): give the domain id`,
      ExitCode.USAGE,
    );
  }
  throw new CliError(`no domain and no job named ${spec}`, ExitCode.NO_DOMAIN, [
    'devmigrate status lists the jobs',
  ]);
}

/**
 * Finished jobs of domains that have left this host are kept for status and report; beyond the
 * `keep` newest (by their end), they are removed. Returns how many were removed.
 */
export async function pruneFinishedJobs(xs: XenStore, keep = 16): Promise<number> {
  const jobs = await listJobs(xs, { timeline: true });
  const departed: JobView[] = [];
  for (const j of jobs) {
    if (!isFinal(j.state)) continue;
    if (await xs.exists(`/local/domain/${j.domid}`)) continue;
    departed.push(j);
  }
  departed.sort((a, b) => (b.timeline?.end ?? 0) - (a.timeline?.end ?? 0));
  let removed = 0;
  for (const j of departed.slice(keep)) {
    await removeJob(xs, j.domid);
    removed += 1;
  }
  return removed;
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
  interrupt?: AbortSignal,
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
  const onInterrupt = (): void =>
    fail?.(interrupt?.reason instanceof InterruptedError ? interrupt.reason : new InterruptedError('SIGINT'));
  if (interrupt?.aborted) onInterrupt();
  else interrupt?.addEventListener('abort', onInterrupt, { once: true });
  try {
    return await result;
  } finally {
    clearTimeout(timer);
    interrupt?.removeEventListener('abort', onInterrupt);
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

/**
 * Resolves true once check() holds, re-checked on every event of a watch on `path`; false when
 * `ms` ran out or the signal aborted (what the caller reads then is what there is).
 */
export async function waitUntil(
  xs: XenStore,
  path: string,
  check: () => Promise<boolean>,
  ms: number,
  signal?: AbortSignal,
): Promise<boolean> {
  let settle: (v: boolean) => void = () => undefined;
  const done = new Promise<boolean>((r) => (settle = r));
  let busy = false;
  let again = false;
  const look = async (): Promise<void> => {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      do {
        again = false;
        if (await check()) return settle(true);
      } while (again);
    } catch {
      // a failed read is looked at again on the next event
    } finally {
      busy = false;
    }
  };
  const watch = await xs.watch(path, { onEvent: () => void look() });
  const timer = setTimeout(() => settle(false), ms);
  const onAbort = (): void => settle(false);
  signal?.addEventListener('abort', onAbort, { once: true });
  if (signal?.aborted) settle(false);
  try {
    return await done;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
    await watch.close().catch(() => undefined);
  }
}
