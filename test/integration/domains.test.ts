// Specifies DomainControl's suspend and resume against the real xenstored (harness) with the
// simulated libxenctrl/libxenguest loaded through the real koffi bindings, and simulated guests
// that answer (or misbehave) AS their own domain through the ring bridge.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createDomainControl } from '../../src/domains/domain-control.js';
import type { XenDomainControl } from '../../src/domains/domain-control.js';
import { DomainError, SuspendCancelledError } from '../../src/domains/errors.js';
import { openXcHypervisor } from '../../src/domains/hypervisor.js';
import type { DomainEvent } from '../../src/domains/types.js';
import { connectXenStore } from '../../src/xenstore/index.js';
import type { XenStore, XsOps } from '../../src/xenstore/types.js';
import { buildMocks, startXenstored } from '../../xen-mocks/harness.js';
import type { XenstoredHarness } from '../../xen-mocks/harness.js';
import type { SimGuest, SimGuestMode } from '../../xen-mocks/sim-guest.js';
import { createSimHost } from '../../xen-mocks/sim-host.js';
import type { SimHost } from '../../xen-mocks/sim-host.js';
import { countXenStoreOps } from '../bench/xs-op-counter.js';
import type { OpCounter } from '../bench/xs-op-counter.js';

const ACK_MS = 1000;
const SUSPEND_MS = 1500;

let h: XenstoredHarness;
let xs: XenStore;
let counter: OpCounter;
let dc: XenDomainControl;
let nextDomid = 1;
const hosts: SimHost[] = [];

beforeAll(async () => {
  await buildMocks();
  h = await startXenstored();
  // The simulated libxenctrl finds its hypervisor through XEN_SIM_STATE at xc_interface_open.
  process.env.XEN_SIM_STATE = h.stateDir;
  xs = await connectXenStore({ path: h.socketPath, timeoutMs: 10_000 });
  counter = countXenStoreOps(xs);
  dc = createDomainControl({
    xenstore: counter.xs,
    libxenctrlPath: h.env['DEVMIGRATE_LIBXENCTRL'],
    libxenguestPath: h.env['DEVMIGRATE_LIBXENGUEST'],
    ackTimeoutMs: ACK_MS,
    suspendTimeoutMs: SUSPEND_MS,
    recheckIntervalMs: 200,
  });
});

afterEach(async () => {
  for (const host of hosts.splice(0)) await host.close();
});

afterAll(async () => {
  await dc?.close();
  await xs?.close();
  await h?.stop();
});

interface GuestSpec {
  hvm?: boolean;
  pvDrivers?: boolean;
  boot?: SimGuestMode | false;
  slowAckMs?: number;
  featureSuspend?: '0' | '1' | '' | null;
}

async function newGuest(spec: GuestSpec = {}): Promise<{ domid: number; guest: SimGuest | undefined }> {
  const domid = nextDomid++;
  const host = await createSimHost(h, {
    guests: [
      {
        domid,
        name: `t${domid}`,
        uuid: `00000000-0000-4000-8000-${domid.toString(16).padStart(12, '0')}`,
        hvm: spec.hvm ?? false,
        ...(spec.pvDrivers !== undefined ? { pvDrivers: spec.pvDrivers } : {}),
        devices: [{ type: 'vbd', vdev: 'xvda', params: `/dev/vg/t${domid}`, format: 'phy', mode: 'w' }],
      },
    ],
  });
  hosts.push(host);
  if (spec.boot === false) return { domid, guest: undefined };
  const guest = await host.guest(domid).boot({
    mode: spec.boot ?? 'normal',
    ...(spec.slowAckMs !== undefined ? { slowAckMs: spec.slowAckMs } : {}),
    ...(spec.featureSuspend !== undefined ? { featureSuspend: spec.featureSuspend } : {}),
  });
  return { domid, guest };
}

async function failure(p: Promise<unknown>): Promise<DomainError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof DomainError) return err;
    throw err;
  }
  throw new Error('expected a DomainError, got success');
}

const shutdownNode = (domid: number): Promise<string | undefined> =>
  xs.tryRead(`/local/domain/${domid}/control/shutdown`);

