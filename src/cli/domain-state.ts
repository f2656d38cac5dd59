// What the hypervisor says about a domain, for the CLI's own checks after xl failed: a toolstack
// must not take xl's word that it resumed the guest (xl ignores the result of that resume), and
// must not leave a guest suspended at the source. Loads libxenctrl (dom0 only); "unknown" elsewhere.
import { createDomainControl } from '../domains/domain-control.js';
import type { DomainControl } from '../domains/types.js';
import type { XenStore } from '../xenstore/types.js';

export type DomainState = 'running' | 'paused' | 'suspended' | 'shut-down' | 'gone' | 'unknown';

function open(xs: XenStore): DomainControl | undefined {
  try {
    return createDomainControl({ xenstore: xs });
  } catch {
    return undefined;
  }
}

export async function domainState(xs: XenStore, domid: number): Promise<DomainState> {
  const dc = open(xs);
  if (dc === undefined) return 'unknown';
  try {
    const info = await dc.info(domid);
    if (info === undefined || info.dying) return 'gone';
    if (info.shutdown) return info.shutdownReason === 'suspend' ? 'suspended' : 'shut-down';
    return info.paused ? 'paused' : 'running';
  } catch {
    return 'unknown';
  } finally {
    await dc.close().catch(() => undefined);
  }
}

/**
 * After xl failed before its point of no return: a guest left suspended here is resumed (what
 * xl's failure path meant to do). Returns the state afterwards.
 */
export async function resumeIfSuspended(
  xs: XenStore,
  domid: number,
): Promise<{ state: DomainState; resumed: boolean }> {
  const before = await domainState(xs, domid);
  if (before !== 'suspended') return { state: before, resumed: false };
  const dc = open(xs);
  if (dc === undefined) return { state: before, resumed: false };
  try {
    await dc.resume(domid);
  } catch {
    // what it is now tells the caller
  } finally {
    await dc.close().catch(() => undefined);
  }
  const after = await domainState(xs, domid);
  return { state: after, resumed: after === 'running' };
}
