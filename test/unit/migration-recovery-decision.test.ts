// The recovery decision, exhaustively: every combination of persisted facts, progress and fresh
// look is checked against the promises (never resume what we did not suspend, never claim a
// recovered domain we could not see or left suspended, every wait bounded), and the loop the
// engine runs around it is proven to end against an adversary choosing every answer.
import { describe, expect, it } from 'vitest';
import type { DomainInfo } from '../../src/domains/types.js';
import { MAX_RECOVERY_STEPS } from '../../src/migration/domain-recovery.js';
import {
  DEFAULT_RECOVERY_LIMITS,
  decideRecovery,
  formatSuspendRequest,
  freshProgress,
  isFinal,
  lateSuspendBound,
  parseSuspendRequest,
  requestAfterSuspendFailure,
  type DomainLook,
  type RecoveryFacts,
  type RecoveryLimits,
  type RecoveryProgress,
  type RecoveryStep,
  type SuspendRequestFact,
} from '../../src/migration/recovery-decision.js';

const NOW = 1_000_000;
const LIMITS: RecoveryLimits = { ...DEFAULT_RECOVERY_LIMITS, suspendMs: 60_000 };
const base: DomainInfo = { domid: 5, paused: false, shutdown: false, dying: false, hvm: false };

const LOOKS: [string, DomainLook][] = [
  ['error', { kind: 'error', message: 'xc_domain_getinfolist failed (EFAULT)' }],
  ['gone', { kind: 'info', info: undefined }],
  ['dying', { kind: 'info', info: { ...base, dying: true } }],
  ['running', { kind: 'info', info: base }],
  ['running+paused', { kind: 'info', info: { ...base, paused: true } }],
  ['suspended', { kind: 'info', info: { ...base, shutdown: true, shutdownReason: 'suspend' } }],
  [
    'suspended+paused',
    { kind: 'info', info: { ...base, shutdown: true, shutdownReason: 'suspend', paused: true } },
  ],
  ['crashed', { kind: 'info', info: { ...base, shutdown: true, shutdownReason: 'crash' } }],
  ['poweroff', { kind: 'info', info: { ...base, shutdown: true, shutdownReason: 'poweroff' } }],
];

function requests(): SuspendRequestFact[] {
  const out: SuspendRequestFact[] = [{ kind: 'none' }];
  for (const age of [0, 1000, 30_000, 60_000, 120_000]) {
    out.push({ kind: 'requested', at: NOW - age }, { kind: 'acked', at: NOW - age });
  }
  for (const age of [0, 1000, 2000, 5000]) out.push({ kind: 'withdrawn', at: NOW - age });
  return out;
}
function progresses(): RecoveryProgress[] {
  const out: RecoveryProgress[] = [];
  for (const withdrawFailures of [0, 1, 5, 6, 7])
    for (const lookFailures of [0, 1, 5, 6, 7])
      for (const resumes of [0, 1, 4, 5, 6])
        for (const watched of [false, true]) {
          const p: RecoveryProgress = { withdrawFailures, lookFailures, resumes, watched };
          if (withdrawFailures + lookFailures + resumes > 0) p.lastError = 'E';
          out.push(p);
        }
  return out;
}
function allCases(): { facts: RecoveryFacts; progress: RecoveryProgress; look: DomainLook; name: string }[] {
  const out = [];
  for (const suspendedBy of ['agent', 'toolstack', undefined] as const)
    for (const sourceGone of [false, true])
      for (const request of requests())
        for (const progress of progresses())
          for (const [lookName, look] of LOOKS)
            out.push({
              facts: { domid: 5, suspendedBy, request, sourceGone },
              progress,
              look,
              name: `${suspendedBy ?? '-'} gone=${sourceGone} ${JSON.stringify(request)} ${JSON.stringify(progress)} ${lookName}`,
            });
  return out;
}

const isSuspended = (l: DomainLook): boolean =>
  l.kind === 'info' && l.info?.shutdown === true && l.info.shutdownReason === 'suspend' && !l.info.dying;

