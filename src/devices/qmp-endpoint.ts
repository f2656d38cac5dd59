// One short QMP exchange with a guest's QEMU: take libxl's lock (when configured), connect,
// negotiate, run the caller's commands, disconnect, release. Nothing holds the monitor between
// exchanges, so libxl (and xentop's libxenstat) are never starved by a long mirror.
import { QmpClient } from './qmp-client.js';
import { acquireQmpLock, type HeldLock } from './qmp-lock.js';

export interface QmpEndpoint {
  socketPath: string;
  /** libxl's lock file for this domain, or undefined for none. */
  lockPath: string | undefined;
  /** Bound on the lock, the connection + greeting, and each command. */
  timeoutMs: number;
}

export async function withQmp<T>(
  ep: QmpEndpoint,
  fn: (qmp: QmpClient) => Promise<T>,
  signal?: AbortSignal,
): Promise<T> {
  let lock: HeldLock | undefined;
  if (ep.lockPath !== undefined) lock = await acquireQmpLock(ep.lockPath, ep.timeoutMs, signal);
  try {
    const qmp = await QmpClient.connect(ep.socketPath, { timeoutMs: ep.timeoutMs, signal });
    try {
      return await fn(qmp);
    } finally {
      await qmp.close();
    }
  } finally {
    await lock?.release();
  }
}
