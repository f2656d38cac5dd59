// The mirror method for QEMU-served (qdisk) disks: the guest's own QEMU mirrors the disk to a
// qemu-nbd export on the destination until READY (pre-suspend), a soft cancel of the READY job
// leaves the target a consistent copy (post-suspend), sync sees the export stop; recover undoes.
import { performance } from 'node:perf_hooks';
import type { MirrorConfig } from '../config/schema.js';
import { destinationVerdict, probeDestination } from './destination.js';
import {
  findBlockJob,
  findBlockNode,
  jobPhase,
  mirrorArgs,
  mirrorNames,
  nbdNodeArgs,
  qmpSocketPath,
  sourceNodeProblem,
  xenBlockNodeName,
  type MirrorFormat,
  type MirrorNames,
} from './mirror-plan.js';
import { NbdExport } from './nbd-export.js';
import { QmpCommandError, type QmpClient } from './qmp-client.js';
import { withQmp, type QmpEndpoint } from './qmp-endpoint.js';
import { libxlQmpLockPath } from './qmp-lock.js';
import { runRemote, type RemoteShell } from './remote-shell.js';
import { DeviceOpError, type DeviceMigrator, type OpContext, type Phase, type TestOutcome } from './types.js';

const SAFE_PATH = /^\/[A-Za-z0-9_.+@%=,:/-]{0,1023}$/;

export interface MirrorDisk {
  domid: number;
  devid: string;
  /** Validated domain uuid (libxl's lock file is named after it), if one could be trusted. */
  domainUuid: string | undefined;
  path: string;
  vdev: string;
  format: MirrorFormat;
  /** Bytes the image occupies at the source (the destination needs at least that much room). */
  allocatedBytes: number;
}

export interface MirrorTiming {
  /** One operation's bound (the engine's device timeout). */
  deviceTimeoutMs: number;
  /** Bound on the export's whole life: pre-suspend + post-suspend + sync. */
  exportLifetimeMs: number;
  killGraceMs: number;
  /** How often the job is polled while it copies (short connections, libxl's lock each time). */
  pollMs?: number;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

function oneLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ').slice(0, 300);
}

export class MirrorDiskMigrator implements DeviceMigrator {
  readonly policy = 'copy:mirror';
  private readonly names: MirrorNames;
  private readonly sourceNode: string;
  private virtualSize = 0;
  private exp: NbdExport | undefined;
  /** True once blockdev-mirror was accepted (recover must cancel it). */
  private started = false;
  /** True once we ended the READY job ourselves (a concluded job is then success). */
  private endedByUs = false;
  private readyAt: { offset: number; len: number } | undefined;

  constructor(
    private readonly disk: MirrorDisk,
    private readonly cfg: MirrorConfig,
    private readonly timing: MirrorTiming,
  ) {
    this.names = mirrorNames(disk.domid, disk.devid, cfg);
    this.sourceNode = xenBlockNodeName(disk.vdev, disk.format);
  }

  private endpoint(): QmpEndpoint {
    const lockPath =
      this.cfg.qmpLockDir === '' || this.disk.domainUuid === undefined
        ? undefined
        : libxlQmpLockPath(this.cfg.qmpLockDir, this.disk.domid, this.disk.domainUuid);
    return {
      socketPath: qmpSocketPath(this.cfg, this.disk.domid),
      lockPath,
      timeoutMs: this.cfg.qmpTimeoutMs,
    };
  }

  private shell(ctx: OpContext): RemoteShell {
    return { rsh: this.cfg.rsh, host: ctx.job.target, killGraceMs: this.timing.killGraceMs };
  }

  destPath(): string {
    const root = this.cfg.remoteRoot;
    return root === '/' ? this.disk.path : `${root.replace(/\/$/, '')}${this.disk.path}`;
  }

  private bounds(ctx: OpContext): { timeoutMs: number; signal: AbortSignal; log: OpContext['log'] } {
    return { timeoutMs: this.cfg.qmpTimeoutMs, signal: ctx.signal, log: ctx.log };
  }

