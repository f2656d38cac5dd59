// What to do about a job's domain once its devices are recovered, as ONE pure decision (libvirt's
// way: a persisted phase plus a few persisted facts, and a table from those and a fresh look at
// the domain to one action). The engine executes the step it returns, looks again and asks again,
// until the answer is final. Never resumes a domain the agent did not suspend, never unpauses,
// and never claims a recovered domain it could not see. No I/O here.
import type { DomainInfo } from '../domains/types.js';
import type { SuspendBy } from './job-schema.js';

/**
 * The agent's own suspend request (control/shutdown "suspend", or xc_domain_shutdown for a guest
 * without PV drivers), persisted as `suspend-request` so that a restarted agent knows it too.
 */
export type SuspendRequestFact =
  /** Nothing of ours can still make the guest suspend. */
  | { kind: 'none' }
  /** Made (or about to be) and its fate unknown: it must be withdrawn. */
  | { kind: 'requested'; at: number }
  /** The guest acked it (or may have): it may still suspend until at + suspendMs (libxl's wait). */
  | { kind: 'acked'; at: number }
  /** Withdrawn before any ack at `at`: a guest that acts on it anyway is watched for a grace. */
  | { kind: 'withdrawn'; at: number };

/** What a job knows about its domain when it recovers (each fact persisted or derived). */
export interface RecoveryFacts {
  domid: number;
  /** Who suspends the domain in this job (suspended-by, persisted before any suspend). */
  suspendedBy: SuspendBy | undefined;
  request: SuspendRequestFact;
  /** suspend=toolstack: the toolstack destroyed the source after its suspend (source=gone). */
  sourceGone: boolean;
}

/** What the executor did so far (in memory: a restarted agent starts over from the facts). */
export interface RecoveryProgress {
  /** Attempts to withdraw the request that failed. */
  withdrawFailures: number;
  /** Looks at the domain that failed in a row (a good look resets it). */
  lookFailures: number;
  /** Resumes attempted (whatever their outcome). */
  resumes: number;
  /** The late-suspend watch has run. */
  watched: boolean;
  /** The last failure, for the error line. */
  lastError?: string;
}

export function freshProgress(): RecoveryProgress {
  return { withdrawFailures: 0, lookFailures: 0, resumes: 0, watched: false };
}

/** A fresh look at the domain: its info, or why it could not be had. */
export type DomainLook = { kind: 'info'; info: DomainInfo | undefined } | { kind: 'error'; message: string };

export interface RecoveryLimits {
  /** How long an acked guest may take to suspend (timeouts.suspendMs, libxl's 60 s). */
  suspendMs: number;
  /** How long a withdrawn request is watched for a guest that acts on it anyway. */
  graceMs: number;
  /** Failed looks retried before giving up (recovered=0). */
  lookRetries: number;
  /** Resumes attempted at most (the domain layer itself tries fast, then slow). */
  maxResumes: number;
  /** Base pause before looking again after a failure (times the attempt number). */
  retryDelayMs: number;
}

export const DEFAULT_RECOVERY_LIMITS: Omit<RecoveryLimits, 'suspendMs'> = {
  graceMs: 2000,
  lookRetries: 5,
  maxResumes: 5,
  retryDelayMs: 200,
};

/** The final outcomes: every `leave` means nothing of ours is left to undo on the domain. */
export type LeaveReason =
  /** The domain runs (or never was touched by us). */
  | 'running'
  /** Suspended by the toolstack, or never suspended in this job: the toolstack's to resume. */
  | 'not-ours'
  /** Destroyed, dying, or gone from this host (toolstack migration end). */
  | 'gone'
  /** Shut down for another reason (crash, poweroff) instead of suspending: not ours to restart. */
  | 'shut-down';

export type RecoveryStep =
  | { do: 'withdraw-request'; afterMs: number }
  | { do: 'look-again'; afterMs: number }
  | { do: 'watch-late-suspend'; untilMs: number }
  | { do: 'resume'; afterMs: number }
  | { do: 'leave'; reason: LeaveReason; note?: string }
  | { do: 'fail'; why: string };

/** True for the steps that end the recovery. */
export function isFinal(step: RecoveryStep): step is Extract<RecoveryStep, { do: 'leave' | 'fail' }> {
  return step.do === 'leave' || step.do === 'fail';
}

/**
 * The one next step. `now` is the time of the look (epoch ms). Exhaustively tested in
 * test/unit/migration-recovery-decision.test.ts, including that the loop always ends.
 */
