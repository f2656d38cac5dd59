// Client-side checks of everything a request carries (paths, tokens, domids, values), applied
// BEFORE a byte is sent, so bad input fails with a XenStoreInputError naming the field instead
// of an EINVAL from xenstored or, worse, a dropped connection (payload > 4096).

import { XenStoreInputError } from './errors.js';
import { PAYLOAD_MAX } from './wire.js';

/** xs_wire.h: XENSTORE_ABS_PATH_MAX / XENSTORE_REL_PATH_MAX. */
export const ABS_PATH_MAX = 3072;
export const REL_PATH_MAX = 2048;
/** Domain ids >= DOMID_FIRST_RESERVED (0x7FF0, xen.h) are never ordinary domains. */
export const DOMID_FIRST_RESERVED = 0x7ff0;
export const DOMID_MAX = DOMID_FIRST_RESERVED - 1;
/** The special watch paths xenstored fires itself. */
export const SPECIAL_WATCH_PATHS: readonly string[] = ['@introduceDomain', '@releaseDomain'];

// xenstored's valid_chars(): letters, digits and "-/_@".
const VALID_CHARS = /^[A-Za-z0-9\-/_@]*$/;

function describe(value: unknown): string {
  return typeof value === 'string'
    ? JSON.stringify(value.length > 64 ? `${value.slice(0, 64)}...` : value)
    : typeof value;
}

/**
 * A node path as xenstored's is_valid_nodename() sees it: absolute ("/...") or relative to the
 * connection's home; characters [A-Za-z0-9-/_@]; not empty; no "//"; no trailing "/" except the
 * root; at most 3072 characters absolute, 2048 relative. Special "@" names are refused here
 * (xenstored answers EINVAL for them outside watches).
 */
export function validatePath(path: unknown, field = 'path'): string {
  if (typeof path !== 'string') {
    throw new XenStoreInputError(`${field} must be a string, got ${describe(path)}`, field);
  }
  if (path.length === 0) throw new XenStoreInputError(`${field} is empty`, field);
  if (!VALID_CHARS.test(path)) {
    throw new XenStoreInputError(`${field} ${describe(path)} has characters outside [A-Za-z0-9-/_@]`, field);
  }
  if (path.startsWith('@')) {
    throw new XenStoreInputError(
      `${field} ${describe(path)}: special "@" paths are only valid for watches`,
      field,
    );
  }
  if (path.includes('//')) throw new XenStoreInputError(`${field} ${describe(path)} contains "//"`, field);
  if (path.length > 1 && path.endsWith('/')) {
    throw new XenStoreInputError(`${field} ${describe(path)} ends with "/"`, field);
  }
  if (path === '/') return path;
  const absolute = path.startsWith('/');
  const max = absolute ? ABS_PATH_MAX : REL_PATH_MAX;
  if (path.length > max) {
    throw new XenStoreInputError(
      `${field} is ${path.length} characters, more than the ${absolute ? 'absolute' : 'relative'} maximum ${max}`,
      field,
    );
  }
  return path;
}

/** A watch path: any valid node path, or exactly @introduceDomain / @releaseDomain. */
export function validateWatchPath(path: unknown, field = 'path'): string {
  if (typeof path === 'string' && SPECIAL_WATCH_PATHS.includes(path)) return path;
  if (typeof path === 'string' && path.startsWith('@')) {
    throw new XenStoreInputError(
      `${field} ${describe(path)}: the only special watch paths are ${SPECIAL_WATCH_PATHS.join(', ')}`,
      field,
    );
  }
  return validatePath(path, field);
}

/** A watch token: non-empty, no NUL (it is sent NUL-terminated), fits in a payload. */
export function validateToken(token: unknown, field = 'token'): string {
  if (typeof token !== 'string' || token.length === 0) {
    throw new XenStoreInputError(`${field} must be a non-empty string`, field);
  }
  if (token.includes('\0')) throw new XenStoreInputError(`${field} contains NUL`, field);
  if (Buffer.byteLength(token) > PAYLOAD_MAX - ABS_PATH_MAX - 2) {
    throw new XenStoreInputError(`${field} is too long`, field);
  }
  return token;
}

/** A domain id: an integer 0..0x7FEF (DOMID_FIRST_RESERVED - 1). */
export function validateDomid(domid: unknown, field = 'domid'): number {
  if (typeof domid !== 'number' || !Number.isInteger(domid) || domid < 0 || domid > DOMID_MAX) {
    throw new XenStoreInputError(`${field} must be an integer 0..${DOMID_MAX}, got ${String(domid)}`, field);
  }
  return domid;
}

/** An unsigned 32-bit integer (event channel port, feature bits, quota value). */
export function validateU32(n: unknown, field: string): number {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    throw new XenStoreInputError(`${field} must be an integer 0..4294967295, got ${String(n)}`, field);
  }
  return n;
}

/** A machine frame number: non-negative integer (bigint or safe number) below 2^64. */
export function validateMfn(mfn: unknown, field = 'mfn'): bigint | number {
  if (typeof mfn === 'bigint' && mfn >= 0n && mfn < 1n << 64n) return mfn;
  if (typeof mfn === 'number' && Number.isSafeInteger(mfn) && mfn >= 0) return mfn;
  throw new XenStoreInputError(`${field} must be a non-negative integer below 2^64`, field);
}

/**
 * A WRITE value: `path\0value` must fit in XENSTORE_PAYLOAD_MAX (4096 bytes in all).
 * Returns the value as bytes so the encoder does not convert it twice.
 */
export function validateValue(path: string, value: unknown, field = 'value'): Buffer {
  let bytes: Buffer;
  if (typeof value === 'string') bytes = Buffer.from(value, 'utf8');
  else if (Buffer.isBuffer(value)) bytes = value;
  else throw new XenStoreInputError(`${field} must be a string or Buffer, got ${typeof value}`, field);
  const total = path.length + 1 + bytes.length;
  if (total > PAYLOAD_MAX) {
    throw new XenStoreInputError(
      `${field} of ${bytes.length} bytes makes a ${total}-byte payload, more than ${PAYLOAD_MAX}`,
      field,
    );
  }
  return bytes;
}
