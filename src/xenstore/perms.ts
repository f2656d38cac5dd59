// Permission lists as xenstored writes them: "n0", "r5", "w3", "b1" (letter + decimal domid).
// The first entry names the owner and the default access for every domain not listed.

import { XenStoreInputError, XenStoreProtocolError } from './errors.js';
import type { Access, Perm } from './types.js';

const ACCESS_LETTERS: readonly string[] = ['n', 'r', 'w', 'b'];
const DOMID_FIRST_RESERVED = 0x7ff0;

function isAccess(c: string): c is Access {
  return ACCESS_LETTERS.includes(c);
}

/** Parses one entry; undefined when it is not `[nrwb]<decimal domid>`. */
export function parsePerm(s: string): Perm | undefined {
  const access = s.charAt(0);
  const digits = s.slice(1);
  if (!isAccess(access) || !/^[0-9]{1,5}$/.test(digits)) return undefined;
  const domid = Number(digits);
  if (domid > 0xffff) return undefined;
  return { domid, access };
}

/** The strings of a GET_PERMS reply -> entries. Malformed or empty: a protocol error. */
export function parsePermStrings(strings: readonly string[]): Perm[] {
  if (strings.length === 0) throw new XenStoreProtocolError('GET_PERMS: empty permission list');
  return strings.map((s) => {
    const p = parsePerm(s);
    if (!p) throw new XenStoreProtocolError(`GET_PERMS: bad permission entry "${s}"`);
    return p;
  });
}

/** Parses a user-written list such as "n0 r5" or "n0,r5" (for the CLI and tests). */
export function parsePermList(text: string): Perm[] {
  const parts = text.split(/[\s,]+/).filter((s) => s !== '');
  if (parts.length === 0) throw new XenStoreInputError('permission list is empty', 'perms');
  return parts.map((s) => {
    const p = parsePerm(s);
    if (!p) throw new XenStoreInputError(`bad permission entry "${s}"`, 'perms');
    return p;
  });
}

/** Entries -> wire strings; refuses an empty list, unknown letters and invalid domids. */
export function formatPerms(perms: readonly Perm[]): string[] {
  if (!Array.isArray(perms) || perms.length === 0) {
    throw new XenStoreInputError('permission list must have at least the owner entry', 'perms');
  }
  return perms.map((p, i) => formatPerm(p, `perms[${i}]`));
}

export function formatPerm(p: Perm, field = 'perm'): string {
  if (typeof p !== 'object' || p === null || !isAccess(String(p.access))) {
    throw new XenStoreInputError(`${field}: access must be one of n, r, w, b`, field);
  }
  if (!Number.isInteger(p.domid) || p.domid < 0 || p.domid >= DOMID_FIRST_RESERVED) {
    throw new XenStoreInputError(`${field}: domid must be an integer 0..${DOMID_FIRST_RESERVED - 1}`, field);
  }
  return `${p.access}${p.domid}`;
}

/** Human form, "n0 r5". */
export function permsToString(perms: readonly Perm[]): string {
  return perms.map((p) => `${p.access}${p.domid}`).join(' ');
}
