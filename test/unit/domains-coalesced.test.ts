// Specifies the re-check scheduler behind every wait of domain control: watch events arrive in
// bursts and spuriously, so checks never overlap and a burst during a check causes one re-run.
import { describe, it, expect } from 'vitest';
import { coalesced } from '../../src/domains/release-watch.js';

describe('coalesced checks', () => {
  it('never runs two checks at once and collapses a burst into one re-run', async () => {
    let running = 0;
    let maxRunning = 0;
    let runs = 0;
    let release: (() => void) | undefined;
    const trigger = coalesced(
      async () => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        runs++;
        await new Promise<void>((r) => (release = r));
        running--;
      },
      () => undefined,
    );
    trigger();
    for (let i = 0; i < 10; i++) trigger();
    expect(runs).toBe(1);
    release?.();
    await new Promise((r) => setTimeout(r, 10));
    expect(runs).toBe(2);
    release?.();
    await new Promise((r) => setTimeout(r, 10));
    expect(runs).toBe(2);
    expect(maxRunning).toBe(1);
  });

  it('reports a failing check and keeps working', async () => {
    const errors: unknown[] = [];
    let n = 0;
    const trigger = coalesced(
      async () => {
        n++;
        if (n === 1) throw new Error('boom');
      },
      (e) => errors.push(e),
    );
    trigger();
    await new Promise((r) => setTimeout(r, 10));
    trigger();
    await new Promise((r) => setTimeout(r, 10));
    expect(errors).toHaveLength(1);
    expect(n).toBe(2);
  });
});
