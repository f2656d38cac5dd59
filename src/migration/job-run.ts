// One job: drives its devices through the phases (all devices of a phase at once, each bounded),
// suspends or waits for the suspend, and on failure or abort recovers the devices (furthest
// phase first) and then carries out the recovery decision for the domain (recovery-decision.ts).
// What the job knows is `facts` (each persisted, or derived from what is); what happens is told
// through typed events (job-events.ts). Every state change goes through the pure state machine
// and is persisted before the work of the new state starts.
import { setMaxListeners } from 'node:events';
import type { DevMigrateConfig } from '../config/schema.js';
import type { DiscoveredDevice } from '../devices/discovery.js';
import {
  DeviceOpError,
  type JobContext,
  type Logger,
  type OpContext,
  type ToolTracking,
} from '../devices/types.js';
import { DomainError, SuspendCancelledError } from '../domains/errors.js';
import type { DomainControl } from '../domains/types.js';
import { ControlMailbox } from './control-mailbox.js';
import {
  bounded,
  recoverDomain,
  type DomainRecoveryDeps,
  type DomainRecoveryResult,
} from './domain-recovery.js';
import { DomainGoneError, EngineTimeoutError, JobAbortedError, oneLine } from './errors.js';
import {
  markOf,
  type DeviceOpName,
  type JobRunEvent,
  type JobRunEventBody,
  type JobRunListener,
} from './job-events.js';
import type { JobRequest, SuspendBy } from './job-schema.js';
import type { JobWriter } from './job-writer.js';
import { withLogContext } from './log-context.js';
import { formatHolding, holdingPath, holdingToolPath } from './paths.js';
import {
  DEFAULT_RECOVERY_LIMITS,
  formatSuspendRequest,
  requestAfterSuspendFailure,
  type SuspendRequestFact,
} from './recovery-decision.js';
import type { Priority, Semaphore } from './semaphore.js';
import {
  allowedControls,
  isTerminal,
  lastPhaseOf,
  nextAutoStep,
  PHASE_OF_STEP,
  SOURCE_MAY_LEAVE,
  transition,
  type Control,
  type JobEvent,
  type JobState,
  type Phase,
  type Step,
} from './state-machine.js';
import {
  formatToolProcess,
  newToolToken,
  parseToolProcess,
  stopTool,
  TOOL_TOKEN_ENV,
  type ProcessTable,
  type ToolProcessRecord,
} from './tool-processes.js';

export interface JobRunDeps {
  domains: DomainControl;
  config: DevMigrateConfig;
  log: Logger;
  jobSlots: Semaphore;
  deviceSlots: Semaphore;
  writer: JobWriter;
  deviceTimeoutMs(type: string): number;
  /** The host's processes: a crashed predecessor's tools are stopped through it. */
  processes: ProcessTable;
  /** Timing marks, derived from the events: suspended, synced, done-visible, finished, phase-start/end:<phase>. */
  onMark?(domid: number, mark: string, atMs: number): void;
  onEvent?(ev: JobRunEvent): void;
}

/** Why a job stops short of `done`: the first cause wins. */
export interface JobStop {
  cause: 'abort' | 'error' | 'gone';
  why: string;
  /** When (epoch ms): a cancelled suspend's late-suspend watch is bounded from here. */
  at: number;
}

/**
 * Everything a job knows that decides what it does, each persisted (node in brackets) so that an
 * agent restarted after a crash knows it too.
 */
export interface JobFacts {
  /** [state] Where the job is. */
  state: JobState;
  /** [suspended-by] Who suspends the domain: written with `suspending`, before any suspend. */
  suspendedBy: SuspendBy | undefined;
  /** [suspend-request] The agent's own suspend request, while a guest may still act on it. */
  request: SuspendRequestFact;
  /** [source=gone] suspend=toolstack: the toolstack destroyed the source after its suspend. */
  sourceGone: boolean;
  /** [error, written with the state it leads to] The first reason to stop. */
  stop: JobStop | undefined;
  /** [devices/, read back after a crash] Why the devices could not be discovered (not recovered). */
  devicesUnknown: string | undefined;
  /** [holding/<domid>/tools, read back after a crash] Why a predecessor's tools are unknown (no device recovered). */
  toolsUnknown: string | undefined;
}

/** What a restarted agent reads back from a job a predecessor left (engine.ts). */
export interface PersistedFacts {
  suspendedBy: SuspendBy | undefined;
  request: SuspendRequestFact;
  sourceGone: boolean;
  /** devices/<type>/<devid>/tool-process values, by "type/devid". */
  tools: ReadonlyMap<string, string>;
  /** The devices could not be discovered (why): they cannot be recovered, the job ends recovered=0. */
  devicesUnknown?: string;
  /** The tool records could not be read (why): no device is recovered (a tool may still run). */
  toolsUnknown?: string;
}

/** new: the engine persisted `accepted`; recover/adopt: per the recovery table after a restart. */
export type JobStart =
  | { kind: 'new' }
  | { kind: 'recover'; from: JobState; persisted: PersistedFacts }
  | { kind: 'adopt'; persisted: PersistedFacts };

interface DeviceSlot {
  dev: DiscoveredDevice;
  /** Last mutating phase started on the device (recover is called with it). */
  lastPhase?: Phase;
  lastProgressWrite: number;
  /** The device's tool processes now recorded (tool-process), normally at most one. */
  tools: Set<ToolProcessRecord>;
  /** A crashed predecessor's tool-process record: stopped before the device is recovered. */
  predecessorTool?: string;
  /** What the running operation last reported through progress() (the timeline's bytes). */
  reported?: number;
}

type Outcome = { ok: true } | { ok: false; reason: string };

