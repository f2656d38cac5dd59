// Where is xenstored? The same answer libxenstore 4.17 gives (tools/libs/store/xs.c, xs_open):
// first the daemon socket (XENSTORED_PATH, else $XENSTORED_RUNDIR/socket, default
// /var/run/xenstored/socket); when that is not a socket, the xenbus device (FFI client's job).

import { stat } from 'node:fs/promises';

export const DEFAULT_RUNDIR = '/var/run/xenstored';

export interface DaemonPath {
  path: string;
  /** Which rule chose it. */
  source: 'XENSTORED_PATH' | 'XENSTORED_RUNDIR' | 'default';
}

/** xs_daemon_socket(): XENSTORED_PATH wins, else <XENSTORED_RUNDIR or /var/run/xenstored>/socket. */
export function daemonSocketPath(env: NodeJS.ProcessEnv = process.env): DaemonPath {
  const explicit = env.XENSTORED_PATH;
  if (explicit !== undefined && explicit !== '') return { path: explicit, source: 'XENSTORED_PATH' };
  const rundir = env.XENSTORED_RUNDIR;
  if (rundir !== undefined && rundir !== '') {
    return { path: `${rundir}/socket`, source: 'XENSTORED_RUNDIR' };
  }
  return { path: `${DEFAULT_RUNDIR}/socket`, source: 'default' };
}

/**
 * xs_domain_dev() on Linux: XENSTORED_PATH, else /dev/xen/xenbus when it exists, else
 * /proc/xen/xenbus. The socket client cannot use these; the FFI client (libxenstore) can.
 */
export async function domainDevicePath(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const explicit = env.XENSTORED_PATH;
  if (explicit !== undefined && explicit !== '') return explicit;
  return (await kindOf('/dev/xen/xenbus')) !== 'missing' ? '/dev/xen/xenbus' : '/proc/xen/xenbus';
}

export type PathKind = 'socket' | 'device' | 'missing';

/** stat(): a socket, something else that exists (opened as a device by libxenstore), or nothing. */
export async function kindOf(path: string): Promise<PathKind> {
  try {
    const st = await stat(path);
    return st.isSocket() ? 'socket' : 'device';
  } catch {
    return 'missing';
  }
}

export type Discovery =
  | { kind: 'socket'; path: string; source: DaemonPath['source'] }
  /** Not a socket: connect through /dev/xen/xenbus (or the named device) with the FFI client. */
  | { kind: 'device'; path: string; reason: string };

/** Decides like xs_open(): the daemon socket if it is one, else the xenbus device. */
export async function discoverXenStore(env: NodeJS.ProcessEnv = process.env): Promise<Discovery> {
  const daemon = daemonSocketPath(env);
  const kind = await kindOf(daemon.path);
  if (kind === 'socket') return { kind: 'socket', path: daemon.path, source: daemon.source };
  const reason =
    kind === 'missing'
      ? `${daemon.path} (${daemon.source}) does not exist`
      : `${daemon.path} (${daemon.source}) is not a socket`;
  // libxenstore opens a non-socket daemon path as a device itself before trying xs_domain_dev().
  if (kind === 'device') return { kind: 'device', path: daemon.path, reason };
  return { kind: 'device', path: await domainDevicePath(env), reason };
}