describe('recovery decision: every combination of facts, progress and look', () => {
  const cases = allCases();
  const steps = cases.map((c) => ({ ...c, step: decideRecovery(c.facts, c.progress, c.look, NOW, LIMITS) }));

  it(`covers ${cases.length} combinations`, () => {
    expect(cases.length).toBeGreaterThan(50_000);
  });

  it('resumes only a domain the agent suspended, seen suspended, with no request left to withdraw', () => {
    for (const c of steps.filter((x) => x.step.do === 'resume')) {
      expect(c.facts.suspendedBy, c.name).toBe('agent');
      expect(c.facts.sourceGone, c.name).toBe(false);
      expect(c.facts.request.kind, c.name).not.toBe('requested');
      expect(isSuspended(c.look), c.name).toBe(true);
    }
  });

  it('never claims the domain recovered when ours may be left suspended or could not be seen', () => {
    for (const c of steps.filter((x) => x.step.do === 'leave')) {
      if (c.facts.suspendedBy !== 'agent' || c.facts.sourceGone) continue;
      expect(c.look.kind, c.name).toBe('info');
      expect(isSuspended(c.look), c.name).toBe(false);
      expect(c.facts.request.kind, c.name).not.toBe('requested');
    }
  });

  it('leaves what is not ours alone: suspended by the toolstack, never suspended, or gone from this host', () => {
    for (const c of steps) {
      if (c.facts.sourceGone) expect(c.step, c.name).toMatchObject({ do: 'leave', reason: 'gone' });
      else if (c.facts.suspendedBy !== 'agent')
        expect(c.step, c.name).toEqual({ do: 'leave', reason: 'not-ours' });
    }
  });

  it('watches only a running domain a guest may still suspend, once, and never beyond suspendMs from now', () => {
    for (const c of steps.filter((x) => x.step.do === 'watch-late-suspend')) {
      const s = c.step as Extract<RecoveryStep, { do: 'watch-late-suspend' }>;
      expect(c.look.kind === 'info' && c.look.info !== undefined && !c.look.info.shutdown, c.name).toBe(true);
      expect(['acked', 'withdrawn']).toContain(c.facts.request.kind);
      expect(c.progress.watched, c.name).toBe(false);
      expect(s.untilMs).toBeGreaterThan(NOW);
      expect(s.untilMs).toBeLessThanOrEqual(NOW + LIMITS.suspendMs);
    }
  });

  it('a request that may be pending is always withdrawn (or the failure to do so reported) before anything else', () => {
    for (const c of steps) {
      if (c.facts.suspendedBy !== 'agent' || c.facts.sourceGone || c.facts.request.kind !== 'requested')
        continue;
      expect(['withdraw-request', 'fail'], c.name).toContain(c.step.do);
    }
  });

  it('fails (recovered=0) only on its own domain, after bounded retries, with a reason', () => {
    for (const c of steps.filter((x) => x.step.do === 'fail')) {
      expect(c.facts.suspendedBy, c.name).toBe('agent');
      const p = c.progress;
      expect(
        p.withdrawFailures > LIMITS.lookRetries ||
          p.lookFailures > LIMITS.lookRetries ||
          p.resumes >= LIMITS.maxResumes,
        c.name,
      ).toBe(true);
      expect((c.step as { why: string }).why.length).toBeGreaterThan(10);
    }
  });

  it('every pause before trying again is bounded', () => {
    for (const c of steps) {
      if (c.step.do === 'look-again' || c.step.do === 'withdraw-request')
        expect(c.step.afterMs).toBeLessThanOrEqual(LIMITS.retryDelayMs * (LIMITS.lookRetries + 1));
    }
  });

  it('a paused running domain is left paused, and said so', () => {
    const s = decideRecovery(
      { domid: 5, suspendedBy: 'agent', request: { kind: 'none' }, sourceGone: false },
      freshProgress(),
      { kind: 'info', info: { ...base, paused: true } },
      NOW,
      LIMITS,
    );
    expect(s).toEqual({
      do: 'leave',
      reason: 'running',
      note: 'domain 5 is paused, not by the agent: left paused',
    });
  });
});

