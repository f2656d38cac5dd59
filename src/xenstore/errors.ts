// Typed errors of the XenStore client. Every failure carries what went wrong in a form code
// can branch on (the errno name, the kind of protocol breach), never a bare string.

/** The errno names xenstored may answer with, in xs_wire.h's xsd_errors table order. */
export const XS_ERRNO_NAMES = [
  'EINVAL',
  'EACCES',
  'EEXIST',
  'EISDIR',
  'ENOENT',
  'ENOMEM',
  'ENOSPC',
  'EIO',
  'ENOTEMPTY',
  'ENOSYS',
  'EROFS',
  'EBUSY',
  'EAGAIN',
  'EISCONN',
  'E2BIG',
  'EPERM',
] as const;

export type XsErrno = (typeof XS_ERRNO_NAMES)[number];

/** Maps any name to a known errno; unknown names become EINVAL, as libxenstore does. */
export function toXsErrno(name: string): XsErrno {
  return (XS_ERRNO_NAMES as readonly string[]).includes(name) ? (name as XsErrno) : 'EINVAL';
}

/** The server answered ERROR (or libxenstore set errno) for an operation. */
export class XenStoreError extends Error {
  override readonly name = 'XenStoreError';
  constructor(
    readonly errno: XsErrno,
    readonly op: string,
    readonly path?: string,
  ) {
    super(`${op}${path !== undefined ? ` ${path}` : ''}: ${errno}`);
  }
}

/** Input refused before anything was sent: bad path, value too large, bad domid, ... */
export class XenStoreInputError extends Error {
  override readonly name = 'XenStoreInputError';
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(message);
  }
}

/** The connection is gone (closed by us, by the server, or broken); pending calls reject with it. */
export class XenStoreDisconnectedError extends Error {
  override readonly name = 'XenStoreDisconnectedError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * No xenstored socket where libxenstore would look (or the path is not a socket): the caller may
 * fall back to the libxenstore (FFI) client on `devicePath` (e.g. /dev/xen/xenbus).
 */
export class XenStoreNoSocketError extends XenStoreDisconnectedError {
  constructor(
    message: string,
    readonly devicePath: string,
  ) {
    super(message);
  }
}

/** The server sent something the protocol does not allow; the connection is closed. */
export class XenStoreProtocolError extends Error {
  override readonly name = 'XenStoreProtocolError';
  constructor(message: string) {
    super(message);
  }
}

/** An operation did not complete within its deadline. */
export class XenStoreTimeoutError extends Error {
  override readonly name = 'XenStoreTimeoutError';
  constructor(
    readonly op: string,
    readonly timeoutMs: number,
  ) {
    super(`${op}: no answer within ${timeoutMs} ms`);
  }
}

export function isXsErrno(err: unknown, errno: XsErrno): boolean {
  return err instanceof XenStoreError && err.errno === errno;
}
