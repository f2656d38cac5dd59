// One job: drives its devices through the phases (all devices of a phase at once, each bounded),
// suspends or waits for the suspend, and on failure or abort recovers the devices (furthest
// phase first) and resumes the domain if the agent suspended it. Every state change goes
// through the pure state machine and is persisted before the work of the new state starts.
import { setMaxListeners } from 'node:events';
import type { DevMigrateConfig } from '../config/schema.js';
import type { DiscoveredDevice } from '../devices/discovery.js';
import { DeviceOpError, type JobContext, type Logger, type OpContext } from '../devices/types.js';
import { SuspendCancelledError } from '../domains/errors.js';
import type { DomainControl } from '../domains/types.js';
import { DomainGoneError, EngineTimeoutError, JobAbortedError, oneLine } from './errors.js';
import type { JobRequest } from './job-schema.js';
import { JobWriter } from './job-writer.js';
import { withLogContext } from './log-context.js';
import type { Semaphore, Priority } from './semaphore.js';
import {
  allowedControls,
  isTerminal,
  lastPhaseOf,
  SOURCE_MAY_LEAVE,
  nextAutoStep,
  PHASE_OF_STEP,
  transition,
  type Control,
  type JobEvent,
  type JobState,
  type Phase,
  type Step,
} from './state-machine.js';

export interface JobRunDeps {
  domains: DomainControl;
  config: DevMigrateConfig;
  log: Logger;
  jobSlots: Semaphore;
  deviceSlots: Semaphore;
  writer: JobWriter;
  deviceTimeoutMs(type: string): number;
  /** Timing marks (benchmarks, the timeline): suspended, synced, finished, phase/device start/end, resumed, end. */
  onMark?(domid: number, mark: string, atMs: number): void;
}

interface DeviceSlot {
  dev: DiscoveredDevice;
  /** Last mutating phase started on the device (recover is called with it). */
  lastPhase?: Phase;
  lastProgressWrite: number;
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
const SUSPEND_CANCEL_GRACE_MS = 2000;
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

/** Rejects with EngineTimeoutError(what, ms) unless p settles first: a bound on a call into another layer. */
function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new EngineTimeoutError(what, ms)), ms);
    }),
  ]).finally(() => clearTimeout(t));
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

/** new: the engine persisted `accepted`; recover/adopt: per the recovery table after a restart. */
export type JobStart =
  | { kind: 'new' }
  | { kind: 'recover'; from: JobState; suspendedBy?: string }
  | { kind: 'adopt'; suspendedBy?: string };

export class JobRun {
  state: JobState = 'accepted';
  readonly devices: DeviceSlot[];
  private abortCtl = new AbortController();
  private abortCause: 'abort' | 'error' | 'gone' | undefined;
  private abortWhy = '';
  private weSuspended = false;
  /** suspend=toolstack: the source was destroyed past the suspend (xl migrate's normal end). */
  private sourceGone = false;
  /** The agent's suspend call, settled or not: recovery waits for it before deciding to resume. */
  private suspendCall: Promise<unknown> | undefined;
  /** Set when the agent's suspend was cancelled after the guest acked and it had not suspended. */
  private ackedNotSuspended = false;
  /** When the job was aborted (epoch ms): a late suspend is watched for from here. */
  private abortedAt: number | undefined;
  /** An outer bound (epoch ms) on the late-suspend watch: a drain's or a stop's. */
  private watchLimit: number | undefined;
  /** Re-arms a running late-suspend watch when watchLimit changes. */
  private onWatchLimit: (() => void) | undefined;
  private detached = false;
  private stepWaiter: ((c: Step) => void) | undefined;
  /** A step control that arrived before the run loop waited for it (the requester is fast). */
  private pendingStep: Step | undefined;
  private lastControl: string | undefined;
  private deferred: Record<string, string | undefined> = {};
  private finishedResolve!: () => void;
  readonly finished: Promise<void>;
  private timers: NodeJS.Timeout[] = [];
  private readonly ctxJob: JobContext;