  async test(ctx: OpContext): Promise<TestOutcome> {
    const { path, domainUuid } = this.disk;
    if (!SAFE_PATH.test(path) || !SAFE_PATH.test(this.destPath())) {
      return { ok: false, reason: `disk path ${path} has unsafe characters` };
    }
    if (this.cfg.qmpLockDir !== '' && domainUuid === undefined) {
      return {
        ok: false,
        reason: `no trustworthy uuid for domain ${this.disk.domid} (libxl's QMP lock is named after it)`,
      };
    }
    // The source side: the node xen-block made for this disk, and no leftover of ours on it.
    let node;
    try {
      node = await withQmp(
        this.endpoint(),
        async (qmp) => {
          const nodes = await qmp.execute('query-named-block-nodes', { flat: true }, this.cfg.qmpTimeoutMs);
          const jobs = await qmp.execute('query-block-jobs', undefined, this.cfg.qmpTimeoutMs);
          return {
            node: findBlockNode(nodes, this.sourceNode),
            leftover: findBlockJob(jobs, this.names.jobId) ?? findBlockNode(nodes, this.names.targetNode),
          };
        },
        ctx.signal,
      );
    } catch (err) {
      return { ok: false, reason: `mirror: cannot query the guest's QEMU: ${oneLine(err)}` };
    }
    const problem = sourceNodeProblem(node.node, {
      nodeName: this.sourceNode,
      path,
      format: this.disk.format,
    });
    if (problem !== undefined) return { ok: false, reason: `mirror: ${problem}` };
    if (node.leftover !== undefined) {
      return {
        ok: false,
        reason: `mirror: ${this.names.jobId} or ${this.names.targetNode} already exists on the source QEMU (another migration, or a leftover)`,
      };
    }
    this.virtualSize = node.node?.virtualSize ?? 0;
    // The destination side: tools, no file at the path (unless reused), room for the image.
    const shell = this.shell(ctx);
    try {
      const nbd = await runRemote(shell, [this.cfg.qemuNbd, '--version'], this.bounds(ctx));
      if (nbd.code !== 0)
        return { ok: false, reason: `mirror: ${this.cfg.qemuNbd} does not run on ${ctx.job.target}` };
      const state = await probeDestination(shell, this.destPath(), this.bounds(ctx));
      const v = destinationVerdict(state, {
        path: this.destPath(),
        host: ctx.job.target,
        needBytes: this.disk.allocatedBytes,
        reuse: this.cfg.reuseExisting,
        reuseKey: 'disks.mirror.reuseExisting',
      });
      if (!v.ok) return v;
      const note = `mirror ${this.virtualSize} bytes (${this.disk.format}, node ${this.sourceNode}) over NBD to ${ctx.job.target}:${this.destPath()}`;
      return { ok: true, note: v.note !== undefined ? `${note}; ${v.note}` : note };
    } catch (err) {
      return { ok: false, reason: `mirror: destination check failed: ${oneLine(err)}` };
    }
  }

