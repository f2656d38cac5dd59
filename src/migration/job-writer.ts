// The engine's only way to write a job's nodes: state changes are persisted at once (with any
// queued device updates in the same transaction); device updates and progress are coalesced, so
// devices finishing together cost about one write each. Failures are logged, never fatal: the
// devices and the domain still get recovered when XenStore is unreachable.
import type { XenStore, XsOps } from '../xenstore/types.js';
import type { Logger } from '../devices/types.js';
import { jobNode, jobPath } from './paths.js';

export interface DeviceUpdate {
  state?: string;
  reason?: string;
  progress?: string;
  policy?: string;
}

/** A batch of the job's nodes could not be written, retries included. */
export class JobWriteError extends Error {
  override readonly name = 'JobWriteError';
}

export class JobWriter {
  private readonly pendingDevices = new Map<string, DeviceUpdate>();
  /** Timeline nodes (relative paths): written with device updates, before the job's state. */
  private readonly pendingNotes = new Map<string, string>();
  private pendingProgress: string | undefined;
  private chain: Promise<void> = Promise.resolve();
  private flushScheduled = false;
  /** Device updates wait for the next job nodes and go with them in one transaction. */
  private together = false;
  /** Wire operations this writer sent (the engine's budget figure). */
  ops = 0;

  constructor(
    private readonly xs: XenStore,
    private readonly domid: number | string,
    private readonly log: Logger,
  ) {}

  /** Queues a device update; written with the next flush (coalesced). */
  device(type: string, devid: string, update: DeviceUpdate): void {
    const key = `${type}/${devid}`;
    this.pendingDevices.set(key, { ...this.pendingDevices.get(key), ...update });
    this.scheduleFlush();
  }

  /** Queues a write of a node relative to the job dir (timeline records); coalesced like devices. */
  note(rel: string, value: string): void {
    this.pendingNotes.set(rel, value);
    this.scheduleFlush();
  }

  progress(value: string): void {
    this.pendingProgress = value;
    this.scheduleFlush();
  }