const PHASE_LABEL: Record<Phase, string> = {
  test: 'test',
  preSuspend: 'pre-suspend',
  postSuspend: 'post-suspend',
  sync: 'sync',
};
const DEVICE_DONE_STATE: Record<Phase, string> = {
  test: 'tested',
  preSuspend: 'pre-suspended',
  postSuspend: 'post-suspended',
  sync: 'synced',
};
const PHASE_ORDER: readonly Phase[] = ['test', 'preSuspend', 'postSuspend', 'sync'];
/**
 * An aborted agent suspend: the domain layer withdraws the request and watches this long for a
 * guest that suspends anyway; the engine allows that plus a margin (the withdrawing transaction,
 * one info call) before it recovers without the call's answer.
 */
export const SUSPEND_CANCEL_GRACE_MS = 2000;
const SUSPEND_CANCEL_MARGIN_MS = 3000;

function now(): number {
  return performance.now();
}

/** Resolves with p, or rejects with the signal's reason once aborted and p has not settled within graceMs. */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal, graceMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let grace: NodeJS.Timeout | undefined;
    const onAbort = (): void => {
      grace = setTimeout(() => reject(signal.reason), graceMs);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        if (grace !== undefined) clearTimeout(grace);
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) reject(signal.reason);
        else resolve(v);
      },
      (err: unknown) => {
        if (grace !== undefined) clearTimeout(grace);
        signal.removeEventListener('abort', onAbort);
        reject(signal.aborted ? signal.reason : err);
      },
    );
  });
}

/** True if p settled within ms (its outcome is not looked at). */
async function settledWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let t: NodeJS.Timeout | undefined;
  const r = await Promise.race([
    p.then(
      () => true,
      () => true,
    ),
    new Promise<boolean>((resolve) => (t = setTimeout(() => resolve(false), ms))),
  ]);
  clearTimeout(t);
  return r;
}

/**
 * A job's run. What it knows is `facts` (each persisted, or read back from what a predecessor
 * persisted) and its devices' slots (the last phase each started, its recorded tools). The rest is
 * plumbing, each piece derived from those or given by the engine: the stop signal (from
 * facts.stop), the requester's mailbox (controls not yet taken), the job slot held (auto mode: the
 * whole run; steps mode: until the job leaves the suspended window), the suspend call in flight,
 * an outer bound on a late-suspend watch (drain, stop), `detached` (the agent let go of a done
 * job), `handedOver` (the agent stopped before the recovery ended) and the write batching
 * (deferred rest states, the suspend-request value last written).
 */
export class JobRun {
  private readonly f: JobFacts = {
    state: 'accepted',
    suspendedBy: undefined,
    request: { kind: 'none' },
    sourceGone: false,
    stop: undefined,
    devicesUnknown: undefined,
    toolsUnknown: undefined,
  };
  readonly devices: DeviceSlot[];
  /** Aborted with the first stop: cancels what runs (device ops, the suspend handshake, waits). */
  private readonly stopCtl = new AbortController();
  private readonly mailbox = new ControlMailbox();
  private readonly listeners = new Set<JobRunListener>();
  /** The job slot held: by auto mode for the whole run, by steps mode across the suspended window. */
  private heldSlot: (() => void) | undefined;
  /** The agent's suspend call, settled or not: the recovery lets it settle before deciding. */
  private suspendCall: Promise<void> | undefined;
  /** An outer bound (epoch ms) on a late-suspend watch (a drain's or a stop's), and the re-arm of a running one. */
  private watchLimit: number | undefined;
  private rearmWatch: (() => void) | undefined;
  /** The agent stopped waiting on this job (shutdown of a done job): nothing more is written. */
  private detached = false;
  private recorded: JobState | undefined;
  /** The agent stopped before the recovery could end (drain, stop): left `recovering` for the next one. */
  handedOver = false;
  /** The suspend-request value last written (the node is rewritten only when the fact changes). */
  private requestNode: string | undefined;
  /** Rest states auto mode leaves at once, kept until the next write (one round trip less per phase). */
  private deferred: Record<string, string | undefined> = {};
  private readonly timers: NodeJS.Timeout[] = [];
  private finishedResolve!: () => void;
  readonly finished: Promise<void>;
  private readonly ctxJob: JobContext;
  /** Every line about this job carries { domid, job, phase } as metadata (phase = current state). */
  private readonly log: Logger;

  constructor(
    readonly domid: number,
    readonly request: JobRequest,
    devices: DiscoveredDevice[],
    private readonly deps: JobRunDeps,
    domainName: string | undefined,
  ) {
    this.devices = devices.map((dev) => ({ dev, lastProgressWrite: 0, tools: new Set() }));
    this.finished = new Promise((r) => (this.finishedResolve = r));
    // Every device op of a phase listens to the job's signal: many listeners are expected.
    setMaxListeners(0, this.stopCtl.signal);
    this.ctxJob = { jobId: request.id, domid, target: request.target, live: request.live };
    this.log = withLogContext(deps.log, () => ({ domid, job: request.id, phase: this.f.state }));
    if (domainName !== undefined) this.ctxJob.domainName = domainName;
  }

  get state(): JobState {
    return this.f.state;
  }
  /** What the job knows (read only). */
  get facts(): Readonly<JobFacts> {
    return this.f;
  }
  get aborted(): boolean {
    return this.f.stop !== undefined;
  }
  /**
   * The last state known to be written (a requester sees no other): `done` in memory with its
   * write still pending is not `done` to a requester that removes the job meanwhile.
   */
  get stateOnRecord(): JobState | undefined {
    return this.recorded;
  }
  /** suspend=toolstack: the source was destroyed past the suspend; a `done` job then holds nothing. */
  get sourceLeft(): boolean {
    return this.f.sourceGone;
  }