/** Polls cond every 10 ms; throws after ms (every wait has a timeout). */
async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function cancelled(p: Promise<unknown>): Promise<SuspendCancelledError> {
  const err = await failure(p);
  if (!(err instanceof SuspendCancelledError)) throw err;
  expect(err.code).toBe('cancelled');
  return err;
}

/**
 * A view of `xs` whose transactions let the guest (connected as its own domain) ack first: the
 * first time a transaction reads "suspend" from the shutdown node, the guest clears it before the
 * body runs, so that transaction's commit conflicts. `afterAck` runs right after that ack.
 */
async function ackRace(
  domid: number,
  afterAck?: () => void,
): Promise<{ racing: XenStore; asGuest: XenStore; raced: () => boolean }> {
  const path = `/local/domain/${domid}/control/shutdown`;
  const asGuest = await connectXenStore({
    path: hosts[hosts.length - 1]?.guest(domid).socketPath,
    timeoutMs: 10_000,
  });
  let raced = false;
  const racing = new Proxy(xs, {
    get(obj, prop, receiver) {
      if (prop !== 'transaction') return Reflect.get(obj, prop, receiver) as unknown;
      return <T>(body: (tx: XsOps) => Promise<T>) =>
        obj.transaction(async (tx) => {
          const v = await tx.tryRead(path);
          if (!raced && v === 'suspend') {
            raced = true;
            await asGuest.write(path, '');
            afterAck?.();
          }
          return body(tx);
        });
    },
  });
  return { racing, asGuest, raced: () => raced };
}

describe('suspend and resume of a cooperative guest', () => {
  it('suspends through control/shutdown, then resumes (fast) and can suspend again', async () => {
    const { domid, guest } = await newGuest();
    await dc.suspend(domid);
    expect(await dc.info(domid)).toMatchObject({ shutdown: true, shutdownReason: 'suspend', dying: false });
    expect(guest?.stats).toMatchObject({ requests: 1, acks: 1, suspends: 1 });
    expect(await shutdownNode(domid)).toBe('');

    await dc.resume(domid);
    expect(await dc.info(domid)).toMatchObject({ shutdown: false, paused: false });
    expect(await h.getDomain(domid)).toMatchObject({ resumeCount: 1, lastResumeFast: 1 });

    // XS_RESUME re-armed xenstored: the second suspend is seen through @releaseDomain again.
    await dc.suspend(domid);
    expect(await dc.info(domid)).toMatchObject({ shutdownReason: 'suspend' });
    await dc.resume(domid, { fast: false });
    expect(await h.getDomain(domid)).toMatchObject({ resumeCount: 2, lastResumeFast: 0 });
  });

  it('resume twice is harmless: the second call changes nothing', async () => {
    const { domid } = await newGuest();
    await dc.suspend(domid);
    await dc.resume(domid);
    await dc.resume(domid);
    expect(await h.getDomain(domid)).toMatchObject({ resumeCount: 1, shutdown: false, paused: 0 });
  });

  it('resume never touches the pause count: a paused running domain stays paused, a paused suspended one is resumed and stays paused', async () => {
    const { domid } = await newGuest();
    await dc.pause(domid);
    expect(await dc.info(domid)).toMatchObject({ paused: true });
    await dc.resume(domid);
    expect(await h.getDomain(domid)).toMatchObject({ paused: 1, resumeCount: 0 });
    await dc.unpause(domid);
    await dc.suspend(domid);
    await dc.pause(domid);
    await dc.resume(domid);
    expect(await h.getDomain(domid)).toMatchObject({ paused: 1, shutdown: false, resumeCount: 1 });
    await dc.unpause(domid);
  });

  it('a slow ack within the timeout still suspends', async () => {
    const { domid } = await newGuest({ boot: 'slow-ack', slowAckMs: 150 });
    await dc.suspend(domid);
    expect(await dc.info(domid)).toMatchObject({ shutdownReason: 'suspend' });
    await dc.resume(domid);
  });
});

