// Carries out the recovery decision for one job's domain (recovery-decision.ts): looks at the
// domain, withdraws a leftover suspend request, watches for a late suspend, resumes; after each
// step it looks again and asks again, until the decision is final. Every call is bounded.
import type { Logger } from '../devices/types.js';
import type { DomainControl } from '../domains/types.js';
import { EngineTimeoutError, oneLine } from './errors.js';
import {
  decideRecovery,
  freshProgress,
  isFinal,
  type DomainLook,
  type RecoveryFacts,
  type RecoveryLimits,
  type RecoveryStep,
  type SuspendRequestFact,
} from './recovery-decision.js';

/** More steps than any path of the decision takes (its tests prove it): a safety net only. */
export const MAX_RECOVERY_STEPS = 64;

export interface DomainRecoveryDeps {
  domains: DomainControl;
  log: Logger;
  limits: RecoveryLimits;
  /** Bound on each call into the domain layer (timeouts.recoverMs). */
  callMs: number;
  /** An outer bound (epoch ms) on a late-suspend watch, read when the watch (re)arms. */
  watchLimit(): number | undefined;
  /** Registers the callback that re-arms a running watch when the limit changes (undefined: none). */
  onWatchLimit(cb: (() => void) | undefined): void;
  /** Persists a changed request fact, so that an agent crashing meanwhile does the same next. */
  recordRequest(r: SuspendRequestFact): Promise<void>;
  onResumed(): void;
}

/**
 * The agent must stop (drain, stop) before the guest's bound: the job is handed over, left
 * `recovering` with its facts, for the next agent to watch on.
 */
export interface HandOver {
  do: 'hand-over';
  why: string;
}

export interface DomainRecoveryResult {
  final: Extract<RecoveryStep, { do: 'leave' | 'fail' }> | HandOver;
  /** The steps taken, in order (log and tests). */
  steps: string[];
}

/** Rejects with EngineTimeoutError(what, ms) unless p settles first. */
export function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new EngineTimeoutError(what, ms)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

const sleep = (ms: number): Promise<void> =>
  ms <= 0 ? Promise.resolve() : new Promise((r) => setTimeout(r, ms));

const message = (err: unknown): string => oneLine(err instanceof Error ? err.message : String(err), 300);

