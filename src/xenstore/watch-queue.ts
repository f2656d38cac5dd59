// One registered watch as both transports hand it out: events go to the onEvent callback and/or a
// queue read by async iteration; a dead connection fails iteration after the queued events. The
// transport owns registration and UNWATCH (WatchOwner); this class only queues and wakes.

import type { Watch, WatchEvent } from './types.js';

/** The client that registered a watch: close() hands the watch back to it for UNWATCH. */
export interface WatchOwner {
  unregister(w: QueuedWatch): Promise<void>;
}

export class QueuedWatch implements Watch {
  private readonly queue: WatchEvent[] = [];
  private waiter:
    { resolve: (r: IteratorResult<WatchEvent>) => void; reject: (e: Error) => void } | undefined;
  private error: Error | undefined;
  private closed = false;
  private iterating = false;

  constructor(
    private readonly owner: WatchOwner,
    readonly path: string,
    readonly token: string,
    private readonly onEvent: ((ev: WatchEvent) => void) | undefined,
    private readonly onError: ((err: Error) => void) | undefined,
  ) {}

  /** True when an event path is this watch's path or below it (special "@" paths: exact). */
  matches(eventPath: string): boolean {
    const p = this.path;
    if (eventPath === p) return true;
    if (p.startsWith('@')) return false;
    if (p === '/') return eventPath.startsWith('/');
    return eventPath.startsWith(p) && eventPath.charCodeAt(p.length) === 0x2f;
  }

  deliver(ev: WatchEvent): void {
    if (this.closed) return;
    if (this.onEvent) {
      try {
        this.onEvent(ev);
      } catch {
        // A throwing callback must not break the connection (or event loop) that serves every
        // other call and watch.
      }
      // Without a callback, events wait for iteration (the initial one arrives before the
      // caller can start iterating); with one, they are queued only while someone iterates.
      if (!this.iterating) return;
    }
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.resolve({ value: ev, done: false });
    } else {
      this.queue.push(ev);
    }
  }

  /** The connection died: iteration throws after the queued events; onError hears it once. */
  kill(err: Error): void {
    if (this.closed || this.error) return;
    this.error = err;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.reject(err);
    }
    try {
      this.onError?.(err);
    } catch {
      // Same reason as in deliver().
    }
  }

  /** Ends iteration locally (no UNWATCH): the client is closing or the server forgot it. */
  finish(): void {
    if (this.closed) return;
    this.closed = true;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.resolve({ value: undefined, done: true });
    }
    this.queue.length = 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.finish();
    await this.owner.unregister(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    this.iterating = true;
    return {
      next: (): Promise<IteratorResult<WatchEvent>> => {
        const ev = this.queue.shift();
        if (ev !== undefined) return Promise.resolve({ value: ev, done: false });
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        if (this.error) return Promise.reject(this.error);
        return new Promise((resolve, reject) => {
          this.waiter = { resolve, reject };
        });
      },
      return: async (): Promise<IteratorResult<WatchEvent>> => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }
}