export function decideRecovery(
  facts: RecoveryFacts,
  progress: RecoveryProgress,
  look: DomainLook,
  now: number,
  limits: RecoveryLimits,
): RecoveryStep {
  const d = facts.domid;
  if (facts.sourceGone) return { do: 'leave', reason: 'gone', note: `domain ${d} has left this host` };
  // Only a suspend the agent made is the agent's to undo; the toolstack resumes its own.
  if (facts.suspendedBy !== 'agent') return { do: 'leave', reason: 'not-ours' };
  // A request that may still be pending goes first: a guest acting on it later would suspend
  // with nobody to resume it.
  if (facts.request.kind === 'requested') {
    if (progress.withdrawFailures > limits.lookRetries)
      return {
        do: 'fail',
        why: `cannot withdraw the suspend request of domain ${d}: ${progress.lastError ?? 'unknown error'}`,
      };
    return { do: 'withdraw-request', afterMs: limits.retryDelayMs * progress.withdrawFailures };
  }
  if (look.kind === 'error') {
    if (progress.lookFailures > limits.lookRetries)
      return {
        do: 'fail',
        why: `cannot tell whether domain ${d} is suspended: ${look.message}; it may need a resume by hand`,
      };
    return { do: 'look-again', afterMs: limits.retryDelayMs * Math.max(1, progress.lookFailures) };
  }
  const info = look.info;
  if (info === undefined || info.dying) return { do: 'leave', reason: 'gone' };
  if (info.shutdown) {
    if (info.shutdownReason !== 'suspend')
      return {
        do: 'leave',
        reason: 'shut-down',
        note: `domain ${d} shut down (${info.shutdownReason ?? 'unknown'}) instead of suspending; not resumed`,
      };
    if (progress.resumes >= limits.maxResumes)
      return {
        do: 'fail',
        why: `resume failed: ${progress.lastError ?? `domain ${d} still suspended after ${progress.resumes} resume(s)`}`,
      };
    return { do: 'resume', afterMs: limits.retryDelayMs * progress.resumes };
  }
  // Running (perhaps paused by someone else, which is theirs to undo). A guest that may still act
  // on our request is watched, once, within its bound.
  const until = lateSuspendBound(facts.request, now, limits);
  if (until !== undefined && !progress.watched && until > now)
    return { do: 'watch-late-suspend', untilMs: until };
  const notes: string[] = [];
  if (facts.request.kind === 'acked')
    notes.push(
      `the guest had acked the suspend request but did not suspend within ${Math.max(0, Math.round(now - facts.request.at))} ms of the cancel; it is running`,
    );
  if (info.paused) notes.push(`domain ${d} is paused, not by the agent: left paused`);
  return notes.length > 0
    ? { do: 'leave', reason: 'running', note: notes.join('; ') }
    : { do: 'leave', reason: 'running' };
}

/** Until when a guest may still act on our request (undefined: it cannot). Never beyond now + suspendMs. */
export function lateSuspendBound(
  request: SuspendRequestFact,
  now: number,
  limits: Pick<RecoveryLimits, 'suspendMs' | 'graceMs'>,
): number | undefined {
  switch (request.kind) {
    case 'none':
    case 'requested':
      return undefined;
    case 'acked':
      return Math.min(request.at + limits.suspendMs, now + limits.suspendMs);
    case 'withdrawn':
      return Math.min(request.at + limits.graceMs, now + limits.graceMs);
  }
}

// ---- the persisted form of the request fact: jobs/<domid>/suspend-request ----

const REQUEST_NODE = /^(requested|acked|withdrawn):([0-9]{1,16})$/;

export function formatSuspendRequest(r: SuspendRequestFact): string | undefined {
  return r.kind === 'none' ? undefined : `${r.kind}:${Math.max(0, Math.floor(r.at))}`;
}

/**
 * The node as a fact. Absent: none. A value that does not parse is taken as an unknown request
 * (withdrawn and watched): the safe reading when the node cannot be understood.
 */
export function parseSuspendRequest(value: string | undefined, now: number): SuspendRequestFact {
  if (value === undefined || value === '') return { kind: 'none' };
  const m = REQUEST_NODE.exec(value);
  if (m === null) return { kind: 'requested', at: now };
  const at = Number(m[2]);
  return { kind: m[1] as 'requested' | 'acked' | 'withdrawn', at };
}

/** The parts of a failed suspend call that tell what became of the request. */
export interface SuspendFailure {
  /** DomainError code ('ack-timeout', 'cancelled', ...); undefined for anything else (e.g. a bound). */
  code?: string;
  /** For 'cancelled': how the domain ended the cancel grace, and whether the guest had acked. */
  end?: 'suspended' | 'running' | 'gone' | 'shutdown';
  acked?: boolean;
}

/** Codes after which no request of ours is left for the guest to act on. */
const NOTHING_LEFT = new Set([
  'suspend-timeout',
  'gone',
  'unexpected-shutdown',
  'already-shutdown',
  'not-found',
  'dying',
  'guest-refuses',
  'not-recorded',
  'busy',
  'invalid-domid',
  'dom0',
]);

/**
 * What a failed (or cancelled) suspend call leaves of the request, at `now`. Unknown failures
 * (a domain layer that never answered, a XenStore error around the request) keep it `requested`:
 * the recovery withdraws it and watches.
 */
export function requestAfterSuspendFailure(
  f: SuspendFailure,
  current: SuspendRequestFact,
  now: number,
): SuspendRequestFact {
  if (current.kind === 'none') return current; // nothing was ever asked
  if (f.code === 'cancelled') {
    // The domain layer withdrew the request and watched a grace already.
    return f.end === 'running' && f.acked === true ? { kind: 'acked', at: now } : { kind: 'none' };
  }
  if (f.code === 'ack-timeout') return { kind: 'withdrawn', at: now };
  if (f.code !== undefined && NOTHING_LEFT.has(f.code)) return { kind: 'none' };
  return current;
}
