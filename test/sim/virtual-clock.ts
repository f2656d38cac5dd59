// Virtual time for the fault model: setTimeout/setInterval/setImmediate, Date.now and
// performance.now are replaced by a deterministic queue ordered by (time, posting order), and
// every timer belongs to the owner whose task created it. A task of a dead owner never runs,
// so an agent generation that "crashes" stops exactly where it stood. Microtasks still run for
// real between tasks (one real macrotask hop each), so async code behaves as in production.
import type { Dispatcher, Owner } from './dispatch.js';

interface Task {
  at: number;
  seq: number;
  who: Owner;
  fn: () => void;
  cancelled: boolean;
}

/** What the patched timer functions return; enough of Node's Timeout for the code under test. */
class VirtualTimer {
  constructor(readonly task: { cancelled: boolean }) {}
  ref(): this {
    return this;
  }
  unref(): this {
    return this;
  }
  hasRef(): boolean {
    return true;
  }
  refresh(): this {
    return this;
  }
  close(): this {
    this.task.cancelled = true;
    return this;
  }
  [Symbol.toPrimitive](): number {
    return 0;
  }
}

const real = {
  setTimeout: globalThis.setTimeout,
  clearTimeout: globalThis.clearTimeout,
  setInterval: globalThis.setInterval,
  clearInterval: globalThis.clearInterval,
  setImmediate: globalThis.setImmediate,
  clearImmediate: globalThis.clearImmediate,
  dateNow: Date.now,
  perfNow: performance.now.bind(performance),
  random: Math.random,
};

/** Lets every pending microtask (and nextTick) run: one real macrotask hop. */
export function drainMicrotasks(): Promise<void> {
  return new Promise((r) => real.setImmediate(r));
}

export class VirtualClock implements Dispatcher {
  private heap: Task[] = [];
  private seq = 0;
  private nowMs: number;
  private readonly epoch: number;
  /** The owner of the task now running (and of everything it starts); the world otherwise. */
  current: Owner;
  /** Tasks run so far. */
  steps = 0;

  constructor(
    private readonly world: Owner,
    startMs = 1_800_000_000_000,
  ) {
    this.nowMs = startMs;
    this.epoch = startMs;
    this.current = world;
  }

  now(): number {
    return this.nowMs;
  }

  post(who: Owner, delayMs: number, fn: () => void): { cancelled: boolean } {
    const t: Task = {
      at: this.nowMs + Math.max(0, Number.isFinite(delayMs) ? delayMs : 0),
      seq: this.seq++,
      who,
      fn,
      cancelled: false,
    };
    this.push(t);
    return t;
  }

  /** Replaces the global timers, clocks and Math.random (seeded) until uninstall(). */
  install(random: () => number): void {
    const g = globalThis as unknown as Record<string, unknown>;
    g.setTimeout = (fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) =>
      new VirtualTimer(this.post(this.current, ms ?? 0, () => fn(...args)));
    g.setInterval = (fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => {
      const who = this.current;
      const every = Math.max(1, ms ?? 1);
      const handle = { cancelled: false };
      const tick = (): void => {
        if (handle.cancelled) return;
        this.post(who, every, tick);
        fn(...args);
      };
      this.post(who, every, tick);
      return new VirtualTimer(handle);
    };
    g.setImmediate = (fn: (...a: unknown[]) => void, ...args: unknown[]) =>
      new VirtualTimer(this.post(this.current, 0, () => fn(...args)));
    const clear = (t: unknown): void => {
      if (t instanceof VirtualTimer) t.task.cancelled = true;
    };
    g.clearTimeout = clear;
    g.clearInterval = clear;
    g.clearImmediate = clear;
    Date.now = () => Math.floor(this.nowMs);
    performance.now = () => this.nowMs - this.epoch;
    Math.random = random;
  }

  uninstall(): void {
    const g = globalThis as unknown as Record<string, unknown>;
    g.setTimeout = real.setTimeout;
    g.clearTimeout = real.clearTimeout;
    g.setInterval = real.setInterval;
    g.clearInterval = real.clearInterval;
    g.setImmediate = real.setImmediate;
    g.clearImmediate = real.clearImmediate;
    Date.now = real.dateNow;
    performance.now = real.perfNow;
    Math.random = real.random;
  }

  /**
   * Runs tasks in order until `done()` holds (checked between tasks), no live task is left, or
   * virtual time would pass `untilMs`. Microtasks run for real after each task.
   */
  async run(done: () => boolean, untilMs: number): Promise<'done' | 'idle' | 'limit'> {
    for (;;) {
      await drainMicrotasks();
      this.current = this.world;
      if (done()) return 'done';
      const t = this.pop();
      if (t === undefined) return 'idle';
      if (t.at > untilMs) {
        this.push(t);
        this.nowMs = Math.max(this.nowMs, untilMs);
        return 'limit';
      }
      this.nowMs = Math.max(this.nowMs, t.at);
      this.current = t.who;
      this.steps += 1;
      t.fn();
    }
  }

  /** Live tasks still queued (dead owners' and cancelled ones are dropped lazily). */
  get pending(): number {
    return this.heap.filter((t) => !t.cancelled && !t.who.dead).length;
  }

  // ---- a binary heap by (at, seq) ----
  private less(a: Task, b: Task): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }
  private push(t: Task): void {
    const h = this.heap;
    h.push(t);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const hp = h[p] as Task;
      if (!this.less(t, hp)) break;
      h[i] = hp;
      i = p;
    }
    h[i] = t;
  }
  private pop(): Task | undefined {
    for (;;) {
      const h = this.heap;
      const top = h[0];
      if (top === undefined) return undefined;
      const last = h.pop() as Task;
      if (h.length > 0) {
        let i = 0;
        for (;;) {
          const l = 2 * i + 1;
          const r = l + 1;
          let m = i;
          const cur = (j: number): Task => (j === i ? last : (h[j] as Task));
          if (l < h.length && this.less(h[l] as Task, cur(m))) m = l;
          if (r < h.length && this.less(h[r] as Task, cur(m))) m = r;
          if (m === i) break;
          h[i] = h[m] as Task;
          i = m;
        }
        h[i] = last;
      }
      if (!top.cancelled && !top.who.dead) return top;
    }
  }
}

/** A small, fast, seeded PRNG (mulberry32): the same seed gives the same schedule. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