describe('misbehaving guests end in a clear error within the timeout, and resume brings them back', () => {
  it('never acks: ack-timeout, control/shutdown cleared in a transaction', async () => {
    const { domid, guest } = await newGuest({ boot: 'never-ack' });
    counter.reset();
    const t0 = Date.now();
    const err = await failure(dc.suspend(domid));
    expect(err.code).toBe('ack-timeout');
    expect(err.step).toBe('ack');
    expect(Date.now() - t0).toBeLessThan(ACK_MS + 2000);
    expect(guest?.stats.requests).toBe(1);
    expect(await shutdownNode(domid)).toBe('');
    // The cancel re-read and cleared the node inside one transaction.
    const start = counter.log.indexOf('transaction_start');
    expect(start).toBeGreaterThanOrEqual(0);
    expect(counter.log.slice(start, start + 4)).toEqual([
      'transaction_start',
      'tx:tryRead',
      'tx:write',
      'transaction_end',
    ]);
    await dc.resume(domid);
    expect(await dc.info(domid)).toMatchObject({ shutdown: false, paused: false });
  });

  it('a last-minute ack racing the cancel transaction wins: re-read, no cancel', async () => {
    const { domid } = await newGuest({ boot: 'never-ack' });
    // The guest acks right after our transaction has read "suspend": the commit must conflict.
    const { racing, asGuest, raced } = await ackRace(domid);
    const dc2 = createDomainControl({
      xenstore: racing,
      libxenctrlPath: h.env['DEVMIGRATE_LIBXENCTRL'],
      libxenguestPath: h.env['DEVMIGRATE_LIBXENGUEST'],
      ackTimeoutMs: 300,
      suspendTimeoutMs: 300,
    });
    try {
      const err = await failure(dc2.suspend(domid));
      expect(raced()).toBe(true);
      // Acked at the last minute: no cancel, so the wait for the suspend ran (and timed out).
      expect(err.code).toBe('suspend-timeout');
      expect(await shutdownNode(domid)).toBe('');
    } finally {
      await dc2.close();
      await asGuest.close();
    }
  });

  it('acks too late: ack-timeout, and the late guest finds the request withdrawn', async () => {
    const { domid, guest } = await newGuest({ boot: 'slow-ack', slowAckMs: ACK_MS + 300 });
    const err = await failure(dc.suspend(domid));
    expect(err.code).toBe('ack-timeout');
    await new Promise((r) => setTimeout(r, 800));
    expect(guest?.stats).toMatchObject({ acks: 0, suspends: 0 });
    expect(await dc.info(domid)).toMatchObject({ shutdown: false });
  });

  it('acks but never suspends: suspend-timeout, domain still running', async () => {
    const { domid } = await newGuest({ boot: 'ack-no-suspend' });
    const t0 = Date.now();
    const err = await failure(dc.suspend(domid));
    expect(err.code).toBe('suspend-timeout');
    expect(Date.now() - t0).toBeLessThan(SUSPEND_MS + 2000);
    await dc.resume(domid);
    expect(await dc.info(domid)).toMatchObject({ shutdown: false, paused: false });
  });

  it('dies during suspend: gone', async () => {
    const { domid } = await newGuest({ boot: 'die' });
    const err = await failure(dc.suspend(domid));
    expect(err.code).toBe('gone');
    const resumeErr = await failure(dc.resume(domid));
    expect(['dying', 'not-found']).toContain(resumeErr.code);
  });

  it('crashes instead of suspending: unexpected-shutdown naming the reason', async () => {
    const { domid } = await newGuest({ boot: 'crash' });
    const err = await failure(dc.suspend(domid));
    expect(err.code).toBe('unexpected-shutdown');
    expect(err.message).toContain('crash');
  });

  it('destroyed by the toolstack while we wait: gone', async () => {
    const { domid } = await newGuest({ boot: 'ack-no-suspend' });
    const p = failure(dc.suspend(domid, { suspendTimeoutMs: 5000 }));
    await new Promise((r) => setTimeout(r, 100));
    await h.destroyDomain(domid);
    const err = await p;
    expect(err.code).toBe('gone');
  });

  it('feature-suspend "0": refused at once, nothing written', async () => {
    const { domid } = await newGuest({ featureSuspend: '0' });
    const err = await failure(dc.suspend(domid));
    expect(err.code).toBe('guest-refuses');
    expect(await shutdownNode(domid)).toBe('');
    expect(await dc.info(domid)).toMatchObject({ shutdown: false });
  });
});

