// Helpers shared by the engine's specifications on the simulated host in real time
// (test/unit/migration-recovery-bugs.test.ts, migration-fault-seed-bugs.test.ts).
import { defaultConfig, type DevMigrateConfig } from '../../src/config/schema.js';
import type { SimWorld } from './world.js';

/** A complete auto job request (the agent suspends, live). */
export const AUTO = { id: 'j1', target: 'host-b', mode: 'auto', suspend: 'agent', live: '1' };

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls pred every 5 ms; throws naming what did not happen within ms. */
export async function until(what: string, pred: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(5);
  }
}

/** Short bounds, so that every timeout path of a spec ends within a few seconds. */
export function fastConfig(killGraceMs: number): DevMigrateConfig {
  const c = defaultConfig();
  Object.assign(c.timeouts, {
    suspendAckMs: 300,
    suspendMs: 1500,
    recoverMs: 2000,
    killGraceMs,
    stepIdleMs: 5000,
  });
  return c;
}

/** A spec's world torn down: the agent's engine stopped, every simulated guest stopped. */
export async function stopWorld(world: SimWorld | undefined): Promise<void> {
  await world?.agent?.engine.stop();
  for (const g of world?.guests.values() ?? []) g.stop();
}
