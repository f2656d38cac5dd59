// Specification of the limit semaphore: never more than the limit, normal work kept out of the
// reserved slots, critical waiters served first, aborted waiters leave the queue.
import { describe, expect, it } from 'vitest';
import { Semaphore } from '../../src/migration/semaphore.js';

describe('Semaphore', () => {
  it('bounds concurrency and records the peak', async () => {
    const s = new Semaphore(3);
    let running = 0;
    let max = 0;
    await Promise.all(
      Array.from({ length: 10 }, () =>
        s.run(async () => {
          running += 1;
          max = Math.max(max, running);
          await new Promise((r) => setTimeout(r, 5));
          running -= 1;
        }),
      ),
    );
    expect(max).toBe(3);
    expect(s.peak).toBe(3);
    expect(s.active).toBe(0);
  });

  it('keeps reserved slots for critical work and serves critical waiters first', async () => {
    const s = new Semaphore(2, 1);
    const r1 = await s.acquire('normal');
    let normalGot = false;
    const pNormal = s.acquire('normal').then((r) => {
      normalGot = true;
      return r;
    });
    const rc = await s.acquire('critical'); // the reserved slot
    expect(normalGot).toBe(false);
    const order: string[] = [];
    const pCrit = s.acquire('critical').then((r) => {
      order.push('critical');
      return r;
    });
    void pNormal.then(() => order.push('normal'));
    r1();
    await new Promise((r) => setTimeout(r, 1));
    expect(order).toEqual(['critical']);
    (await pCrit)();
    rc();
    (await pNormal)();
    expect(order).toEqual(['critical', 'normal']);
  });

  it('an aborted waiter rejects and leaves the queue', async () => {
    const s = new Semaphore(1);
    const r = await s.acquire();
    const ac = new AbortController();
    const p = s.acquire('normal', ac.signal);
    ac.abort(new Error('stop'));
    await expect(p).rejects.toThrow('stop');
    expect(s.waiting).toBe(0);
    r();
    expect(s.active).toBe(0);
  });

  it('release is idempotent', async () => {
    const s = new Semaphore(1);
    const r = await s.acquire();
    r();
    r();
    expect(s.active).toBe(0);
  });
});
