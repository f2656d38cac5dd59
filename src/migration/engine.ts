// The migration engine: watches /tool/devmigrate/jobs, obeys only requests owned by dom0 and
// writable by no other domain, validates them, starts one JobRun per domain under global limits,
// routes controls, and applies the recovery table to jobs a previous agent left behind.
import type { DevMigrateConfig } from '../config/schema.js';
import { BackendIndex, discoverDevices, ownedOnlyBy, trustedDomainName } from '../devices/discovery.js';
import { DeviceRegistry } from '../devices/registry.js';
import type { Logger } from '../devices/types.js';
import type { DomainControl } from '../domains/types.js';
import { isXsErrno } from '../xenstore/errors.js';
import type { Perm, Watch, XenStore, XsOps } from '../xenstore/types.js';
import { JobValidationError, oneLine } from './errors.js';
import { parseDomid, validateRequest, type JobRequest } from './job-schema.js';
import { JobRun, type JobStart } from './job-run.js';
import { JobWriter } from './job-writer.js';
import { classifyJobPath, JOBS, jobPath, PROTOCOL_VERSION, PROTOCOL_VERSION_PATH, ROOT } from './paths.js';
import { Semaphore } from './semaphore.js';
import { isControl, isJobState, isTerminal, recoveryAction, type JobState } from './state-machine.js';

export interface EngineOptions {
  xs: XenStore;
  domains: DomainControl;
  config: DevMigrateConfig;
  log: Logger;
  registry?: DeviceRegistry;
  onMark?(domid: number, mark: string, atMs: number): void;
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
];

