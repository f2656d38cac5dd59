// The engine's randomized fault model: one seed -> one deterministic schedule on the simulated
// host under virtual time. Agents crash at any call (a new one starts on the same store), drain,
// domains are paused by an administrator or destroyed, guests ack late, never, or suspend after
// the request was withdrawn, XenStore and hypervisor calls fail, stall or time out, requesters
// abort, remove, or write garbage. After the schedule the invariants of issue 10 are checked.
import { defaultConfig, type DevMigrateConfig } from '../../src/config/schema.js';
import { DeviceRegistry } from '../../src/devices/registry.js';
import type { XsErrno } from '../../src/xenstore/errors.js';
import type { Perm } from '../../src/xenstore/types.js';
import { owner, type Owner } from '../sim/dispatch.js';
import { GUEST_MODES, type GuestBehaviour, type GuestMode } from '../sim/sim-guests.js';
import type { HvFault } from '../sim/sim-hypervisor.js';
import type { StoreFault } from '../sim/sim-store.js';
import { seededRandom, VirtualClock } from '../sim/virtual-clock.js';
import { DOM0_ONLY, SimWorld } from '../sim/world.js';
import {
  FakeProcesses,
  fuzzFactory,
  type DevicePlan,
  type DeviceRecord,
  type FuzzDeviceWorld,
  type OpName,
} from './fuzz-devices.js';

const JOBS = '/tool/devmigrate/jobs';
const TERMINAL = new Set(['refused', 'aborted', 'failed']);
const FINAL = new Set([...TERMINAL, 'done']);
/** The domain layer's grace after a withdrawn request (a guest acting on it within it is ours). */
const GRACE_MS = 2000;

/** The engine's transitions as the requester may observe them (deferred rest states skipped). */
const NEXT: Record<string, string[]> = {
  accepted: ['testing', 'aborted', 'failed'],
  testing: ['tested', 'refused', 'aborted', 'failed', 'pre-suspend'],
  tested: ['pre-suspend', 'aborted', 'failed'],
  'pre-suspend': ['pre-suspended', 'suspending', 'recovering'],
  'pre-suspended': ['suspending', 'recovering'],
  suspending: ['post-suspend', 'recovering', 'post-suspended', 'syncing'],
  'post-suspend': ['post-suspended', 'syncing', 'recovering'],
  'post-suspended': ['syncing', 'recovering'],
  syncing: ['done', 'recovering'],
  done: ['recovering'],
  recovering: ['aborted', 'failed'],
};

export interface ScheduleOptions {
  seed: number;
  /** Print what happens (replay). */
  trace?: (line: string) => void;
}

export interface ScheduleResult {
  seed: number;
  violations: string[];
  steps: number;
  virtualMs: number;
  /** One line: what the schedule did (jobs' ends, faults). */
  summary: string;
}

interface DomPlan {
  domid: number;
  guest: GuestBehaviour;
  devices: DevicePlan[];
  hvm: boolean;
}

interface JobPlan {
  key: string;
  domid: number | undefined;
  fields: Record<string, string>;
  perms: Perm[];
  /** The requester's request time, virtual ms from the start. */
  at: number;
  /** Valid and trusted: the engine must answer it within its bound. */
  mustAnswer: boolean;
  mode: 'auto' | 'steps';
  suspend: 'agent' | 'toolstack';
}

