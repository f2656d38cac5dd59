// Entry point of src/xenstore: the XenStore interface, its errors, and connectXenStore(), the
// one way to get a socket connection. Reconnecting means calling connectXenStore() again.

import { SocketXenStore } from './client.js';
import { discoverXenStore } from './discovery.js';
import { XenStoreNoSocketError } from './errors.js';
import { SocketTransport } from './socket-transport.js';
import type { TransactionOptions, XenStore } from './types.js';

export * from './types.js';
export * from './errors.js';
export { discoverXenStore, daemonSocketPath } from './discovery.js';
export { SocketXenStore } from './client.js';

export interface ConnectOptions {
  /** Socket path; default: discovered like libxenstore (XENSTORED_PATH, XENSTORED_RUNDIR, ...). */
  path?: string;
  /** Default deadline of every call, ms (0/undefined: none). Also bounds connect (default 5 s). */
  timeoutMs?: number;
  /** Cap on requests in flight; more calls wait. Default 1024. */
  maxInFlight?: number;
  transaction?: TransactionOptions;
  env?: NodeJS.ProcessEnv;
}

/**
 * Opens a new socket connection to xenstored. The returned client never reconnects by itself:
 * when `connected` turns false (onDisconnect fires, every pending call and watch gets a
 * XenStoreDisconnectedError), the owner calls connectXenStore() again and re-registers its
 * watches, so no watch can silently miss events across a xenstored restart.
 * Throws XenStoreNoSocketError (a XenStoreDisconnectedError) when the discovered path is not a
 * socket: use the FFI client on its devicePath then.
 */
export async function connectXenStore(opts: ConnectOptions = {}): Promise<XenStore> {
  let path = opts.path;
  if (path === undefined) {
    const found = await discoverXenStore(opts.env ?? process.env);
    if (found.kind !== 'socket') {
      throw new XenStoreNoSocketError(
        `no xenstored socket: ${found.reason}; use the libxenstore (FFI) client on ${found.path}`,
        found.path,
      );
    }
    path = found.path;
  }
  const transport = await SocketTransport.connect(path, {
    timeoutMs: opts.timeoutMs,
    connectTimeoutMs: opts.timeoutMs && opts.timeoutMs > 0 ? opts.timeoutMs : 5000,
    maxInFlight: opts.maxInFlight,
  });
  return new SocketXenStore(transport, { transaction: opts.transaction });
}