  constructor(
    readonly domid: number,
    readonly request: JobRequest,
    devices: DiscoveredDevice[],
    private readonly deps: JobRunDeps,
    domainName: string | undefined,
  ) {
    this.devices = devices.map((dev) => ({ dev, lastProgressWrite: 0 }));
    this.finished = new Promise((r) => (this.finishedResolve = r));
    // Every device op of a phase listens to the job's signal: many listeners are expected.
    setMaxListeners(0, this.abortCtl.signal);
    this.ctxJob = { jobId: request.id, domid, target: request.target, live: request.live };
    this.jobLog = withLogContext(deps.log, () => ({ domid, job: request.id, phase: this.state }));
    if (domainName !== undefined) this.ctxJob.domainName = domainName;
  }

  /** Every line about this job carries { domid, job, phase } as metadata (phase = current state). */
  private readonly jobLog: Logger;

  private get log(): Logger {
    return this.jobLog;
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
    const next = transition(this.state, ev);
    const line = `job ${this.domid} (${this.request.id}): ${this.state} -> ${next}`;
    // An outcome that needs a look stands out by level (docs/operations.md, "Log levels").
    const meta = { event: ev.type, ...(extra.error !== undefined ? { error: extra.error } : {}) };
    if (next === 'failed') this.log.error(line, meta);
    // An abort before anything changed (a `check`, a requester's change of mind) is not a problem.
    else if (next === 'refused' || (next === 'aborted' && ev.type !== 'abort')) this.log.warn(line, meta);
    else this.log.info(line, meta);
    this.state = next;
    if (isTerminal(next) || next === 'done') this.deps.onMark?.(this.domid, `end:${next}`, now());
    const nodes = { ...this.deferred, ...extra, state: next };
    if (how === 'defer') {
      this.deferred = nodes;
      return;
    }
    this.deferred = {};
    const written = this.deps.writer.persist(nodes);
    // Background: the writer keeps the order, and a crash here maps to the same recovery action.
    if (how === 'await') await written;
  }

  /**
   * Inside the suspended window of auto mode (post-suspend .. syncing) every state has the same
   * recovery action (recover + resume), so its write need not hold up the devices.
   */
  private inWindow(): boolean {
    return this.request.mode === 'auto' && (this.state === 'post-suspend' || this.state === 'post-suspended');
  }

  /** Requester's control. Returns why it was refused, or undefined when taken. */
  control(value: Control): string | undefined {
    // The same step written twice, or seen twice (event + re-read), is one request.
    if (value === this.lastControl && value !== 'abort' && value !== 'recover') return undefined;
    const allowed = allowedControls(this.state, this.request.mode);
    if (!allowed.includes(value))
      return `${value} is not allowed in state ${this.state} (allowed: ${allowed.join(', ') || 'none'})`;
    if (value === 'abort' || value === 'recover') {
      this.abort('abort', `${value} requested`);
      return undefined;
    }
    this.lastControl = value;
    const w = this.stepWaiter;
    if (w === undefined) {
      this.pendingStep = value;
      return undefined;
    }
    this.stepWaiter = undefined;
    w(value);
    return undefined;
  }

  /** Aborts what runs now; the run loop then recovers. The first cause wins. */
  abort(cause: 'abort' | 'error' | 'gone', why: string): void {
    if (this.abortCause !== undefined || isTerminal(this.state)) return;
    if (cause === 'gone' && this.request.suspend === 'toolstack' && SOURCE_MAY_LEAVE.includes(this.state)) {
      this.onSourceGone();
      return;
    }
    if (this.sourceGone)
      why = `${why}; domain ${this.domid} has left this host (destroyed by the toolstack after its suspend), nothing to resume here`;
    this.abortCause = cause;
    this.abortWhy = why;
    this.abortedAt = Date.now();
    this.abortCtl.abort(cause === 'gone' ? new DomainGoneError(this.domid) : new JobAbortedError(why));
    const w = this.stepWaiter;
    this.stepWaiter = undefined;
    // Wakes a steps-mode job waiting for a control, or a done job waiting for recover.
    if (w !== undefined) w('test');
  }