  async preSuspend(ctx: OpContext): Promise<void> {
    if (this.virtualSize <= 0) throw new DeviceOpError('mirror: pre-suspend without a test phase');
    const exp = new NbdExport({
      shell: this.shell(ctx),
      cfg: this.cfg,
      names: this.names,
      destPath: this.destPath(),
      format: this.disk.format,
      sizeBytes: this.virtualSize,
      lifetimeMs: this.timing.exportLifetimeMs,
      cache: this.cfg.targetCache,
    });
    this.exp = exp;
    try {
      await exp.prepare({ ...this.bounds(ctx), reuse: this.cfg.reuseExisting });
      await exp.start(ctx.log, this.timing.killGraceMs);
      try {
        await withQmp(this.endpoint(), (qmp) => this.startMirror(qmp, exp, ctx), ctx.signal);
      } catch (err) {
        if (!exp.refusedDirectIo) throw err;
        // Still nothing copied and the guest running: serve through the page cache instead.
        ctx.log.warn(
          `${ctx.job.target}:${this.destPath()}: the destination's filesystem refuses O_DIRECT (qemu-nbd --cache=none); serving the target with --cache=writeback: the flush when the job ends, in the guest's downtime, then grows with what the destination's page cache holds`,
        );
        exp.spec.cache = 'writeback';
        await exp.start(ctx.log, this.timing.killGraceMs);
        await withQmp(this.endpoint(), (qmp) => this.startMirror(qmp, exp, ctx), ctx.signal);
      }
      await exp.notePid(this.bounds(ctx));
    } catch (err) {
      throw err instanceof DeviceOpError
        ? err
        : new DeviceOpError(`mirror start failed: ${oneLine(err)}`, { cause: err });
    }
    ctx.log.info(`mirror ${this.names.jobId} of ${this.disk.path} started to ${ctx.job.target}`);
    await this.waitReady(ctx, exp);
    await this.flushTarget(ctx);
  }

  /**
   * qemu-nbd writes the target through the destination's page cache: what the bulk copy left
   * dirty there would otherwise be written back when the export stops, inside the guest's
   * downtime (measured: that part grew with the disk's size). Flushed now, while the guest runs,
   * only the writes after this point are left for the suspended part. Not needed for
   * correctness (the export's exit flushes): a failure is logged, not fatal.
   */
  private async flushTarget(ctx: OpContext): Promise<void> {
    const t0 = performance.now();
    try {
      const r = await runRemote(this.shell(ctx), ['sync', this.destPath()], {
        ...this.bounds(ctx),
        timeoutMs: Math.max(this.cfg.qmpTimeoutMs, 120_000),
      });
      const ms = (performance.now() - t0).toFixed(0);
      if (r.code === 0)
        ctx.log.debug(`mirror target ${this.destPath()} flushed before the suspend in ${ms} ms`);
      else
        ctx.log.warn(
          `mirror target flush before the suspend failed (exit ${r.code}); the export's exit flushes it`,
        );
    } catch (err) {
      if (ctx.signal.aborted) throw err;
      ctx.log.warn(
        `mirror target flush before the suspend failed: ${oneLine(err)}; the export's exit flushes it`,
      );
    }
  }

  /** Adds the NBD node (retrying until the export answers) and starts the job. */
  private async startMirror(qmp: QmpClient, exp: NbdExport, ctx: OpContext): Promise<void> {
    const deadline = Date.now() + this.cfg.qmpTimeoutMs;
    for (let attempt = 1; ; attempt += 1) {
      try {
        await qmp.execute('blockdev-add', nbdNodeArgs(this.names), this.cfg.qmpTimeoutMs);
        break;
      } catch (err) {
        // The forward or qemu-nbd may not listen yet: "Failed to connect", "Failed to read initial magic".
        if (!(err instanceof QmpCommandError)) throw err;
        if (!exp.running) {
          throw new DeviceOpError(`the destination export ended: ${exp.ended?.tail.at(-1) ?? 'no output'}`);
        }
        if (Date.now() >= deadline || ctx.signal.aborted) {
          throw new DeviceOpError(
            `the destination export did not answer within ${this.cfg.qmpTimeoutMs} ms: ${err.desc}`,
          );
        }
        await sleep(Math.min(50 * attempt, 250), ctx.signal);
      }
    }
    try {
      await qmp.execute(
        'blockdev-mirror',
        mirrorArgs(this.names, this.sourceNode, this.cfg.copyMode, this.cfg.bandwidthBytesPerSec),
        this.cfg.qmpTimeoutMs,
      );
      this.started = true;
    } catch (err) {
      await qmp
        .execute('blockdev-del', { 'node-name': this.names.targetNode }, this.cfg.qmpTimeoutMs)
        .catch(() => undefined);
      throw err;
    }
  }