describe('the recovery loop always ends', () => {
  type Outcome = 'ok' | 'error';
  interface Node {
    facts: RecoveryFacts;
    progress: RecoveryProgress;
  }
  /**
   * Depth-first over every answer the world may give (each look, each withdraw and resume
   * outcome), applying the executor's bookkeeping (domain-recovery.ts); returns the longest path.
   */
  const memo = new Map<string, number>();
  function longest(node: Node, depth: number): number {
    if (depth >= MAX_RECOVERY_STEPS) throw new Error(`the loop did not end: ${JSON.stringify(node)}`);
    const key = JSON.stringify(node);
    const known = memo.get(key);
    if (known !== undefined) return known;
    let worst = 0;
    for (const [, look] of LOOKS) {
      const progress = { ...node.progress };
      if (look.kind === 'error') progress.lookFailures += 1;
      else progress.lookFailures = 0;
      const step = decideRecovery(node.facts, progress, look, NOW, LIMITS);
      if (isFinal(step)) {
        worst = Math.max(worst, 1);
        continue;
      }
      const next: Node[] = [];
      switch (step.do) {
        case 'withdraw-request':
          next.push(
            { facts: { ...node.facts, request: { kind: 'withdrawn', at: NOW } }, progress },
            { facts: { ...node.facts, request: { kind: 'acked', at: NOW } }, progress },
            { facts: node.facts, progress: { ...progress, withdrawFailures: progress.withdrawFailures + 1 } },
          );
          break;
        case 'look-again':
          next.push({ facts: node.facts, progress });
          break;
        case 'watch-late-suspend':
          next.push({ facts: node.facts, progress: { ...progress, watched: true } });
          break;
        case 'resume':
          for (const o of ['ok', 'error'] as Outcome[])
            next.push({
              facts: o === 'ok' ? { ...node.facts, request: { kind: 'none' } } : node.facts,
              progress: { ...progress, resumes: progress.resumes + 1 },
            });
          break;
      }
      for (const n of next) worst = Math.max(worst, 1 + longest(n, depth + 1));
    }
    memo.set(key, worst);
    return worst;
  }

  it.each(requests().map((r) => [JSON.stringify(r), r] as const))(
    'from request %s, whatever the world answers',
    (_n, request) => {
      const n = longest(
        { facts: { domid: 5, suspendedBy: 'agent', request, sourceGone: false }, progress: freshProgress() },
        0,
      );
      expect(n).toBeLessThan(MAX_RECOVERY_STEPS);
    },
  );
});

describe('the suspend-request node', () => {
  it('round-trips every fact; absent is none; garbage is an unknown request (withdrawn and watched)', () => {
    for (const r of requests()) expect(parseSuspendRequest(formatSuspendRequest(r), NOW)).toEqual(r);
    expect(parseSuspendRequest(undefined, NOW)).toEqual({ kind: 'none' });
    expect(parseSuspendRequest('', NOW)).toEqual({ kind: 'none' });
    expect(parseSuspendRequest('suspend', NOW)).toEqual({ kind: 'requested', at: NOW });
    expect(parseSuspendRequest('acked:-5', NOW)).toEqual({ kind: 'requested', at: NOW });
  });
  it('bounds a late suspend by the ack (suspendMs) or the withdraw (grace), never beyond from now', () => {
    expect(lateSuspendBound({ kind: 'acked', at: NOW - 10_000 }, NOW, LIMITS)).toBe(NOW + 50_000);
    expect(lateSuspendBound({ kind: 'acked', at: NOW + 999_999 }, NOW, LIMITS)).toBe(NOW + LIMITS.suspendMs);
    expect(lateSuspendBound({ kind: 'withdrawn', at: NOW - 500 }, NOW, LIMITS)).toBe(NOW + 1500);
    expect(lateSuspendBound({ kind: 'requested', at: NOW }, NOW, LIMITS)).toBeUndefined();
    expect(lateSuspendBound({ kind: 'none' }, NOW, LIMITS)).toBeUndefined();
  });
});

describe('what a failed suspend call leaves of the request', () => {
  const asked: SuspendRequestFact = { kind: 'requested', at: NOW - 100 };
  it.each([
    ['nothing asked yet', { code: 'ack-timeout' }, { kind: 'none' } as SuspendRequestFact, { kind: 'none' }],
    [
      'ack timeout: withdrawn by the domain layer',
      { code: 'ack-timeout' },
      asked,
      { kind: 'withdrawn', at: NOW },
    ],
    [
      'cancelled, acked, still running',
      { code: 'cancelled', end: 'running', acked: true },
      asked,
      { kind: 'acked', at: NOW },
    ],
    [
      'cancelled before any ack',
      { code: 'cancelled', end: 'running', acked: false },
      asked,
      { kind: 'none' },
    ],
    [
      'cancelled and suspended (the look resumes it)',
      { code: 'cancelled', end: 'suspended', acked: true },
      asked,
      { kind: 'none' },
    ],
    ['acked but never suspended within suspendMs', { code: 'suspend-timeout' }, asked, { kind: 'none' }],
    ['the request could not be recorded: never made', { code: 'not-recorded' }, asked, { kind: 'none' }],
    ['the domain layer never answered', {}, asked, asked],
    ['a XenStore error around the request', { code: 'xenstore' }, asked, asked],
  ] as const)('%s', (_n, failure, before, after) => {
    expect(requestAfterSuspendFailure(failure, before, NOW)).toEqual(after);
  });
});
