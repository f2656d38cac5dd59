// Who runs what, and when, in the simulated world: every actor (an agent generation, a guest,
// the requester) is an Owner; work posted for a dead owner never runs, which is how an agent
// "crashes" at any point. Unit tests use real timers; the fault model a virtual clock.

/** An actor of the simulated world. A dead owner's pending work is dropped, its calls hang. */
export interface Owner {
  readonly name: string;
  dead: boolean;
}

export function owner(name: string): Owner {
  return { name, dead: false };
}

export interface Dispatcher {
  /** Runs fn after delayMs (0 = as soon as possible, in posting order) on behalf of `who`. */
  post(who: Owner, delayMs: number, fn: () => void): void;
  /** The world's clock, epoch ms. */
  now(): number;
}

/** Real timers: for unit tests that drive the world in real time. */
export const realDispatcher: Dispatcher = {
  post(who, delayMs, fn) {
    const run = (): void => {
      if (!who.dead) fn();
    };
    if (delayMs <= 0) queueMicrotask(run);
    else setTimeout(run, delayMs);
  },
  now: () => Date.now(),
};

/** A promise that never settles: what a call of a dead actor returns. */
export function never<T>(): Promise<T> {
  return new Promise<T>(() => undefined);
}