interface DomWatch {
  /** The last "suspend" written to control/shutdown: by which connection, when. */
  requestBy?: string;
  requestAt?: number;
  /** When an agent cleared a pending request (withdrawn). */
  withdrawnAt?: number;
  /** The domain is shut down(suspend) because of the agent (see attribution in suspendedBy()). */
  suspendedByUs: boolean;
}

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)] as T;
}
function chance(r: () => number, p: number): boolean {
  return r() < p;
}
function int(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

function fuzzConfig(r: () => number): DevMigrateConfig {
  const c = defaultConfig();
  Object.assign(c.timeouts, {
    testMs: 4000,
    preSuspendMs: 6000,
    postSuspendMs: 4000,
    syncMs: 4000,
    recoverMs: 3000,
    deviceMs: 5000,
    suspendAckMs: 2000,
    suspendMs: 3000,
    toolstackSuspendMs: 5000,
    stepIdleMs: 4000,
    killGraceMs: 300,
  });
  const maxDeviceOps = pick(r, [2, 4, 16, 128]);
  c.limits = {
    maxJobs: pick(r, [1, 2, 6]),
    maxDeviceOps,
    reservedCriticalOps: Math.min(maxDeviceOps - 1, pick(r, [0, 1, 2])),
  };
  return c;
}

/** The bound within which a job must reach a final state, from its request or the last agent start. */
function jobBound(c: DevMigrateConfig): number {
  const t = c.timeouts;
  return (
    t.testMs +
    t.preSuspendMs +
    t.suspendAckMs +
    t.suspendMs +
    1000 +
    t.postSuspendMs +
    t.syncMs +
    4 * t.stepIdleMs +
    t.recoverMs +
    // the domain's recovery: looks, a withdraw, a watch, resumes (each bounded by recoverMs)
    16 * t.recoverMs +
    t.suspendMs +
    2 * GRACE_MS +
    // examination retries, write retries, XenStore stalls
    20_000
  );
}

function opPlan(r: () => number, op: OpName, hangOk: boolean): DevicePlan['ops'][OpName] {
  const x = r();
  const ms = pick(r, [0, 5, 50, 400, 1500]);
  if (x < 0.05) return { outcome: 'fail', ms, honoursSignal: true };
  if (hangOk && x < 0.08) return { outcome: 'hang', ms, honoursSignal: chance(r, 0.5) };
  void op;
  return { outcome: 'ok', ms, honoursSignal: true };
}

function guestPlan(r: () => number): GuestBehaviour {
  const mode: GuestMode = chance(r, 0.55) ? 'normal' : pick(r, GUEST_MODES);
  return {
    mode,
    ackDelayMs: pick(r, [0, 10, 300, 1500, 2500, 5000]),
    suspendDelayMs: pick(r, [0, 20, 500, 1500, 2500, 4000, 8000]),
    featureSuspend: chance(r, 0.95) ? '1' : pick(r, ['0', '', null] as const),
  };
}

const GARBAGE = [
  '',
  ' ',
  '05',
  'a;b',
  '-x',
  '..',
  'é',
  'x'.repeat(300),
  '0',
  '99999',
  'auto ',
  'steps\n',
  '1e3',
];

export async function runSchedule(opts: ScheduleOptions): Promise<ScheduleResult> {
  const r = seededRandom(opts.seed);
  const trace = opts.trace ?? (() => undefined);
  const worldOwner = owner('world');
  const clock = new VirtualClock(worldOwner);
  const violations: string[] = [];
  const violation = (what: string): void => {
    if (violations.length < 20) violations.push(what);
  };
  clock.install(seededRandom(opts.seed ^ 0x5bd1e995));
  try {
    return await schedule();
  } finally {
    clock.uninstall();
  }

  async function schedule(): Promise<ScheduleResult> {
    const t0 = clock.now();
    const at = (ms: number, fn: () => void): void => void clock.post(worldOwner, ms, fn);
    const cfg = fuzzConfig(r);
    const world = new SimWorld(clock);
    const procs = new FakeProcesses(clock);
    const records = new Map<string, DeviceRecord>();
    const devWorld: FuzzDeviceWorld = { dispatch: clock, processes: procs, records, violation };

    // ---- the host: domains, their guests and devices ----
    const doms: DomPlan[] = [];
    const ids = [...new Set(Array.from({ length: int(r, 1, 3) }, () => pick(r, [3, 5, 7, 12, 40])))];
    for (const domid of ids) {
      const devices: DevicePlan[] = [];
      for (let i = 0; i < int(r, 1, 3); i++) {
        const tool = chance(r, 0.4);
        const type = tool ? 'vtpm' : 'vbd';
        const ops = {} as DevicePlan['ops'];
        for (const op of ['test', 'preSuspend', 'postSuspend', 'sync', 'recover'] as OpName[])
          ops[op] = opPlan(r, op, op !== 'test');
        devices.push({ type, devid: String(51712 + i), tool, ops });
      }
      doms.push({ domid, guest: guestPlan(r), devices, hvm: chance(r, 0.1) });
    }
    const plans = new Map<string, DevicePlan>();
    for (const d of doms) {
      const backends: Record<string, Record<string, string>> = {};
      for (const dev of d.devices) {
        backends[`${dev.type}/${dev.devid}`] = { params: '/x' };
        plans.set(`${d.domid}/${dev.type}/${dev.devid}`, dev);
      }
      await world.addDomain(d.domid, d.guest, backends, { hvm: d.hvm, pvDrivers: !d.hvm || chance(r, 0.7) });
    }

    // ---- what each domain's control/shutdown and suspends mean (attribution) ----
    const watch = new Map<number, DomWatch>(doms.map((d) => [d.domid, { suspendedByUs: false }]));
    const isAgentConn = (c: string): boolean => /^agent-\d+(-domains)?$/.test(c);
    const requestedKeys = new Set<string>();
    const stateLog = new Map<string, string[]>();
    world.store.onWrite = (w) => {
      const m = /^\/local\/domain\/(\d+)\/control\/shutdown$/.exec(w.path);
      if (m !== null) {
        const dw = watch.get(Number(m[1]));
        if (dw !== undefined && w.op === 'write') {
          if (w.value === 'suspend') {
            dw.requestBy = w.conn;
            dw.requestAt = w.at;
            dw.withdrawnAt = undefined;
          } else if (w.value === '' && isAgentConn(w.conn)) dw.withdrawnAt = w.at;
        }
      }
      if (!isAgentConn(w.conn)) return;
      if (w.path.startsWith('/tool/devmigrate/holding'))
        trace(`${w.at - t0} ${w.conn} ${w.op} ${w.path} ${w.value ?? ''}`);
      // No write outside the job's own nodes (and, for the domain layer, the suspend handshake).
      if (w.conn.endsWith('-domains')) {
        if (m === null || !watch.has(Number(m[1])) || (w.value !== 'suspend' && w.value !== ''))
          violation(`domain layer wrote ${w.op} ${w.path}=${String(w.value)}`);
        return;
      }
      const jm = /^\/tool\/devmigrate\/jobs\/([^/]+)(\/.*)?$/.exec(w.path);
      const okRoot =
        ['/tool/devmigrate', '/tool/devmigrate/jobs', '/tool/devmigrate/protocol-version'].includes(w.path) ||
        /^\/tool\/devmigrate\/holding(\/[1-9][0-9]*(\/tools(\/[a-z0-9]+(\/[0-9]+)?)?)?)?$/.test(w.path);
      if (!okRoot && (jm === null || !requestedKeys.has(jm[1] ?? '')))
        violation(`agent wrote ${w.op} ${w.path} (not a job a requester made)`);
      if (jm !== null && jm[2] === '/state' && w.op === 'write') {
        const key = jm[1] ?? '';
        const log = stateLog.get(key) ?? [];
        const prev = log[log.length - 1];
        const v = w.value ?? '';
        log.push(v);
        stateLog.set(key, log);
        trace(`${clock.now() - t0} ${w.conn}: job ${key} -> ${v}`);
        if (prev !== undefined && prev !== v && !legal(prev, v))
          violation(`job ${key}: state ${prev} -> ${v} is no transition of the machine`);
      }
      if (jm !== null && jm[2] === '/recovered' && w.value === '1')
        checkRecovered(jm[1] ?? '', 'when written');
    };
    const legal = (a: string, b: string): boolean => {
      if (NEXT[a]?.includes(b) === true) return true;
      // After a crash the recovery table: restart (accepted), forget (failed), recover (recovering).
      if (b === 'recovering' && !TERMINAL.has(a)) return true;
      if (b === 'failed' && ['accepted', 'testing', 'tested', 'recovering'].includes(a)) return true;
      if (b === 'accepted' && (a === 'accepted' || TERMINAL.has(a))) return true;
      return false;
    };
    world.hv.onChange = (domid, what, by) => {
      const dw = watch.get(domid);
      if (dw === undefined) return;
      if (what === 'resumed' || what === 'destroyed') dw.suspendedByUs = false;
      if (what !== 'shutdown:suspend') return;
      const guest = world.guests.get(domid);
      const now = clock.now();
      let ours = false;
      if (isAgentConn(by))
        ours = true; // xc_domain_shutdown by the agent (no PV drivers)
      else if (by === `guest-${domid}` && dw.requestBy !== undefined && isAgentConn(dw.requestBy)) {
        const acked = guest?.stats.ackedAt;
        // Bounds are strict, with the clock's 1 ms granularity as slack: a suspend right at a
        // bound is the guest's own doing.
        if (guest?.behaviour.mode === 'rogue') {
          ours = dw.withdrawnAt === undefined || now < dw.withdrawnAt + GRACE_MS - 1;
        } else if (acked !== undefined) {
          // An acked guest may suspend within suspendMs of its ack (libxl's bound).
          ours = now < acked + cfg.timeouts.suspendMs - 1;
        }
      }
      dw.suspendedByUs = ours;
      trace(`${now - t0} domain ${domid} suspended by ${by} (ours: ${ours})`);
    };

    // ---- agents: generations that crash at a chosen call, drain, and start again ----
    const agentStarts: number[] = [];
    let gens = 0;
    let restarts = 0;
    const maxCrashes = chance(r, 0.45) ? int(r, 1, 3) : 0;
    let crashes = 0;
    let drains = 0;
    const xsRate = pick(r, [0, 0, 0.01, 0.03]);
    const hvRate = pick(r, [0, 0, 0.02, 0.05]);
    let crashAt = maxCrashes > 0 ? int(r, 1, 400) : -1;
    let agentOps = 0;
    const registry =
      (gen: Owner) =>
      (c: DevMigrateConfig): DeviceRegistry => {
        const reg = new DeviceRegistry(c);
        const f = fuzzFactory(devWorld, gen, plans, c.timeouts.killGraceMs);
        reg.register('vbd', f);
        reg.register('vtpm', f);
        return reg;
      };
    /** Started (again) by the service manager after a crash, a failed start or a drain. */
    const startAgent = (): void => {
      gens += 1;
      const who = owner(`agent-${gens}`);
      agentStarts.push(clock.now());
      trace(`${clock.now() - t0} ${who.name} starts`);
      // The generation's work (its start included) runs in its own tasks: a crash drops all of it
      // (microtasks run under the task's owner, so the work must start in a task of the agent).
      clock.post(who, 0, () => {
        const log = {
          error: (m: string) => trace(`${clock.now() - t0} ${who.name} E ${m}`),
          warn: (m: string) => trace(`${clock.now() - t0} ${who.name} W ${m}`),
          info: (m: string) => trace(`${clock.now() - t0} ${who.name} I ${m}`),
          debug: () => undefined,
        };
        world
          .startAgentAs(who, cfg, registry(who), { processes: procs, ...(opts.trace ? { log } : {}) })
          .catch(() => {
            if (who.dead) return;
            who.dead = true; // exits on a failed start; systemd starts it again
            restart(int(r, 200, 2000));
          });
      });
    };
    const restart = (delayMs: number): void => {
      restarts += 1;
      at(delayMs, startAgent);
    };
    /** The agent crashes at this call: every call of it from now on hangs, and it is restarted. */
    const crashNow = (): { kind: 'crash' } => {
      crashes += 1;
      trace(`${clock.now() - t0} agent crashes at call ${agentOps}`);
      crashAt = crashes < maxCrashes ? agentOps + int(r, 1, 400) : -1;
      restart(int(r, 0, 3000));
      return { kind: 'crash' };
    };
    const storeFault = (op: string): StoreFault => {
      const x = r();
      if (x < 0.3) return { kind: 'delay', ms: pick(r, [1, 20, 200, 2000]) };
      if (x < 0.55) return { kind: 'error', errno: pick(r, ['EAGAIN', 'EIO', 'ENOMEM'] as XsErrno[]) };
      if (x < 0.7 && op !== 'watch')
        return { kind: 'timeout', ms: pick(r, [100, 3000]), applied: chance(r, 0.5) };
      return { kind: 'delay', ms: 1 };
    };
    world.store.faults = (conn, op, path): StoreFault => {
      if (!isAgentConn(conn.name) || conn.who.dead) return { kind: 'ok' };
      agentOps += 1;
      if (crashAt >= 0 && agentOps >= crashAt) return crashNow();
      if (xsRate > 0 && r() < xsRate) {
        const f = storeFault(op);
        trace(`${clock.now() - t0} fault ${conn.name} ${op} ${path ?? ''}: ${JSON.stringify(f)}`);
        return f;
      }
      return { kind: 'ok' };
    };
    world.hv.faults = (caller): HvFault => {
      if (!isAgentConn(caller) || world.agentOwner()?.dead === true) return { kind: 'ok' };
      agentOps += 1;
      if (crashAt >= 0 && agentOps >= crashAt) return crashNow();
      if (hvRate > 0 && r() < hvRate) {
        const x = r();
        if (x < 0.4) return { kind: 'error', errno: pick(r, ['EFAULT', 'ESRCH', 'EAGAIN', 'EINVAL']) };
        if (x < 0.9) return { kind: 'delay', ms: pick(r, [1, 50, 500]) };
        return { kind: 'hang' };
      }
      return { kind: 'ok' };
    };
    startAgent();
    if (chance(r, 0.1)) {
      // SIGTERM: the agent drains, exits, and is started again.
      at(int(r, 500, 15_000), () => {
        const cur = world.agent;
        if (cur === undefined || cur.who.dead) return;
        drains += 1;
        trace(`${clock.now() - t0} ${cur.who.name} drains`);
        const bound = int(r, 3000, 30_000);
        clock.post(cur.who, 0, () => {
          void cur.engine.drain(bound).then(() => {
            if (cur.who.dead) return; // crashed while draining: already restarted
            cur.who.dead = true; // the process exits
            restart(int(r, 100, 2000));
          });
        });
      });
    }

    // ---- requesters, toolstacks, administrators ----
    const jobs: JobPlan[] = [];
    for (const d of doms) {
      const mode = chance(r, 0.7) ? 'auto' : 'steps';
      const suspend = chance(r, 0.8) ? 'agent' : 'toolstack';
      const fields: Record<string, string> = {
        id: `f${opts.seed % 100000}-${d.domid}`,
        target: 'host-b',
        mode,
        suspend,
      };
      if (chance(r, 0.5)) fields.live = chance(r, 0.8) ? '1' : '0';
      if (chance(r, 0.1)) fields.deadline = String(int(r, 1, 30));
      let mustAnswer = true;
      let perms = DOM0_ONLY;
      if (chance(r, 0.08)) {
        // A request tree from a fuzzer: a garbage field or value; still dom0's, so it is answered.
        const k = pick(r, ['id', 'target', 'mode', 'suspend', 'live', 'deadline', 'colour']);
        fields[k] = pick(r, GARBAGE);
      }
      if (chance(r, 0.04)) {
        perms = [
          { domid: 0, access: 'n' },
          { domid: d.domid, access: 'b' },
        ];
        mustAnswer = false; // ignored: nothing may be obeyed, nothing need be answered
      }
      jobs.push({
        key: String(d.domid),
        domid: d.domid,
        fields,
        perms,
        at: int(r, 0, 3000),
        mustAnswer,
        mode,
        suspend,
      });
    }
    if (chance(r, 0.1)) {
      // A stray key aliasing a real domain: answered in its own directory, nothing else touched.
      const d = pick(r, doms).domid;
      jobs.push({
        key: pick(r, [`0${d}`, `00${d}`, `${d}x`, '0']),
        domid: undefined,
        fields: { id: 'stray', target: 'host-b', mode: 'auto' },
        perms: DOM0_ONLY,
        at: int(r, 0, 4000),
        mustAnswer: true,
        mode: 'auto',
        suspend: 'agent',
      });
    }
    const requester = owner('requester');
    const requestTime = new Map<string, number>();
    const firstFinal = new Map<string, number>();
    for (const j of jobs) {
      requestedKeys.add(j.key);
      at(j.at, () => {
        requestTime.set(j.key, clock.now());
        trace(`${clock.now() - t0} request ${j.key} ${JSON.stringify(j.fields)}`);
        world.request(j.key, j.fields, j.perms);
        actors(j);
      });
    }

    /** The requester, the toolstack: each reacts to the job's state (a watch, as real ones do). */
    function actors(j: JobPlan): void {
      const state = (): string | undefined => world.job(j.key, 'state');
      const exists = (): boolean => world.store.nodes.has(`${JOBS}/${j.key}`);
      const control = (v: string): void => {
        if (exists() && !TERMINAL.has(state() ?? '')) world.control(j.key, v);
      };
      if (j.domid === undefined) {
        if (chance(r, 0.5)) at(int(r, 100, 3000), () => exists() && world.store.remove(`${JOBS}/${j.key}`));
      } else {
        if (chance(r, 0.1))
          at(int(r, 200, 8000), () => state() !== 'done' && control(pick(r, ['abort', 'recover'])));
        if (chance(r, 0.05))
          at(
            int(r, 200, 8000),
            () => exists() && !FINAL.has(state() ?? '') && world.store.remove(`${JOBS}/${j.key}`),
          );
        if (chance(r, 0.05)) at(int(r, 200, 6000), () => control(pick(r, GARBAGE)));
      }
      const domid = j.domid;
      const steps: Record<string, string> = {
        accepted: 'test',
        tested: 'pre-suspend',
        'pre-suspended': 'post-suspend',
        'post-suspended': 'sync',
      };
      const done = new Set<string>();
      const tool = world.store.connect(`toolstack-${j.key}`, owner('toolstack'));
      const conn = world.store.connect(`requester-${j.key}`, requester);
      const onState = (): void => {
        const s = state();
        if (s !== undefined && FINAL.has(s) && !firstFinal.has(j.key)) firstFinal.set(j.key, clock.now());
        if (s === undefined || done.has(s) || domid === undefined) return;
        done.add(s);
        // Steps mode: the next control once the job rests (sometimes late, rarely never).
        const next = steps[s];
        if (j.mode === 'steps' && next !== undefined && !chance(r, 0.03))
          at(pick(r, [0, 10, 300, 2000, 5000]), () => state() === s && control(next));
        // suspend=toolstack: the toolstack suspends the domain once the job says suspending.
        if (j.suspend === 'toolstack' && s === 'suspending' && !chance(r, 0.1))
          at(int(r, 0, 3000), () => {
            if (state() === 'suspending')
              void tool.write(`/local/domain/${domid}/control/shutdown`, 'suspend').catch(() => undefined);
          });
        // After done: the toolstack destroys the source (its migration worked) or recovers (it failed).
        if (s === 'done') {
          const x = r();
          if (x < 0.4) at(int(r, 0, 3000), () => world.hv.destroy(domid, 'toolstack'));
          else if (x < 0.75) at(int(r, 0, 3000), () => state() === 'done' && world.control(j.key, 'recover'));
        }
        // A toolstack's own suspend is its to undo once the job gave up.
        if (TERMINAL.has(s) && j.suspend === 'toolstack')
          at(int(r, 0, 1000), () => void world.hv.resumeBy(domid, 'toolstack'));
      };
      void conn.watch(`${JOBS}/${j.key}/state`, { onEvent: onState });
    }
    // An administrator pauses a domain (and may unpause it later); a domain is destroyed mid-job.
    if (chance(r, 0.12)) {
      const d = pick(r, doms).domid;
      at(int(r, 0, 10_000), () => world.hv.adminPause(d));
      if (chance(r, 0.5)) at(int(r, 10_000, 40_000), () => world.hv.adminUnpause(d));
    }
    if (chance(r, 0.08)) {
      const d = pick(r, doms).domid;
      at(int(r, 0, 15_000), () => world.hv.destroy(d, 'admin'));
    }

    // ---- run: until every job that must be answered is final and the world is quiet ----
    const bound = jobBound(cfg);
    const answered = (): boolean =>
      jobs.every(
        (j) =>
          !j.mustAnswer ||
          (requestTime.has(j.key) &&
            (FINAL.has(world.job(j.key, 'state') ?? '') || !world.store.nodes.has(`${JOBS}/${j.key}`))),
      );
    const horizon = t0 + 4000 + bound * (2 + maxCrashes) + 60_000;
    let settleUntil: number | undefined;
    await clock.run(() => {
      if (!answered()) {
        settleUntil = undefined;
        return false;
      }
      // Once all is answered, the world runs on a while: late suspends and late actors show up.
      settleUntil ??= clock.now() + cfg.timeouts.suspendAckMs + cfg.timeouts.suspendMs + 10_000;
      return clock.now() >= settleUntil;
    }, horizon);

    // ---- the invariants ----
    const end = clock.now();
    const lastStartBefore = (t: number): number => Math.max(t0, ...agentStarts.filter((x) => x <= t));
    for (const j of jobs) {
      if (!j.mustAnswer || !requestTime.has(j.key)) continue;
      const dirGone = !world.store.nodes.has(`${JOBS}/${j.key}`);
      const s = world.job(j.key, 'state');
      if (!dirGone && !FINAL.has(s ?? ''))
        violation(`job ${j.key} not final at the end (${s ?? 'no state'})`);
      const reached = firstFinal.get(j.key);
      if (reached !== undefined) {
        const from = Math.max(requestTime.get(j.key) ?? t0, lastStartBefore(reached));
        if (reached - from > bound)
          violation(`job ${j.key} took ${reached - from} ms to a final state (bound ${bound} ms)`);
      }
      if (j.domid === undefined && s !== undefined && s !== 'failed')
        violation(`stray job ${j.key} ended ${s}, not failed`);
      checkRecovered(j.key, 'at the end');
    }
    for (const d of doms) {
      const dw = watch.get(d.domid);
      const info = world.hv.info(d.domid);
      const s = world.job(String(d.domid), 'state');
      if (
        info?.shutdown === true &&
        info.shutdownReason === 'suspend' &&
        dw?.suspendedByUs === true &&
        s !== 'done'
      )
        violation(`domain ${d.domid} left suspended by the agent (job ${s ?? 'none'})`);
    }
    for (const c of world.hv.calls) {
      if (isAgentConn(c.caller) && (c.call === 'unpause' || c.call === 'pause'))
        violation(`the agent called ${c.call} on domain ${c.domid}`);
    }
    const ends = jobs.map(
      (j) =>
        `${j.key}:${world.job(j.key, 'state') ?? '-'}${world.job(j.key, 'recovered') === '0' ? '(recovered=0)' : ''}`,
    );
    return {
      seed: opts.seed,
      violations,
      steps: clock.steps,
      virtualMs: end - t0,
      summary: `${ends.join(' ')} crashes=${crashes} drains=${drains} restarts=${restarts} xs=${xsRate} hv=${hvRate} guests=${doms.map((d) => d.guest.mode).join(',')}`,
    };

    /** recovered=1: every device that started a mutating phase recovered, the domain not left suspended by us. */
    function checkRecovered(key: string, when: string): void {
      if (world.job(key, 'recovered') !== '1') return;
      const domid = jobs.find((j) => j.key === key)?.domid;
      if (domid === undefined) return;
      for (const [devKey, rec] of records) {
        if (!devKey.startsWith(`${domid}/`) || rec.started.length === 0) continue;
        const last = Math.max(...rec.started.map((x) => x.at));
        if (!rec.recovers.some((x) => x.ok === true && x.at >= last))
          violation(
            `job ${key} recovered=1 ${when} but device ${devKey} was not recovered after its last phase`,
          );
      }
      const dw = watch.get(domid);
      const info = world.hv.info(domid);
      if (info?.shutdown === true && info.shutdownReason === 'suspend' && dw?.suspendedByUs === true)
        violation(`job ${key} recovered=1 ${when} while domain ${domid} is suspended by the agent`);
    }
  }
}
