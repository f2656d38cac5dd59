// One shared XenStore watch on @releaseDomain per DomainControl. xenstored fires it when any
// domain dies or shuts down (a suspend included); listeners then ask the hypervisor what changed.
import type { Watch, XenStore } from '../xenstore/types.js';

export type ReleaseListener = (err?: Error) => void;

export class ReleaseWatch {
  private watch: Watch | undefined;
  private starting: Promise<void> | undefined;
  private readonly listeners = new Set<ReleaseListener>();
  private closed = false;

  constructor(private readonly xs: XenStore) {}

  /** Registers the watch if needed; resolves once xenstored has acknowledged it. */
  async ensure(): Promise<void> {
    if (this.closed) throw new Error('release watch closed');
    if (this.watch !== undefined) return;
    this.starting ??= this.xs
      .watch('@releaseDomain', {
        onEvent: () => this.fire(),
        onError: (err) => {
          this.watch = undefined;
          this.starting = undefined;
          this.fire(err);
        },
      })
      .then(
        (w) => {
          this.watch = w;
        },
        (err: unknown) => {
          this.starting = undefined;
          throw err;
        },
      );
    await this.starting;
  }

  /** Adds a listener (called on every event, or once with the error when the watch dies). */
  listen(fn: ReleaseListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private fire(err?: Error): void {
    for (const fn of [...this.listeners]) fn(err);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.listeners.clear();
    const w = this.watch;
    this.watch = undefined;
    if (w !== undefined) await w.close().catch(() => undefined);
  }
}

/**
 * Runs an async check now and again after every trigger, never two at once: triggers that
 * arrive while a check runs collapse into one re-run. Watches fire in bursts and spuriously.
 */
export function coalesced(check: () => Promise<void>, onError: (err: unknown) => void): () => void {
  let running = false;
  let again = false;
  const run = (): void => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    again = false;
    check()
      .catch(onError)
      .finally(() => {
        running = false;
        if (again) run();
      });
  };
  return run;
}