  /** Polls the job (short connections) until READY; every failure and the device timeout end it. */
  private async waitReady(ctx: OpContext, exp: NbdExport): Promise<void> {
    const pollMs = this.timing.pollMs ?? 250;
    for (;;) {
      if (ctx.signal.aborted) throw new DeviceOpError('mirror aborted before it was in sync');
      if (!exp.running)
        throw new DeviceOpError(`the destination export ended: ${exp.ended?.tail.at(-1) ?? 'no output'}`);
      let phase;
      try {
        phase = await withQmp(
          this.endpoint(),
          async (qmp) =>
            jobPhase(
              findBlockJob(
                await qmp.execute('query-block-jobs', undefined, this.cfg.qmpTimeoutMs),
                this.names.jobId,
              ),
              false,
            ),
          ctx.signal,
        );
      } catch (err) {
        throw new DeviceOpError(`mirror: cannot query the job: ${oneLine(err)}`, { cause: err });
      }
      if (phase.kind === 'failed' || phase.kind === 'completed')
        throw new DeviceOpError(phase.kind === 'failed' ? phase.why : 'mirror ended early');
      // QEMU's len is an estimate that grows with the guest's writes: report in disk bytes.
      const size = this.virtualSize;
      if (phase.len > 0)
        ctx.progress(Math.floor((Math.min(phase.offset, phase.len) / phase.len) * size), size);
      if (phase.kind === 'ready') {
        this.readyAt = { offset: phase.offset, len: phase.len };
        ctx.log.info(`mirror ${this.names.jobId} is in sync (${phase.len} bytes)`);
        return;
      }
      await sleep(pollMs, ctx.signal);
    }
  }

  /**
   * Guest suspended: the job must still be READY; a soft block-job-cancel of a READY mirror
   * completes it (BLOCK_JOB_COMPLETED) leaving the target a point-in-time copy; then our NBD node
   * goes, which makes qemu-nbd flush and exit. One QMP exchange.
   */
  async postSuspend(ctx: OpContext): Promise<void> {
    if (!this.started || this.readyAt === undefined)
      throw new DeviceOpError('mirror: post-suspend before the mirror was in sync');
    const t = this.cfg.qmpTimeoutMs;
    // Each step's time goes to the debug log: this is the guest's downtime.
    const t0 = performance.now();
    const marks: string[] = [];
    const mark = (what: string): void => {
      marks.push(`${what} ${(performance.now() - t0).toFixed(1)}`);
    };
    try {
      await withQmp(
        this.endpoint(),
        async (qmp) => {
          mark('connected');
          const before = jobPhase(
            findBlockJob(await qmp.execute('query-block-jobs', undefined, t), this.names.jobId),
            false,
          );
          if (before.kind !== 'ready') {
            throw new DeviceOpError(
              before.kind === 'failed' ? before.why : 'mirror fell out of sync before the suspend',
            );
          }
          this.endedByUs = true;
          await qmp.execute('block-job-cancel', { device: this.names.jobId }, t);
          mark('cancel');
          await this.awaitConcluded(qmp, ctx);
          mark('concluded');
          await qmp.execute('job-dismiss', { id: this.names.jobId }, t);
          this.started = false;
          await qmp.execute('blockdev-del', { 'node-name': this.names.targetNode }, t);
          mark('node-removed');
        },
        ctx.signal,
      );
      mark('disconnected');
      ctx.log.debug(`mirror ${this.names.jobId} ended (ms since post-suspend began: ${marks.join(', ')})`);
    } catch (err) {
      throw err instanceof DeviceOpError
        ? err
        : new DeviceOpError(`mirror completion failed: ${oneLine(err)}`, { cause: err });
    }
    ctx.progress(this.virtualSize, this.virtualSize);
  }