  /**
   * suspend=toolstack, past the suspend: `xl migrate` destroys the source once the destination
   * holds the domain (on failure it resumes the source instead), so this is its expected end. The
   * running phases finish within their bounds; there is nothing left to resume whatever happens.
   */
  private onSourceGone(): void {
    if (this.sourceGone) return;
    transition(this.state, { type: 'source-gone' }); // the state stays; throws if not allowed
    this.sourceGone = true;
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
    this.onWatchLimit?.();
  }

  /** Stops waiting (agent shutdown of a done job) without touching the job's nodes. */
  detach(): void {
    this.detached = true;
    const w = this.stepWaiter;
    this.stepWaiter = undefined;
    if (w !== undefined) w('test');
  }

  /** suspend=toolstack: the source was destroyed past the suspend; a `done` job then holds nothing. */
  get sourceLeft(): boolean {
    return this.sourceGone;
  }

  get aborted(): boolean {
    return this.abortCause !== undefined;
  }

  /** Runs the whole job; never rejects. */
  async run(start: JobStart = { kind: 'new' }): Promise<void> {
    this.deps.onMark?.(this.domid, `start:${start.kind}`, now());
    try {
      if (this.request.deadlineSec !== undefined) {
        const t = setTimeout(
          () => this.abort('error', `deadline of ${this.request.deadlineSec}s exceeded`),
          this.request.deadlineSec * 1000,
        );
        this.timers.push(t);
      }
      if (start.kind === 'recover') {
        this.state = start.from;
        this.weSuspended = start.suspendedBy === 'agent';
        const phase = lastPhaseOf(start.from) ?? 'sync';
        for (const d of this.devices) d.lastPhase = phase;
        this.abortCause = 'error';
        this.abortWhy = `agent restarted while the job was ${start.from}`;
        await this.recoverAll();
        return;
      }
      if (start.kind === 'adopt') {
        this.state = 'done';
        this.weSuspended = start.suspendedBy === 'agent';
        for (const d of this.devices) d.lastPhase = 'sync';
      }
      await this.drive();
    } catch (err) {
      this.log.error(`job ${this.domid}: internal error: ${(err as Error).stack ?? String(err)}`);
      if (!isTerminal(this.state)) {
        this.abortCause ??= 'error';
        this.abortWhy ||= oneLine((err as Error).message);
        await this.finishAfterAbort().catch(() => undefined);
      }
    } finally {
      for (const t of this.timers) clearTimeout(t);
      await this.deps.writer.flush();
      this.deps.onMark?.(this.domid, 'finished', now());
      this.finishedResolve();
    }
  }

  private async drive(): Promise<void> {
    while (!isTerminal(this.state) && !this.detached) {
      if (this.aborted) {
        await this.finishAfterAbort();
        return;
      }
      let step: Step | undefined;
      if (this.state === 'done') {
        if (this.sourceGone) return; // the source left during the job: nothing to hold
        // Finished from our side: hold until recover/abort or the domain goes (no timeout: the
        // toolstack owns the domain now, and resuming it here could run it twice).
        await new Promise<Step>((r) => (this.stepWaiter = r));
        continue;
      }
      if (this.request.mode === 'auto') {
        step = nextAutoStep(this.state);
      } else {
        step = await this.nextControl();
        if (step === undefined) continue;
      }
      if (step === undefined) return;
      const release = await this.deps.jobSlots.acquire('normal', this.abortCtl.signal).catch(() => undefined);
      if (release === undefined) continue;
      try {
        if (this.request.mode === 'auto') {
          // Auto mode keeps its slot for the whole run: queueing mid-migration would stretch the downtime.
          for (
            let s: Step | undefined = step;
            s !== undefined && !this.aborted && !isTerminal(this.state);
            s = nextAutoStep(this.state)
          ) {
            await this.doStep(s);
          }
        } else {
          await this.doStep(step);
        }
      } finally {
        release();
      }
    }
  }

