// Capped exponential backoff with full jitter, for reconnecting to xenstored: many agents (or one
// agent and many tools) must not hammer a restarting daemon in lockstep. Pure; time is injected.

export interface BackoffOptions {
  /** First delay's upper bound, ms. Default 100. */
  baseMs?: number;
  /** Upper bound of any delay, ms. Default 5000. */
  capMs?: number;
  /** Source of randomness in [0, 1); default Math.random. */
  random?: () => number;
}

export class Backoff {
  private attempt = 0;
  private readonly baseMs: number;
  private readonly capMs: number;
  private readonly random: () => number;

  constructor(opts: BackoffOptions = {}) {
    this.baseMs = opts.baseMs ?? 100;
    this.capMs = opts.capMs ?? 5000;
    this.random = opts.random ?? Math.random;
  }

  /** Attempts made since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** Delay before the next attempt: uniform in [ceiling/2, ceiling], ceiling = min(cap, base*2^n). */
  next(): number {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    // "Equal jitter": never zero (no instant retry storm), never above the cap.
    return Math.round(ceiling / 2 + this.random() * (ceiling / 2));
  }

  reset(): void {
    this.attempt = 0;
  }
}

/** Resolves after ms unless the signal aborts first (then resolves early: the caller checks). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