interface Snapshot {
  exists: boolean;
  trusted: boolean;
  untrustedWhy?: string;
  state?: string;
  acceptedId?: string;
  suspendedBy?: string;
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
  private readonly config: DevMigrateConfig;
  private readonly log: Logger;
  readonly registry: DeviceRegistry;
  private readonly index: BackendIndex;
  readonly jobSlots: Semaphore;
  readonly deviceSlots: Semaphore;
  /** Admission work (request reads, validation, discovery) of a burst of requests, bounded so it
   * does not crowd out the jobs already in their suspended window. */
  private readonly admission = new Semaphore(4);
  private readonly jobs = new Map<number, JobRun>();
  private readonly writers = new Map<number, JobWriter>();
  private readonly examining = new Map<string, { again: boolean; done: Promise<void> }>();
  private readonly handled = new Map<string, string>();
  private watch: Watch | undefined;
  private unsubscribe: (() => void) | undefined;
  private stopped = false;
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
    for (const run of this.jobs.values()) {
      if (run.state === 'done') run.detach();
      else run.abort('abort', 'agent stopping');
      waits.push(run.finished);
    }
    const bound = this.config.timeouts.recoverMs + this.config.timeouts.killGraceMs + 5000;
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
      const domid = /^[0-9]+$/.test(c.key) ? Number(c.key) : -1;
      if (this.jobs.has(domid)) {
        void this.readControl(domid);
        return;
      }
    }
    this.schedule(c.key);
  }

  private async scanAll(): Promise<void> {
    let keys: string[];
    try {
      this.readOps += 1;
      keys = await this.xs.directory(JOBS);
    } catch (err) {
      this.log.error(`cannot list ${JOBS}: ${(err as Error).message}`);
      return;
    }
    for (const k of keys) this.schedule(k);
  }

  /** Examines a job key; events arriving meanwhile cause one more pass, never a parallel one. */
  private schedule(key: string): void {
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
        } catch (err) {
          this.log.error(`job ${key}: ${(err as Error).message}`);
        }
      } while (entry.again && !this.stopped);
      this.examining.delete(key);
    })();
  }

  private async snapshot(key: string): Promise<Snapshot> {
    const base = jobPath(key);
    return this.xs.transaction(async (tx) => {
      const snap: Snapshot = { exists: false, trusted: true, fields: new Map() };
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
      if (!ownedOnlyBy(dirPerms, 0)) untrusted(base, dirPerms);
      const [state, acceptedId, suspendedBy, names] = await Promise.all([
        count(tx.tryRead(`${base}/state`)),
        count(tx.tryRead(`${base}/accepted-id`)),
        count(tx.tryRead(`${base}/suspended-by`)),
        count(
          tx
            .directory(`${base}/request`)
            .catch((err: unknown) => (isXsErrno(err, 'ENOENT') ? [] : Promise.reject(err))),
        ),
      ]);
      if (state !== undefined) snap.state = state;
      if (acceptedId !== undefined) snap.acceptedId = acceptedId;
      if (suspendedBy !== undefined) snap.suspendedBy = suspendedBy;
      if (names.length > 0) {
        const reqPerms = await count(tx.getPerms(`${base}/request`));
        if (!ownedOnlyBy(reqPerms, 0)) untrusted(`${base}/request`, reqPerms);
        await Promise.all(
          names.slice(0, 16).map(async (n) => {
            const path = `${base}/request/${n}`;
            const [v, perms] = await Promise.all([
              count(tx.tryRead(path)),
              count(permsOrUndefined(tx, path)),
            ]);
            if (perms !== undefined && !ownedOnlyBy(perms, 0)) untrusted(path, perms);
            if (v !== undefined) snap.fields.set(n, v);
          }),
        );
        if (state === undefined) {
          const c = await count(tx.tryRead(`${base}/control`));
          if (c !== undefined) {
            const cp = await count(tx.getPerms(`${base}/control`));
            if (!ownedOnlyBy(cp, 0)) untrusted(`${base}/control`, cp);
            snap.control = c;
          }
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
        w = new JobWriter(this.xs, key, this.log);
        this.writers.set(key, w);
      }
      return w;
    }
    return new JobWriter(this.xs, key, this.log);
  }

  private async examine(key: string): Promise<void> {
    const snap = await this.snapshot(key);
    const domidMaybe = /^[0-9]{1,5}$/.test(key) ? Number(key) : undefined;
    const inMem = domidMaybe !== undefined ? this.jobs.get(domidMaybe) : undefined;
    if (!snap.exists) {
      if (inMem !== undefined && !isTerminal(inMem.state) && inMem.state !== 'done') {
        inMem.abort('abort', 'job directory removed by the requester');
      } else if (inMem !== undefined) {
        inMem.detach();
        this.jobs.delete(inMem.domid);
      }
      this.handled.delete(key);
      return;
    }
    if (!snap.trusted) {
      // Cannot even be marked safely: writing into a directory a guest controls is its game.
      const fp = `untrusted:${snap.untrustedWhy ?? ''}`;
      if (this.handled.get(key) !== fp) {
        this.log.warn(`job ${key} ignored: ${snap.untrustedWhy ?? 'untrusted'}`);
        this.handled.set(key, fp);
      }
      return;
    }
    if (snap.fields.size === 0) return; // no request (yet)
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
        this.log.warn(`job ${key}: ${why}`);
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

  private async fail(key: string, error: string, id: string | undefined, clear: boolean): Promise<void> {
    this.log.warn(`job ${key} failed: ${error}`);
    const nodes: Record<string, string | undefined> = {};
    if (clear) for (const n of AGENT_NODES) nodes[n] = undefined;
    Object.assign(nodes, { state: 'failed', error: oneLine(error), recovered: '1' });
    if (id !== undefined && /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/.test(id)) nodes['accepted-id'] = id;
    const w = /^[0-9]{1,5}$/.test(key) ? this.writerFor(Number(key)) : this.writerFor(key);
    await w.persist(nodes);
  }

  private async startJob(key: string, snap: Snapshot, replacing: boolean): Promise<void> {
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
    const info = await this.domains.info(domid).catch(() => undefined);
    if (info === undefined || info.dying) {
      await this.fail(key, `domain ${domid} does not exist`, request.id, replacing);
      return;
    }
    const writer = this.writerFor(domid);
    this.handled.set(key, 'accepted:' + request.id);
    const run = await this.buildRun(domid, request, writer);
    if (run === undefined) return;
    // In memory before `accepted` is visible: a requester's control right after it finds the job.
    this.jobs.set(domid, run);
    const accept: Record<string, string | undefined> = {};
    if (replacing) for (const n of AGENT_NODES) accept[n] = undefined;
    Object.assign(accept, { state: 'accepted', 'accepted-id': request.id, 'accepted-mode': request.mode });
    await writer.persist(accept);
    this.launch(run, { kind: 'new' });
    await this.readControl(domid);
  }

  private async buildRun(domid: number, request: JobRequest, writer: JobWriter): Promise<JobRun | undefined> {
    let run: JobRun;
    try {
      const found = await discoverDevices(this.xs, domid, this.index, this.registry, this.log);
      this.readOps += found.ops;
      const needsName = found.devices.some((d) => this.registry.usesTool(d.ref.type));
      const name = needsName ? await trustedDomainName(this.xs, domid, this.log) : undefined;
      if (needsName) this.readOps += 4;
      run = new JobRun(
        domid,
        request,
        found.devices,
        {
          domains: this.domains,
          config: this.config,
          log: this.log,
          jobSlots: this.jobSlots,
          deviceSlots: this.deviceSlots,
          writer,
          deviceTimeoutMs: (t) => this.registry.deviceTimeoutMs(t),
          ...(this.opts.onMark !== undefined ? { onMark: this.opts.onMark } : {}),
        },
        name,
      );
    } catch (err) {
      const msg = oneLine(`device discovery failed: ${(err as Error).message}`);
      this.log.error(`job ${domid}: ${msg}`);
      await writer.persist({ state: 'failed', error: msg, recovered: '1' });
      return undefined;
    }
    return run;
  }

  private launch(run: JobRun, start: JobStart): void {
    this.jobs.set(run.domid, run);
    void run.run(start).then(() => {
      if (this.jobs.get(run.domid) === run && (isTerminal(run.state) || run.aborted))
        this.jobs.delete(run.domid);
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
      this.log.warn(`job ${domid}: control ignored: ${path} has permissions ${describePerms(perms ?? [])}`);
      return;
    }
    this.applyControl(run, value);
  }

  private applyControl(run: JobRun, value: string): void {
    const why = isControl(value)
      ? run.control(value)
      : `unknown control ${JSON.stringify(value.slice(0, 32))}`;
    if (why !== undefined) {
      this.log.warn(`job ${run.domid}: control ignored: ${why}`);
      void this.writerFor(run.domid).persist({ 'control-error': oneLine(why) });
    } else {
      this.log.info(`job ${run.domid}: control ${value}`);
    }
  }

  /** The recovery table applied to a job found in XenStore with no JobRun in memory. */
  private async recoverOrphan(key: string, state: JobState, snap: Snapshot): Promise<void> {
    const action = recoveryAction(state);
    this.log.warn(`job ${key}: found in state ${state} with no agent behind it; recovery action: ${action}`);
    if (action === 'none') return;
    let request: JobRequest;
    let domid: number;
    try {
      domid = parseDomid(key);
      request = validateRequest(snap.fields);
    } catch (err) {
      if (action === 'recover' || action === 'adopt') {
        // Without a valid request we still know the domain: recover what we can.
        domid = Number(key);
        request = {
          id: snap.acceptedId ?? 'unknown',
          target: 'localhost',
          targetKind: 'hostname',
          mode: 'auto',
          suspend: 'agent',
          live: true,
        };
        if (!Number.isInteger(domid) || domid <= 0) return;
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
        const exists = (await this.domains.info(domid).catch(() => undefined)) !== undefined;
        if (action === 'adopt' && !exists) return; // done and the source is gone: migration complete
        const run = await this.buildRun(domid, request, writer);
        if (run === undefined) return;
        this.launch(
          run,
          action === 'adopt'
            ? { kind: 'adopt', ...(snap.suspendedBy !== undefined ? { suspendedBy: snap.suspendedBy } : {}) }
            : {
                kind: 'recover',
                from: state,
                ...(snap.suspendedBy !== undefined ? { suspendedBy: snap.suspendedBy } : {}),
              },
        );
        return;
      }
    }
  }
}