  /** Listens to the job's events; returns the unsubscribe function. */
  subscribe(fn: JobRunListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(body: JobRunEventBody): void {
    const ev: JobRunEvent = { ...body, domid: this.domid, atMs: now() };
    const mark = markOf(body);
    if (mark !== undefined) this.deps.onMark?.(this.domid, mark, ev.atMs);
    this.deps.onEvent?.(ev);
    for (const l of [...this.listeners]) l(ev);
  }

  private setState(next: JobState): void {
    const from = this.f.state;
    this.f.state = next;
    if (from !== next) this.emit({ type: 'state', from, to: next });
  }

  /**
   * The persisted-state transition: pure machine first, then XenStore, then the new state's work.
   * `defer` keeps a rest state that auto mode leaves at once in memory only; the next transition
   * persists both (one round trip less per phase; the recovery action is the same for both).
   */
  private async to(
    ev: JobEvent,
    extra: Record<string, string | undefined> = {},
    how: 'await' | 'defer' | 'background' = 'await',
  ): Promise<void> {
    const next = transition(this.f.state, ev);
    const line = `job ${this.domid} (${this.request.id}): ${this.f.state} -> ${next}`;
    // An outcome that needs a look stands out by level (docs/operations.md, "Log levels").
    const meta = { event: ev.type, ...(extra.error !== undefined ? { error: extra.error } : {}) };
    if (next === 'failed') this.log.error(line, meta);
    // An abort before anything changed (a `check`, a requester's change of mind) is not a problem.
    else if (next === 'refused' || (next === 'aborted' && ev.type !== 'abort')) this.log.warn(line, meta);
    else this.log.info(line, meta);
    this.setState(next);
    const nodes: Record<string, string | undefined> = {
      ...this.deferred,
      ...(next === 'recovering' ? this.recoveryNodes() : {}),
      ...extra,
      state: next,
    };
    // The agent's holding record goes with the job's end (or its hand-over to the toolstack).
    if (isTerminal(next) || next === 'done') nodes[holdingPath(this.domid)] = undefined;
    if ('suspend-request' in nodes) this.requestNode = nodes['suspend-request'];
    if (how === 'defer') {
      this.deferred = nodes;
      return;
    }
    this.deferred = {};
    const written = this.deps.writer.persist(nodes);
    void written.then(
      () => {
        this.recorded = next;
      },
      () => undefined,
    );
    // Background: the writer keeps the order, and a crash here maps to the same recovery action.
    if (how === 'await') await written;
  }

  /**
   * Every fact an agent restarted after a crash needs to recover the job, written with the move to
   * `recovering`: they may be gone (a requester removing a running job's directory removes them;
   * the agent then writes its nodes anew).
   */
  private recoveryNodes(): Record<string, string | undefined> {
    const nodes: Record<string, string | undefined> = {
      'accepted-id': this.request.id,
      'accepted-mode': this.request.mode,
      'suspend-request': formatSuspendRequest(this.f.request),
      // Again after `done` (the toolstack's recover), which had ended the record.
      [holdingPath(this.domid)]: formatHolding(this.request.id, this.f.suspendedBy),
    };
    if (this.f.suspendedBy !== undefined) nodes['suspended-by'] = this.f.suspendedBy;
    if (this.f.sourceGone) nodes.source = 'gone';
    return nodes;
  }

  /** Writes suspend-request when the fact changed since it was last written. */
  private async syncRequestNode(): Promise<void> {
    const v = formatSuspendRequest(this.f.request);
    if (v === this.requestNode) return;
    this.requestNode = v;
    await this.deps.writer.persist({ 'suspend-request': v });
  }

  /**
   * Inside the suspended window of auto mode (post-suspend .. syncing) every state has the same
   * recovery action (recover + resume), so its write need not hold up the devices.
   */
  private inWindow(): boolean {
    return (
      this.request.mode === 'auto' && (this.f.state === 'post-suspend' || this.f.state === 'post-suspended')
    );
  }

  /** Requester's control. Returns why it was refused, or undefined when taken. */
  control(value: Control): string | undefined {
    // The same step written twice, or seen twice (event + re-read), is one request.
    if (!this.mailbox.isNew(value)) return undefined;
    const allowed = allowedControls(this.f.state, this.request.mode);
    if (!allowed.includes(value))
      return `${value} is not allowed in state ${this.f.state} (allowed: ${allowed.join(', ') || 'none'})`;
    if (value === 'abort' || value === 'recover') {
      this.abort('abort', `${value} requested`);
      return undefined;
    }
    this.mailbox.offer(value);
    return undefined;
  }

  /** Aborts what runs now; the run loop then recovers. The first cause wins. */
  abort(cause: JobStop['cause'], why: string): void {
    if (this.f.stop !== undefined || isTerminal(this.f.state)) return;
    if (cause === 'gone' && this.request.suspend === 'toolstack' && SOURCE_MAY_LEAVE.includes(this.f.state)) {
      this.onSourceGone();
      return;
    }
    if (this.f.sourceGone)
      why = `${why}; domain ${this.domid} has left this host (destroyed by the toolstack after its suspend), nothing to resume here`;
    this.f.stop = { cause, why, at: Date.now() };
    this.stopCtl.abort(cause === 'gone' ? new DomainGoneError(this.domid) : new JobAbortedError(why));
    // Wakes a steps-mode job waiting for a control, or a done job waiting for recover.
    this.mailbox.wake();
  }

  /** A failure of the job's own work: it recovers next (what runs has already settled). */
  private failWith(why: string): void {
    this.f.stop ??= { cause: 'error', why, at: Date.now() };
  }

  /**
   * suspend=toolstack, past the suspend: `xl migrate` destroys the source once the destination
   * holds the domain (on failure it resumes the source instead), so this is its expected end. The
   * running phases finish within their bounds; there is nothing left to resume whatever happens.
   */
  private onSourceGone(): void {
    if (this.f.sourceGone) return;
    transition(this.f.state, { type: 'source-gone' }); // the state stays; throws if not allowed
    this.f.sourceGone = true;
    this.log.info(`job ${this.domid}: the toolstack destroyed the source domain; the devices finish`, {
      event: 'source-gone',
    });
    this.deps.writer.persist({ source: 'gone' }).catch(() => undefined);
  }

  /**
   * Bounds the watch for a late suspend (after a cancelled suspend the guest had acked) by an
   * absolute time (epoch ms): a draining or stopping agent keeps time for the resume after it.
   * Only ever shortens the watch; applies to a watch already running too.
   */
  limitWatch(untilMs: number): void {
    this.watchLimit = Math.min(this.watchLimit ?? Infinity, untilMs);
    this.rearmWatch?.();
  }

  /** Stops waiting (agent shutdown of a done job) without touching the job's nodes. */
  detach(): void {
    this.detached = true;
    this.mailbox.wake();
  }

  /** Runs the whole job; never rejects. */
  async run(start: JobStart = { kind: 'new' }): Promise<void> {
    this.emit({ type: 'run-start', start: start.kind });
    try {
      if (this.request.deadlineSec !== undefined) {
        const t = setTimeout(
          () => this.abort('error', `deadline of ${this.request.deadlineSec}s exceeded`),
          this.request.deadlineSec * 1000,
        );
        this.timers.push(t);
      }
      if (start.kind === 'recover') {
        this.f.state = start.from;
        this.adopt(start.persisted);
        const phase = lastPhaseOf(start.from) ?? 'sync';
        for (const d of this.devices) d.lastPhase = phase;
        this.f.stop = {
          cause: 'error',
          why: `agent restarted while the job was ${start.from}`,
          at: Date.now(),
        };
        await this.recover();
        return;
      }
      if (start.kind === 'adopt') {
        this.f.state = 'done';
        this.adopt(start.persisted);
        for (const d of this.devices) d.lastPhase = 'sync';
      }
      await this.drive();
    } catch (err) {
      this.log.error(`job ${this.domid}: internal error: ${(err as Error).stack ?? String(err)}`);
      if (!isTerminal(this.f.state)) {
        this.failWith(oneLine((err as Error).message));
        await this.finishAfterStop().catch(() => undefined);
      }
    } finally {
      for (const t of this.timers) clearTimeout(t);
      this.releaseSlot(true);
      await this.deps.writer.flush();
      this.emit({ type: 'finished' });
      this.finishedResolve();
    }
  }

  /** The facts a predecessor persisted (recover, adopt). */
  private adopt(p: PersistedFacts): void {
    this.f.suspendedBy = p.suspendedBy;
    this.f.request = p.request;
    this.requestNode = formatSuspendRequest(p.request);
    this.f.sourceGone = p.sourceGone;
    this.f.devicesUnknown = p.devicesUnknown;
    this.f.toolsUnknown = p.toolsUnknown;
    for (const d of this.devices) {
      const rec = p.tools.get(`${d.dev.ref.type}/${d.dev.ref.devid}`);
      if (rec !== undefined) d.predecessorTool = rec;
    }
  }

  private async drive(): Promise<void> {
    while (!isTerminal(this.f.state) && !this.detached) {
      if (this.aborted) {
        await this.finishAfterStop();
        return;
      }
      if (this.f.state === 'done') {
        if (this.f.sourceGone) return; // the source left during the job: nothing to hold
        this.releaseSlot(true);
        // Finished from our side: hold until recover/abort or the domain goes (no timeout: the
        // toolstack owns the domain now, and resuming it here could run it twice).
        await this.mailbox.next();
        continue;
      }
      const startedAt = now();
      let step: Step | undefined;
      if (this.request.mode === 'auto') {
        step = nextAutoStep(this.f.state);
        if (step === undefined) return;
      } else {
        step = await this.nextControl();
        if (step === undefined) continue;
      }
      if (!(await this.takeSlot(step))) continue;
      try {
        if (this.request.mode === 'auto') {
          // Auto mode keeps its slot for the whole run: queueing mid-migration would stretch the downtime.
          for (
            let s: Step | undefined = step;
            s !== undefined && !this.aborted && !isTerminal(this.f.state);
            s = nextAutoStep(this.f.state)
          ) {
            await this.doStep(s, now());
          }
        } else {
          await this.doStep(step, startedAt);
        }
      } finally {
        this.releaseSlot(false);
      }
    }
  }

  /** The job slot for a step: the one already held, or a new one (false when the job stopped first). */
  private async takeSlot(step: Step): Promise<boolean> {
    if (this.heldSlot !== undefined) return true;
    try {
      this.heldSlot = await this.deps.jobSlots.acquire(
        step === 'sync' ? 'critical' : 'normal',
        this.stopCtl.signal,
      );
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Gives the job slot back, except that a steps-mode job keeps it across the suspended window
   * (post-suspended): its sync must never queue behind other jobs while the guest is stopped.
   */
  private releaseSlot(force: boolean): void {
    if (this.heldSlot === undefined) return;
    if (!force && this.request.mode === 'steps' && this.f.state === 'post-suspended') return;
    const release = this.heldSlot;
    this.heldSlot = undefined;
    release();
  }

  private nextControl(): Promise<Step | undefined> {
    const idle = this.deps.config.timeouts.stepIdleMs;
    return this.mailbox
      .next(idle, () => this.abort('error', `no control within ${idle} ms in state ${this.f.state}`))
      .then((s) => (this.aborted ? undefined : s));
  }

  private async doStep(step: Step, startedAt: number): Promise<void> {
    // Who suspends is persisted with the step, before the suspend: a crash then knows whether to resume.
    if (step === 'post-suspend') this.f.suspendedBy = this.request.suspend;
    // From its first mutating step the job is in the agent's holding record (holding/<domid> =
    // "<job id>:<who suspends, or ->"), which survives a requester removing the job's directory.
    const stepFacts: Record<string, string> =
      step === 'pre-suspend'
        ? { [holdingPath(this.domid)]: formatHolding(this.request.id, undefined) }
        : step === 'post-suspend'
          ? {
              'suspended-by': this.request.suspend,
              [holdingPath(this.domid)]: formatHolding(this.request.id, this.request.suspend),
            }
          : {};
    await this.to(
      { type: 'step', step },
      stepFacts,
      step === 'sync' && this.inWindow() ? 'background' : 'await',
    );
    if (this.aborted) return;
    if (step === 'post-suspend') {
      await this.suspendStage();
      if (this.aborted || this.f.state !== 'post-suspend') return;
    }
    const phase = PHASE_OF_STEP[step];
    // A phase's bound runs from its step's start (for sync: the control), except post-suspend's,
    // which starts once the domain is suspended (the suspend has its own bounds).
    const failures = await this.runPhase(phase, step === 'post-suspend' ? now() : startedAt);
    if (this.aborted) return;
    if (failures.length > 0) {
      const summary = oneLine(
        `${phase === 'test' ? 'refused' : `${PHASE_LABEL[phase]} failed`} by ${failures.length} device(s): ${failures.join('; ')}`,
      );
      if (phase === 'test') {
        await this.to({ type: 'phase-failed' }, { error: summary, recovered: '1' });
        return;
      }
      const why = this.f.sourceGone
        ? oneLine(
            `domain ${this.domid} has left this host (destroyed by the toolstack after its suspend) but ${summary}; nothing to resume here`,
          )
        : summary;
      this.failWith(why);
      await this.to({ type: 'phase-failed' }, { error: why });
      await this.recover();
      return;
    }
    const autoContinues = this.request.mode === 'auto' && phase !== 'sync';
    if (phase === 'sync') this.emit({ type: 'synced' });
    await this.to({ type: 'phase-ok' }, { progress: undefined }, autoContinues ? 'defer' : 'await');
    if (phase === 'sync') {
      this.emit({ type: 'done-visible' });
      // Done belongs to the toolstack now: no deadline may recover it behind its back.
      for (const t of this.timers) clearTimeout(t);
    }
  }

  /** Records the agent's suspend request before it is made (the domain layer waits for this). */
  private async requestMade(): Promise<void> {
    this.f.request = { kind: 'requested', at: Date.now() };
    this.emit({ type: 'suspend-requested' });
    const v = formatSuspendRequest(this.f.request);
    this.requestNode = v;
    await this.deps.writer.persistStrict({ 'suspend-request': v });
  }

  private async suspendStage(): Promise<void> {
    const t = this.deps.config.timeouts;
    const signal = this.stopCtl.signal;
    try {
      // Each wait is bounded here too, whatever the domain layer does with its own timeouts.
      if (this.request.suspend === 'agent') {
        const bound = t.suspendAckMs + t.suspendMs + 1000;
        // The job's signal (requester abort, deadline, drain, stop, domain gone) cancels the
        // handshake: the call settles within the grace instead of its ack + suspend timeouts.
        const p = bounded(
          this.deps.domains.suspend(this.domid, {
            ackTimeoutMs: t.suspendAckMs,
            suspendTimeoutMs: t.suspendMs,
            signal,
            cancelGraceMs: SUSPEND_CANCEL_GRACE_MS,
            onRequest: () => this.requestMade(),
          }),
          bound,
          'suspend',
        );
        this.suspendCall = p.then(
          () => {
            this.f.request = { kind: 'none' };
          },
          (err: unknown) => {
            const e = err instanceof DomainError ? err : undefined;
            const c = err instanceof SuspendCancelledError ? err : undefined;
            // A cancelled request counts from the cancel (the job's stop), as the domain layer's grace does.
            this.f.request = requestAfterSuspendFailure(
              { ...(e ? { code: e.code } : {}), ...(c ? { end: c.end, acked: c.acked } : {}) },
              this.f.request,
              c !== undefined && this.f.stop !== undefined ? this.f.stop.at : Date.now(),
            );
            if (c !== undefined)
              this.log.info(`job ${this.domid}: ${oneLine(c.message)}`, { suspended: c.suspended });
          },
        );
        await untilAborted(p, signal, SUSPEND_CANCEL_GRACE_MS + SUSPEND_CANCEL_MARGIN_MS);
      } else {
        const p = bounded(
          this.deps.domains.waitForSuspended(this.domid, t.toolstackSuspendMs),
          t.toolstackSuspendMs + 1000,
          "waiting for the toolstack's suspend",
        );
        await untilAborted(p, signal, 1000);
      }
    } catch (err) {
      if (this.aborted) return;
      const why = oneLine(`suspend failed: ${(err as Error).message}`);
      this.failWith(why);
      await this.suspendCall;
      await this.to({ type: 'suspend-failed' }, { error: why });
      await this.recover();
      return;
    }
    this.emit({ type: 'suspended' });
    const settled: Record<string, string | undefined> =
      this.requestNode !== undefined ? { 'suspend-request': undefined } : {};
    await this.to({ type: 'suspended' }, settled, this.request.mode === 'auto' ? 'background' : 'await');
  }

  private opContext(slot: DeviceSlot, signal: AbortSignal, op: DeviceOpName): OpContext {
    const { type, devid } = slot.dev.ref;
    return {
      job: this.ctxJob,
      signal,
      log: withLogContext(this.log, () => ({ device: `${type}/${devid}` })),
      progress: (done, total) => {
        slot.reported = Math.floor(done);
        const at = Date.now();
        if (at - slot.lastProgressWrite < 1000 && done < total) return;
        slot.lastProgressWrite = at;
        this.deps.writer.device(type, devid, { progress: `${Math.floor(done)}/${Math.floor(total)}` });
      },
      // Tools of mutating phases and of recover are recorded (a test changes nothing).
      ...(op !== 'test' ? { toolProcess: () => this.toolProcess(slot) } : {}),
    };
  }

  /**
   * Records a device's tool in the job's holding record BEFORE it runs (token + boot id,
   * awaited; the token marks its processes), then its process group and start time once
   * spawned; the record goes when it has ended (see toolRecordNodes). A crashed agent's
   * successor stops it first.
   */
  private async toolProcess(slot: DeviceSlot): Promise<ToolTracking> {
    const rec: ToolProcessRecord = { token: newToolToken(), bootId: this.deps.processes.bootId() };
    slot.tools.add(rec);
    try {
      await this.deps.writer.persistStrict(this.toolRecordNodes(slot));
    } catch (err) {
      slot.tools.delete(rec);
      throw err;
    }
    let ended = false;
    return {
      env: { [TOOL_TOKEN_ENV]: rec.token },
      spawned: (pid) => {
        const p = this.deps.processes.info(pid);
        if (p === undefined || ended) return;
        rec.pgid = pid;
        rec.startTicks = p.startTicks;
        void this.deps.writer.persist(this.toolRecordNodes(slot));
      },
      ended: () => {
        if (ended) return;
        ended = true;
        slot.tools.delete(rec);
        void this.deps.writer.persist(this.toolRecordNodes(slot));
      },
    };
  }

  /**
   * The device's one record node, as it must be now: the newest tool of the device still tracked
   * (a predecessor's record until that tool was stopped), removed when there is none. Every
   * change of a device's tools writes this, never "its own" record or a blind removal: a tool
   * of an earlier phase (stopped before recover, its op abandoned at a timeout) may report its
   * end after the recover tool recorded itself, and its removal would leave the running recover
   * tool unrecorded for the next agent (fault model seed 1212228). The writer keeps the order
   * of the writes, so the last one sent is the device's current view.
   */
  private toolRecordNodes(slot: DeviceSlot): Record<string, string | undefined> {
    const { type, devid } = slot.dev.ref;
    let newest: ToolProcessRecord | undefined;
    for (const rec of slot.tools) newest = rec; // insertion order: the last added is the newest
    return {
      [holdingToolPath(this.domid, type, devid)]:
        newest !== undefined ? formatToolProcess(newest) : slot.predecessorTool,
    };
  }

  /** One bounded device operation under the global device-op limit. */
  private async deviceOp(
    slot: DeviceSlot,
    op: DeviceOpName,
    timeoutMs: number,
    parent: AbortSignal,
    priority: Priority,
    fn: (ctx: OpContext) => Promise<Outcome>,
  ): Promise<Outcome> {
    const { type, devid } = slot.dev.ref;
    const device = `${type}/${devid}`;
    const what = `${device} ${op === 'recover' ? 'recover' : PHASE_LABEL[op]}`;
    let release: (() => void) | undefined;
    try {
      release = await this.deps.deviceSlots.acquire(priority, parent);
    } catch (err) {
      return { ok: false, reason: oneLine((err as Error).message) };
    }
    slot.reported = undefined;
    this.emit({ type: 'device-op-start', device, op });
    const ac = new AbortController();
    const onParent = (): void => ac.abort(parent.reason);
    parent.addEventListener('abort', onParent, { once: true });
    const timer = setTimeout(() => ac.abort(new EngineTimeoutError(what, timeoutMs)), timeoutMs);
    let outcome: Outcome;
    try {
      outcome = await untilAborted(
        fn(this.opContext(slot, ac.signal, op)),
        ac.signal,
        this.deps.config.timeouts.killGraceMs + 500,
      );
    } catch (err) {
      const msg = err instanceof DeviceOpError ? err.reason : (err as Error).message;
      outcome = { ok: false, reason: oneLine(msg ?? String(err)) };
    } finally {
      clearTimeout(timer);
      parent.removeEventListener('abort', onParent);
      release();
    }
    this.emit({
      type: 'device-op-end',
      device,
      op,
      ok: outcome.ok,
      ...(outcome.ok ? {} : { reason: outcome.reason }),
      ...(slot.reported !== undefined ? { bytes: slot.reported } : {}),
    });
    return outcome;
  }

  private phaseTimeoutMs(phase: Phase): number {
    const t = this.deps.config.timeouts;
    return { test: t.testMs, preSuspend: t.preSuspendMs, postSuspend: t.postSuspendMs, sync: t.syncMs }[
      phase
    ];
  }

  /** Runs one phase on every device at once; returns "type/devid: reason" for each failure. */
  private async runPhase(phase: Phase, startedAt: number): Promise<string[]> {
    const full = this.phaseTimeoutMs(phase);
    const phaseMs = Math.max(0, Math.round(full - (now() - startedAt)));
    const phaseCtl = new AbortController();
    setMaxListeners(0, phaseCtl.signal);
    const onJob = (): void => phaseCtl.abort(this.stopCtl.signal.reason);
    this.stopCtl.signal.addEventListener('abort', onJob, { once: true });
    const timer = setTimeout(
      () => phaseCtl.abort(new EngineTimeoutError(`phase ${PHASE_LABEL[phase]}`, full)),
      phaseMs,
    );
    const priority: Priority = phase === 'postSuspend' || phase === 'sync' ? 'critical' : 'normal';
    const total = this.devices.length;
    let done = 0;
    const failures: string[] = [];
    this.emit({ type: 'phase-start', phase });
    try {
      await Promise.allSettled(
        this.devices.map(async (slot) => {
          const { type, devid } = slot.dev.ref;
          const m = slot.dev.migrator;
          if (phase !== 'test') slot.lastPhase = phase;
          let outcome: Outcome = { ok: true };
          let note: string | undefined;
          const op = m[phase];
          if (op !== undefined) {
            const timeoutMs = Math.min(this.deps.deviceTimeoutMs(type), phaseMs);
            outcome = await this.deviceOp(slot, phase, timeoutMs, phaseCtl.signal, priority, async (ctx) => {
              if (phase === 'test') {
                const r = await m.test?.(ctx);
                if (r === undefined || r.ok) {
                  note = r?.note;
                  return { ok: true };
                }
                return { ok: false, reason: r.reason };
              }
              await (op as (c: OpContext) => Promise<unknown>).call(m, ctx);
              return { ok: true };
            });
          }
          done += 1;
          if (outcome.ok) {
            const upd: Record<string, string> = { state: DEVICE_DONE_STATE[phase] };
            if (phase === 'test') upd.policy = m.policy;
            if (phase === 'test' && note !== undefined) upd.reason = oneLine(note, 200);
            this.deps.writer.device(type, devid, upd);
          } else {
            failures.push(`${type}/${devid}: ${outcome.reason}`);
            this.deps.writer.device(type, devid, {
              state: phase === 'test' ? 'refused' : 'failed',
              reason: outcome.reason,
              ...(phase === 'test' ? { policy: m.policy } : {}),
            });
          }
          this.deps.writer.progress(`${done}/${total}`);
        }),
      );
    } finally {
      clearTimeout(timer);
      this.stopCtl.signal.removeEventListener('abort', onJob);
    }
    this.emit({ type: 'phase-end', phase, failures: failures.length });
    return failures;
  }

  private async finishAfterStop(): Promise<void> {
    const stop = this.f.stop ?? { cause: 'error', why: 'stopped', at: Date.now() };
    if (this.f.state === 'done' && stop.cause === 'gone') {
      return; // the toolstack completed the migration and destroyed the source
    }
    if (this.f.state === 'recovering') {
      await this.recover();
      return;
    }
    const why =
      stop.cause === 'gone'
        ? `domain ${this.domid} was destroyed while the job was ${this.f.state}`
        : stop.why;
    await this.to({ type: stop.cause === 'gone' ? 'gone' : 'abort' }, { error: oneLine(why) });
    const next = this.f.state as JobState;
    if (next === 'recovering') await this.recover();
    else if (isTerminal(next)) await this.deps.writer.persist({ recovered: '1' });
  }

  /**
   * Recovers every device that started a mutating phase (furthest phase first), then carries out
   * the recovery decision for the domain, then writes the end: failed/aborted, recovered=1|0.
   */
  private async recover(): Promise<void> {
    if (this.f.state !== 'recovering') {
      this.setState('recovering');
      const nodes: Record<string, string | undefined> = {
        ...this.recoveryNodes(),
        state: 'recovering',
        progress: undefined,
      };
      this.requestNode = nodes['suspend-request'];
      await this.deps.writer.persist(nodes);
    }
    this.releaseSlot(true);
    await this.withdrawEarly();
    const failures = await this.recoverDevices();
    if (this.f.devicesUnknown !== undefined) failures.push(`devices not recovered: ${this.f.devicesUnknown}`);
    // A suspend still in flight (aborted mid-handshake) could land after the look below and
    // leave the guest suspended: let it settle first (aborted, it settles within its cancel
    // grace; bounded here too). Unsettled, its request stays `requested`: withdrawn and watched.
    if (this.suspendCall !== undefined) {
      const settled = await settledWithin(
        this.suspendCall,
        SUSPEND_CANCEL_GRACE_MS + SUSPEND_CANCEL_MARGIN_MS,
      );
      if (!settled) this.log.warn(`job ${this.domid}: the suspend call has not settled; deciding now`);
    }
    await this.syncRequestNode();
    const stop = this.f.stop ?? { cause: 'error', why: '', at: Date.now() };
    let final: DomainRecoveryResult['final'] = { do: 'leave', reason: 'gone' };
    if (stop.cause !== 'gone') {
      final = (
        await recoverDomain(
          {
            domid: this.domid,
            suspendedBy: this.f.suspendedBy,
            request: this.f.request,
            sourceGone: this.f.sourceGone,
          },
          this.domainRecoveryDeps(),
        )
      ).final;
    }
    if (final.do === 'hand-over') {
      // Still `recovering`, its facts on record: the next agent goes on from them.
      this.handedOver = true;
      await this.deps.writer.persist({ error: oneLine(`${stop.why}; ${final.why}`) });
      return;
    }
    const cause = final.do === 'leave' && final.reason === 'gone' && !this.f.sourceGone ? 'gone' : stop.cause;
    const ok = failures.length === 0 && final.do === 'leave';
    const parts: string[] = [];
    if (failures.length > 0) parts.push(`recover failed for ${failures.join('; ')}`);
    if (final.do === 'fail') parts.push(final.why);
    else if (final.note !== undefined && final.reason !== 'gone') parts.push(final.note);
    const error = oneLine(
      cause === 'gone'
        ? `domain ${this.domid} was destroyed; ${parts.join('; ') || 'devices recovered'}`
        : [stop.why, ...parts].filter((p) => p !== '').join('; '),
    );
    this.f.request = { kind: 'none' };
    await this.to(
      ok ? { type: 'recovered', cause: cause === 'abort' ? 'abort' : 'error' } : { type: 'recovery-failed' },
      {
        error,
        recovered: ok ? '1' : '0',
        ...(this.requestNode !== undefined ? { 'suspend-request': undefined } : {}),
      },
    );
  }

  /**
   * A request of ours that may still be pending (left by a crashed agent, or by a suspend call
   * that never answered) is withdrawn before the devices are recovered, which may take long: a
   * guest acting on it meanwhile would suspend only to be resumed. Best effort: the recovery of
   * the domain withdraws it again (with retries) if this fails.
   */
  private async withdrawEarly(): Promise<void> {
    if (this.f.request.kind !== 'requested' || this.f.suspendedBy !== 'agent') return;
    if (this.suspendCall !== undefined && !(await settledWithin(this.suspendCall, 0))) return;
    try {
      const outcome = await bounded(
        this.deps.domains.withdrawSuspend(this.domid),
        this.deps.config.timeouts.recoverMs,
        'withdraw the suspend request',
      );
      this.f.request =
        outcome === 'withdrawn' ? { kind: 'withdrawn', at: Date.now() } : { kind: 'acked', at: Date.now() };
      this.log.info(`job ${this.domid}: leftover suspend request ${outcome}`);
      await this.syncRequestNode();
    } catch (err) {
      this.log.warn(
        `job ${this.domid}: cannot withdraw the suspend request yet: ${oneLine((err as Error).message)}`,
      );
    }
  }

  private domainRecoveryDeps(): DomainRecoveryDeps {
    const t = this.deps.config.timeouts;
    return {
      domains: this.deps.domains,
      log: this.log,
      limits: { ...DEFAULT_RECOVERY_LIMITS, suspendMs: t.suspendMs, graceMs: SUSPEND_CANCEL_GRACE_MS },
      callMs: t.recoverMs,
      watchLimit: () => this.watchLimit,
      onWatchLimit: (cb) => {
        this.rearmWatch = cb;
      },
      recordRequest: async (r) => {
        this.f.request = r;
        await this.syncRequestNode();
      },
      onResumed: () => this.emit({ type: 'resumed' }),
    };
  }

  /** Recovers the devices, furthest phase first; "type/devid: reason" for each that failed. */
  private async recoverDevices(): Promise<string[]> {
    const recoverMs = this.deps.config.timeouts.recoverMs;
    const ctl = new AbortController();
    setMaxListeners(0, ctl.signal);
    const timer = setTimeout(() => ctl.abort(new EngineTimeoutError('recover', recoverMs)), recoverMs);
    const failures: string[] = [];
    this.emit({ type: 'phase-start', phase: 'recover' });
    try {
      for (const phase of [...PHASE_ORDER].reverse()) {
        const group = this.devices.filter((d) => d.lastPhase === phase);
        await Promise.allSettled(
          group.map(async (slot) => {
            const { type, devid } = slot.dev.ref;
            const failed = (reason: string): void => {
              failures.push(`${type}/${devid}: ${reason}`);
              this.deps.writer.device(type, devid, { state: 'recover-failed', reason });
            };
            // No tool of a crashed predecessor (or a lingering one of ours) may still run when
            // the device's tool is called again with -recover.
            const blocker = this.f.toolsUnknown ?? (await this.stopLeftoverTools(slot));
            if (blocker !== undefined) {
              failed(blocker);
              return;
            }
            const m = slot.dev.migrator;
            if (m.recover === undefined) {
              this.deps.writer.device(type, devid, { state: 'recovered' });
              return;
            }
            const r = await this.deviceOp(
              slot,
              'recover',
              Math.min(this.deps.deviceTimeoutMs(type), recoverMs),
              ctl.signal,
              'critical',
              async (ctx) => {
                await m.recover?.(ctx, phase);
                return { ok: true };
              },
            );
            if (r.ok) this.deps.writer.device(type, devid, { state: 'recovered' });
            else failed(r.reason);
          }),
        );
      }
    } finally {
      clearTimeout(timer);
    }
    this.emit({ type: 'phase-end', phase: 'recover', failures: failures.length });
    return failures;
  }

  /** Stops the device's leftover tool processes; the reason it could not, or undefined. */
  private async stopLeftoverTools(slot: DeviceSlot): Promise<string | undefined> {
    const { type, devid } = slot.dev.ref;
    const predecessor = parseToolProcess(slot.predecessorTool);
    if (slot.predecessorTool !== undefined && predecessor === undefined)
      return `the previous agent's tool record ${JSON.stringify(slot.predecessorTool.slice(0, 80))} cannot be read: a tool may still run; not recovered`;
    const recs: [ToolProcessRecord, string][] = [];
    if (predecessor !== undefined) recs.push([predecessor, 'left running by a previous agent']);
    for (const rec of slot.tools) recs.push([rec, 'still running']);
    for (const [rec, how] of recs) {
      const out = await stopTool(rec, this.deps.processes, this.deps.config.timeouts.killGraceMs);
      const what = `the ${type}/${devid} tool (${rec.pgid !== undefined ? `process group ${rec.pgid}` : `token ${rec.token}`})`;
      if (out === 'stopped') this.log.warn(`job ${this.domid}: stopped ${what} ${how}`);
      if (out === 'still-running') return `${what}, ${how}, survived SIGKILL; not recovered`;
    }
    if (slot.predecessorTool !== undefined) {
      slot.predecessorTool = undefined;
      void this.deps.writer.persist(this.toolRecordNodes(slot));
    }
    return undefined;
  }
}
