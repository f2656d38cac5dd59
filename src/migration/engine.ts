// The migration engine: watches /tool/devmigrate/jobs, obeys only requests owned by dom0 and
// writable by no other domain, validates them, starts one JobRun per domain under global limits,
// routes controls, and applies the recovery table to jobs a previous agent left behind.
import type { DevMigrateConfig } from '../config/schema.js';
import {
  BackendIndex,
  discoverDevices,
  ownedOnlyBy,
  trustedDomainName,
  type DiscoveredDevice,
} from '../devices/discovery.js';
import { DeviceRegistry } from '../devices/registry.js';
import type { Logger } from '../devices/types.js';
import type { DomainControl } from '../domains/types.js';
import { isXsErrno } from '../xenstore/errors.js';
import type { Perm, Watch, XenStore, XsOps } from '../xenstore/types.js';
import { JobValidationError, oneLine } from './errors.js';
import { parseDomid, validateRequest, type JobRequest } from './job-schema.js';
import type { JobRunEvent } from './job-events.js';
import { JobRun, type JobStart, type PersistedFacts } from './job-run.js';
import { JobWriter } from './job-writer.js';
import { timelineHook, type JobEndReport } from './timeline-recorder.js';
import { domidOfKey, withLogContext } from './log-context.js';
import {
  classifyJobPath,
  HOLDING,
  holdingPath,
  holdingToolPath,
  JOBS,
  parseHolding,
  jobPath,
  PROTOCOL_VERSION,
  PROTOCOL_VERSION_PATH,
  ROOT,
} from './paths.js';
import { Semaphore } from './semaphore.js';
import { bounded } from './domain-recovery.js';
import { formatSuspendRequest, parseSuspendRequest } from './recovery-decision.js';
import { isControl, isJobState, isTerminal, recoveryAction, type JobState } from './state-machine.js';
import { procTable, type ProcessTable } from './tool-processes.js';

export interface EngineOptions {
  xs: XenStore;
  domains: DomainControl;
  config: DevMigrateConfig;
  log: Logger;
  registry?: DeviceRegistry;
  /** Timing marks of every job (job-events.ts markOf): suspended, synced, done-visible, finished, phase-start/end. */
  onMark?(domid: number, mark: string, atMs: number): void;
  /** Every job's typed events (state changes, phases, device operations, suspended/resumed). */
  onJobEvent?(ev: JobRunEvent): void;
  /** The host's process table (default: /proc); a crashed predecessor's tools are stopped through it. */
  processes?: ProcessTable;
  /** Each job's end (done or final) with its timeline figures: the agent's summary line, metrics. */
  onJobEnd?(report: JobEndReport): void;
  /** Each job's start, with its domain's trusted name (log lines name the domain). */
  onJobStart?(info: { domid: number; jobId: string; name?: string }): void;
}

/** Nodes the agent writes in a job dir; cleared when a new request replaces a finished job. */
const AGENT_NODES = [
  'state',
  'error',
  'progress',
  'devices',
  'recovered',
  'suspended-by',
  'control-error',
  'refused-request',
  'accepted-id',
  'accepted-mode',
  'control',
  'source',
  'suspend-request',
  'name',
  'timeline',
];

/** States after the domain was suspended: a draining agent lets these finish within its bound. */
const PAST_SUSPENSION: ReadonlySet<string> = new Set(['post-suspend', 'post-suspended', 'syncing']);
/** Of a drain's bound, the part kept for aborting and recovering what did not finish, at most. */
const DRAIN_RECOVERY_RESERVE_MS = 10_000;
/** Examinations of a job that failed (XenStore or hypervisor errors) are tried again this often. */
const EXAMINE_RETRIES = 8;
/** Bound on a call into the domain layer made while examining a job. */
const DOMAIN_CALL_MS = 10_000;
/** Device discovery attempts (a transient XenStore error must not decide a job). */
const DISCOVERY_ATTEMPTS = 3;

export interface EngineDrainResult {
  /** Jobs that reached `done` during the drain. */
  completed: number;
  /** Jobs aborted (or failed) with their devices recovered. */
  aborted: number;
  /** Jobs already `done` at the start, left for the toolstack. */
  kept: number;
  /** Jobs not settled at the bound (the next agent's recovery table handles them). */
  left: number;
  leftJobs: string[];
}

/** Resolves when every promise settled or at the wall-clock time `by`, whichever is first. */
async function settleBy(ps: Promise<unknown>[], by: number): Promise<void> {
  const ms = by - Date.now();
  if (ps.length === 0 || ms <= 0) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(ps), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  if (timer !== undefined) clearTimeout(timer);
}

interface Snapshot {
  exists: boolean;
  /** The job directory itself is owned by dom0 alone: nodes the agent writes into it are safe. */
  dirTrusted: boolean;
  /** Every node read (directory, request, each field, control, and the agent's own state nodes). */
  trusted: boolean;
  /** The agent's own nodes (state, accepted-id, suspended-by, suspend-request, source) are dom0's alone: they may decide a recovery. */
  agentNodesTrusted: boolean;
  untrustedWhy?: string;
  state?: string;
  acceptedId?: string;
  suspendedBy?: string;
  /** suspend-request (the agent's own suspend request a guest may still act on). */
  suspendRequest?: string;
  /** source (gone: the toolstack destroyed the source after its suspend). */
  source?: string;
  control?: string;
  fields: Map<string, string>;
}

