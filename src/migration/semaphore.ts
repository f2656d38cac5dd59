// A small counting semaphore with two priorities: downtime-critical work (post-suspend, sync,
// recover) may use every slot, normal work only up to limit - reserved, and critical waiters
// are served first. Bounded waits are the caller's business (acquire takes an AbortSignal).

export type Priority = 'normal' | 'critical';

interface Waiter {
  priority: Priority;
  resolve: (release: () => void) => void;
  reject: (err: unknown) => void;
}

export class Semaphore {
  private inUse = 0;
  private readonly waiters: Waiter[] = [];
  private peakInUse = 0;
  private max: number;
  private reserve: number;

  constructor(limit: number, reserved = 0) {
    Semaphore.check(limit, reserved);
    this.max = limit;
    this.reserve = reserved;
  }

  private static check(limit: number, reserved: number): void {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError('limit must be >= 1');
    if (reserved < 0 || reserved >= limit) throw new RangeError('reserved must be in [0, limit)');
  }

  get limit(): number {
    return this.max;
  }
  get reserved(): number {
    return this.reserve;
  }

  /**
   * New sizes for acquisitions from now on (config reload). Slots already held are kept: after a
   * shrink, in-use may stay above the limit until they are released; a growth wakes waiters.
   */
  resize(limit: number, reserved = Math.min(this.reserve, limit - 1)): void {
    Semaphore.check(limit, reserved);
    this.max = limit;
    this.reserve = reserved;
    this.pump();
  }

  get active(): number {
    return this.inUse;
  }
  get waiting(): number {
    return this.waiters.length;
  }
  get peak(): number {
    return this.peakInUse;
  }

  private canTake(p: Priority): boolean {
    return this.inUse < (p === 'critical' ? this.limit : this.limit - this.reserved);
  }

  private grant(): () => void {
    this.inUse += 1;
    this.peakInUse = Math.max(this.peakInUse, this.inUse);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inUse -= 1;
      this.pump();
    };
  }

  private pump(): void {
    while (this.waiters.length > 0) {
      const idx = this.waiters.findIndex((w) => w.priority === 'critical');
      const i = idx >= 0 ? idx : 0;
      const w = this.waiters[i];
      if (w === undefined || !this.canTake(w.priority)) return;
      this.waiters.splice(i, 1);
      w.resolve(this.grant());
    }
  }

  /** Resolves with a release function (idempotent). Rejects with the signal's reason if aborted first. */
  acquire(priority: Priority = 'normal', signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const hasCriticalWaiter = this.waiters.some((w) => w.priority === 'critical');
    if (this.canTake(priority) && (priority === 'critical' || !hasCriticalWaiter)) {
      return Promise.resolve(this.grant());
    }
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        priority,
        resolve: (rel) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(rel);
        },
        reject,
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(w);
    });
  }

  async run<T>(fn: () => Promise<T>, priority: Priority = 'normal', signal?: AbortSignal): Promise<T> {
    const release = await this.acquire(priority, signal);
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