export async function recoverDomain(
  facts: RecoveryFacts,
  deps: DomainRecoveryDeps,
): Promise<DomainRecoveryResult> {
  const { domains, limits } = deps;
  const domid = facts.domid;
  const f: RecoveryFacts = { ...facts };
  const progress = freshProgress();
  const steps: string[] = [];
  const look = async (): Promise<DomainLook> => {
    try {
      const info = await bounded(domains.info(domid), deps.callMs, 'domain info');
      progress.lookFailures = 0;
      return { kind: 'info', info };
    } catch (err) {
      progress.lookFailures += 1;
      progress.lastError = message(err);
      return { kind: 'error', message: progress.lastError };
    }
  };
  const setRequest = async (r: SuspendRequestFact): Promise<void> => {
    f.request = r;
    await deps.recordRequest(r);
  };
  for (let i = 0; i < MAX_RECOVERY_STEPS; i++) {
    const seen = await look();
    const step = decideRecovery(f, progress, seen, Date.now(), limits);
    steps.push(step.do);
    if (isFinal(step)) return { final: step, steps };
    switch (step.do) {
      case 'withdraw-request': {
        await sleep(step.afterMs);
        try {
          const outcome = await bounded(
            domains.withdrawSuspend(domid),
            deps.callMs,
            'withdraw the suspend request',
          );
          deps.log.info(
            `job ${domid}: leftover suspend request ${outcome === 'withdrawn' ? 'withdrawn' : 'not pending (the guest may have acked)'}`,
          );
          await setRequest(
            outcome === 'withdrawn'
              ? { kind: 'withdrawn', at: Date.now() }
              : { kind: 'acked', at: Date.now() },
          );
        } catch (err) {
          progress.withdrawFailures += 1;
          progress.lastError = message(err);
        }
        break;
      }
      case 'look-again':
        await sleep(step.afterMs);
        break;
      case 'watch-late-suspend': {
        deps.log.info(
          `job ${domid}: watching for a late suspend until ${new Date(step.untilMs).toISOString()}`,
        );
        const end = await watchLateSuspend(domid, step.untilMs, deps);
        progress.watched = true;
        if (end === 'limit') {
          const why = `the agent stops watching ${Math.round((step.untilMs - Date.now()) / 1000)} s before the guest's bound; the next agent watches on`;
          deps.log.warn(`job ${domid}: ${why}`);
          return { final: { do: 'hand-over', why }, steps };
        }
        const since = f.request.kind === 'none' ? 0 : Date.now() - f.request.at;
        if (end === 'suspended')
          deps.log.info(`job ${domid}: the guest suspended ${since} ms after the cancel; resuming it`);
        else deps.log.info(`job ${domid}: late-suspend watch ended (${end}) ${since} ms after the cancel`);
        break;
      }
      case 'resume':
        await sleep(step.afterMs);
        progress.resumes += 1;
        try {
          await bounded(domains.resume(domid), deps.callMs, 'resume');
          deps.log.info(`job ${domid}: domain resumed at the source`);
          deps.onResumed();
          // Whatever it had acked, the guest suspended and runs again: nothing of ours is pending.
          if (f.request.kind !== 'none') await setRequest({ kind: 'none' });
        } catch (err) {
          progress.lastError = message(err);
          deps.log.warn(`job ${domid}: resume failed: ${progress.lastError}`);
        }
        break;
    }
  }
  return {
    final: { do: 'fail', why: `recovery of domain ${domid} did not settle in ${MAX_RECOVERY_STEPS} steps` },
    steps,
  };
}

/**
 * Waits for the domain to be seen suspended, gone or shut down, until `untilMs` and never past
 * the outer watch limit. Domain events are the signal; a look every second catches a lost one,
 * and a last look at the bound a suspend right at it. What it found is looked at again after.
 */
function watchLateSuspend(domid: number, untilMs: number, deps: DomainRecoveryDeps): Promise<string> {
  return new Promise((resolve) => {
    let done = false;
    let timer: NodeJS.Timeout | undefined;
    let unsubscribe: (() => void) | undefined;
    const finish = (end: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearInterval(poll);
      unsubscribe?.();
      deps.onWatchLimit(undefined);
      resolve(end);
    };
    let limited = false;
    const check = async (atBound: boolean): Promise<void> => {
      const info = await bounded(deps.domains.info(domid), deps.callMs, 'domain info').catch(() => null);
      if (done) return;
      if (info === undefined || info?.dying === true) finish('gone');
      else if (info?.shutdown === true) finish(info.shutdownReason === 'suspend' ? 'suspended' : 'shutdown');
      else if (atBound) finish(limited ? 'limit' : 'bound reached, still running');
    };
    const arm = (): void => {
      clearTimeout(timer);
      const limit = deps.watchLimit() ?? Infinity;
      limited = limit < untilMs;
      const until = Math.min(untilMs, limit);
      timer = setTimeout(() => void check(true), Math.max(0, until - Date.now()));
    };
    const poll = setInterval(() => void check(false), 1000);
    deps.onWatchLimit(arm);
    arm();
    try {
      unsubscribe = deps.domains.onEvent((ev) => {
        if (ev.domid === domid) finish(ev.kind);
      });
    } catch (err) {
      // A closed domain layer: the looks still end the watch within its bound.
      deps.log.warn(`job ${domid}: no domain events for the late-suspend watch: ${String(err)}`);
    }
    // A suspend between the last look and the subscription has no event: look once more.
    void check(false);
  });
}
