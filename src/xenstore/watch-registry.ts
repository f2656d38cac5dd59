// The watches of one client by token, as both transports keep them: several paths may share a
// token, so an event goes to the watches of its token whose path covers it. Also the default
// token generator, so tokens stay unique across every client of this process.

import { XenStoreDisconnectedError, isXsErrno } from './errors.js';
import type { WatchEvent } from './types.js';
import type { QueuedWatch } from './watch-queue.js';

let tokenCounter = 0;

/** A token unique in this process: `${prefix}${pid}-${n}` (prefix tells the transports apart). */
export function nextWatchToken(prefix: string): string {
  return `${prefix}${process.pid}-${++tokenCounter}`;
}

/**
 * For UNWATCH's catch: a watch already gone (ENOENT) or a connection dropped meanwhile leaves
 * the watch dead either way, so those are swallowed; anything else is rethrown.
 */
export function ignoreWatchGone(err: unknown): void {
  if (isXsErrno(err, 'ENOENT') || err instanceof XenStoreDisconnectedError) return;
  throw err;
}

export class WatchRegistry {
  /** token -> watches with that token. */
  private readonly byToken = new Map<string, QueuedWatch[]>();

  /**
   * Adds w, then sends WATCH; takes w out again when that fails. Added first because the
   * initial event can arrive before the ack (in the same chunk, or from the reader thread).
   */
  async register(w: QueuedWatch, sendWatch: () => Promise<void>): Promise<void> {
    const list = this.byToken.get(w.token);
    if (list) list.push(w);
    else this.byToken.set(w.token, [w]);
    try {
      await sendWatch();
    } catch (err) {
      this.forget(w);
      throw err;
    }
  }

  /** Takes w out; true when it was registered (the server then still holds its watch). */
  release(w: QueuedWatch): boolean {
    const wasRegistered = this.byToken.get(w.token)?.includes(w) ?? false;
    this.forget(w);
    return wasRegistered;
  }

  private forget(w: QueuedWatch): void {
    const list = this.byToken.get(w.token);
    if (!list) return;
    const i = list.indexOf(w);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.byToken.delete(w.token);
  }

  /** Delivers one event. An unknown token (late event after unwatch, a wake-up watch) is dropped. */
  route(path: string, token: string): void {
    const list = this.byToken.get(token);
    if (list === undefined) return;
    const ev: WatchEvent = { path, token };
    if (list.length === 1) list[0]?.deliver(ev);
    else for (const w of list) if (w.matches(path)) w.deliver(ev);
  }

  /** Empties the registry and returns what it held (to finish() or kill() them). */
  takeAll(): QueuedWatch[] {
    const all = [...this.byToken.values()].flat();
    this.byToken.clear();
    return all;
  }
}
