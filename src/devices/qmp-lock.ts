// libxl's per-domain QMP lock, taken the way libxl takes it (libxl_internal.c, ev_slowlock):
// flock(LOCK_EX) on XEN_LIB_DIR/userdata-l.<domid>.<uuid>.qmp-socket-lock, then check that the
// path still names the locked file (libxl deletes it with the domain). QEMU's monitor serves one
// client at a time; holding this lock keeps us and libxl from queueing behind each other.
import { open, stat, type FileHandle } from 'node:fs/promises';
import { constants } from 'node:fs';
import koffi from 'koffi';

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;
const EINTR = 4;

/** The lock could not be had in time (or at all). */
export class QmpLockError extends Error {
  override readonly name = 'QmpLockError';
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`libxl's QMP lock ${path}: ${reason}`);
  }
}

type FlockFn = (fd: number, op: number) => number;
let flockFn: FlockFn | undefined;

function flock(): FlockFn {
  if (flockFn === undefined) {
    const libc = koffi.load('libc.so.6');
    flockFn = libc.func('int flock(int fd, int operation)') as FlockFn;
  }
  return flockFn;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** libxl__userdata_path(gc, domid, "qmp-socket-lock", "l"). */
export function libxlQmpLockPath(dir: string, domid: number, uuid: string): string {
  if (!UUID.test(uuid)) throw new QmpLockError(dir, `domain uuid ${JSON.stringify(uuid)} is malformed`);
  return `${dir.replace(/\/$/, '')}/userdata-l.${domid}.${uuid}.qmp-socket-lock`;
}

export interface HeldLock {
  release(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Takes the lock, polling a non-blocking flock (the event loop never blocks), within timeoutMs. */
export async function acquireQmpLock(
  path: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<HeldLock> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let fh: FileHandle;
    try {
      fh = await open(path, constants.O_RDWR | constants.O_CREAT, 0o666);
    } catch (err) {
      throw new QmpLockError(path, `cannot open: ${(err as Error).message}`);
    }
    let held = false;
    try {
      for (;;) {
        if (flock()(fh.fd, LOCK_EX | LOCK_NB) === 0) {
          held = true;
          break;
        }
        const errno = koffi.errno();
        if (errno !== EWOULDBLOCK && errno !== EINTR)
          throw new QmpLockError(path, `flock failed (errno ${errno})`);
        if (signal?.aborted === true) throw new QmpLockError(path, 'aborted while waiting');
        if (Date.now() >= deadline) throw new QmpLockError(path, `held by someone else for ${timeoutMs} ms`);
        await sleep(20);
      }
      // As libxl: the file may have been deleted (domain destroyed) and recreated meanwhile.
      const [byPath, byFd] = await Promise.all([stat(path).catch(() => undefined), fh.stat()]);
      if (byPath !== undefined && byPath.ino === byFd.ino && byPath.dev === byFd.dev) {
        const handle = fh;
        return { release: () => handle.close() };
      }
      held = false;
    } finally {
      if (!held) await fh.close().catch(() => undefined);
    }
    if (Date.now() >= deadline) throw new QmpLockError(path, `not stable within ${timeoutMs} ms`);
  }
}