  private nextControl(): Promise<Step | undefined> {
    const idle = this.deps.config.timeouts.stepIdleMs;
    const pending = this.pendingStep;
    if (pending !== undefined) {
      this.pendingStep = undefined;
      return Promise.resolve(pending);
    }
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.stepWaiter = undefined;
        this.abort('error', `no control within ${idle} ms in state ${this.state}`);
        resolve(undefined);
      }, idle);
      this.stepWaiter = (s) => {
        clearTimeout(t);
        resolve(this.aborted ? undefined : s);
      };
    });
  }

  private async doStep(step: Step): Promise<void> {
    // Who suspends is persisted with the step, before the suspend: a crash then knows whether to resume.
    await this.to(
      { type: 'step', step },
      step === 'post-suspend' ? { 'suspended-by': this.request.suspend } : {},
      step === 'sync' && this.inWindow() ? 'background' : 'await',
    );
    if (this.aborted) return;
    if (step === 'post-suspend') {
      await this.suspendStage();
      if (this.aborted || this.state !== 'post-suspend') return;
    }
    const phase = PHASE_OF_STEP[step];
    const failures = await this.runPhase(phase);
    if (this.aborted) return;
    if (failures.length > 0) {
      const summary = oneLine(
        `${phase === 'test' ? 'refused' : `${PHASE_LABEL[phase]} failed`} by ${failures.length} device(s): ${failures.join('; ')}`,
      );
      if (phase === 'test') {
        await this.to({ type: 'phase-failed' }, { error: summary, recovered: '1' });
        return;
      }
      this.abortCause = 'error';
      this.abortWhy = this.sourceGone
        ? oneLine(
            `domain ${this.domid} has left this host (destroyed by the toolstack after its suspend) but ${summary}; nothing to resume here`,
          )
        : summary;
      await this.to({ type: 'phase-failed' }, { error: this.abortWhy });
      await this.recoverAll();
      return;
    }
    const autoContinues = this.request.mode === 'auto' && phase !== 'sync';
    if (phase === 'sync') this.deps.onMark?.(this.domid, 'synced', now());
    await this.to({ type: 'phase-ok' }, { progress: undefined }, autoContinues ? 'defer' : 'await');
    if (phase === 'sync') {
      this.deps.onMark?.(this.domid, 'done-visible', now());
      // Done belongs to the toolstack now: no deadline may recover it behind its back.
      for (const t of this.timers) clearTimeout(t);
    }
  }

  private async suspendStage(): Promise<void> {
    const t = this.deps.config.timeouts;
    const signal = this.abortCtl.signal;
    try {
      // Each wait is bounded here too, whatever the domain layer does with its own timeouts.
      if (this.request.suspend === 'agent') {
        this.weSuspended = true;
        const bound = t.suspendAckMs + t.suspendMs + 1000;
        // The job's signal (requester abort, deadline, drain, stop, domain gone) cancels the
        // handshake: the call settles within the grace instead of its ack + suspend timeouts.
        const p = bounded(
          this.deps.domains.suspend(this.domid, {
            ackTimeoutMs: t.suspendAckMs,
            suspendTimeoutMs: t.suspendMs,
            signal,
            cancelGraceMs: SUSPEND_CANCEL_GRACE_MS,
          }),
          bound,
          'suspend',
        );
        this.suspendCall = p.then(
          () => undefined,
          (err: unknown) => {
            if (err instanceof SuspendCancelledError) {
              this.ackedNotSuspended = err.acked && err.end === 'running';
              this.log.info(`job ${this.domid}: ${oneLine(err.message)}`, { suspended: err.suspended });
            }
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
      this.abortCause = 'error';
      this.abortWhy = why;
      await this.to({ type: 'suspend-failed' }, { error: why });
      await this.recoverAll();
      return;
    }
    this.deps.onMark?.(this.domid, 'suspended', now());
    await this.to({ type: 'suspended' }, {}, this.request.mode === 'auto' ? 'background' : 'await');
  }

  private opContext(slot: DeviceSlot, signal: AbortSignal): OpContext {
    const { type, devid } = slot.dev.ref;
    return {
      job: this.ctxJob,
      signal,
      log: withLogContext(this.jobLog, () => ({ device: `${type}/${devid}` })),
      progress: (done, total) => {
        slot.reported = Math.floor(done);
        const at = Date.now();
        if (at - slot.lastProgressWrite < 1000 && done < total) return;
        slot.lastProgressWrite = at;
        this.deps.writer.device(type, devid, { progress: `${Math.floor(done)}/${Math.floor(total)}` });
      },
    };
  }

  /** One bounded device operation under the global device-op limit. */
  private async deviceOp(
    slot: DeviceSlot,
    timeoutMs: number,
    parent: AbortSignal,
    priority: Priority,
    what: string,
    fn: (ctx: OpContext) => Promise<Outcome>,
  ): Promise<Outcome> {
    let release: (() => void) | undefined;
    try {
      release = await this.deps.deviceSlots.acquire(priority, parent);
    } catch (err) {
      return { ok: false, reason: oneLine((err as Error).message) };
    }
    slot.reported = undefined;
    this.deps.onMark?.(this.domid, `device-start:${what}`, now());
    const ac = new AbortController();
    const onParent = (): void => ac.abort(parent.reason);
    parent.addEventListener('abort', onParent, { once: true });
    const timer = setTimeout(() => ac.abort(new EngineTimeoutError(what, timeoutMs)), timeoutMs);
    try {
      return await untilAborted(
        fn(this.opContext(slot, ac.signal)),
        ac.signal,
        this.deps.config.timeouts.killGraceMs + 500,
      );
    } catch (err) {
      const msg = err instanceof DeviceOpError ? err.reason : (err as Error).message;
      return { ok: false, reason: oneLine(msg ?? String(err)) };
    } finally {
      clearTimeout(timer);
      parent.removeEventListener('abort', onParent);
      release();
    }
  }

  private phaseTimeoutMs(phase: Phase): number {
    const t = this.deps.config.timeouts;
    return { test: t.testMs, preSuspend: t.preSuspendMs, postSuspend: t.postSuspendMs, sync: t.syncMs }[
      phase
    ];
  }

  /** Runs one phase on every device at once; returns "type/devid: reason" for each failure. */
  private async runPhase(phase: Phase): Promise<string[]> {
    const phaseMs = this.phaseTimeoutMs(phase);
    const phaseCtl = new AbortController();
    setMaxListeners(0, phaseCtl.signal);
    const onJob = (): void => phaseCtl.abort(this.abortCtl.signal.reason);
    this.abortCtl.signal.addEventListener('abort', onJob, { once: true });
    const timer = setTimeout(
      () => phaseCtl.abort(new EngineTimeoutError(`phase ${PHASE_LABEL[phase]}`, phaseMs)),
      phaseMs,
    );
    const priority: Priority = phase === 'postSuspend' || phase === 'sync' ? 'critical' : 'normal';
    const total = this.devices.length;
    let done = 0;
    const failures: string[] = [];
    this.deps.onMark?.(this.domid, `phase-start:${phase}`, now());
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
            outcome = await this.deviceOp(
              slot,
              timeoutMs,
              phaseCtl.signal,
              priority,
              `${type}/${devid} ${PHASE_LABEL[phase]}`,
              async (ctx) => {
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
              },
            );
            const result = `${outcome.ok ? 'ok' : 'failed'}:${slot.reported ?? ''}`;
            this.deps.onMark?.(
              this.domid,
              `device-end:${type}/${devid} ${PHASE_LABEL[phase]}:${result}`,
              now(),
            );
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
      this.abortCtl.signal.removeEventListener('abort', onJob);
    }
    this.deps.onMark?.(this.domid, `phase-end:${phase}`, now());
    return failures;
  }

  private async finishAfterAbort(): Promise<void> {
    const cause = this.abortCause ?? 'error';
    const why =
      cause === 'gone' ? `domain ${this.domid} was destroyed while the job was ${this.state}` : this.abortWhy;
    if (this.state === 'done' && cause === 'gone') {
      return; // the toolstack completed the migration and destroyed the source
    }
    if (this.state === 'recovering') {
      await this.recoverAll();
      return;
    }
    await this.to({ type: cause === 'gone' ? 'gone' : 'abort' }, { error: oneLine(why) });
    const next = this.state as JobState;
    if (next === 'recovering') await this.recoverAll();
    else if (isTerminal(next)) await this.deps.writer.persist({ recovered: '1' });
  }

  /**
   * After a suspend cancelled once the guest had acked: waits for the domain to be seen suspended,
   * gone or shut down, at most timeouts.suspendMs from the cancel (libxl's wait for a suspend
   * after the ack) and never past limitWatch(). The job holds the domain (one job per domain), so
   * a suspend seen here is the one we asked for. Events (@releaseDomain) are the signal; a check
   * a second catches a lost one, and a last check at the bound a suspend right at it.
   */
  private watchLateSuspend(): Promise<{ end: 'suspended' | 'gone' | 'shutdown' | 'running'; ms: number }> {
    const from = this.abortedAt ?? Date.now();
    const suspendMs = this.deps.config.timeouts.suspendMs;
    return new Promise((resolve) => {
      let done = false;
      let timer: NodeJS.Timeout | undefined;
      let unsubscribe: (() => void) | undefined;
      const finish = (end: 'suspended' | 'gone' | 'shutdown' | 'running'): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        clearInterval(poll);
        unsubscribe?.();
        this.onWatchLimit = undefined;
        resolve({ end, ms: Date.now() - from });
      };
      const check = async (atBound: boolean): Promise<void> => {
        const info = await this.deps.domains.info(this.domid).catch(() => null);
        if (done) return;
        if (info === undefined || info?.dying === true) finish('gone');
        else if (info?.shutdown === true)
          finish(info.shutdownReason === 'suspend' ? 'suspended' : 'shutdown');
        else if (atBound) finish('running');
      };
      const arm = (): void => {
        clearTimeout(timer);
        const until = Math.min(from + suspendMs, this.watchLimit ?? Infinity);
        timer = setTimeout(() => void check(true), Math.max(0, until - Date.now()));
      };
      const poll = setInterval(() => void check(false), 1000);
      this.onWatchLimit = arm;
      arm();
      try {
        unsubscribe = this.deps.domains.onEvent((ev) => {
          if (ev.domid !== this.domid) return;
          finish(ev.kind === 'suspended' ? 'suspended' : ev.kind === 'gone' ? 'gone' : 'shutdown');
        });
      } catch (err) {
        // Closed domain layer: the checks still end the watch within its bound.
        this.log.warn(`job ${this.domid}: no domain events for the late-suspend watch: ${String(err)}`);
      }
      // A suspend between the last look and the subscription has no event: look once more.
      void check(false);
    });
  }

  /** Recovers every device that started a mutating phase (furthest phase first), then resumes. */
  private async recoverAll(): Promise<void> {
    if (this.state !== 'recovering') {
      this.state = 'recovering';
      await this.deps.writer.persist({ state: 'recovering', progress: undefined });
    }
    let gone =
      this.abortCause === 'gone' ||
      this.sourceGone ||
      (await this.deps.domains.info(this.domid).catch(() => undefined)) === undefined;
    const recoverMs = this.deps.config.timeouts.recoverMs;
    this.deps.onMark?.(this.domid, 'phase-start:recover', now());
    const ctl = new AbortController();
    setMaxListeners(0, ctl.signal);
    const timer = setTimeout(() => ctl.abort(new EngineTimeoutError('recover', recoverMs)), recoverMs);
    const failures: string[] = [];
    try {
      for (const phase of [...PHASE_ORDER].reverse()) {
        const group = this.devices.filter((d) => d.lastPhase === phase);
        await Promise.allSettled(
          group.map(async (slot) => {
            const { type, devid } = slot.dev.ref;
            const m = slot.dev.migrator;
            if (m.recover === undefined) {
              this.deps.writer.device(type, devid, { state: 'recovered' });
              return;
            }
            const r = await this.deviceOp(
              slot,
              Math.min(this.deps.deviceTimeoutMs(type), recoverMs),
              ctl.signal,
              'critical',
              `${type}/${devid} recover`,
              async (ctx) => {
                await m.recover?.(ctx, phase);
                return { ok: true };
              },
            );
            const result = `${r.ok ? 'ok' : 'failed'}:${slot.reported ?? ''}`;
            this.deps.onMark?.(this.domid, `device-end:${type}/${devid} recover:${result}`, now());
            if (r.ok) this.deps.writer.device(type, devid, { state: 'recovered' });
            else {
              failures.push(`${type}/${devid}: ${r.reason}`);
              this.deps.writer.device(type, devid, { state: 'recover-failed', reason: r.reason });
            }
          }),
        );
      }
    } finally {
      clearTimeout(timer);
    }
    let resumeError: string | undefined;
    let lateNote: string | undefined;
    if (this.weSuspended && !gone) {
      try {
        // A suspend still in flight (aborted mid-handshake) could land after the check below and
        // leave the guest suspended: let it settle first. Aborted, it settles within its cancel
        // grace; the wait is bounded here too, whatever the domain layer does.
        let settled = true;
        if (this.suspendCall !== undefined) {
          settled = await settledWithin(this.suspendCall, SUSPEND_CANCEL_GRACE_MS + SUSPEND_CANCEL_MARGIN_MS);
          if (!settled) this.log.warn(`job ${this.domid}: the suspend call has not settled; deciding now`);
        }
        let info = await this.deps.domains.info(this.domid);
        const running = info !== undefined && !info.dying && !info.shutdown && !info.paused;
        if (running && (this.ackedNotSuspended || !settled)) {
          // The guest acked (or the call never answered): it may still suspend, and nobody else
          // would resume it. Still `recovering` (a crash now resumes it too), watch for it.
          const late = await this.watchLateSuspend();
          if (late.end === 'gone') {
            gone = true;
            this.abortCause = 'gone';
          } else if (late.end === 'running') {
            lateNote = `the guest had acked the suspend request but did not suspend within ${late.ms} ms of the cancel; it is running`;
            this.log.info(`job ${this.domid}: ${lateNote}`);
          } else if (late.end === 'shutdown') {
            lateNote = 'the guest had acked the suspend request, then shut down instead of suspending';
            this.log.warn(`job ${this.domid}: ${lateNote}`);
          } else if (late.end === 'suspended') {
            this.log.info(
              `job ${this.domid}: the guest suspended ${late.ms} ms after the cancel; resuming it`,
            );
          }
          info = gone ? undefined : await this.deps.domains.info(this.domid);
        }
        if (info !== undefined && (info.paused || (info.shutdown && info.shutdownReason === 'suspend'))) {
          await bounded(this.deps.domains.resume(this.domid), recoverMs, 'resume');
          this.deps.onMark?.(this.domid, 'resumed', now());
          this.log.info(`job ${this.domid}: domain resumed at the source`);
        }
      } catch (err) {
        resumeError = oneLine(`resume failed: ${(err as Error).message}`);
      }
    }
    this.deps.onMark?.(this.domid, 'phase-end:recover', now());
    const ok = failures.length === 0 && resumeError === undefined;
    const parts = [this.abortWhy];
    if (failures.length > 0) parts.push(`recover failed for ${failures.join('; ')}`);
    if (resumeError !== undefined) parts.push(resumeError);
    if (lateNote !== undefined) parts.push(lateNote);
    const error = oneLine(
      this.abortCause === 'gone'
        ? `domain ${this.domid} was destroyed; ${parts.slice(1).join('; ') || 'devices recovered'}`
        : parts.filter((p) => p !== '').join('; '),
    );
    const cause = this.abortCause === 'abort' && ok ? 'abort' : 'error';
    await this.to(ok ? { type: 'recovered', cause } : { type: 'recovery-failed' }, {
      error,
      recovered: ok ? '1' : '0',
    });
  }
}