describe('HVM guests', () => {
  it('without PV drivers: suspended by the hypervisor, control/shutdown untouched', async () => {
    const { domid } = await newGuest({ hvm: true, pvDrivers: false, boot: false });
    counter.reset();
    await dc.suspend(domid);
    expect(await dc.info(domid)).toMatchObject({ hvm: true, shutdown: true, shutdownReason: 'suspend' });
    expect(counter.log).not.toContain('write');
    expect(await shutdownNode(domid)).toBe('');
    await dc.resume(domid);
    expect(await dc.info(domid)).toMatchObject({ shutdown: false });
  });

  it('with PV drivers but silent (feature-suspend unset): falls back to the hypervisor after the ack timeout', async () => {
    const { domid } = await newGuest({ hvm: true, pvDrivers: true, boot: false });
    await dc.suspend(domid);
    expect(await dc.info(domid)).toMatchObject({ shutdownReason: 'suspend' });
    expect(await shutdownNode(domid)).toBe('');
    await dc.resume(domid);
  });

  it('with PV drivers that answer: suspended through control/shutdown', async () => {
    const { domid, guest } = await newGuest({ hvm: true, pvDrivers: true });
    await dc.suspend(domid);
    expect(guest?.stats.suspends).toBe(1);
    await dc.resume(domid);
  });
});

describe('bad input changes nothing', () => {
  it('refuses dom0, a missing domain, a shut down one and a dying one, saying which', async () => {
    expect((await failure(dc.suspend(0))).code).toBe('dom0');
    expect((await failure(dc.suspend(4000))).code).toBe('not-found');
    expect((await failure(dc.suspend(-3))).code).toBe('invalid-domid');

    const off = await newGuest({ boot: false });
    await h.setDomain(off.domid, { shutdown: true, shutdownReason: 0 });
    const e1 = await failure(dc.suspend(off.domid));
    expect(e1.code).toBe('already-shutdown');
    expect(e1.message).toContain('poweroff');
    expect(await shutdownNode(off.domid)).toBe('');
    expect((await failure(dc.resume(off.domid))).code).toBe('not-suspended');

    const dying = await newGuest({ boot: false });
    await h.setDomain(dying.domid, { dying: true });
    expect((await failure(dc.suspend(dying.domid))).code).toBe('dying');
  });

  it('refuses a second suspend of the same domain while one runs', async () => {
    const { domid } = await newGuest({ boot: 'slow-ack', slowAckMs: 100 });
    const first = dc.suspend(domid);
    expect((await failure(dc.suspend(domid))).code).toBe('busy');
    await first;
    await dc.resume(domid);
  });
});