async function permsOrUndefined(xs: XsOps, path: string): Promise<Perm[] | undefined> {
  try {
    return await xs.getPerms(path);
  } catch (err) {
    if (isXsErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
}

function describePerms(perms: readonly Perm[]): string {
  return perms.map((p) => `${p.access}${p.domid}`).join(',');
}

export class MigrationEngine {
  private readonly xs: XenStore;
  private readonly domains: DomainControl;
  private config: DevMigrateConfig;
  private readonly log: Logger;
  registry: DeviceRegistry;
  private index: BackendIndex;
  readonly jobSlots: Semaphore;
  readonly deviceSlots: Semaphore;
  /** Admission work (request reads, validation, discovery) of a burst of requests, bounded so it
   * does not crowd out the jobs already in their suspended window. */
  private readonly admission = new Semaphore(4);
  private readonly jobs = new Map<number, JobRun>();
  private readonly writers = new Map<number, JobWriter>();
  private readonly examining = new Map<string, { again: boolean; done: Promise<void> }>();
  private readonly handled = new Map<string, string>();
  /** Examinations that failed (XenStore errors) and are being retried, per key. */
  private readonly retries = new Map<string, number>();
  private watch: Watch | undefined;
  private unsubscribe: (() => void) | undefined;
  private stopped = false;
  /** False once draining (SIGTERM): new requests are left in XenStore for the next agent. */
  private accepting = true;
  /** XenStore ops spent outside the job writers (request reads, discovery, controls). */
  readOps = 0;

  constructor(private readonly opts: EngineOptions) {
    this.xs = opts.xs;
    this.domains = opts.domains;
    this.config = opts.config;
    this.log = opts.log;
    this.registry = opts.registry ?? new DeviceRegistry(opts.config);
    this.index = new BackendIndex(opts.xs, opts.config.backendDomains);
    this.jobSlots = new Semaphore(opts.config.limits.maxJobs);
    this.deviceSlots = new Semaphore(opts.config.limits.maxDeviceOps, opts.config.limits.reservedCriticalOps);
  }

  /** Jobs in memory (running, waiting for a control, or done and holding the domain). */
  job(domid: number): JobRun | undefined {
    return this.jobs.get(domid);
  }
  get activeJobs(): number {
    return this.jobs.size;
  }
  /** Total XenStore ops the engine sent (reads + job writes). */
  get xsOps(): number {
    let n = this.readOps;
    for (const w of this.writers.values()) n += w.ops;
    return n;
  }

  async start(): Promise<void> {
    // /tool/devmigrate belongs to dom0 and nobody else may read or write it.
    await this.xs.transaction(async (tx) => {
      await tx.mkdir(ROOT);
      await tx.setPerms(ROOT, [{ domid: 0, access: 'n' }]);
      await tx.mkdir(JOBS);
      await tx.setPerms(JOBS, [{ domid: 0, access: 'n' }]);
      await tx.mkdir(HOLDING);
      await tx.setPerms(HOLDING, [{ domid: 0, access: 'n' }]);
      await tx.write(PROTOCOL_VERSION_PATH, String(PROTOCOL_VERSION));
    });
    this.unsubscribe = this.domains.onEvent((ev) => {
      if (ev.kind === 'gone') this.jobs.get(ev.domid)?.abort('gone', `domain ${ev.domid} was destroyed`);
    });
    // The watch's initial event (path = JOBS) triggers the first full scan: crash recovery.
    this.watch = await this.xs.watch(JOBS, {
      token: 'devmigrate-jobs',
      onEvent: (ev) => this.onWatch(ev.path),
      onError: (err) => this.log.error(`jobs watch lost: ${err.message}`),
    });
  }

  /**
   * Stops watching. Running jobs are aborted and recovered (the guest is never left suspended by
   * a stopping agent); done jobs are left as they are, for the toolstack.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    await this.watch?.close().catch(() => undefined);
    const waits: Promise<void>[] = [];
    const bound = this.config.timeouts.recoverMs + this.config.timeouts.killGraceMs + 5000;
    for (const run of this.jobs.values()) {
      if (run.state === 'done') run.detach();
      else {
        run.abort('abort', 'agent stopping');
        // A late suspend is watched for only as long as leaves the resume its recoverMs.
        run.limitWatch(Date.now() + bound - this.config.timeouts.recoverMs);
      }
      waits.push(run.finished);
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(waits),
      new Promise<void>((r) => {
        timer = setTimeout(() => {
          this.log.error(`stop: jobs still recovering after ${bound} ms`);
          r();
        }, bound);
      }),
    ]);
    if (timer !== undefined) clearTimeout(timer);
    await Promise.all([...this.examining.values()].map((e) => e.done.catch(() => undefined)));
    this.jobs.clear();
  }

  /**
   * SIGTERM, first step: no new job is taken from now on. Requests not yet taken stay in XenStore
   * untouched (the next agent starts them, or applies the recovery table to them); jobs this
   * agent runs still get their controls (a requester's abort or next step).
   */
  stopAccepting(): void {
    this.accepting = false;
  }

  /**
   * SIGTERM: takes no new job and brings every running one to a safe end within timeoutMs.
   * Jobs past the suspension (post-suspend, post-suspended, syncing) may finish: the guest is
   * already stopped and its devices nearly copied. Jobs before it are aborted at once (devices
   * recovered; the guest keeps running), `suspending` included: the job's abort signal cancels
   * the agent's suspend handshake (a 2 s grace, not its ack + suspend waits) and the domain is
   * resumed if it ended suspended; if the guest had acked, the job stays `recovering` and watches
   * for a late suspend (to resume it) until timeouts.suspendMs after the cancel, or the point
   * below where the reserve begins, whichever comes first. At timeoutMs minus a reserve for recovery
   * (min(10 s, timeoutMs / 3)) whatever still runs is aborted and recovered (the domain resumed
   * if the agent suspended it). `done` jobs are left as they are, for the toolstack. Then the
   * jobs watch is closed. A job still not settled at timeoutMs is counted in `left` and named.
   */
  async drain(timeoutMs: number): Promise<EngineDrainResult> {
    this.stopAccepting();
    const drainStart = Date.now();
    const deadline = drainStart + timeoutMs;
    const finishBy = deadline - Math.min(DRAIN_RECOVERY_RESERVE_MS, Math.floor(timeoutMs / 3));
    const cleanup: (() => void)[] = [];
    try {
      // Examinations already under way end first: they may route a control, never start a job.
      await settleBy(
        [...this.examining.values()].map((e) => e.done.catch(() => undefined)),
        finishBy,
      );
      const runs = [...this.jobs.values()];
      const kept = runs.filter((r) => r.state === 'done');
      for (const run of kept) run.detach();
      const active = runs.filter((r) => r.state !== 'done' && !isTerminal(r.state));
      for (const run of active) {
        // A job watching for a late suspend (a cancelled one the guest had acked) stops at the
        // point where the rest of the drain is kept for recovery, so a resume still fits.
        run.limitWatch(finishBy);
        if (PAST_SUSPENSION.has(run.state)) {
          this.jlog(run.domid).info(
            `job ${run.domid}: past the suspension; may finish while the agent stops`,
          );
        } else {
          run.abort('abort', 'agent stopping');
        }
      }
      const settled = active.map((run) => this.settledForDrain(run, cleanup));
      await settleBy(settled, finishBy);
      const reserveWhy = `agent stopping: recovery reserve of the drain bound of ${timeoutMs} ms reached after ${((Date.now() - drainStart) / 1000).toFixed(1)} s`;
      for (const run of active) {
        if (run.state !== 'done' && !isTerminal(run.state)) run.abort('abort', reserveWhy);
      }
      await settleBy(settled, deadline);
      const result: EngineDrainResult = {
        completed: 0,
        aborted: 0,
        kept: kept.length,
        left: 0,
        leftJobs: [],
      };
      for (const run of active) {
        if (run.state === 'done') result.completed += 1;
        else if (isTerminal(run.state)) result.aborted += 1;
        else {
          result.left += 1;
          result.leftJobs.push(`${run.domid} (${run.state})`);
          this.jlog(run.domid).error(`job ${run.domid}: not settled within the drain bound (${run.state})`);
        }
      }
      return result;
    } finally {
      for (const c of cleanup) c();
      this.stopped = true;
      this.unsubscribe?.();
      await this.watch?.close().catch(() => undefined);
      this.jobs.clear();
    }
  }

  /** Resolves when the run ended, or reached `done` (then detached: the toolstack's turn). */
  private settledForDrain(run: JobRun, cleanup: (() => void)[]): Promise<void> {
    return new Promise<void>((resolve) => {
      const atDone = (): void => {
        if (run.state !== 'done') return;
        run.detach();
        end();
      };
      const unsubscribe = run.subscribe((ev) => {
        if (ev.type === 'state') atDone();
      });
      const end = (): void => {
        unsubscribe();
        resolve();
      };
      cleanup.push(end);
      atDone();
      void run.finished.then(end);
    });
  }

  /**
   * SIGHUP: a new, validated config. Limits apply to slots acquired from now on (held slots are
   * kept); timeouts, tools and device policies apply to jobs started from now on. A running job
   * keeps the config and device policies it started with.
   */
  applyConfig(next: DevMigrateConfig): void {
    this.config = next;
    this.registry = this.opts.registry ?? new DeviceRegistry(next);
    this.index = new BackendIndex(this.xs, next.backendDomains);
    this.jobSlots.resize(next.limits.maxJobs, 0);
    this.deviceSlots.resize(next.limits.maxDeviceOps, next.limits.reservedCriticalOps);
  }

  /** The engine's logger with the job's context ({ domid, job, phase }) as metadata. */
  private jlog(key: number | string): Logger {
    return withLogContext(this.log, () => {
      const domid = typeof key === 'number' ? key : domidOfKey(key);
      const run = domid !== undefined ? this.jobs.get(domid) : undefined;
      return { domid, job: run?.request.id, phase: run?.state };
    });
  }

  private onWatch(path: string): void {
    if (this.stopped) return;
    const c = classifyJobPath(path);
    if (c === undefined) return;
    if (c.kind === 'jobs-root') {
      void this.scanAll();
      return;
    }
    if (c.node === 'agent') return;
    if (c.node === 'control') {
      const domid = domidOfKey(c.key) ?? -1;
      if (this.jobs.has(domid)) {
        void this.readControl(domid);
        return;
      }
    }
    this.schedule(c.key);
  }

  /** Examines every job (at start and after a reconnection); a failed listing is tried again. */
  private async scanAll(): Promise<void> {
    for (let attempt = 1; !this.stopped; attempt++) {
      try {
        await this.restoreHeld();
        this.readOps += 1;
        const keys = await this.xs.directory(JOBS);
        for (const k of keys) this.schedule(k);
        return;
      } catch (err) {
        // Jobs a crashed agent left have no other event to be found by: keep looking, slower.
        this.log.error(`cannot list ${JOBS} (attempt ${attempt}): ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, Math.min(5000, 200 * attempt)));
      }
    }
  }

  /**
   * The agent's holding records (holding/<domid> = job id: a job of an agent may hold the domain
   * suspended, or with a request pending). A record whose job still has its nodes is left to them
   * (and dropped once the job ended); one whose job directory was removed (or replaced) while no
   * agent ran gets the job's recovery facts written again, so that the job is recovered as any a
   * crashed agent left: the domain is never left suspended because its requester removed a node.
   */
  private async restoreHeld(): Promise<void> {
    const held = await this.xs
      .directory(HOLDING)
      .catch((err: unknown) => (isXsErrno(err, 'ENOENT') ? [] : Promise.reject(err)));
    this.readOps += 1;
    for (const key of held) {
      const domid = domidOfKey(key);
      if (domid !== undefined) await this.restoreHeldJob(domid);
    }
  }

  /** restoreHeld for one domain (also when its job directory disappears with no run in memory). */
  private async restoreHeldJob(domid: number): Promise<void> {
    // A run of ours holds the domain: it writes its own nodes (whole again after a removal).
    if (this.jobs.has(domid)) return;
    // This agent's own writes for the domain (the end of a run let go when its directory was
    // removed: state, recovered, the holding record removed) land before anything is read: the
    // decision must see what they leave. Read before them, the record still looks held, and the
    // job that just ended would be written `recovering` again over its `failed` (fault model
    // seed 1614641).
    await this.writers.get(domid)?.flush();
    const path = holdingPath(domid);
    const [value, perms, state, accepted] = await Promise.all([
      this.xs.tryRead(path),
      permsOrUndefined(this.xs, path),
      this.xs.tryRead(`${jobPath(domid)}/state`),
      this.xs.tryRead(`${jobPath(domid)}/accepted-id`),
    ]);
    this.readOps += 4;
    const held = value === undefined ? undefined : parseHolding(value);
    if (held === undefined || perms === undefined || !ownedOnlyBy(perms, 0)) return;
    if (state !== undefined && accepted === held.jobId) {
      if (isJobState(state) && (isTerminal(state) || state === 'done'))
        await this.xs.rm(path).catch(() => undefined);
      return;
    }
    if (this.jobs.has(domid)) return; // a job of ours began meanwhile
    this.jlog(domid).warn(
      `job ${domid}: its directory was removed (or replaced) while no agent ran it, and job ${held.jobId} had changed something: recovering it`,
    );
    await this.writerFor(domid).persist({
      state: 'recovering',
      'accepted-id': held.jobId,
      'suspended-by': held.suspendedBy,
      // Whether a suspend request was made is unknown: withdrawn and watched, to be safe.
      'suspend-request':
        held.suspendedBy === 'agent'
          ? formatSuspendRequest({ kind: 'requested', at: Date.now() })
          : undefined,
      error: 'the job directory was removed while no agent ran it',
    });
  }

  /**
   * A job directory with neither request nor state, but nodes only the agent writes (devices,
   * progress, timeline, ...): pieces of a job whose directory the requester removed while it ran,
   * brought back by the agent's own writes sent before it saw the removal (device updates and
   * timeline notes go as plain writes, and XenStore creates the missing directory), whose agent
   * then died before writing the job's nodes whole. Nothing would ever answer it (no request, no
   * state: it looks like a request not written yet), and a requester waiting for a final state
   * would wait forever (fault model seeds 1878504 and 1188951). If the job held the domain (a
   * holding record), it is recovered as any job whose directory went while no agent ran it;
   * otherwise it had changed nothing (a job holds the domain from its first mutating step to its
   * end): the pieces are removed, the "or not at all" of a directory removed while its job ran.
   * One transaction, so that a request (or state) written meanwhile is never removed.
   */
  private async dropDebris(key: string): Promise<void> {
    const domid = domidOfKey(key);
    if (domid !== undefined) {
      if (this.jobs.has(domid)) return;
      await this.restoreHeldJob(domid); // flushes this agent's own writes for the domain first
    }
    const base = jobPath(key);
    const dropped = await this.xs.transaction(async (tx) => {
      const names: string[] = await tx
        .directory(base)
        .catch((err: unknown) => (isXsErrno(err, 'ENOENT') ? [] : Promise.reject(err)));
      this.readOps += 1;
      if (names.includes('request') || names.includes('state')) return false;
      // Only what the agent writes: a requester's directory with no request yet is left alone.
      if (!names.some((n) => n !== 'control' && AGENT_NODES.includes(n))) return false;
      if (domid !== undefined) {
        this.readOps += 1;
        if ((await tx.tryRead(holdingPath(domid))) !== undefined) return false;
      }
      await tx.rm(base);
      return true;
    });
    if (dropped)
      this.jlog(key).warn(
        `job ${key}: removed what the agent had written into its directory after the requester removed it (no request, no state; the job had changed nothing)`,
      );
  }

  /** Examines a job key; events arriving meanwhile cause one more pass, never a parallel one. */
  private schedule(key: string): void {
    // Draining: only jobs this agent runs are still served (their controls); others wait untouched.
    if (!this.accepting && !this.jobs.has(domidOfKey(key) ?? -1)) return;
    const cur = this.examining.get(key);
    if (cur !== undefined) {
      cur.again = true;
      return;
    }
    const entry = { again: false, done: Promise.resolve() };
    this.examining.set(key, entry);
    entry.done = (async () => {
      await new Promise((r) => setImmediate(r));
      do {
        entry.again = false;
        try {
          await this.admission.run(() => this.examine(key));
          this.retries.delete(key);
        } catch (err) {
          this.jlog(key).error(`job ${key}: ${(err as Error).message}`);
          // A transient XenStore failure must not leave the request unanswered (no new event
          // may ever come): forget what was seen and look again, a few times, with backoff.
          this.handled.delete(key);
          const n = (this.retries.get(key) ?? 0) + 1;
          this.retries.set(key, n);
          if (n <= EXAMINE_RETRIES && !this.stopped) {
            const t = setTimeout(() => this.schedule(key), 200 * n);
            t.unref();
          } else {
            this.retries.delete(key);
            if (!this.stopped) await this.answerUnexamined(key, err);
          }
        }
      } while (entry.again && !this.stopped);
      this.examining.delete(key);
    })();
  }

  /**
   * The examinations of a job kept failing: a new request (no state yet, no job in memory) is
   * answered with the error, so that no requester waits forever; anything else is left to the
   * next event or agent (best effort: XenStore itself may be what fails).
   */
  private async answerUnexamined(key: string, err: unknown): Promise<void> {
    const domid = domidOfKey(key);
    if (domid !== undefined && this.jobs.has(domid)) return;
    try {
      const state = await this.xs.tryRead(`${jobPath(key)}/state`);
      const perms = await permsOrUndefined(this.xs, jobPath(key));
      this.readOps += 2;
      if (state !== undefined || perms === undefined || !ownedOnlyBy(perms, 0)) return;
      await this.fail(
        key,
        `the request could not be examined: ${oneLine((err as Error).message)}`,
        undefined,
        false,
      );
    } catch (e) {
      this.jlog(key).error(`job ${key}: cannot answer the request: ${(e as Error).message}`);
    }
  }

  /**
   * Reads a job in one transaction. EVERY node read is checked: the directory, request/, each
   * request field, control, and the agent's own state nodes (which decide a crash recovery and
   * whether the domain is resumed): each must be owned by dom0 and writable by no other domain.
   */
  private async snapshot(key: string): Promise<Snapshot> {
    const base = jobPath(key);
    return this.xs.transaction(async (tx) => {
      const snap: Snapshot = {
        exists: false,
        dirTrusted: true,
        trusted: true,
        agentNodesTrusted: true,
        fields: new Map(),
      };
      let ops = 0;
      const count = <T>(p: Promise<T>): Promise<T> => {
        ops += 1;
        return p;
      };
      const dirPerms = await count(permsOrUndefined(tx, base));
      if (dirPerms === undefined) {
        this.readOps += ops + 2;
        return snap;
      }
      snap.exists = true;
      const untrusted = (what: string, perms: readonly Perm[]): void => {
        if (snap.trusted) {
          snap.trusted = false;
          snap.untrustedWhy = `${what} has permissions ${describePerms(perms)} (must be owned by dom0, writable by no other domain)`;
        }
      };
      if (!ownedOnlyBy(dirPerms, 0)) {
        snap.dirTrusted = false;
        untrusted(base, dirPerms);
      }
      /** Value and permissions of an optional node; an untrusted one is reported, never used. */
      const checked = async (path: string): Promise<string | undefined> => {
        const [v, perms] = await Promise.all([count(tx.tryRead(path)), count(permsOrUndefined(tx, path))]);
        if (v === undefined || perms === undefined) return undefined;
        if (!ownedOnlyBy(perms, 0)) {
          untrusted(path, perms);
          return undefined;
        }
        return v;
      };
      const [state, acceptedId, suspendedBy, suspendRequest, source, names] = await Promise.all([
        checked(`${base}/state`),
        checked(`${base}/accepted-id`),
        checked(`${base}/suspended-by`),
        checked(`${base}/suspend-request`),
        checked(`${base}/source`),
        count(
          tx
            .directory(`${base}/request`)
            .catch((err: unknown) => (isXsErrno(err, 'ENOENT') ? [] : Promise.reject(err))),
        ),
      ]);
      snap.agentNodesTrusted = snap.trusted;
      if (state !== undefined) snap.state = state;
      if (acceptedId !== undefined) snap.acceptedId = acceptedId;
      if (suspendedBy !== undefined) snap.suspendedBy = suspendedBy;
      if (suspendRequest !== undefined) snap.suspendRequest = suspendRequest;
      if (source !== undefined) snap.source = source;
      if (names.length > 0) {
        const reqPerms = await count(tx.getPerms(`${base}/request`));
        if (!ownedOnlyBy(reqPerms, 0)) untrusted(`${base}/request`, reqPerms);
        await Promise.all(
          names.slice(0, 16).map(async (n) => {
            const v = await checked(`${base}/request/${n}`);
            if (v !== undefined) snap.fields.set(n, v);
          }),
        );
        if (state === undefined) {
          const c = await checked(`${base}/control`);
          if (c !== undefined) snap.control = c;
        }
      }
      this.readOps += ops + 2;
      return snap;
    });
  }

  private writerFor(key: number | string): JobWriter {
    if (typeof key === 'number') {
      let w = this.writers.get(key);
      if (w === undefined) {
        w = new JobWriter(this.xs, key, this.jlog(key));
        this.writers.set(key, w);
      }
      return w;
    }
    return new JobWriter(this.xs, key, this.jlog(key));
  }

  private async examine(key: string): Promise<void> {
    const snap = await this.snapshot(key);
    const domidMaybe = domidOfKey(key);
    const inMem = domidMaybe !== undefined ? this.jobs.get(domidMaybe) : undefined;
    if (!snap.exists) {
      // `done` counts once it is on record: removed before the requester could see it, the job
      // was removed running (an abort); the pending write would otherwise bring back an orphan.
      const doneSeen = inMem?.state === 'done' && inMem.stateOnRecord === 'done';
      if (inMem !== undefined && !isTerminal(inMem.state) && !doneSeen) {
        // Its nodes reappear whole in a new directory (or not at all, if the agent dies first).
        this.writerFor(inMem.domid).writeTogether();
        inMem.abort('abort', 'job directory removed by the requester');
      } else if (inMem !== undefined) {
        inMem.detach();
        this.jobs.delete(inMem.domid);
      } else if (domidMaybe !== undefined && this.accepting) {
        // No run of ours: a job of a crashed agent may have held the domain.
        await this.restoreHeldJob(domidMaybe);
      }
      this.handled.delete(key);
      return;
    }
    if (!snap.trusted) {
      await this.untrustedJob(key, snap, inMem);
      return;
    }
    if (snap.fields.size === 0) {
      // No request: a new job not written yet -- or the nodes of a job whose directory the
      // requester removed while it ran (the agent writes them anew). If its agent crashed, the
      // recovery table still applies, from the agent's own (trusted) nodes.
      const left = snap.state !== undefined && isJobState(snap.state) ? snap.state : undefined;
      if (left !== undefined && inMem === undefined && !isTerminal(left)) {
        const fp = `orphan:${left}`;
        if (this.handled.get(key) === fp) return;
        this.handled.set(key, fp);
        await this.recoverOrphan(key, left, snap);
      }
      if (snap.state === undefined && inMem === undefined && this.accepting) await this.dropDebris(key);
      return;
    }
    const fingerprint =
      JSON.stringify([...snap.fields].sort()) + `|${snap.state ?? ''}|${snap.acceptedId ?? ''}`;
    if (this.handled.get(key) === fingerprint) return;
    this.handled.set(key, fingerprint);
    const reqId = snap.fields.get('id');

    if (inMem !== undefined) {
      if (reqId === inMem.request.id) {
        await this.readControl(inMem.domid);
        return;
      }
      if (!isTerminal(inMem.state)) {
        const why = oneLine(
          `request ${JSON.stringify(reqId ?? '')} refused: domain ${inMem.domid} is busy with job ${inMem.request.id} (state ${inMem.state})`,
        );
        this.jlog(key).warn(`job ${key}: ${why}`);
        await this.writerFor(inMem.domid).persist({ 'refused-request': why });
        return;
      }
      this.jobs.delete(inMem.domid);
    }

    const persisted = snap.state !== undefined && isJobState(snap.state) ? snap.state : undefined;
    if (
      persisted !== undefined &&
      inMem === undefined &&
      snap.acceptedId !== undefined &&
      snap.acceptedId === reqId
    ) {
      await this.recoverOrphan(key, persisted, snap);
      return;
    }
    if (persisted !== undefined && inMem === undefined && !isTerminal(persisted)) {
      // A previous agent's job whose request was rewritten: settle the old one first.
      await this.recoverOrphan(key, persisted, snap);
      return;
    }
    await this.startJob(key, snap, snap.state !== undefined);
  }

  /**
   * A job with a node some other domain may write. Nothing from it is obeyed. The error goes to
   * the log and, when the job directory itself is dom0's alone (so the nodes the agent creates
   * in it inherit dom0-only permissions), to `state=failed` + `error` as well. A job already
   * running in memory goes on (what it runs was accepted from trusted nodes); one a crashed agent
   * left in a mutating state is still recovered from its trusted state nodes (the domain must
   * not stay suspended), without the untrusted request.
   */
  private async untrustedJob(key: string, snap: Snapshot, inMem: JobRun | undefined): Promise<void> {
    const why = snap.untrustedWhy ?? 'untrusted permissions';
    const fp = `untrusted:${why}`;
    if (this.handled.get(key) === fp) return;
    this.handled.set(key, fp);
    this.jlog(key).warn(`job ${key} ignored: ${why}`);
    if (!snap.dirTrusted) return; // cannot be marked safely: writing into a guest's directory is its game
    const domid = domidOfKey(key);
    if (inMem !== undefined && !isTerminal(inMem.state)) {
      if (domid !== undefined)
        await this.writerFor(domid).persist({ 'refused-request': oneLine(`request ignored: ${why}`) });
      return;
    }
    // The agent's own nodes are not dom0's alone: they may be forged (a fake "suspended-by=agent"
    // would make us resume a domain we never suspended) and overwriting them would lose a real
    // state: decide nothing, write nothing.
    if (!snap.agentNodesTrusted) return;
    const persisted = snap.state !== undefined && isJobState(snap.state) ? snap.state : undefined;
    const action = persisted !== undefined ? recoveryAction(persisted) : 'restart';
    if (action === 'recover') {
      // A previous agent's job: only its own (trusted) nodes drive the recovery, not the request.
      await this.recoverOrphan(key, persisted ?? 'recovering', { ...snap, fields: new Map() });
      return;
    }
    if (action === 'adopt') return; // done belongs to the toolstack: leave it as it is
    await this.fail(key, `job ignored: ${why}`, undefined, true);
  }

  private async fail(key: string, error: string, id: string | undefined, clear: boolean): Promise<void> {
    this.jlog(key).error(`job ${key} failed: ${error}`);
    const nodes: Record<string, string | undefined> = {};
    if (clear) for (const n of AGENT_NODES) nodes[n] = undefined;
    Object.assign(nodes, { state: 'failed', error: oneLine(error), recovered: '1' });
    if (id !== undefined && /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/.test(id)) nodes['accepted-id'] = id;
    // A key that is not a canonical domid ("05") is answered in its own directory, never an alias.
    const domid = domidOfKey(key);
    const w = domid !== undefined ? this.writerFor(domid) : this.writerFor(key);
    await w.persist(nodes);
  }

  private async startJob(key: string, snap: Snapshot, replacing: boolean): Promise<void> {
    if (!this.accepting) return; // an examination that began before the drain takes nothing
    let domid: number;
    let request: JobRequest;
    try {
      domid = parseDomid(key);
      request = validateRequest(snap.fields);
    } catch (err) {
      if (err instanceof JobValidationError) {
        await this.fail(key, err.message, snap.fields.get('id'), replacing);
        return;
      }
      throw err;
    }
    // An error is no answer (the examination is tried again); only "no such domain" is one.
    const info = await bounded(this.domains.info(domid), DOMAIN_CALL_MS, `domain ${domid} info`);
    if (info === undefined || info.dying) {
      await this.fail(key, `domain ${domid} does not exist`, request.id, replacing);
      return;
    }
    const writer = this.writerFor(domid);
    writer.writeSeparately();
    this.handled.set(key, 'accepted:' + request.id);
    const built = await this.buildRun(domid, request, writer, 'new');
    if (built === undefined) return;
    const run = built.run;
    // In memory before `accepted` is visible: a requester's control right after it finds the job.
    this.jobs.set(domid, run);
    const accept: Record<string, string | undefined> = {};
    if (replacing) for (const n of AGENT_NODES) accept[n] = undefined;
    Object.assign(accept, { state: 'accepted', 'accepted-id': request.id, 'accepted-mode': request.mode });
    await writer.persist(accept);
    this.launch(run, { kind: 'new' });
    await this.readControl(domid);
  }

  /**
   * The job's run, with its devices found from the backends (tried again on a transient error).
   * A new job whose devices cannot be found fails (nothing was changed: recovered=1); one a
   * crashed agent left is still recovered (its domain above all), but without its devices it
   * cannot end recovered=1: devicesUnknown says why.
   */
  private async buildRun(
    domid: number,
    request: JobRequest,
    writer: JobWriter,
    purpose: 'new' | 'recover',
  ): Promise<{ run: JobRun; devicesUnknown?: string } | undefined> {
    // The run keeps the registry (and config) it started with, whatever a reload brings later.
    const registry = this.registry;
    let devices: DiscoveredDevice[] = [];
    let name: string | undefined;
    let devicesUnknown: string | undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        const found = await discoverDevices(this.xs, domid, this.index, registry, this.log);
        this.readOps += found.ops;
        devices = found.devices;
        // The trusted name is recorded with the job (status and report name a domain that left).
        name = await trustedDomainName(this.xs, domid, this.log);
        this.readOps += 4;
        break;
      } catch (err) {
        if (attempt < DISCOVERY_ATTEMPTS) {
          await new Promise((r) => setTimeout(r, 100 * attempt));
          continue;
        }
        const msg = oneLine(`device discovery failed: ${(err as Error).message}`);
        this.jlog(domid).error(`job ${domid}: ${msg}`);
        if (purpose === 'new') {
          await writer.persist({ state: 'failed', error: msg, recovered: '1' });
          return undefined;
        }
        devicesUnknown = msg;
        devices = [];
        break;
      }
    }
    const run = new JobRun(
      domid,
      request,
      devices,
      {
        domains: this.domains,
        config: this.config,
        log: this.log,
        jobSlots: this.jobSlots,
        deviceSlots: this.deviceSlots,
        writer,
        deviceTimeoutMs: (t) => registry.deviceTimeoutMs(t),
        processes: this.opts.processes ?? procTable,
        onMark: timelineHook({
          domid,
          jobId: request.id,
          ...(name !== undefined ? { name } : {}),
          writer,
          ...(this.opts.onMark !== undefined ? { forward: this.opts.onMark } : {}),
          ...(this.opts.onJobEnd !== undefined ? { onEnd: this.opts.onJobEnd } : {}),
          ...(this.opts.onJobStart !== undefined ? { onStart: this.opts.onJobStart } : {}),
        }),
        ...(this.opts.onJobEvent !== undefined ? { onEvent: this.opts.onJobEvent } : {}),
      },
      name,
    );
    return devicesUnknown !== undefined ? { run, devicesUnknown } : { run };
  }

  private launch(run: JobRun, start: JobStart): void {
    this.jobs.set(run.domid, run);
    void run.run(start).then(() => {
      const over = isTerminal(run.state) || run.aborted || (run.state === 'done' && run.sourceLeft);
      if (this.jobs.get(run.domid) === run && over) this.jobs.delete(run.domid);
    });
  }

  private async readControl(domid: number): Promise<void> {
    const run = this.jobs.get(domid);
    if (run === undefined) return;
    const path = `${jobPath(domid)}/control`;
    const [value, perms] = await Promise.all([this.xs.tryRead(path), permsOrUndefined(this.xs, path)]).catch(
      () => [undefined, undefined] as const,
    );
    this.readOps += 2;
    if (value === undefined || value === '') return;
    if (perms === undefined || !ownedOnlyBy(perms, 0)) {
      // A domain allowed to write control must not drive or abort the job: not obeyed, and said so.
      const why = oneLine(
        `control ignored: ${path} has permissions ${describePerms(perms ?? [])} (must be owned by dom0, writable by no other domain)`,
      );
      this.jlog(domid).warn(`job ${domid}: ${why}`);
      const dirPerms = await permsOrUndefined(this.xs, jobPath(domid)).catch(() => undefined);
      this.readOps += 1;
      if (dirPerms !== undefined && ownedOnlyBy(dirPerms, 0))
        await this.writerFor(domid).persist({ 'control-error': why });
      return;
    }
    this.applyControl(run, value);
  }

  private applyControl(run: JobRun, value: string): void {
    const why = isControl(value)
      ? run.control(value)
      : `unknown control ${JSON.stringify(value.slice(0, 32))}`;
    if (why !== undefined) {
      this.jlog(run.domid).warn(`job ${run.domid}: control ignored: ${why}`);
      void this.writerFor(run.domid).persist({ 'control-error': oneLine(why) });
    } else {
      this.jlog(run.domid).info(`job ${run.domid}: control ${value}`);
    }
  }

  /**
   * The tool processes a crashed predecessor recorded for the job's devices (holding/<domid>/tools,
   * "type/devid" -> record). Only records owned by dom0 and writable by no other domain count: a
   * forged one must never make the agent signal a process.
   */
  private async toolRecords(domid: number): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const base = `${holdingPath(domid)}/tools`;
    const list = (p: string): Promise<string[]> =>
      this.xs.directory(p).catch((err: unknown) => (isXsErrno(err, 'ENOENT') ? [] : Promise.reject(err)));
    for (const type of await list(base)) {
      for (const devid of await list(`${base}/${type}`)) {
        const path = holdingToolPath(domid, type, devid);
        const [v, perms] = await Promise.all([this.xs.tryRead(path), permsOrUndefined(this.xs, path)]);
        this.readOps += 2;
        if (v !== undefined && perms !== undefined && ownedOnlyBy(perms, 0)) out.set(`${type}/${devid}`, v);
      }
    }
    return out;
  }

  /** toolRecords, tried again on an error; the reason when they cannot be read. */
  private async toolRecordsOrWhy(domid: number): Promise<Map<string, string> | string> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.toolRecords(domid);
      } catch (err) {
        if (attempt >= DISCOVERY_ATTEMPTS)
          return oneLine(
            `the tool records of the previous agent could not be read: ${(err as Error).message}`,
          );
        await new Promise((r) => setTimeout(r, 100 * attempt));
      }
    }
  }

  /** The recovery table applied to a job found in XenStore with no JobRun in memory. */
  private async recoverOrphan(key: string, state: JobState, snap: Snapshot): Promise<void> {
    if (!this.accepting) return; // the next agent applies the recovery table
    const action = recoveryAction(state);
    this.jlog(key).warn(
      `job ${key}: found in state ${state} with no agent behind it; recovery action: ${action}`,
    );
    if (action === 'none') return;
    let request: JobRequest;
    let domid: number;
    try {
      domid = parseDomid(key);
      request = validateRequest(snap.fields);
    } catch (err) {
      const known = domidOfKey(key);
      if ((action === 'recover' || action === 'adopt') && known !== undefined) {
        // Without a valid request we still know the domain: recover what we can.
        domid = known;
        request = {
          id: snap.acceptedId ?? 'unknown',
          target: 'localhost',
          targetKind: 'hostname',
          mode: 'auto',
          suspend: 'agent',
          live: true,
        };
      } else {
        await this.fail(key, (err as Error).message, snap.acceptedId, false);
        return;
      }
    }
    const writer = this.writerFor(domid);
    switch (action) {
      case 'restart':
        await this.startJob(key, snap, true);
        return;
      case 'forget':
        await writer.persist({
          state: 'failed',
          error: `agent restarted while the job was ${state}; nothing had been changed`,
          recovered: '1',
        });
        return;
      case 'recover':
      case 'adopt': {
        // done and the source is gone: the migration is complete. (An info error is no answer:
        // the job is adopted, so that recover/abort are still served.)
        const gone = await bounded(this.domains.info(domid), DOMAIN_CALL_MS, `domain ${domid} info`).then(
          (i) => i === undefined,
          () => false,
        );
        if (action === 'adopt' && gone) return;
        const built = await this.buildRun(domid, request, writer, 'recover');
        if (built === undefined) return;
        const run = built.run;
        const persisted: PersistedFacts = {
          suspendedBy:
            snap.suspendedBy === 'agent' || snap.suspendedBy === 'toolstack' ? snap.suspendedBy : undefined,
          request: parseSuspendRequest(snap.suspendRequest, Date.now()),
          sourceGone: snap.source === 'gone',
          tools: new Map(),
          ...(built.devicesUnknown !== undefined ? { devicesUnknown: built.devicesUnknown } : {}),
        };
        if (action === 'recover') {
          // No device may be recovered while a tool of the previous agent may still run for it.
          const tools = await this.toolRecordsOrWhy(domid);
          if (typeof tools === 'string') persisted.toolsUnknown = tools;
          else persisted.tools = tools;
        }
        this.launch(
          run,
          action === 'adopt' ? { kind: 'adopt', persisted } : { kind: 'recover', from: state, persisted },
        );
        return;
      }
    }
  }
}