  /** The job's end: JOB_STATUS_CHANGE events on this connection, checked against the job's entry. */
  private async awaitConcluded(qmp: QmpClient, ctx: OpContext): Promise<void> {
    const t = this.cfg.qmpTimeoutMs;
    const deadline = Date.now() + this.timing.deviceTimeoutMs;
    for (;;) {
      const job = findBlockJob(await qmp.execute('query-block-jobs', undefined, t), this.names.jobId);
      const phase = jobPhase(job, true);
      if (phase.kind === 'failed') throw new DeviceOpError(phase.why);
      if (phase.kind === 'completed') return;
      if (Date.now() >= deadline || ctx.signal.aborted)
        throw new DeviceOpError('mirror did not conclude after the cancel');
      await qmp
        .waitForEvent(
          (e) =>
            e.event === 'JOB_STATUS_CHANGE' &&
            e.data['id'] === this.names.jobId &&
            e.data['status'] === 'concluded',
          Math.min(1000, Math.max(1, deadline - Date.now())),
          'job conclusion',
        )
        .catch(() => undefined);
    }
  }

  /** Still suspended: the export must have stopped by itself with status 0 (flushed, closed). */
  async sync(ctx: OpContext): Promise<void> {
    const exp = this.exp;
    if (exp === undefined) throw new DeviceOpError('mirror: sync without an export');
    const t0 = performance.now();
    await exp.awaitStopped({ timeoutMs: this.timing.deviceTimeoutMs, signal: ctx.signal, log: ctx.log });
    ctx.log.debug(
      `mirror ${this.names.jobId}: export stopped ${(performance.now() - t0).toFixed(1)} ms into sync`,
    );
    ctx.log.info(
      `mirror of ${this.disk.path} complete at ${ctx.job.target}:${this.destPath()}; export stopped`,
    );
  }

  /**
   * Undo, whatever ran: cancel our job (force: no waiting for a final sync), remove our node,
   * stop the export on both hosts, remove the image we created. Works from names alone for the
   * source side (a fresh agent after a crash); the destination side needs this instance's memory.
   */
  async recover(ctx: OpContext, lastPhase: Phase): Promise<void> {
    const t = this.cfg.qmpTimeoutMs;
    const problems: string[] = [];
    const leftSuspended = lastPhase === 'postSuspend' || lastPhase === 'sync';
    try {
      await withQmp(this.endpoint(), async (qmp) => {
        const job = findBlockJob(await qmp.execute('query-block-jobs', undefined, t), this.names.jobId);
        if (job !== undefined) {
          if (job.status !== 'concluded' && job.status !== 'null') {
            await qmp
              .execute('block-job-cancel', { device: this.names.jobId, force: true }, t)
              .catch(() => undefined);
            const deadline = Date.now() + t;
            for (;;) {
              const j = findBlockJob(await qmp.execute('query-block-jobs', undefined, t), this.names.jobId);
              if (j === undefined || j.status === 'concluded' || j.status === 'null') break;
              if (Date.now() >= deadline)
                throw new DeviceOpError(`mirror job still ${j.status} after a forced cancel`);
              await sleep(50);
            }
          }
          await qmp.execute('job-dismiss', { id: this.names.jobId }, t).catch(() => undefined);
        }
        const nodes = await qmp.execute('query-named-block-nodes', { flat: true }, t);
        if (findBlockNode(nodes, this.names.targetNode) !== undefined) {
          await qmp.execute('blockdev-del', { 'node-name': this.names.targetNode }, t);
        }
      });
    } catch (err) {
      problems.push(`source QEMU: ${oneLine(err)}`);
    }
    this.started = false;
    const exp = this.exp;
    if (exp !== undefined) {
      const b = { timeoutMs: t, log: ctx.log };
      await exp.stop(b);
      try {
        await exp.removeImage(b);
      } catch (err) {
        problems.push(`destination image: ${oneLine(err)}`);
      }
    }
    ctx.log.info(
      `mirror of ${this.disk.path} undone after ${lastPhase}${leftSuspended ? ' (guest suspended)' : ''}; the source image is unchanged`,
    );
    if (problems.length > 0) throw new DeviceOpError(`mirror recover: ${problems.join('; ')}`);
  }
}
