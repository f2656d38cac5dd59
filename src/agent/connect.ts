// Opens one raw XenStore connection the way libxenstore would: the xenstored socket when there
// is one (the config's xenstoredPath, else XENSTORED_PATH / XENSTORED_RUNDIR / the default),
// else libxenstore through the FFI client (xenstored in a stub domain: /dev/xen/xenbus).
import type { DevMigrateConfig } from '../config/schema.js';
import { kindOf as kindOfPath } from '../xenstore/discovery.js';
import { connectXenStore, discoverXenStore } from '../xenstore/index.js';
import { XenStoreDisconnectedError } from '../xenstore/errors.js';
import type { XenStore } from '../xenstore/types.js';
import type { Logger } from './logger.js';

/** Per-call deadline: a wedged xenstored must surface as an error, never as a hang. */
export const CALL_TIMEOUT_MS = 30_000;

/**
 * DEVMIGRATE_TRANSPORT=ffi forces libxenstore even where a socket exists (to exercise that path,
 * or to sidestep a socket problem); anything else means "socket when there is one".
 */
export async function connectAnyTransport(config: DevMigrateConfig, logger?: Logger): Promise<XenStore> {
  if (process.env['DEVMIGRATE_TRANSPORT'] === 'ffi') {
    const { openFfiXenStore } = await import('../xenstore/ffi-client.js');
    return openFfiXenStore(config.xenstoredPath !== undefined ? { path: config.xenstoredPath } : {});
  }
  if (config.xenstoredPath !== undefined) {
    if ((await kindOfPath(config.xenstoredPath)) === 'socket') {
      return connectXenStore({ path: config.xenstoredPath, timeoutMs: CALL_TIMEOUT_MS });
    }
  }
  const env =
    config.xenstoredPath !== undefined
      ? { ...process.env, XENSTORED_PATH: config.xenstoredPath }
      : process.env;
  const found = await discoverXenStore(env);
  if (found.kind === 'socket') return connectXenStore({ path: found.path, timeoutMs: CALL_TIMEOUT_MS });
  if ((await kindOfPath(found.path)) === 'missing') {
    throw new XenStoreDisconnectedError(`no xenstored: ${found.reason}, and ${found.path} does not exist`);
  }
  // Loaded only here: the libxenstore binding is needed only where xenstored has no socket.
  const { openFfiXenStore } = await import('../xenstore/ffi-client.js');
  logger?.info('using libxenstore', { device: found.path, reason: found.reason });
  return openFfiXenStore({ path: found.path });
}