  /**
   * From now on device updates are written only with the job's next nodes, in one transaction: a
   * directory the requester removed reappears whole (state included) or not at all.
   */
  writeTogether(): void {
    this.together = true;
  }
  /** Back to the usual batching (a new job of the domain). */
  writeSeparately(): void {
    this.together = false;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.together) return;
    this.flushScheduled = true;
    // After the current microtasks: updates of devices settling together share one batch.
    setImmediate(() => {
      this.flushScheduled = false;
      void this.enqueue({});
    });
  }

  /**
   * Persists `nodes` (relative to the job dir, or absolute; undefined value = remove) together with every queued
   * device update, in one transaction when there is more than one write. Resolves when written.
   */
  persist(nodes: Record<string, string | undefined>): Promise<void> {
    return this.enqueue(nodes).then(() => undefined);
  }

  /** As persist, but rejects (JobWriteError) when the nodes could not be written: a fact that must be on record. */
  async persistStrict(nodes: Record<string, string | undefined>): Promise<void> {
    if (!(await this.enqueue(nodes)))
      throw new JobWriteError(`job ${this.domid}: write failed after retries`);
  }

  /** Resolves when everything queued so far is written (held device updates included). */
  async flush(): Promise<void> {
    this.flushing = true;
    try {
      await this.enqueue({});
    } finally {
      this.flushing = false;
    }
  }
  private flushing = false;

  private enqueue(nodes: Record<string, string | undefined>): Promise<boolean> {
    const next = this.chain.then(() => this.writeBatch(nodes));
    this.chain = next.then(
      () => undefined,
      () => undefined,
    );
    return next;
  }

  /** Device and progress nodes: many, and need no atomicity with each other. */
  private collectDevices(): [string, string | undefined][] {
    const writes: [string, string | undefined][] = [];
    for (const [key, u] of this.pendingDevices) {
      const [type = '', devid = ''] = key.split('/');
      const base = jobNode.device(this.domid, type, devid);
      if (u.state !== undefined) writes.push([`${base}/state`, u.state]);
      if (u.reason !== undefined) writes.push([`${base}/reason`, u.reason]);
      if (u.progress !== undefined) writes.push([`${base}/progress`, u.progress]);
      if (u.policy !== undefined) writes.push([`${base}/policy`, u.policy]);
    }
    this.pendingDevices.clear();
    for (const [rel, value] of this.pendingNotes) writes.push([`${jobPath(this.domid)}/${rel}`, value]);
    this.pendingNotes.clear();
    if (this.pendingProgress !== undefined) {
      writes.push([jobNode.progress(this.domid), this.pendingProgress]);
      this.pendingProgress = undefined;
    }
    return writes;
  }

  /**
   * Retries of a failed batch (RETRIES + 1 attempts in all), and the base of their linear backoff
   * (capped at 1 s): about 5 s of a misbehaving xenstored before a write is given up.
   */
  static RETRIES = 8;
  static RETRY_DELAY_MS = 100;

  /** Writes one batch (retried); true when it all landed. */
  private async writeBatch(nodes: Record<string, string | undefined>, attempt = 0): Promise<boolean> {
    const jobWritesRetry = new Map<string, string | undefined>();
    // Held device updates wait for job nodes (flush() at the end of a run writes what is left).
    const deviceWrites =
      this.together && Object.keys(nodes).length === 0 && !this.flushing ? [] : this.collectDevices();
    const base = `/tool/devmigrate/jobs/${this.domid}`;
    // Keys are relative to the job's directory, or absolute (the agent's holding record).
    const full = (k: string): string => (k.startsWith('/') ? k : `${base}/${k}`);
    const jobWrites = Object.entries(nodes).map(([k, v]): [string, string | undefined] => [full(k), v]);
    if (deviceWrites.length === 0 && jobWrites.length === 0) return true;
    const one = (ops: XsOps, [path, value]: [string, string | undefined]): Promise<void> => {
      this.ops += 1;
      if (value !== undefined) return ops.write(path, value);
      return ops.rm(path).catch((err: unknown) => {
        if ((err as { errno?: string }).errno !== 'ENOENT') throw err;
      });
    };
    const pending: Promise<unknown>[] = [];
    const all = [...deviceWrites, ...jobWrites];
    if (this.together) {
      // A directory the requester removed reappears whole: every node in one transaction.
      const only = all[0];
      if (all.length === 1 && only !== undefined) pending.push(one(this.xs, only));
      else {
        this.ops += 2;
        pending.push(this.xs.transaction((tx) => Promise.all(all.map((w) => one(tx, w)))));
      }
    } else {
      // Device nodes go as plain pipelined writes (a transaction costs xenstored far more per
      // node); they are sent first on the one connection, so xenstored applies them before the
      // job nodes: a requester that sees state=done also sees every device synced. Job nodes
      // that must change together (state + error + recovered) go in one transaction.
      pending.push(...deviceWrites.map((w) => one(this.xs, w)));
      const w = jobWrites[0];
      if (jobWrites.length === 1 && w !== undefined) pending.push(one(this.xs, w));
      else if (jobWrites.length > 1) {
        this.ops += 2; // TRANSACTION_START + TRANSACTION_END
        pending.push(this.xs.transaction((tx) => Promise.all(jobWrites.map((w2) => one(tx, w2)))));
      }
    }
    const results = await Promise.allSettled(pending);
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length === 0) return true;
    // A transient failure (EAGAIN retries exhausted under a burst, a busy xenstored) must not
    // leave a job's state unwritten: a requester would wait for an answer that never comes.
    // Writes are idempotent (a value, or a removal), so the whole batch is simply sent again.
    if (attempt < JobWriter.RETRIES) {
      this.log.warn(
        `job ${this.domid}: ${failed.length} write(s) failed (${(failed[0]?.reason as Error).message}); retrying`,
      );
      await new Promise((r) => setTimeout(r, Math.min(1000, JobWriter.RETRY_DELAY_MS * (attempt + 1))));
      for (const [path, value] of deviceWrites) {
        const rel = path.slice(`${base}/`.length);
        jobWritesRetry.set(rel, value);
      }
      for (const [path, value] of jobWrites)
        jobWritesRetry.set(path.startsWith(`${base}/`) ? path.slice(`${base}/`.length) : path, value);
      return this.writeBatch(Object.fromEntries(jobWritesRetry), attempt + 1);
    }
    this.log.error(
      `job ${this.domid}: ${failed.length} of ${deviceWrites.length + jobWrites.length} write(s) failed: ${(failed[0]?.reason as Error).message}`,
    );
    return false;
  }
}