describe('toolstack mode and events', () => {
  it('waitForSuspended resolves when someone else suspends the domain, and times out otherwise', async () => {
    const { domid } = await newGuest();
    const waiting = dc.waitForSuspended(domid, 3000);
    await new Promise((r) => setTimeout(r, 50));
    await h.setDomain(domid, { shutdown: true, shutdownReason: 2 });
    await waiting;
    await dc.resume(domid);
    expect((await failure(dc.waitForSuspended(domid, 200))).code).toBe('suspend-timeout');
  });

  it('onEvent reports suspended and gone from @releaseDomain', async () => {
    const { domid } = await newGuest();
    const events: DomainEvent[] = [];
    const off = dc.onEvent((ev) => {
      if (ev.domid === domid) events.push(ev);
    });
    await new Promise((r) => setTimeout(r, 100));
    await dc.suspend(domid);
    // Events are derived from domain info read after each @releaseDomain, so two changes in
    // quick succession may coalesce into the last one (see domains-coalesced.test.ts): let the
    // suspend be reported before the domain goes.
    const waitFor = async (n: number): Promise<void> => {
      const deadline = Date.now() + 3000;
      while (events.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    };
    await waitFor(1);
    await h.destroyDomain(domid);
    await waitFor(2);
    off();
    expect(events).toEqual([
      { kind: 'suspended', domid },
      { kind: 'gone', domid },
    ]);
  });
});

describe('a suspend cancelled through its signal', () => {
  // Long handshake timeouts: only the abort can end these suspends quickly.
  const LONG = { ackTimeoutMs: 20_000, suspendTimeoutMs: 20_000, cancelGraceMs: 300 };

  it('during the ack wait (never-ack guest): request withdrawn in a transaction, cancelled at once, running', async () => {
    const { domid, guest } = await newGuest({ boot: 'never-ack' });
    const ac = new AbortController();
    counter.reset();
    const p = cancelled(dc.suspend(domid, { ...LONG, signal: ac.signal }));
    await until(() => guest?.stats.requests === 1, 5000, 'the guest to see the request');
    const beforeAbort = counter.log.length;
    const t0 = Date.now();
    ac.abort(new Error('agent stopping'));
    const err = await p;
    const ms = Date.now() - t0;
    expect(err.step).toBe('ack');
    expect(err.suspended).toBe(false);
    expect(err.end).toBe('running');
    expect(err.acked).toBe(false);
    expect(err.message).toContain('agent stopping');
    expect(err.message).toContain('request withdrawn');
    // Withdrawal + the 300 ms grace, nowhere near the 20 s ack timeout.
    expect(ms).toBeGreaterThanOrEqual(250);
    expect(ms).toBeLessThan(1500);
    expect(await shutdownNode(domid)).toBe('');
    const after = counter.log.slice(beforeAbort);
    const start = after.indexOf('transaction_start');
    expect(start).toBeGreaterThanOrEqual(0);
    expect(after.slice(start, start + 4)).toEqual([
      'transaction_start',
      'tx:tryRead',
      'tx:write',
      'transaction_end',
    ]);
    expect(await dc.info(domid)).toMatchObject({ shutdown: false, paused: false });
    // The busy mark is gone: another suspend may start (and is itself cancelled at once).
    const again = new AbortController();
    again.abort(new Error('no'));
    expect((await cancelled(dc.suspend(domid, { ...LONG, signal: again.signal }))).step).toBe('check');
  });

  it('aborted before the call: nothing asked, nothing written', async () => {
    const { domid, guest } = await newGuest();
    const ac = new AbortController();
    ac.abort(new Error('too late'));
    const err = await cancelled(dc.suspend(domid, { signal: ac.signal }));
    expect(err.suspended).toBe(false);
    expect(guest?.stats.requests).toBe(0);
    expect(await shutdownNode(domid)).toBe('');
  });

  it('a guest that acks inside the withdrawal wins the race and suspends in the grace: cancelled, suspended', async () => {
    const { domid } = await newGuest({ boot: 'never-ack' });
    // The guest acks right after the withdrawing transaction read "suspend" (the commit conflicts,
    // the retry sees the ack and leaves it), then suspends 100 ms later.
    const { racing, asGuest, raced } = await ackRace(domid, () =>
      setTimeout(() => void h.setDomain(domid, { shutdown: true, shutdownReason: 2 }), 100),
    );
    const dc2 = createDomainControl({
      xenstore: racing,
      libxenctrlPath: h.env['DEVMIGRATE_LIBXENCTRL'],
      libxenguestPath: h.env['DEVMIGRATE_LIBXENGUEST'],
      recheckIntervalMs: 100,
    });
    try {
      const ac = new AbortController();
      const p = cancelled(dc2.suspend(domid, { ...LONG, cancelGraceMs: 1500, signal: ac.signal }));
      await until(async () => (await shutdownNode(domid)) === 'suspend', 5000, 'the request');
      const t0 = Date.now();
      ac.abort(new Error('abort requested'));
      const err = await p;
      expect(raced()).toBe(true);
      expect(err.message).toContain('already acked');
      expect(err.suspended).toBe(true);
      expect(err.acked).toBe(true);
      expect(Date.now() - t0).toBeLessThan(1500);
      expect(await shutdownNode(domid)).toBe('');
      await dc2.resume(domid);
      expect(await dc2.info(domid)).toMatchObject({ shutdown: false, paused: false });
    } finally {
      await dc2.close();
      await asGuest.close();
    }
  });

  it('after the ack (ack-no-suspend guest): waits only the grace, cancelled, still running', async () => {
    const { domid, guest } = await newGuest({ boot: 'ack-no-suspend' });
    const ac = new AbortController();
    const p = cancelled(dc.suspend(domid, { ...LONG, signal: ac.signal }));
    await until(() => guest?.stats.acks === 1, 5000, 'the ack');
    const t0 = Date.now();
    ac.abort(new Error('agent stopping'));
    const err = await p;
    const ms = Date.now() - t0;
    expect(err.step).toBe('wait-suspended');
    expect(err.suspended).toBe(false);
    expect(err.acked).toBe(true);
    expect(ms).toBeGreaterThanOrEqual(250);
    expect(ms).toBeLessThan(1500);
    expect(await dc.info(domid)).toMatchObject({ shutdown: false, paused: false });
  });

  it('after the ack, a slow guest suspends during the grace: cancelled, suspended, resume brings it back', async () => {
    const { domid, guest } = await newGuest({ boot: 'ack-no-suspend' });
    const ac = new AbortController();
    const p = cancelled(dc.suspend(domid, { ...LONG, cancelGraceMs: 2000, signal: ac.signal }));
    await until(() => guest?.stats.acks === 1, 5000, 'the ack');
    const t0 = Date.now();
    ac.abort(new Error('agent stopping'));
    // The guest finishes its suspend (SCHEDOP_shutdown) 200 ms into the grace.
    setTimeout(() => void h.setDomain(domid, { shutdown: true, shutdownReason: 2 }), 200);
    const err = await p;
    expect(err.suspended).toBe(true);
    expect(err.end).toBe('suspended');
    expect(err.message).toContain('ended suspended');
    // Ends when the suspension is seen, not at the end of the grace.
    expect(Date.now() - t0).toBeLessThan(1500);
    await dc.resume(domid);
    expect(await dc.info(domid)).toMatchObject({ shutdown: false, paused: false });
  });

  it('HVM without PV drivers: the single hypercall is not undone; the cancel reports it suspended', async () => {
    const { domid } = await newGuest({ hvm: true, pvDrivers: false, boot: false });
    const ac = new AbortController();
    const real = openXcHypervisor({
      libxenctrlPath: h.env['DEVMIGRATE_LIBXENCTRL'],
      libxenguestPath: h.env['DEVMIGRATE_LIBXENGUEST'],
    });
    // The abort arrives while xc_domain_shutdown runs.
    const hv = {
      ...real,
      info: real.info.bind(real),
      list: real.list.bind(real),
      pause: real.pause.bind(real),
      unpause: real.unpause.bind(real),
      resume: real.resume.bind(real),
      hvmSuspendParams: real.hvmSuspendParams.bind(real),
      close: real.close.bind(real),
      shutdown: async (d: number, reason: number): Promise<void> => {
        ac.abort(new Error('agent stopping'));
        await real.shutdown(d, reason);
      },
    };
    const dc2 = createDomainControl({ xenstore: xs, hypervisor: hv, recheckIntervalMs: 100 });
    try {
      const err = await cancelled(dc2.suspend(domid, { ...LONG, signal: ac.signal }));
      expect(err.suspended).toBe(true);
      await dc2.resume(domid);
      expect(await dc2.info(domid)).toMatchObject({ shutdown: false, paused: false });
    } finally {
      await dc2.close();
      await real.close();
    }
  });
});

describe('log lines carry the domain as metadata', () => {
  it('every line about a domain passes { domid }', async () => {
    const { domid } = await newGuest({ boot: 'never-ack' });
    const lines: { level: string; msg: string; meta?: { domid?: number } }[] = [];
    const dc2 = createDomainControl({
      xenstore: xs,
      libxenctrlPath: h.env['DEVMIGRATE_LIBXENCTRL'],
      libxenguestPath: h.env['DEVMIGRATE_LIBXENGUEST'],
      ackTimeoutMs: 200,
      log: (level, msg, meta) => lines.push({ level, msg, ...(meta !== undefined ? { meta } : {}) }),
    });
    try {
      expect((await failure(dc2.suspend(domid))).code).toBe('ack-timeout');
    } finally {
      await dc2.close();
    }
    expect(lines.map((l) => l.level)).toEqual(['debug', 'error']);
    for (const l of lines) {
      expect(l.meta).toEqual({ domid });
      expect(l.msg).toContain(`domain ${domid}`);
    }
  });
});
