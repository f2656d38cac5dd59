// The requester's next step for a steps-mode job, and the wait of a `done` job for recover/abort:
// a step that arrives before the job waits is kept (no race with a fast requester), the same step
// written twice is taken once, and an abort or a detach ends the wait without a step.
import type { Control, Step } from './state-machine.js';

export class ControlMailbox {
  private pending: Step | undefined;
  private waiter: ((s: Step | undefined) => void) | undefined;
  private last: Control | undefined;

  /** False when `value` repeats the last step taken (written twice, or seen twice). */
  isNew(value: Control): boolean {
    return value !== this.last || value === 'abort' || value === 'recover';
  }

  /** A step the requester wrote: handed to the waiting job, or kept for its next wait. */
  offer(step: Step): void {
    this.last = step;
    const w = this.waiter;
    if (w === undefined) {
      this.pending = step;
      return;
    }
    this.waiter = undefined;
    w(step);
  }

  /**
   * The next step: a kept one at once, else the next offered. undefined when woken (abort,
   * detach), or after idleMs (onIdle runs first); no idleMs waits without bound.
   */
  next(idleMs?: number, onIdle?: () => void): Promise<Step | undefined> {
    const kept = this.pending;
    if (kept !== undefined) {
      this.pending = undefined;
      return Promise.resolve(kept);
    }
    return new Promise((resolve) => {
      const timer =
        idleMs === undefined
          ? undefined
          : setTimeout(() => {
              this.waiter = undefined;
              onIdle?.();
              resolve(undefined);
            }, idleMs);
      this.waiter = (s) => {
        clearTimeout(timer);
        resolve(s);
      };
    });
  }

  /** Ends a wait without a step. */
  wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.(undefined);
  }
}
